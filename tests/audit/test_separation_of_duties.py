"""Separation of duties: money and review operations need their own permission, large top-ups and
refunds a second admin, and every admin action lands in an append-only audit log."""
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.db import DatabaseError, transaction
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEntry
from billing import settlement
from billing.metering import UsageIn, usage_record_batch
from billing.models import Charge, MoneyApproval
from marketplace.models import Allocation, Node
from matching import services as matching
from matching.models import MatchReview, ReviewPolicy

from tests.billing.helpers import assert_books_balance, balance, token_allocation
from tests.factories import NodeFactory, admin_user, make_listing
from tests.marketplace.helpers import assert_error
from tests.matching.helpers import post_order

pytestmark = pytest.mark.django_db


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def wallet(org_id) -> Decimal:
    return balance(org_id, "buyer_wallet")


def test_the_groups_hold_the_permissions_their_duty_needs():
    perms = {g.name: {f"{p.content_type.app_label}.{p.codename}" for p in g.permissions.all()}
             for g in Group.objects.filter(name__in=["finance", "reviewer", "operations"])}
    assert perms["finance"] >= {"billing.top_up_wallet", "billing.pay_out", "billing.refund_charge",
                                "billing.resolve_dispute", "audit.view_auditentry"}
    assert perms["reviewer"] >= {"matching.decide_review"} and "billing.pay_out" not in perms["reviewer"]
    assert perms["operations"] >= {"matching.fail_node"}


def test_a_staff_user_without_permissions_moves_no_money_and_decides_nothing(supplier_client, buyer_client):
    # given a staff user with no permission at all, a charge, a flagged match and a node
    bare = api_as(admin_user("bare"))
    tokens = token_allocation(supplier_client.organisation, buyer_client)
    usage_record_batch(organisation_id=supplier_client.organisation.pk,
                       events=[UsageIn("e", tokens.pk, timezone.now(), 0, 10_000_000, 0)])
    settlement.settle_pending_usage()
    charge = Charge.objects.get(kind="input_miss_tokens")
    ReviewPolicy.objects.create(value_threshold=Decimal("10"))
    make_listing(NodeFactory(), ask="9")
    post_order(buyer_client)
    matching.round_run(bucket="*:*")
    review = MatchReview.objects.get()
    node = Node.objects.filter(organisation=supplier_client.organisation).first()
    buyer, supplier = buyer_client.organisation.pk, supplier_client.organisation.pk
    before = (wallet(buyer), balance(supplier, "supplier_payable"))
    # when it tries every money and review operation, then each is refused with the permission it lacks
    for url, body, permission in [
            (f"/api/v1/admin/organisations/{buyer}/top-ups", {"amount": "100000000", "reference": "w"},
             "billing.top_up_wallet"),
            (f"/api/v1/admin/organisations/{supplier}/payouts", {"reference": "p"}, "billing.pay_out"),
            (f"/api/v1/admin/charges/{charge.pk}/refund", {"amount": "1", "reason": "r", "reference": "r"},
             "billing.refund_charge"),
            (f"/api/v1/admin/reviews/{review.pk}/approve", {}, "matching.decide_review"),
            (f"/api/v1/admin/reviews/{review.pk}/reject", {"reason": "no"}, "matching.decide_review"),
            (f"/api/v1/admin/nodes/{node.pk}/fail", {}, "matching.fail_node")]:
        response = bare.post(url, body, format="json")
        assert_error(response, 403, code="permission_required")
        assert response.json()["error"]["permission"] == permission
    # and nothing moved, nothing was decided, nothing failed
    assert (wallet(buyer), balance(supplier, "supplier_payable")) == before
    assert MatchReview.objects.get().status == "pending" and not node.failures.exists()
    # and the dashboard's buttons refuse it too
    page = Client()
    page.force_login(admin_user("bare-dashboard"))
    page.post(f"/dashboard/reviews/{review.pk}/approve", {"reason": ""})
    assert MatchReview.objects.get().status == "pending"
    assert not AuditEntry.objects.exists()


@override_settings(SANDUISAN={**settings.SANDUISAN, "SECOND_APPROVAL_ABOVE": "1000"})
def test_a_large_top_up_needs_a_second_different_admin(buyer_client):
    org = buyer_client.organisation.pk
    first = api_as(admin_user("alice", "billing.top_up_wallet"))
    url = f"/api/v1/admin/organisations/{org}/top-ups"
    start = wallet(org)
    # a small top-up is done at once
    assert first.post(url, {"amount": "1000.00", "reference": "small"}, format="json").status_code == 201
    assert wallet(org) == start + 1000
    # a large one is only a request ...
    asked = first.post(url, {"amount": "5000.00", "reference": "big", "reason": "wire 5k"}, format="json",
                       HTTP_X_REQUEST_ID="req-42")
    assert asked.status_code == 202 and asked.json()["status"] == "pending"
    approval_id = asked.json()["id"]
    assert first.post(url, {"amount": "5000.00", "reference": "big"}, format="json").json()["id"] == approval_id
    assert_error(first.post(url, {"amount": "6000.00", "reference": "big"}, format="json"), 409)
    assert wallet(org) == start + 1000
    # ... the requester cannot approve it, nor can an admin without the permission ...
    assert_error(first.post(f"/api/v1/admin/approvals/{approval_id}/approve", {}, format="json"), 403,
                 code="second_admin_required")
    reviewer = api_as(admin_user("rita", "matching.decide_review"))
    assert_error(reviewer.post(f"/api/v1/admin/approvals/{approval_id}/approve", {}, format="json"), 403,
                 code="permission_required")
    assert wallet(org) == start + 1000
    # ... a second finance admin approves: the money moves once
    second = api_as(admin_user("bob", "billing.top_up_wallet"))
    done = second.post(f"/api/v1/admin/approvals/{approval_id}/approve", {"reason": "matches the bank"},
                       format="json")
    assert done.status_code == 200 and done.json()["status"] == "approved" and done.json()["decided_by"] == "bob"
    assert wallet(org) == start + 6000
    assert_error(second.post(f"/api/v1/admin/approvals/{approval_id}/approve", {}, format="json"), 409)
    assert MoneyApproval.objects.get().requested_by.username == "alice"
    # and the log says who did what, when, why, under which request
    entries = list(AuditEntry.objects.order_by("id").values_list("actor_name", "action", "request_id", "reason"))
    assert [e[:2] for e in entries] == [("alice", "top_up.execute"), ("alice", "top_up.request"),
                                        ("bob", "top_up.approve")]
    assert entries[1][2] == "req-42" and entries[1][3] == "wire 5k" and entries[2][3] == "matches the bank"
    assert_books_balance()


@override_settings(SANDUISAN={**settings.SANDUISAN, "SECOND_APPROVAL_ABOVE": "3"})
def test_a_large_refund_waits_for_a_second_admin_and_a_rejected_one_moves_nothing(supplier_client, buyer_client):
    tokens = token_allocation(supplier_client.organisation, buyer_client)
    usage_record_batch(organisation_id=supplier_client.organisation.pk,
                       events=[UsageIn("e", tokens.pk, timezone.now(), 0, 10_000_000, 0)])
    settlement.settle_pending_usage()
    charge = Charge.objects.get(kind="input_miss_tokens")  # 20 CNY
    buyer = buyer_client.organisation.pk
    alice, bob = (api_as(admin_user(name, "billing.refund_charge")) for name in ("alice", "bob"))
    url = f"/api/v1/admin/charges/{charge.pk}/refund"
    before = wallet(buyer)
    big = alice.post(url, {"amount": "10", "reason": "outage", "reference": "t-1"}, format="json")
    other = alice.post(url, {"amount": "5", "reason": "typo", "reference": "t-2"}, format="json")
    assert big.status_code == other.status_code == 202 and wallet(buyer) == before
    assert_error(bob.post(f"/api/v1/admin/approvals/{other.json()['id']}/reject", {}, format="json"), 400,
                 field="reason")
    assert bob.post(f"/api/v1/admin/approvals/{other.json()['id']}/reject", {"reason": "duplicate"},
                    format="json").json()["status"] == "rejected"
    assert bob.post(f"/api/v1/admin/approvals/{big.json()['id']}/approve", {}, format="json").status_code == 200
    assert wallet(buyer) == before + 10
    assert Charge.objects.filter(kind="refund").get().amount == -10
    listed = bob.get("/api/v1/admin/approvals?status=pending").json()
    assert listed["count"] == 0
    assert_books_balance()


def test_the_audit_log_is_append_only_and_read_only_in_the_admin_site(buyer_client):
    admin = api_as(admin_user("alice", "billing.top_up_wallet"))
    admin.post(f"/api/v1/admin/organisations/{buyer_client.organisation.pk}/top-ups",
               {"amount": "10", "reference": "w-1"}, format="json")
    entry = AuditEntry.objects.get()
    assert entry.actor_name == "alice" and entry.action == "top_up.execute" and entry.details["reference"] == "w-1"
    for change in (lambda: AuditEntry.objects.filter(pk=entry.pk).update(reason="nothing happened"),
                   lambda: AuditEntry.objects.filter(pk=entry.pk).delete()):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            change()
    assert AuditEntry.objects.get().reason == ""
    site = Client()
    site.force_login(admin_user("root", "audit.view_auditentry", "audit.change_auditentry",
                                "audit.delete_auditentry", "audit.add_auditentry"))
    assert site.get("/admin/audit/auditentry/").status_code == 200
    assert site.get(f"/admin/audit/auditentry/{entry.pk}/change/").status_code == 200
    assert site.get("/admin/audit/auditentry/add/").status_code == 403
    site.post(f"/admin/audit/auditentry/{entry.pk}/delete/", {"post": "yes"})
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_permission_changes_in_the_admin_site_are_audited():
    site = Client()
    root = admin_user("root", "auth.add_group", "auth.change_group", "auth.view_group", "auth.view_permission")
    site.force_login(root)
    pay_out = Permission.objects.get(codename="pay_out")
    response = site.post("/admin/auth/group/add/", {"name": "treasury", "permissions": [pay_out.pk]},
                         HTTP_X_REQUEST_ID="req-7")
    assert response.status_code == 302, response.content[:500]
    entry = AuditEntry.objects.get(action="permissions.group_change")
    assert entry.actor_name == "root" and entry.details == {"name": "treasury", "permissions": ["billing.pay_out"]}
    assert entry.request_id == "req-7"


def test_admin_failure_and_review_decisions_are_audited(supplier_client, buyer_client):
    ReviewPolicy.objects.create(value_threshold=Decimal("10"))
    make_listing(NodeFactory(organisation=supplier_client.organisation), ask="9")
    post_order(buyer_client, start_in=2)  # decided before its deadline, whatever the minute
    matching.round_run(bucket="*:*")
    review = MatchReview.objects.get()
    reviewer = api_as(admin_user("rita", "matching.decide_review"))
    assert reviewer.post(f"/api/v1/admin/reviews/{review.pk}/approve", {"reason": "known supplier"},
                         format="json").status_code == 200
    ops = api_as(admin_user("otto", "matching.fail_node"))
    node = Node.objects.get(organisation=supplier_client.organisation)
    assert ops.post(f"/api/v1/admin/nodes/{node.pk}/fail", {"reason": "rack on fire"}, format="json").status_code == 201
    assert list(AuditEntry.objects.order_by("id").values_list("actor_name", "action", "reason")) == [
        ("rita", "review.approve", "known supplier"), ("otto", "node.fail", "rack on fire")]
    assert AuditEntry.objects.get(action="node.fail").details["allocations"] == [
        Allocation.objects.get(order__organisation=buyer_client.organisation).pk]
