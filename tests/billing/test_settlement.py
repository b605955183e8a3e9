"""Holds at match time, card-hour meters, failures with service credits, late usage and
immutable invoices, on the real PostgreSQL."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from billing import invoicing, settlement
from config.errors import InvalidTransition
from billing.metering import UsageIn, usage_record_batch
from billing.models import Charge, Hold, Invoice, InvoiceLine
from marketplace.models import Allocation, ListingHour, Order, Organisation
from matching import services as matching
from lifecycle import services as lifecycle

from tests.factories import NodeFactory, admin_user, make_listing
from tests.marketplace.helpers import assert_error
from tests.matching.helpers import post_order

from .helpers import assert_books_balance, balance, card_hour_allocation, minutes_into, token_allocation

pytestmark = pytest.mark.django_db


def test_a_buyer_short_of_funds_is_not_matched_and_told_why(client_for):
    # given a buyer with 100 CNY and an order whose maximum cost is 12.5 x 4 x 3 = 150
    make_listing(NodeFactory(), ask="9")
    buyer_client = client_for(is_supplier=False, is_buyer=True, funds=100)
    order = post_order(buyer_client)
    # when a round runs
    outcome = matching.round_run(bucket="*:*")
    # then nothing is matched, nothing is held or sold, and the order says why
    assert outcome.matches == 0
    order.refresh_from_db()
    assert order.status == "open" and "insufficient funds" in order.status_reason and "150" in order.status_reason
    assert not Hold.objects.exists() and not ListingHour.objects.filter(cards_sold__gt=0).exists()
    explain = buyer_client.get(f"/api/v1/orders/{order.pk}/explain").json()
    assert explain["reasons"][0]["code"] == "insufficient_funds", explain
    assert explain["alternatives"] == [{"kind": "top_up", "amount": "50.000000000000"}]
    # and once the buyer tops up, the next round matches it and holds the maximum cost
    from billing.services import wallet_top_up

    wallet_top_up(organisation_id=buyer_client.organisation.pk, amount=Decimal("50"), reference="more")
    assert matching.round_run(bucket="*:*").matches == 1
    hold = Hold.objects.get()
    assert hold.amount == Decimal("150") and hold.allocation.order_id == order.pk
    assert balance(buyer_client.organisation.pk, "buyer_wallet") == 0
    assert_books_balance()


def test_cancelling_a_matched_order_returns_its_hold(buyer_client):
    make_listing(NodeFactory(), ask="9")
    order = post_order(buyer_client)
    matching.round_run(bucket="*:*")
    before = balance(buyer_client.organisation.pk, "buyer_held")
    assert before == Decimal("150")
    assert buyer_client.post(f"/api/v1/orders/{order.pk}/cancel", {}, format="json").status_code == 200
    assert Hold.objects.get().status == "voided"
    assert balance(buyer_client.organisation.pk, "buyer_held") == 0
    assert_books_balance()


def test_meter_bills_per_minute_within_the_allocation_only(supplier_client, buyer_client):
    supplier = supplier_client.organisation
    allocation = card_hour_allocation(supplier, buyer_client, cards=2, hours=2, bid="12", ask="12")
    # Starting well before the allocation's hours is refused; at its start it runs.
    with pytest.raises(InvalidTransition):
        lifecycle.allocation_start(organisation=supplier, allocation_id=allocation.pk,
                                   now=minutes_into(allocation, -30))
    lifecycle.allocation_start(organisation=supplier, allocation_id=allocation.pk, now=minutes_into(allocation, 0.5))
    assert Allocation.objects.get(pk=allocation.pk).status == "running"
    assert Order.objects.get(pk=allocation.order_id).status == "running"
    # Heartbeats every 4 minutes for 40 minutes, then silence for 30 minutes: only the grace
    # (5 minutes) of the silence counts.
    for minute in range(4, 41, 4):
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk,
                                       now=minutes_into(allocation, 0.5 + minute))
    lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk,
                                   now=minutes_into(allocation, 70.5))
    outcome = settlement.allocation_settle(allocation_id=allocation.pk, now=minutes_into(allocation, 70.5))
    # 40 + 5 = 45 minutes x 2 cards x 12 / 60 = 18
    assert outcome.charged == Decimal("18")
    # Heartbeats far past the end are clipped to the allocation's 120 minutes (from 0.5: 119.5).
    for minute in range(74, 200, 4):
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk,
                                       now=minutes_into(allocation, minute))
    lifecycle.allocation_stop(organisation=supplier, allocation_id=allocation.pk, now=minutes_into(allocation, 200))
    # 45 + (120 - 70.5) = 94.5 minutes, billed in whole minutes: 94 x 2 x 12 / 60 = 37.6
    assert sum(c.amount for c in Charge.objects.filter(allocation=allocation)) == Decimal("37.6")
    assert Hold.objects.get(allocation=allocation).status == "posted"
    assert balance(buyer_client.organisation.pk, "buyer_held") == 0
    assert_books_balance()


def test_meter_api_is_for_the_supplier_and_hidden_from_strangers(supplier_client, buyer_client, client_for):
    allocation = card_hour_allocation(supplier_client.organisation, buyer_client)
    url = f"/api/v1/allocations/{allocation.pk}/meter"
    assert supplier_client.get(url).json()["metered_minutes"] == 0
    assert buyer_client.get(url).status_code == 200  # the buyer sees its meter ...
    assert_error(buyer_client.post(f"/api/v1/allocations/{allocation.pk}/stop"), 404)  # ... but cannot drive it
    stranger = client_for(is_supplier=True)
    assert_error(stranger.get(url), 404)
    assert_error(stranger.post(f"/api/v1/allocations/{allocation.pk}/heartbeat"), 404)
    assert_error(supplier_client.post(f"/api/v1/allocations/{allocation.pk}/heartbeat"), 409, code="invalid_transition")
    assert_error(supplier_client.post(f"/api/v1/allocations/{allocation.pk}/explode"), 404)


def test_a_node_failure_is_not_charged_and_earns_a_credit(supplier_client, buyer_client, settings):
    settings.SANDUISAN = {**settings.SANDUISAN, "SERVICE_CREDIT_RATE": "0.25"}
    supplier = supplier_client.organisation
    allocation = card_hour_allocation(supplier, buyer_client, cards=8, hours=3, bid="12.5", ask="10")
    lifecycle.allocation_start(organisation=supplier, allocation_id=allocation.pk, now=minutes_into(allocation, 0))
    for minute in range(1, 100):
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk,
                                       now=minutes_into(allocation, minute))
    node_id = allocation.parts.get().node_id
    # when the node fails 100 minutes in (in the second hour) ...
    lifecycle.node_fail(node_id=node_id, organisation=supplier, reason="hung after an error",
                        now=minutes_into(allocation, 100))
    # then only the first, fully delivered hour is charged: 8 x 11.25 = 90 ...
    charges = Charge.objects.filter(allocation=allocation)
    assert sum(c.amount for c in charges.filter(kind="card_hours")) == Decimal("90")
    # ... the buyer is credited 25% of the 2 lost hours: 0.25 x 8 x 2 x 11.25 = 45 ...
    credit = charges.get(kind="service_credit")
    assert credit.amount == Decimal("-45") and credit.supplier_id == supplier.pk  # the supplier pays it
    # ... the hold is closed (300 held, 90 charged, 210 back) and the order reopened for 2 hours
    assert Hold.objects.get(allocation=allocation).status == "posted"
    buyer = buyer_client.organisation
    assert balance(buyer.pk, "buyer_wallet") == Decimal("1000000") - 90 + 45
    order = Order.objects.get(pk=allocation.order_id)
    assert order.status == "open" and order.duration_hours == 2
    # ... and the supplier's reliability drops: 1 - 16 lost of (8 delivered + 16 lost + 100 prior)
    assert Organisation.objects.get(pk=supplier.pk).reliability == Decimal("0.870")  # 108/124 = 0.8709..
    # Failing is idempotent for the money: settling again charges nothing more.
    assert settlement.allocation_settle(allocation_id=allocation.pk).charged == 0
    assert_books_balance()


def test_late_usage_lands_on_the_next_invoice_as_an_adjustment(supplier_client, buyer_client):
    tokens = token_allocation(supplier_client.organisation, buyer_client, started_hours_ago=3)
    buyer = buyer_client.organisation
    earlier = timezone.now() - timedelta(hours=2)
    usage_record_batch(organisation_id=supplier_client.organisation.pk,
                       events=[UsageIn("on-time", tokens.pk, earlier, 0, 1_000_000, 0)])
    settlement.settle_pending_usage()
    first = invoicing.invoice_issue(organisation_id=buyer.pk)
    assert first.subtotal == Decimal("2") and not first.lines.filter(adjustment=True).exists()
    # an event from the first period arrives after its invoice was issued
    usage_record_batch(organisation_id=supplier_client.organisation.pk,
                       events=[UsageIn("late", tokens.pk, earlier + timedelta(minutes=5), 0, 0, 1_000_000)])
    settlement.settle_pending_usage()
    second = invoicing.invoice_issue(organisation_id=buyer.pk)
    [line] = second.lines.all()
    assert line.adjustment and line.amount == Decimal("8") and "late usage" in line.description
    assert Invoice.objects.get(pk=first.pk).subtotal == Decimal("2")  # the first one is untouched
    # Issued documents are immutable, enforced by PostgreSQL whatever the code does.
    for statement in ("UPDATE billing_invoice SET total = 0", "DELETE FROM billing_invoiceline",
                      "UPDATE billing_charge SET invoice_id = NULL"):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    assert InvoiceLine.objects.count() == 2
    # The document is a readable page, and others' invoices are 404.
    page = buyer_client.get(f"/api/v1/invoices/{second.pk}/document")
    assert page.status_code == 200 and second.number in page.content.decode()
    assert "late usage" in page.content.decode()
    assert_error(supplier_client.get(f"/api/v1/invoices/{second.pk}"), 404)
    listed = buyer_client.get("/api/v1/invoices").json()["results"]
    assert [i["number"] for i in listed] == [second.number, first.number]


def test_invoice_api_issues_on_demand_and_refuses_bad_periods(buyer_client):
    response = buyer_client.post("/api/v1/invoices", {"kind": "invoice"}, format="json")
    assert response.status_code == 201 and response.json()["total"] == "0.00"
    assert_error(buyer_client.post("/api/v1/invoices", {"kind": "bill"}, format="json"), 400, field="kind")
    future = (timezone.now() + timedelta(days=1)).isoformat()
    assert_error(buyer_client.post("/api/v1/invoices", {"period_end": future}, format="json"), 400,
                 field="period_end")
    past = (timezone.now() - timedelta(days=30)).isoformat()
    assert_error(buyer_client.post("/api/v1/invoices", {"period_end": past}, format="json"), 400, field="period_end")


def test_token_usage_beyond_hold_and_wallet_waits_for_a_top_up(supplier_client, client_for):
    buyer_client = client_for(is_supplier=False, is_buyer=True, funds=40)
    tokens = token_allocation(supplier_client.organisation, buyer_client)  # holds 32.25, 7.75 left
    now = timezone.now()
    # 3 events of 20 CNY each (10M cache-miss input): 40 covers two of them
    usage_record_batch(organisation_id=supplier_client.organisation.pk,
                       events=[UsageIn(f"e{i}", tokens.pk, now, 0, 10_000_000, 0) for i in range(3)])
    outcome = settlement.allocation_settle(allocation_id=tokens.pk)
    assert outcome.charged == Decimal("40") and outcome.events == 2 and outcome.unfunded_events == 1
    assert balance(buyer_client.organisation.pk, "buyer_wallet") == 0
    from billing.services import wallet_top_up

    wallet_top_up(organisation_id=buyer_client.organisation.pk, amount=Decimal("25"), reference="later")
    assert settlement.allocation_settle(allocation_id=tokens.pk).events == 1
    assert balance(buyer_client.organisation.pk, "buyer_wallet") == Decimal("5")
    assert_books_balance()


def test_admin_refund_and_payout(supplier_client, buyer_client):
    admin = APIClient()
    admin.force_authenticate(admin_user("ops", "billing.refund_charge", "billing.pay_out"))
    tokens = token_allocation(supplier_client.organisation, buyer_client)
    usage_record_batch(organisation_id=supplier_client.organisation.pk,
                       events=[UsageIn("e", tokens.pk, timezone.now(), 0, 10_000_000, 0)])
    settlement.settle_pending_usage()
    charge = Charge.objects.get(kind="input_miss_tokens")  # 20 CNY, 1.60 commission
    body = {"amount": "5", "reason": "slow responses", "reference": "ticket-9"}
    assert admin.post(f"/api/v1/admin/charges/{charge.pk}/refund", body, format="json").status_code == 201
    assert admin.post(f"/api/v1/admin/charges/{charge.pk}/refund", body, format="json").status_code == 201  # replay
    assert balance(supplier_client.organisation.pk, "supplier_payable") == Decimal("18.4") - Decimal("4.6")
    assert_error(admin.post(f"/api/v1/admin/charges/{charge.pk}/refund",
                            {**body, "amount": "15.01", "reference": "ticket-10"}, format="json"), 400, field="amount")
    assert_error(buyer_client.post(f"/api/v1/admin/charges/{charge.pk}/refund", body, format="json"), 403)
    payout = admin.post(f"/api/v1/admin/organisations/{supplier_client.organisation.pk}/payouts",
                        {"reference": "wire-1"}, format="json")
    assert payout.status_code == 201 and Decimal(payout.json()["amount"]) == Decimal("13.8")
    assert_error(admin.post(f"/api/v1/admin/organisations/{supplier_client.organisation.pk}/payouts",
                            {"reference": "wire-2"}, format="json"), 409, code="nothing_to_pay")
    assert_books_balance()


def test_allocations_close_when_their_hours_run_out_and_months_are_invoiced(supplier_client, buyer_client):
    supplier, buyer = supplier_client.organisation, buyer_client.organisation
    ran = card_hour_allocation(supplier, buyer_client, cards=2, hours=1, bid="12", ask="12")
    idle = card_hour_allocation(supplier, buyer_client, cards=2, hours=1, bid="12", ask="12")
    lifecycle.allocation_start(organisation=supplier, allocation_id=ran.pk, now=minutes_into(ran, 0))
    for minute in range(5, 61, 5):
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=ran.pk, now=minutes_into(ran, minute))
    # when the sweep runs after the hour, with no stop from the supplier
    after = minutes_into(ran, 70)
    assert lifecycle.allocations_close_due(now=after) == 2 and lifecycle.allocations_close_due(now=after) == 0
    # then the one that ran is charged its 60 minutes (2 x 12 = 24) and the one never started nothing
    assert Allocation.objects.get(pk=ran.pk).status == "completed"
    assert sum(c.amount for c in Charge.objects.filter(allocation=ran)) == Decimal("24")
    assert not Charge.objects.filter(allocation=idle).exists()
    assert Hold.objects.get(allocation=idle).status == "voided"
    # the one never started was a no-show: its order expires (its window has closed) and the
    # supplier's reliability counts its 2 card-hours as lost: (2 + 100) / (2 + 2 + 100) = 0.980
    assert Allocation.objects.get(pk=idle.pk).status == "interrupted"
    assert Order.objects.get(pk=idle.order_id).status == "expired"
    assert Organisation.objects.get(pk=supplier.pk).reliability == Decimal("0.980")
    assert balance(buyer.pk, "buyer_held") == 0
    # and the monthly run invoices the buyer and states the supplier once
    next_month = (after.replace(day=1) + timedelta(days=32)).replace(day=1, hour=5)
    assert invoicing.invoices_issue_monthly(now=next_month) == 2
    assert invoicing.invoices_issue_monthly(now=next_month) == 0
    invoice = Invoice.objects.get(organisation=buyer)
    assert invoice.total == Decimal("24.00") and invoice.period_end == next_month.replace(hour=0, minute=0)
    assert Invoice.objects.get(organisation=supplier, kind="statement").total == Decimal("22.08")  # 24 less 8%
    assert_books_balance()


def test_an_expired_allocation_hold_is_settled_not_just_voided(supplier_client, buyer_client):
    tokens = token_allocation(supplier_client.organisation, buyer_client)
    usage_record_batch(organisation_id=supplier_client.organisation.pk,
                       events=[UsageIn("e", tokens.pk, timezone.now(), 0, 1_000_000, 0)])
    Hold.objects.filter(allocation=tokens).update(expires_at=timezone.now() - timedelta(minutes=1))
    from billing.settlement import holds_expire

    assert holds_expire() == 1
    hold = Hold.objects.get(allocation=tokens)
    assert hold.status == "posted" and hold.posted_amount == Decimal("2")  # the usage was charged first
    assert balance(buyer_client.organisation.pk, "buyer_held") == 0
    assert_books_balance()


def test_a_rejected_review_returns_the_hold(buyer_client, settings):
    from matching.models import MatchReview, ReviewPolicy

    ReviewPolicy.objects.create(value_threshold=Decimal("10"))  # every match is flagged
    make_listing(NodeFactory(), ask="9")
    post_order(buyer_client, start_in=2)  # decided before its deadline, whatever the minute
    matching.round_run(bucket="*:*")
    review = MatchReview.objects.get()
    assert Hold.objects.get(allocation=review.allocation).status == "pending"  # funds are held during review
    admin = get_user_model().objects.create_user(username="ops", password="x", is_staff=True)
    lifecycle.review_reject(review_id=review.pk, admin_user_id=admin.pk, reason="unknown supplier")
    assert Hold.objects.get(allocation=review.allocation).status == "voided"
    assert balance(buyer_client.organisation.pk, "buyer_held") == 0
    assert_books_balance()


def test_a_failure_after_a_settlement_sweep_gives_back_the_failed_hour(supplier_client, buyer_client):
    supplier, buyer = supplier_client.organisation, buyer_client.organisation
    allocation = card_hour_allocation(supplier, buyer_client, cards=8, hours=3, bid="12.5", ask="10")
    lifecycle.allocation_start(organisation=supplier, allocation_id=allocation.pk, now=minutes_into(allocation, 0))
    for minute in range(1, 96):
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk,
                                       now=minutes_into(allocation, minute))
    # a sweep at minute 95 charges 95 minutes: 8 x 11.25 x 95 / 60 = 142.50 ...
    assert settlement.settle_due(now=minutes_into(allocation, 95)) >= 1
    assert balance(supplier.pk, "supplier_payable") == Decimal("142.5") * Decimal("0.92")
    # ... then the node fails at minute 100, in the second hour: only the first hour stands
    lifecycle.node_fail(node_id=allocation.parts.get().node_id, organisation=supplier,
                        now=minutes_into(allocation, 100))
    charges = Charge.objects.filter(allocation=allocation, kind="card_hours")
    assert sum(c.amount for c in charges) == Decimal("90")
    assert sum(c.commission for c in charges) == Decimal("7.2")
    # the 25% credit (45) is paid by the supplier out of what it earned
    assert balance(supplier.pk, "supplier_payable") == Decimal("82.8") - 45
    assert balance(buyer.pk, "buyer_wallet") == Decimal("1000000") - 90 + 45
    assert balance(buyer.pk, "buyer_held") == 0
    assert_books_balance()


def test_a_reopened_order_can_be_cancelled_after_a_failure(supplier_client, buyer_client):
    allocation = card_hour_allocation(supplier_client.organisation, buyer_client)
    lifecycle.allocation_start(organisation=supplier_client.organisation, allocation_id=allocation.pk,
                               now=minutes_into(allocation, 0))
    lifecycle.node_fail(node_id=allocation.parts.get().node_id, now=minutes_into(allocation, 30))
    response = buyer_client.post(f"/api/v1/orders/{allocation.order_id}/cancel", {}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert Allocation.objects.get(pk=allocation.pk).status == "interrupted"  # untouched by the cancel
    assert not ListingHour.objects.filter(cards_sold__gt=0).exists()
    assert_books_balance()


def test_a_supplier_cannot_stop_an_allocation_it_never_started(supplier_client, buyer_client):
    allocation = card_hour_allocation(supplier_client.organisation, buyer_client)
    assert_error(supplier_client.post(f"/api/v1/allocations/{allocation.pk}/stop"), 409, code="invalid_transition")
    assert Allocation.objects.get(pk=allocation.pk).status == "confirmed"
    assert Order.objects.get(pk=allocation.order_id).status == "matched"


def test_the_monthly_run_skips_a_document_issued_on_demand_since_and_goes_on(supplier_client, buyer_client,
                                                                             client_for):
    other = client_for(is_supplier=False, is_buyer=True)
    for client in (buyer_client, other):
        tokens = token_allocation(supplier_client.organisation, client, started_hours_ago=2)
        usage_record_batch(organisation_id=supplier_client.organisation.pk, events=[
            UsageIn(f"e-{client.organisation.pk}", tokens.pk, timezone.now() - timedelta(hours=1), 0, 1_000_000, 0)])
    settlement.settle_pending_usage()
    next_month = (timezone.now().replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=30)
    # the first buyer issued one on demand at 00:05 on the 1st; the 00:30 run must still serve the other
    invoicing.invoice_issue(organisation_id=buyer_client.organisation.pk, now=next_month - timedelta(minutes=25))
    assert invoicing.invoices_issue_monthly(now=next_month) == 2  # the other buyer and the supplier
    assert Invoice.objects.filter(organisation=other.organisation, kind="invoice").count() == 1
    assert Invoice.objects.filter(organisation=buyer_client.organisation).count() == 1


def test_charge_filters_do_not_reveal_which_ids_exist(buyer_client, client_for):
    stranger = client_for(is_supplier=False, is_buyer=True)
    order = post_order(buyer_client)
    for order_id in (order.pk, 999999):
        response = stranger.get("/api/v1/charges", {"order": order_id})
        assert response.status_code == 200 and response.json()["results"] == []
