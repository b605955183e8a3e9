"""Marketplace reads. Every queryset is scoped to the caller's organisation; a lookup outside it
raises ``NotFound`` (the API answers 404, never 403, for another organisation's objects)."""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection
from django.db.models import Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from config.errors import NotFound
from matching.engine.calendar import earliest_run
from matching.engine.geo import region_allows

from .demand import (CardHoursDemand, TokensDemand, region_info, region_rule, regions_by_id, resolve_card_hours,
                     resolve_tokens)
from .hours import current_hour_index, hour_index, hour_start
from .models import Allocation, ApiKey, Listing, ListingHour, Node, Order, Organisation, Region, RelatedParty

MILLION = Decimal(1_000_000)


def related_parties(*, organisation_ids) -> frozenset[tuple[int, int]]:
    """Every related-party pair touching these organisations, in both directions (a platform
    read: matching uses it to keep related organisations from trading with each other)."""
    ids = list(set(organisation_ids))
    pairs = RelatedParty.objects.filter(Q(organisation_a__in=ids) | Q(organisation_b__in=ids)).values_list(
        "organisation_a_id", "organisation_b_id")
    return frozenset(p for a, b in pairs for p in ((a, b), (b, a)))


def trade_barred(*, buyer_id: int, supplier_id: int, related: frozenset[tuple[int, int]]) -> bool:
    """An organisation never trades with itself, nor with one an admin marked as related."""
    return buyer_id == supplier_id or (buyer_id, supplier_id) in related


def api_key_list(*, organisation: Organisation) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organisation=organisation)


def node_list(*, organisation: Organisation) -> QuerySet[Node]:
    return Node.objects.filter(organisation=organisation).select_related("chip", "region")


def node_get(*, organisation: Organisation, node_id: int) -> Node:
    return _get(node_list(organisation=organisation), node_id, "node")


def listing_list(*, organisation: Organisation) -> QuerySet[Listing]:
    """With ``offered_card_hours`` and ``sold_card_hours`` summed in the same query."""
    return (Listing.objects.filter(organisation=organisation).select_related("node", "node__chip", "token_model")
            .annotate(offered_card_hours=Coalesce(Sum("hours__cards_offered"), 0),
                      sold_card_hours=Coalesce(Sum("hours__cards_sold"), 0)))


def listing_get(*, organisation: Organisation, listing_id: int) -> Listing:
    return _get(listing_list(organisation=organisation), listing_id, "listing")


def order_list(*, organisation: Organisation) -> QuerySet[Order]:
    return (Order.objects.filter(organisation=organisation)
            .select_related("fit_model", "token_model")
            .prefetch_related("chip_options__chip", "allowed_regions"))


def order_get(*, organisation: Organisation, order_id: int) -> Order:
    return _get(order_list(organisation=organisation), order_id, "order")


def allocation_list(*, organisation: Organisation) -> QuerySet[Allocation]:
    """Allocations the organisation bought or supplies."""
    return (Allocation.objects.filter(Q(order__organisation=organisation) | Q(supplier=organisation))
            .select_related("order", "supplier").prefetch_related("parts__node"))


def allocation_get(*, organisation: Organisation, allocation_id: int) -> Allocation:
    return _get(allocation_list(organisation=organisation), allocation_id, "allocation")


def listing_card_hours(*, listing: Listing) -> dict[str, int]:
    """Offered and sold card-hours: the list annotation when present, else one aggregate query."""
    if hasattr(listing, "offered_card_hours"):
        return {"offered": listing.offered_card_hours, "sold": listing.sold_card_hours}
    totals = ListingHour.objects.filter(listing=listing).aggregate(offered=Coalesce(Sum("cards_offered"), 0),
                                                                   sold=Coalesce(Sum("cards_sold"), 0))
    return {"offered": totals["offered"], "sold": totals["sold"]}


def _get(queryset: QuerySet, pk: int, noun: str):
    obj = queryset.filter(pk=pk).first()
    if obj is None:
        raise NotFound(f"No such {noun}.")
    return obj


# --- quotes ---------------------------------------------------------------------------------------

@dataclass
class _Offer:
    chip: str
    region: str
    ask: Decimal
    cards: int
    start_hour: int
    nodes: int


def quote_card_hours(*, organisation: Organisation, demand: CardHoursDemand) -> dict:
    """What the market offers for this demand right now, without creating anything.

    An offer is one placement that meets every hard constraint (chip fit with that chip's card
    count, interconnect, region, a contiguous run of free slots in the window, the listing's
    minimum rental). It is *feasible* when its ask is also within the buyer's limit.
    """
    resolved = resolve_card_hours(demand, organisation=organisation)
    by_id = regions_by_id()
    rule = region_rule(policy=demand.region.policy, allowed_codes=[r.code for r in resolved.regions],
                       home_region_id=organisation.home_region_id, by_id=by_id, lat=demand.region.lat, lon=demand.region.lon,
                       radius_km=demand.region.radius_km)
    cards_for_chip = {o.chip.pk: o.cards for o in resolved.options}
    first = max(hour_index(demand.earliest_start), current_hour_index(timezone.now()) + 1)
    last = hour_index(demand.latest_end)
    duration = demand.duration_hours

    listings = list(Listing.objects.filter(
        status=Listing.Status.ACTIVE, token_model__isnull=True, node__status=Node.Status.ACTIVE,
        node__chip_id__in=cards_for_chip.keys(), min_hours__lte=duration,
        start__lt=hour_start(last), end__gt=hour_start(first),
    ).select_related("node", "node__chip"))
    if demand.interconnects:
        listings = [l for l in listings if l.node.interconnect in demand.interconnects]
    listings = [l for l in listings if region_allows(rule, region_info(by_id[l.node.region_id], by_id))]

    free: dict[int, dict[int, int]] = defaultdict(dict)
    if demand.placement != "single_node":
        for listing_id, hour, offered, sold in ListingHour.objects.filter(
                listing_id__in=[l.pk for l in listings if l.node.fabric_id], hour__gte=first, hour__lt=last
        ).values_list("listing_id", "hour", "cards_offered", "cards_sold"):
            free[listing_id][hour] = offered - sold

    def free_series(listing: Listing) -> list[int]:
        hours = free.get(listing.pk, {})
        return [hours.get(h, 0) for h in range(first, last)]

    offers: list[_Offer] = []
    if demand.placement == "single_node":
        needs = {l.pk: cards_for_chip[l.node.chip_id] for l in listings
                 if cards_for_chip[l.node.chip_id] >= l.min_cards}
        starts = earliest_runs(needs=needs, first=first, last=last, duration=duration)
        for listing in listings:
            if listing.pk in starts:
                offers.append(_Offer(listing.node.chip.code, by_id[listing.node.region_id].code,
                                     listing.ask_per_card_hour, needs[listing.pk], starts[listing.pk], 1))
    else:
        groups: dict[tuple, list[Listing]] = defaultdict(list)
        for listing in listings:
            if listing.node.fabric_id:
                groups[(listing.organisation_id, listing.node.fabric_id, listing.node.chip_id)].append(listing)
        for (_, _, chip_id), members in groups.items():
            offer = _fabric_offer(members, cards_for_chip[chip_id], duration, free_series, first, by_id)
            if offer is not None:
                offers.append(offer)

    limit = demand.max_price_per_card_hour
    feasible = [o for o in offers if o.ask <= limit]
    best = min(feasible or offers, key=lambda o: (o.ask, o.start_hour), default=None)
    return {
        "kind": "card_hours",
        "offers": len(offers),
        "feasible_offers": len(feasible),
        "best_price": best.ask if best else None,
        "best_offer": None if best is None else {
            "chip": best.chip, "region": best.region, "ask_per_card_hour": best.ask, "cards": best.cards,
            "start": hour_start(best.start_hour), "nodes": best.nodes,
            "estimated_cost": best.ask * best.cards * duration, "within_limit": best.ask <= limit,
        },
        "chip_options": [{"chip": o.chip.code, "cards": o.cards} for o in resolved.options],
        "memory_needed_gb": resolved.needed_gb,
        "depth": _depth(offers, lambda o: o.ask, lambda o: o.cards * duration, "card_hours"),
    }


_EARLIEST_RUNS = """
SELECT listing_id, min(island_start) FROM (
    SELECT listing_id, min(hour) AS island_start FROM (
        SELECT lh.listing_id, lh.hour,
               lh.hour - row_number() OVER (PARTITION BY lh.listing_id ORDER BY lh.hour) AS island
        FROM marketplace_listinghour lh
        JOIN unnest(%s::bigint[], %s::int[]) AS need(listing_id, cards) ON need.listing_id = lh.listing_id
        WHERE lh.hour >= %s AND lh.hour < %s AND lh.cards_offered - lh.cards_sold >= need.cards
    ) free GROUP BY listing_id, island HAVING count(*) >= %s
) runs GROUP BY listing_id
"""


def earliest_runs(*, needs: dict[int, int], first: int, last: int, duration: int) -> dict[int, int]:
    """For each listing id in ``needs`` (listing -> cards needed), the first hour in
    ``[first, last)`` that starts ``duration`` consecutive hours with that many cards free.

    Set-based on PostgreSQL (gaps and islands over the ``(listing, hour)`` index: the calendar
    rows never come into Python); elsewhere the rows are read and scanned with ``earliest_run``.
    """
    if not needs or last - first < duration:
        return {}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_EARLIEST_RUNS, [list(needs), list(needs.values()), first, last, duration])
            return dict(cursor.fetchall())
    free: dict[int, dict[int, int]] = defaultdict(dict)
    for listing_id, hour, offered, sold in ListingHour.objects.filter(
            listing_id__in=list(needs), hour__gte=first, hour__lt=last
    ).values_list("listing_id", "hour", "cards_offered", "cards_sold"):
        free[listing_id][hour] = offered - sold
    starts = {}
    for listing_id, need in needs.items():
        hours = free.get(listing_id, {})
        start = earliest_run([hours.get(h, 0) for h in range(first, last)], duration, need)
        if start is not None:
            starts[listing_id] = first + start
    return starts


def sliding_min(values: list[int], width: int) -> list[int]:
    """``[min(values[i:i + width]) for i in range(len(values) - width + 1)]`` in linear time
    (a monotonic deque of candidate indexes)."""
    out: list[int] = []
    candidates: deque[int] = deque()
    for i, value in enumerate(values):
        while candidates and values[candidates[-1]] >= value:
            candidates.pop()
        candidates.append(i)
        if candidates[0] <= i - width:
            candidates.popleft()
        if i >= width - 1:
            out.append(values[candidates[0]])
    return out


def _fabric_offer(members: list[Listing], need: int, duration: int, free_series, first: int,
                  by_id: dict[int, Region]) -> _Offer | None:
    """Cheapest-first fill of one fabric: add nodes until their common free cards cover ``need``."""
    members = sorted(members, key=lambda l: (l.ask_per_card_hour, l.pk))
    # free cards of each member over every window of ``duration`` hours, in one pass per member
    window_mins = [sliding_min(free_series(l), duration) for l in members]
    for start in range(len(window_mins[0]) if window_mins else 0):
        remaining, used, ask = need, 0, Decimal(0)
        for listing, mins in zip(members, window_mins):
            take = min(mins[start], remaining)
            if take >= max(1, listing.min_cards):
                remaining -= take
                used += 1
                ask = max(ask, listing.ask_per_card_hour)
            if remaining == 0:
                lead = members[0]
                return _Offer(lead.node.chip.code, by_id[lead.node.region_id].code, ask, need, first + start, used)
    return None


def _depth(offers, price_of, quantity_of, unit: str) -> list[dict]:
    """Price depth per (chip, region): how much is offered at each price level, cheapest first."""
    buckets: dict[tuple[str, str], dict[Decimal, int]] = defaultdict(lambda: defaultdict(int))
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for o in offers:
        buckets[(o.chip, o.region)][price_of(o)] += quantity_of(o)
        counts[(o.chip, o.region)] += 1
    out = []
    for (chip, region), levels in sorted(buckets.items(), key=lambda kv: (min(kv[1]), kv[0])):
        out.append({
            "chip": chip, "region": region, "offers": counts[(chip, region)], "best_price": min(levels),
            "levels": [{"price": p, unit: q} for p, q in sorted(levels.items())],
        })
    return out


@dataclass
class _TokenOffer:
    chip: str
    region: str
    listing_id: int
    price_input_hit_per_m: Decimal
    price_input_miss_per_m: Decimal
    price_output_per_m: Decimal
    expected_cost: Decimal


def quote_tokens(*, organisation: Organisation, demand: TokensDemand) -> dict:
    model, regions = resolve_tokens(demand, organisation=organisation)
    by_id = regions_by_id()
    rule = region_rule(policy=demand.region.policy, allowed_codes=[r.code for r in regions],
                       home_region_id=organisation.home_region_id, by_id=by_id, lat=demand.region.lat, lon=demand.region.lon, radius_km=demand.region.radius_km)
    now = timezone.now()
    hit = Decimal(demand.expected_input_tokens) * demand.expected_cache_hit_ratio
    miss = Decimal(demand.expected_input_tokens) - hit
    out_tokens = Decimal(demand.expected_output_tokens)
    offers = []
    for listing in Listing.objects.filter(status=Listing.Status.ACTIVE, token_model=model,
                                          node__status=Node.Status.ACTIVE, end__gt=now).select_related("node__chip"):
        if not region_allows(rule, region_info(by_id[listing.node.region_id], by_id)):
            continue
        cost = (hit * listing.price_input_hit_per_m + miss * listing.price_input_miss_per_m
                + out_tokens * listing.price_output_per_m) / MILLION
        offers.append(_TokenOffer(listing.node.chip.code, by_id[listing.node.region_id].code, listing.pk,
                                  listing.price_input_hit_per_m, listing.price_input_miss_per_m,
                                  listing.price_output_per_m, cost))
    feasible = [o for o in offers if o.price_input_hit_per_m <= demand.max_price_input_hit_per_m
                and o.price_input_miss_per_m <= demand.max_price_input_miss_per_m
                and o.price_output_per_m <= demand.max_price_output_per_m]
    best = min(feasible or offers, key=lambda o: (o.expected_cost, o.listing_id), default=None)
    return {
        "kind": "tokens",
        "offers": len(offers),
        "feasible_offers": len(feasible),
        "best_price": None if best is None else {
            "input_hit_per_m": best.price_input_hit_per_m, "input_miss_per_m": best.price_input_miss_per_m,
            "output_per_m": best.price_output_per_m},
        "best_offer": None if best is None else {
            "chip": best.chip, "region": best.region, "estimated_cost": best.expected_cost.quantize(Decimal("0.000001")),
            "within_limit": best in feasible},
        "depth": _depth(offers, lambda o: o.price_output_per_m, lambda o: 1, "endpoints"),
    }
