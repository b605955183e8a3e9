"""What the operators' dashboard shows (platform-wide reads, for staff only)."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, F, Min, Sum

from marketplace.hours import current_hour_index, hour_start
from marketplace.models import Allocation, ListingHour, Order, OrderChipOption
from matching.models import MatchReview, NodeFailure


def book_depth(*, now: datetime, hours_ahead: int = 24) -> list[dict]:
    """Per chip and hub: free card-hours on sale over the next ``hours_ahead`` hours and the best
    ask, against open card-hour demand (card-hours wanted, best bid)."""
    first = current_hour_index(now) + 1
    supply = (ListingHour.objects.filter(hour__gte=first, hour__lt=first + hours_ahead, listing__status="active",
                                         listing__token_model__isnull=True, node__status="active")
              .values("node__chip__code", "node__region__hub")
              .annotate(offered=Sum("cards_offered"), sold=Sum("cards_sold"), ask=Min("listing__ask_per_card_hour")))
    rows: dict[tuple, dict] = {}
    for s in supply:
        key = (s["node__chip__code"], s["node__region__hub"] or "—")
        rows[key] = {"chip": key[0], "hub": key[1], "free": s["offered"] - s["sold"], "best_ask": s["ask"],
                     "wanted": 0, "best_bid": None}
    demand = defaultdict(lambda: [0, None])
    for chip, cards, hours, bid in OrderChipOption.objects.filter(
            order__status=Order.Status.OPEN, order__kind=Order.Kind.CARD_HOURS).values_list(
            "chip__code", "cards", "order__duration_hours", "order__max_price_per_card_hour"):
        demand[chip][0] += cards * (hours or 0)
        demand[chip][1] = max(demand[chip][1] or Decimal(0), bid)
    for chip, (wanted, bid) in demand.items():
        matching = [r for r in rows.values() if r["chip"] == chip] or [rows.setdefault(
            (chip, "—"), {"chip": chip, "hub": "—", "free": 0, "best_ask": None, "wanted": 0, "best_bid": None})]
        for row in matching:
            row["wanted"], row["best_bid"] = wanted, bid
    return sorted(rows.values(), key=lambda r: (r["chip"], r["hub"]))


def utilisation_by_hour(*, now: datetime, before: int = 48, after: int = 24) -> list[tuple[datetime, float]]:
    """Share of listed card-hours sold, hour by hour, around now."""
    here = current_hour_index(now)
    rows = (ListingHour.objects.filter(hour__gte=here - before, hour__lt=here + after)
            .values_list("hour").annotate(o=Sum("cards_offered"), s=Sum("cards_sold")).order_by("hour"))
    return [(hour_start(h), s / o if o else 0.0) for h, o, s in rows]


def clearing_prices(*, limit: int = 2000) -> list[tuple[str, Decimal, int]]:
    """Card-hour-weighted average price per chip over the newest ``limit`` card-hour allocations."""
    recent = (Allocation.objects.filter(kind=Order.Kind.CARD_HOURS).exclude(status="released").order_by("-pk")
              .values_list("parts__node__chip__code", "price_per_card_hour", "cards", "start_hour", "end_hour")[:limit])
    num, den = defaultdict(Decimal), defaultdict(int)
    for chip, price, cards, start, end in recent:
        num[chip] += price * cards * (end - start)
        den[chip] += cards * (end - start)
    return sorted(((chip, (num[chip] / den[chip]).quantize(Decimal("0.01")), den[chip]) for chip in den),
                  key=lambda t: t[1])


def pending_reviews(*, limit: int = 50):
    return (MatchReview.objects.filter(status=MatchReview.Status.PENDING)
            .select_related("allocation__order__organisation", "allocation__supplier")
            .annotate(hours=F("allocation__end_hour") - F("allocation__start_hour")).order_by("pk")[:limit])


def recent_failures(*, limit: int = 10):
    return (NodeFailure.objects.select_related("node__organisation", "node__chip")
            .annotate(allocations=Count("impacts")).order_by("-pk")[:limit])
