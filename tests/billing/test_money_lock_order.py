"""One lock order for money, on real PostgreSQL connections: node failures (settlement, credits
and releases for several buyers at once) race settlements of the same buyers' other work and
payouts of the same suppliers, many times over. Nothing deadlocks and the books balance."""
import logging
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from billing import invoicing, settlement
from billing.metering import UsageIn, usage_record_batch
from billing.models import Account, Charge, Hold, UsageEvent
from billing.services import LockOrderViolation
from config.errors import Conflict
from lifecycle import batch as lifecycle_batch, services as lifecycle
from marketplace import services as market
from marketplace.models import Allocation
from matching import services as matching

from tests.concurrency import race
from tests.conftest import KeyedClient
from tests.factories import NodeFactory, OrganisationFactory, make_listing
from tests.marketplace.helpers import tokens_body
from tests.matching.helpers import post_order

from .helpers import assert_books_balance, minutes_into

pytestmark = pytest.mark.django_db(transaction=True)

BUYERS = 3
ROUNDS = 8


def _client(organisation) -> KeyedClient:
    _, key = market.api_key_create(organisation=organisation, name="t")
    return KeyedClient(organisation, key)


def _scene():
    """Three buyers each rent 2 cards of one node for 3 hours, running 100 minutes in; each also
    buys tokens from a second supplier (the cheapest endpoint, maybe an earlier scene's) and has
    unsettled usage there."""
    supplier = OrganisationFactory(is_buyer=False)
    host = OrganisationFactory(is_buyer=False)
    buyers = [OrganisationFactory(is_supplier=False) for _ in range(BUYERS)]
    clients = [_client(b) for b in buyers]
    node = NodeFactory(organisation=supplier)
    listing = make_listing(node, hours=3, ask="10")
    first = listing.hours.order_by("hour").first().hour
    cards = []
    for client in clients:
        order = post_order(client, cards=2, duration_hours=3, window_hours=3, max_price_per_card_hour="12")
        cards.append(lifecycle.slots_reserve(order_id=order.pk, claims=[market.SlotClaim(listing.pk, 2)],
                                             start_hour=first, end_hour=first + 3, price_per_card_hour=Decimal("11")))
    make_listing(NodeFactory(organisation=host), token_endpoint=market.TokenEndpoint(
        "DeepSeek-V3", Decimal("0.5"), Decimal("2"), Decimal("8")))
    for client in clients:
        assert client.post("/api/v1/orders", tokens_body(), format="json").status_code == 201
    matching.round_run(bucket="tokens")
    tokens = list(Allocation.objects.filter(kind="tokens", order__organisation__in=buyers).order_by("pk"))
    assert len(tokens) == BUYERS
    for allocation in cards:
        lifecycle.allocation_start(organisation=supplier, allocation_id=allocation.pk,
                                   now=minutes_into(allocation, 0))
        for minute in (30, 60, 90, 99):
            lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk,
                                           now=minutes_into(allocation, minute))
    # An hour already settled and paid out would make the failure claw back from an empty payable.
    settlement.allocation_settle(allocation_id=cards[0].pk, now=minutes_into(cards[0], 61))
    for allocation in tokens:
        usage_record_batch(organisation_id=allocation.supplier_id, events=[
            UsageIn(f"u-{allocation.pk}-{i}", allocation.pk, timezone.now(), 0, 1_000_000, 0) for i in range(3)])
    return supplier, node, cards, tokens


def test_node_failures_race_settlements_and_payouts_of_the_same_parties_without_deadlock():
    for _ in range(ROUNDS):
        supplier, node, cards, tokens = _scene()
        failed_at = minutes_into(cards[0], 100)
        jobs = [lambda: lifecycle.node_fail(node_id=node.pk, reason="hung", now=failed_at)]
        jobs += [lambda pk=a.pk: settlement.allocation_settle(allocation_id=pk) for a in reversed(tokens)]
        jobs += [lambda pk=a.pk: settlement.allocation_settle(allocation_id=pk, now=failed_at) for a in cards]
        payees = sorted({supplier.pk, *(a.supplier_id for a in tokens)})
        jobs += [lambda org=org, n=n: invoicing.payout_create(organisation_id=org, reference=f"wire-{org}-{n}")
                 for org in payees for n in range(2)]
        outcomes = race(jobs)
        assert not [o for o in outcomes if isinstance(o, OperationalError)], outcomes  # no deadlock victim
        # a payout finding nothing owed (yet) is refused with a 409; nothing else fails
        unexpected = [o for o in outcomes if isinstance(o, Exception)
                      and not (isinstance(o, Conflict) and o.code == "nothing_to_pay")]
        assert not unexpected, unexpected
        # the failure settled every buyer on the node and closed their holds; tokens all settled
        assert not Hold.objects.filter(allocation__in=cards, status="pending").exists()
        assert Charge.objects.filter(allocation__in=tokens).count() == BUYERS
        assert_transfers_balance()
        assert_books_balance()


def assert_transfers_balance() -> None:
    """Every transfer's own entries sum to zero (what PostgreSQL's deferred trigger checked at
    each commit), and every committed transfer has entries."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT t.id FROM billing_transfer t LEFT JOIN billing_entry e ON e.transfer_id = t.id"
                       " GROUP BY t.id HAVING count(e.id) = 0 OR sum(e.amount) <> 0")
        assert cursor.fetchall() == []


def test_batch_sweeps_race_node_failures_settlements_and_payouts_without_deadlock(caplog):
    # given the same scene: card-hour work on one node, token usage elsewhere, suppliers paid out
    for _ in range(ROUNDS // 2):
        supplier, node, cards, tokens = _scene()
        failed_at = minutes_into(cards[0], 100)
        # when the set-based sweeps (two at once, as two beat workers might) race the node's failure,
        # one-by-one settlements and payouts of the same parties
        jobs = [lambda: lifecycle.node_fail(node_id=node.pk, reason="hung", now=failed_at)]
        jobs += [lambda: lifecycle_batch.settle_due_batched(now=failed_at) for _ in range(2)]
        jobs += [lambda: lifecycle_batch.token_usage_settle(allocation_ids=[a.pk for a in tokens])]
        jobs += [lambda pk=a.pk: settlement.allocation_settle(allocation_id=pk, now=failed_at) for a in cards]
        payees = sorted({supplier.pk, *(a.supplier_id for a in tokens)})
        jobs += [lambda org=org, n=n: invoicing.payout_create(organisation_id=org, reference=f"wire-{org}-{n}")
                 for org in payees for n in range(2)]
        with caplog.at_level(logging.ERROR):
            outcomes = race(jobs)
        # then nobody was a deadlock victim, nor hit a lock taken out of order
        assert not [o for o in outcomes if isinstance(o, (OperationalError, LockOrderViolation))], outcomes
        unexpected = [o for o in outcomes if isinstance(o, Exception)
                      and not (isinstance(o, Conflict) and o.code == "nothing_to_pay")]
        assert not unexpected, unexpected
        # (a sweep's per-allocation fallback logs what failed instead of raising)
        assert not [r for r in caplog.records if "left for the next run" in r.getMessage()], caplog.records
        # the failure closed every hold on the node; every token event is settled, each once
        assert not Hold.objects.filter(allocation__in=cards, status="pending").exists()
        assert not UsageEvent.objects.filter(allocation__in=tokens, settled=False).exists()
        assert Charge.objects.filter(allocation__in=tokens).count() == BUYERS
        assert_transfers_balance()
        assert_books_balance()
        # a supplier never holds a payable and a receivable at once (its earnings repaid it first)
        for org in payees:
            owed = Account.objects.filter(organisation_id=org, kind="supplier_receivable").first()
            payable = Account.objects.filter(organisation_id=org, kind="supplier_payable").first()
            assert owed is None or payable is None or owed.balance == 0 or payable.balance == 0
