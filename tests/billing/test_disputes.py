"""Disputes through the API: the buyer disputes a charge, the supplier's share is withheld from
payouts until an admin with the permission refunds or rejects it; both parties see the state."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEntry
from billing import invoicing, settlement
from billing.metering import UsageIn, usage_record_batch
from billing.models import Charge, Dispute

from tests.factories import admin_user
from tests.marketplace.helpers import assert_error

from .helpers import assert_books_balance, balance, occurred_for, token_allocation

pytestmark = pytest.mark.django_db


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def charged(supplier_client, buyer_client):
    """A settled input-miss charge of 20 CNY (1.60 commission, 18.40 to the supplier)."""
    allocation = token_allocation(supplier_client.organisation, buyer_client)
    usage_record_batch(organisation_id=supplier_client.organisation.pk,
                       events=[UsageIn("e", allocation.pk, occurred_for(allocation), 0, 10_000_000, 0)])
    settlement.settle_pending_usage()
    return Charge.objects.get(kind="input_miss_tokens")


def test_a_dispute_withholds_the_suppliers_share_until_an_admin_refunds_part(charged, supplier_client, buyer_client,
                                                                            client_for):
    supplier, buyer = supplier_client.organisation.pk, buyer_client.organisation.pk
    finance = api_as(admin_user("fin", "billing.pay_out", "billing.resolve_dispute"))
    # when the buyer disputes 10 CNY of the charge
    opened = buyer_client.post(f"/api/v1/charges/{charged.pk}/dispute",
                               {"reason": "half the answers were empty", "amount": "10", "reference": "d-1"},
                               format="json")
    assert opened.status_code == 201, opened.content
    dispute = opened.json()
    assert dispute["status"] == "open" and Decimal(dispute["withheld"]) == Decimal("9.2") and dispute["side"] == "buyer"
    assert buyer_client.post(f"/api/v1/charges/{charged.pk}/dispute", {"reason": "again", "reference": "d-1"},
                             format="json").json()["id"] == dispute["id"]  # the same reference: the same dispute
    assert_error(buyer_client.post(f"/api/v1/charges/{charged.pk}/dispute", {"reason": "twice"}, format="json"), 409,
                 code="dispute_open")
    # then both parties see it; nobody else does
    seen = supplier_client.get(f"/api/v1/disputes/{dispute['id']}").json()
    assert seen["status"] == "open" and seen["side"] == "supplier"
    assert [d["id"] for d in buyer_client.get("/api/v1/disputes").json()["results"]] == [dispute["id"]]
    stranger = client_for(is_supplier=False, is_buyer=True)
    assert_error(stranger.get(f"/api/v1/disputes/{dispute['id']}"), 404)
    # and a payout leaves the withheld share payable: 18.40 - 9.20
    payout = finance.post(f"/api/v1/admin/organisations/{supplier}/payouts", {"reference": "w-1"}, format="json")
    assert payout.status_code == 201 and Decimal(payout.json()["amount"]) == Decimal("9.2")
    assert balance(supplier, "supplier_payable") == Decimal("9.2")
    assert_error(finance.post(f"/api/v1/admin/organisations/{supplier}/payouts", {"reference": "w-2"}, format="json"),
                 409, code="nothing_to_pay")
    # and the supplier's statement says what is withheld, the buyer's invoice what is disputed
    statement = invoicing.invoice_issue(organisation_id=supplier, kind="statement")
    assert statement.figures["withheld_for_disputes"] == "9.200000000000"
    assert invoicing.invoice_issue(organisation_id=buyer).figures["disputed"] == "10.000000000000"
    # when an admin without the permission tries, nothing happens; one with it refunds 6 of the 10
    bare = api_as(admin_user("bare"))
    assert_error(bare.post(f"/api/v1/admin/disputes/{dispute['id']}/resolve",
                           {"outcome": "refund", "reason": "ok"}, format="json"), 403, code="permission_required")
    wallet = balance(buyer, "buyer_wallet")
    resolved = finance.post(f"/api/v1/admin/disputes/{dispute['id']}/resolve",
                            {"outcome": "refund", "amount": "6", "reason": "partly empty"}, format="json")
    assert resolved.status_code == 200 and resolved.json()["status"] == "refunded"
    assert Decimal(resolved.json()["refunded"]) == 6
    assert balance(buyer, "buyer_wallet") == wallet + 6
    # then the rest of the withheld share is released: 9.20 - 6 x 0.92 = 3.68 can be paid
    assert balance(supplier, "supplier_payable") == Decimal("3.68")
    assert Decimal(finance.post(f"/api/v1/admin/organisations/{supplier}/payouts", {"reference": "w-3"},
                                format="json").json()["amount"]) == Decimal("3.68")
    assert supplier_client.get(f"/api/v1/disputes/{dispute['id']}").json()["status"] == "refunded"
    assert_error(finance.post(f"/api/v1/admin/disputes/{dispute['id']}/resolve",
                              {"outcome": "reject", "reason": "late"}, format="json"), 409)
    assert AuditEntry.objects.filter(action="dispute.refund", target_id=str(dispute["id"])).exists()
    assert_books_balance()


def test_a_rejected_dispute_releases_the_withheld_share_and_moves_no_money(charged, supplier_client, buyer_client):
    supplier = supplier_client.organisation.pk
    finance = api_as(admin_user("fin", "billing.pay_out", "billing.resolve_dispute"))
    dispute = buyer_client.post(f"/api/v1/charges/{charged.pk}/dispute", {"reason": "too dear"}, format="json").json()
    assert Decimal(dispute["amount"]) == Decimal("20")  # all of it by default
    assert_error(finance.post(f"/api/v1/admin/organisations/{supplier}/payouts", {"reference": "w"}, format="json"),
                 409, code="nothing_to_pay")
    wallet = balance(buyer_client.organisation.pk, "buyer_wallet")
    assert_error(finance.post(f"/api/v1/admin/disputes/{dispute['id']}/resolve", {"outcome": "reject"},
                              format="json"), 400, field="reason")
    rejected = finance.post(f"/api/v1/admin/disputes/{dispute['id']}/resolve",
                            {"outcome": "reject", "reason": "the price was posted"}, format="json")
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert balance(buyer_client.organisation.pk, "buyer_wallet") == wallet
    paid = finance.post(f"/api/v1/admin/organisations/{supplier}/payouts", {"reference": "w"}, format="json")
    assert Decimal(paid.json()["amount"]) == Decimal("18.4")
    assert_books_balance()


def test_disputes_of_other_charges_refunds_late_ones_and_bad_amounts_are_refused(charged, supplier_client,
                                                                                buyer_client, client_for):
    stranger = client_for(is_supplier=False, is_buyer=True)
    assert_error(stranger.post(f"/api/v1/charges/{charged.pk}/dispute", {"reason": "x"}, format="json"), 404)
    assert_error(supplier_client.post(f"/api/v1/charges/{charged.pk}/dispute", {"reason": "x"}, format="json"), 404)
    assert_error(buyer_client.post(f"/api/v1/charges/{charged.pk}/dispute", {"reason": ""}, format="json"), 400,
                 field="reason")
    assert_error(buyer_client.post(f"/api/v1/charges/{charged.pk}/dispute", {"reason": "x", "amount": "20.01"},
                                   format="json"), 400, field="amount")
    assert_error(buyer_client.post("/api/v1/charges/999999/dispute", {"reason": "x"}, format="json"), 404)
    Charge.objects.filter(pk=charged.pk).update(created_at=timezone.now() - timedelta(days=31))
    assert_error(buyer_client.post(f"/api/v1/charges/{charged.pk}/dispute", {"reason": "x"}, format="json"), 409,
                 code="dispute_window_closed")
    assert not Dispute.objects.exists()


def test_two_buyers_using_the_same_dispute_reference_each_get_their_dispute(supplier_client, client_for):
    buyers = [client_for(is_supplier=False, is_buyer=True) for _ in range(2)]
    allocations = [token_allocation(supplier_client.organisation, b) for b in buyers]
    usage_record_batch(organisation_id=supplier_client.organisation.pk, events=[
        UsageIn(f"e{n}", a.pk, occurred_for(a), 0, 1_000_000, 0) for n, a in enumerate(allocations)])
    settlement.settle_pending_usage()
    answers = [b.post(f"/api/v1/charges/{Charge.objects.get(allocation=a).pk}/dispute",
                      {"reason": "x", "reference": "ticket-1"}, format="json") for b, a in zip(buyers, allocations)]
    assert [r.status_code for r in answers] == [201, 201] and answers[0].json()["id"] != answers[1].json()["id"]
    assert [r.json()["buyer"] for r in answers] == [b.organisation.pk for b in buyers]


@override_settings(SANDUISAN={**settings.SANDUISAN, "SECOND_APPROVAL_ABOVE": "5"})
def test_a_large_dispute_refund_waits_for_a_second_admin(charged, supplier_client, buyer_client):
    dispute = buyer_client.post(f"/api/v1/charges/{charged.pk}/dispute", {"reason": "down"}, format="json").json()
    alice = api_as(admin_user("alice", "billing.resolve_dispute", "billing.refund_charge"))
    bob = api_as(admin_user("bob", "billing.refund_charge"))
    wallet = balance(buyer_client.organisation.pk, "buyer_wallet")
    waiting = alice.post(f"/api/v1/admin/disputes/{dispute['id']}/resolve", {"outcome": "refund", "reason": "down"},
                         format="json")
    assert waiting.status_code == 202 and waiting.json()["status"] == "awaiting_approval"
    assert balance(buyer_client.organisation.pk, "buyer_wallet") == wallet
    approval = waiting.json()["approval"]
    assert_error(alice.post(f"/api/v1/admin/approvals/{approval}/approve", {}, format="json"), 403,
                 code="second_admin_required")
    assert bob.post(f"/api/v1/admin/approvals/{approval}/approve", {}, format="json").status_code == 200
    assert balance(buyer_client.organisation.pk, "buyer_wallet") == wallet + 20
    done = buyer_client.get(f"/api/v1/disputes/{dispute['id']}").json()
    assert done["status"] == "refunded" and Decimal(done["refunded"]) == 20 and done["refund"] is not None
    assert_books_balance()


def test_a_dispute_after_the_payout_is_refunded_whole_and_the_supplier_owes_it_from_its_next_earnings(
        charged, supplier_client, buyer_client):
    # given the supplier was paid its 18.40 before the buyer disputed
    supplier, buyer = supplier_client.organisation.pk, buyer_client.organisation.pk
    finance = api_as(admin_user("fin", "billing.pay_out", "billing.resolve_dispute"))
    assert Decimal(finance.post(f"/api/v1/admin/organisations/{supplier}/payouts", {"reference": "w-1"},
                                format="json").json()["amount"]) == Decimal("18.4")
    dispute = buyer_client.post(f"/api/v1/charges/{charged.pk}/dispute", {"reason": "empty answers"},
                                format="json").json()
    wallet = balance(buyer, "buyer_wallet")

    # when an admin refunds all 20
    resolved = finance.post(f"/api/v1/admin/disputes/{dispute['id']}/resolve",
                            {"outcome": "refund", "reason": "all empty"}, format="json")

    # then the buyer has its 20 back, the supplier owes its 18.40 share and the platform gave back 1.60
    assert resolved.status_code == 200 and resolved.json()["status"] == "refunded", resolved.content
    assert balance(buyer, "buyer_wallet") == wallet + 20
    assert (balance(supplier, "supplier_payable"), balance(supplier, "supplier_receivable")) == (0, Decimal("-18.4"))
    # and its next earnings repay that first: 10 CNY more (9.20 its share) leaves 9.20 owed, none payable
    allocation = token_allocation(supplier_client.organisation, buyer_client)
    usage_record_batch(organisation_id=supplier, events=[
        UsageIn("later", allocation.pk, occurred_for(allocation), 0, 5_000_000, 0)])
    settlement.settle_pending_usage()
    assert (balance(supplier, "supplier_payable"), balance(supplier, "supplier_receivable")) == (0, Decimal("-9.2"))
    assert_error(finance.post(f"/api/v1/admin/organisations/{supplier}/payouts", {"reference": "w-2"}, format="json"),
                 409, code="nothing_to_pay")
    assert_books_balance()
