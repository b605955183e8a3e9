"""Settlement under concurrency, on real PostgreSQL connections: racing settlements, duplicate
event deliveries, meter heartbeats, matching rounds and cancellations never charge twice, lose
usage, deadlock or unbalance the books."""
from decimal import Decimal

import pytest
from django.db import OperationalError
from django.db.models import Sum
from django.utils import timezone

from billing import settlement
from billing.metering import UsageIn, usage_record_batch
from billing.models import Charge, Hold, UsageEvent
from billing.settlement import commission_rate
from marketplace import services as market
from marketplace.models import Order
from matching import services as matching
from lifecycle import services as lifecycle

from tests.concurrency import race
from tests.factories import NodeFactory, OrganisationFactory, make_listing
from tests.matching.helpers import post_order

from .helpers import assert_books_balance, balance, card_hour_allocation, minutes_into, token_allocation

pytestmark = pytest.mark.django_db(transaction=True)


def test_racing_settlements_and_duplicate_deliveries_charge_every_event_exactly_once(client_for):
    supplier = OrganisationFactory(is_supplier=True, is_buyer=False)
    buyer_client = client_for(is_supplier=False, is_buyer=True)
    tokens = token_allocation(supplier, buyer_client)
    now = timezone.now()
    # 6 deliveries of overlapping batches (each event id sent 3 times) racing 6 settlements
    batches = [[UsageIn(f"e-{i}", tokens.pk, now, 1_000, 2_000 + i, 500) for i in range(k * 10, k * 10 + 30)]
               for k in range(6)]
    jobs = [lambda b=b: usage_record_batch(organisation_id=supplier.pk, events=b, now=now) for b in batches]
    jobs += [lambda: settlement.allocation_settle(allocation_id=tokens.pk) for _ in range(6)]
    outcomes = race(jobs)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    settlement.allocation_settle(allocation_id=tokens.pk)  # whatever arrived after the last racer

    # every distinct event is stored once and settled once, by exactly one transfer
    events = UsageEvent.objects.filter(allocation=tokens)
    assert events.count() == 80 and not events.filter(settled=False).exists()
    assert not events.filter(settled_transfer__isnull=True).exists()
    created = sum(r["status"] == "created" for o in outcomes[:6] for r in o)
    assert created == 80
    total = events.aggregate(s=Sum("amount"))["s"]
    charges = Charge.objects.filter(allocation=tokens)
    assert charges.aggregate(s=Sum("amount"))["s"] == total  # nothing charged twice, nothing lost
    fee = charges.aggregate(s=Sum("commission"))["s"]
    assert balance(supplier.pk, "supplier_payable") == total - fee
    assert fee == sum((Decimal(c.amount) * commission_rate()).quantize(Decimal("1e-12")) for c in charges)
    assert_books_balance()


def test_racing_heartbeats_settlements_and_stop_bill_each_minute_once():
    supplier = OrganisationFactory(is_supplier=True, is_buyer=False)
    buyer = OrganisationFactory(is_supplier=False, is_buyer=True)
    from tests.conftest import KeyedClient

    _, key = market.api_key_create(organisation=buyer, name="t")
    allocation = card_hour_allocation(supplier, KeyedClient(buyer, key), cards=4, hours=2, bid="12", ask="12")
    lifecycle.allocation_start(organisation=supplier, allocation_id=allocation.pk, now=minutes_into(allocation, 0))
    for minute in range(1, 60):
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk,
                                       now=minutes_into(allocation, minute))
    at = minutes_into(allocation, 60)
    jobs = [lambda: settlement.allocation_settle(allocation_id=allocation.pk, now=at) for _ in range(5)]
    jobs += [lambda: lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk, now=at)
             for _ in range(3)]
    jobs += [lambda: lifecycle.allocation_stop(organisation=supplier, allocation_id=allocation.pk, now=at)
             for _ in range(2)]
    outcomes = race(jobs)
    # a heartbeat that lost the race to the stop is refused (not running); nothing else fails
    unexpected = [o for o in outcomes if isinstance(o, Exception) and "not running" not in str(o)]
    assert not unexpected, unexpected
    # 60 minutes x 4 cards x 12 / 60 = 48, charged once, and the hold (12 x 4 x 2 = 96) closed
    assert Charge.objects.filter(allocation=allocation).aggregate(s=Sum("amount"))["s"] == Decimal("48")
    hold = Hold.objects.get(allocation=allocation)
    assert hold.status == "posted" and hold.posted_amount == Decimal("48")
    assert balance(buyer.pk, "buyer_held") == 0
    assert_books_balance()


def test_rounds_cancellations_and_settlements_of_one_buyer_race_without_deadlock():
    # One buyer's money is touched by two matching rounds (holds), cancellations (releases) and
    # settlement of its token usage at once: every path locks ledger accounts in one order.
    supplier = OrganisationFactory(is_supplier=True, is_buyer=False)
    buyer = OrganisationFactory(is_supplier=False, is_buyer=True, funds=2000)
    from tests.conftest import KeyedClient

    _, key = market.api_key_create(organisation=buyer, name="t")
    client = KeyedClient(buyer, key)
    for _ in range(4):
        make_listing(NodeFactory(organisation=supplier), ask="9")
    tokens = token_allocation(supplier, client)
    usage_record_batch(organisation_id=supplier.pk, events=[
        UsageIn(f"u-{i}", tokens.pk, timezone.now(), 0, 1_000_000, 0) for i in range(20)])
    orders = [post_order(client) for _ in range(8)]  # each holds 150 when matched
    matching.round_run(bucket="*:*")
    matched = list(Order.objects.filter(pk__in=[o.pk for o in orders], status="matched").values_list("pk", flat=True))
    more = [post_order(client) for _ in range(4)]
    jobs = [lambda: matching.round_run(bucket="nvidia:*"), lambda: matching.round_run(bucket="*:*")]
    jobs += [lambda pk=pk: lifecycle.order_cancel(organisation=buyer, order_id=pk) for pk in matched[:4]]
    jobs += [lambda: settlement.allocation_settle(allocation_id=tokens.pk) for _ in range(3)]
    outcomes = race(jobs)
    assert not [o for o in outcomes if isinstance(o, OperationalError)], outcomes  # no deadlock victim
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    # every live allocation holds exactly its maximum; cancelled ones hold nothing
    pending = Hold.objects.filter(status="pending")
    assert balance(buyer.pk, "buyer_held") == sum(h.amount - h.posted_amount for h in pending)
    assert all(h.allocation.status in ("confirmed", "pending_review") for h in pending.exclude(
        allocation__kind="tokens"))
    assert Order.objects.filter(pk__in=matched[:4], status="cancelled").count() == 4
    assert not Hold.objects.filter(allocation__order_id__in=matched[:4], status="pending").exists()
    assert UsageEvent.objects.filter(settled=True).count() == 20
    assert Order.objects.filter(pk__in=[o.pk for o in more]).exists()
    assert_books_balance()


def test_refunds_payouts_and_invoices_race_settlement_without_deadlock(client_for):
    from billing import invoicing
    from billing.models import Transfer

    supplier = OrganisationFactory(is_supplier=True, is_buyer=False)
    buyer_client = client_for(is_supplier=False, is_buyer=True)
    tokens = token_allocation(supplier, buyer_client)
    usage_record_batch(organisation_id=supplier.pk, events=[
        UsageIn(f"a-{i}", tokens.pk, timezone.now(), 0, 1_000_000, 0) for i in range(5)])
    settlement.allocation_settle(allocation_id=tokens.pk)
    charge = Charge.objects.get(allocation=tokens)  # 5 x 2 = 10 CNY of cache-miss input
    usage_record_batch(organisation_id=supplier.pk, events=[
        UsageIn(f"b-{i}", tokens.pk, timezone.now(), 0, 1_000_000, 0) for i in range(5)])
    jobs = [lambda i=i: invoicing.charge_refund(charge_id=charge.pk, amount=Decimal("1"), reason="slow",
                                                reference=f"r-{i}") for i in range(3)]
    jobs += [lambda: settlement.allocation_settle(allocation_id=tokens.pk) for _ in range(3)]
    jobs += [lambda: invoicing.invoice_issue(organisation_id=buyer_client.organisation.pk)]
    jobs += [lambda: invoicing.payout_create(organisation_id=supplier.pk, reference="wire-1") for _ in range(3)]
    outcomes = race(jobs)
    assert not [o for o in outcomes if isinstance(o, OperationalError)], outcomes  # no deadlock victim
    # nothing fails: a refund that comes after the payout takes the supplier's share from what its
    # payable still holds and books the rest as its receivable; payouts answer one transfer
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert not errors, errors
    assert len({o.pk for o in outcomes[7:]}) == 1 and Transfer.objects.filter(kind="payout").count() == 1
    assert Charge.objects.filter(kind="refund").count() == 3
    assert not UsageEvent.objects.filter(settled=False).exists()
    assert_books_balance()
