from datetime import timedelta
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone

from billing.models import Account, Entry
from marketplace import services as market
from marketplace.hours import hour_start
from marketplace.models import Allocation
from matching import services as matching

from tests.factories import NodeFactory, make_listing
from tests.marketplace.helpers import tokens_body
from tests.matching.helpers import post_order


def card_hour_allocation(supplier, buyer_client, *, cards=8, hours=3, bid="12.5", ask="10") -> Allocation:
    """One matched card-hour allocation: ``cards`` on one node for exactly ``hours`` from the
    next hour (the order's window is that long), at the round's uniform price."""
    node = NodeFactory(organisation=supplier, card_count=cards)
    make_listing(node, hours=hours, ask=ask)
    order = post_order(buyer_client, cards=cards, duration_hours=hours, window_hours=hours,
                       max_price_per_card_hour=bid)
    matching.round_run(bucket="*:*")
    return Allocation.objects.get(order=order, status="confirmed")


def token_allocation(supplier, buyer_client, *, started_hours_ago: int = 0, tokens_per_minute: int = 10**9,
                     **order_overrides) -> Allocation:
    """One token allocation on a DeepSeek-V3 endpoint priced 0.5 / 2 / 8 CNY per million, serving
    ``tokens_per_minute``; live from the start of the current hour, or ``started_hours_ago``."""
    node = NodeFactory(organisation=supplier)
    make_listing(node, token_endpoint=market.TokenEndpoint("DeepSeek-V3", Decimal("0.5"), Decimal("2"), Decimal("8"),
                                                           tokens_per_minute=tokens_per_minute))
    response = buyer_client.post("/api/v1/orders", tokens_body(**order_overrides), format="json")
    assert response.status_code == 201, response.content
    matching.round_run(bucket="tokens")
    allocation = Allocation.objects.get(order_id=response.json()["id"], kind="tokens")
    if started_hours_ago:
        Allocation.objects.filter(pk=allocation.pk).update(start_hour=allocation.start_hour - started_hours_ago)
        allocation.refresh_from_db()
    return allocation


def minutes_into(allocation: Allocation, minutes: float):
    return hour_start(allocation.start_hour) + timedelta(minutes=minutes)


def balance(organisation_id, kind) -> Decimal:
    account = Account.objects.filter(organisation_id=organisation_id, kind=kind).first()
    return account.balance if account else Decimal(0)


def platform_balance(kind) -> Decimal:
    return balance(None, kind)


def assert_books_balance() -> None:
    """The ledger's invariants: entries sum to zero per currency; every balance is the sum of its
    entries; no account that forbids overdraft is negative."""
    for currency in Account.objects.values_list("currency", flat=True).distinct():
        assert (Entry.objects.filter(account__currency=currency).aggregate(s=Sum("amount"))["s"] or 0) == 0
    for account in Account.objects.all():
        assert account.balance == (account.entries.aggregate(s=Sum("amount"))["s"] or 0), account
        assert account.allow_negative or account.balance >= 0, account


OCCURRED = timezone.now().replace(microsecond=0) - timedelta(minutes=1)


_OCCURRED_FOR: dict[int, object] = {}


def occurred_for(allocation: Allocation):
    """A fixed moment inside the allocation's live period: ``OCCURRED`` (taken when the tests were
    imported), or, when the run has crossed into a later hour since then (earlier usage would
    rightly be refused as ``out_of_period``), a minute before the first time it is asked for, but
    never before the allocation's start (in an hour's first minute that would be the hour before).
    Remembered per allocation, so a redelivered event is the same event."""
    if allocation.pk not in _OCCURRED_FOR:
        moment = OCCURRED
        if moment < hour_start(allocation.start_hour):
            moment = max(timezone.now().replace(microsecond=0) - timedelta(minutes=1),
                         hour_start(allocation.start_hour))
        _OCCURRED_FOR[allocation.pk] = moment
    return _OCCURRED_FOR[allocation.pk]


def usage_event_body(allocation, /, event_id="e-1", **overrides) -> dict:
    """A usage event as a supplier posts it: 3M input on cache hit, 7M on miss, 2.5M output."""
    body = {"event_id": event_id, "allocation": allocation.pk, "occurred_at": occurred_for(allocation).isoformat(),
            "input_hit_tokens": 3_000_000, "input_miss_tokens": 7_000_000, "output_tokens": 2_500_000}
    body.update(overrides)
    return body
