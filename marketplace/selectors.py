"""Marketplace reads. Every queryset is scoped to the caller's organisation; a lookup outside it
raises ``NotFound`` (the API answers 404, never 403, for another organisation's objects)."""
from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
from django.db import connection, transaction
from django.db.models import IntegerField, Q, QuerySet, Sum
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone

from config.errors import NotFound
from matching.engine.geo import region_allows

from .demand import (CardHoursDemand, Catalogue, ResolvedCardHours, TokensDemand, catalogue_load, region_info,
                     region_rule, regions_by_id, resolve_card_hours, resolve_tokens)
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


def trades_barred(*, buyer_ids: np.ndarray, supplier_ids: np.ndarray,
                  related: frozenset[tuple[int, int]]) -> np.ndarray:
    """``trade_barred`` for many pairs at once (a round checks tens of thousands). Related pairs
    are the few an admin marked among these buyers, so each is compared against every pair."""
    barred = buyer_ids == supplier_ids
    for buyer_id, supplier_id in related:
        barred |= (buyer_ids == buyer_id) & (supplier_ids == supplier_id)
    return barred


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


@dataclass(frozen=True)
class _Supply:
    """One active card-hour listing as plain data: what a quote needs of it and of its node."""
    listing_id: int
    organisation_id: int
    ask: Decimal
    cards: int
    min_cards: int
    min_hours: int
    start_hour: int
    end_hour: int
    chip_id: int
    region_id: int
    interconnect: str
    fabric_id: str


@dataclass(frozen=True)
class CardHourMarket:
    """The card-hour supply over hours ``[first, last)``, read once for one or many quotes.

    ``listings`` are the active card-hour listings on active nodes overlapping the window, newest
    first (the order quotes have always listed them in). ``sold`` holds, per listing, the runs of
    hours with some cards sold as ``(from_hour, to_hour, free_cards)``, sorted: every other hour of
    an active listing's ``[start, end)`` has all its ``cards`` free (``ListingHour``'s contract), so
    the free calendar never needs the unsold rows.

    ``min_duration``: the market answers demands of at least this many hours. Above 1 the sold
    runs may be coarsened (``_sold_runs_around``): hours that no free run of ``min_duration``
    hours crosses may be given as a run with no card free. Every run of that many hours or more
    then has the same least free cards as on the true calendar, which is all a quote reads.

    ``sold`` is None when the market was loaded without its sold runs (``card_hour_market_load``'s
    ``sold``): each quote on it reads those it needs, chunk by chunk of its window
    (``_first_fits``), for the listings it still searches.
    """
    first: int
    last: int
    listings: list[_Supply]
    sold: dict[int, list[tuple[int, int, int]]] | None
    catalogue: Catalogue
    by_id: dict[int, Region]
    by_ask: list[_Supply]  # the same listings, cheapest first
    min_duration: int = 1

    def covers(self, first: int, last: int, duration: int) -> bool:
        """Whether quotes of ``duration`` hours within ``[first, last)`` can be read off it."""
        return self.first <= first and last <= self.last and (self.sold is None or duration >= self.min_duration)


# The sold hours are ``marketplace_listinghoursold``: every listing-hour with a card sold, with
# its free cards, kept by triggers on the calendar (migration 0011); ``free = 0`` is fully sold.
_SOLD_RUNS = """
SELECT listing_id, free, min(hour), max(hour) + 1 FROM (
    SELECT listing_id, hour, free, hour - row_number() OVER (PARTITION BY listing_id, free ORDER BY hour) AS run
    FROM marketplace_listinghoursold
    WHERE listing_id = ANY(%s) AND hour >= %s AND hour < %s
) sold GROUP BY listing_id, free, run
"""

# A demand of at least LATTICE_MIN_HOURS hours whose window holds at most LATTICE_MAX_POINTS of
# them per listing reads the sold hours around a lattice of points (``_sold_runs_around``) rather
# than every sold hour of the window: on a book a third sold, a 1,000-hour window holds hundreds
# of thousands of sold rows, and a long run needs only a few of them. Below these, reading the
# window's sold rows is as cheap as probing around points.
LATTICE_MIN_HOURS = 24
LATTICE_MAX_POINTS = 8

# The nearest fully sold hour at or before / at or after each point, within `duration` hours of
# it (the partial index of fully sold hours, newest or oldest first; a few rows read per point).
_FULL_AROUND = """
SELECT p.listing_id, p.at,
       (SELECT h.hour FROM marketplace_listinghoursold h
        WHERE h.listing_id = p.listing_id AND h.free = 0
          AND h.hour <= p.at AND h.hour > p.at - %(duration)s ORDER BY h.hour DESC LIMIT 1),
       (SELECT h.hour FROM marketplace_listinghoursold h
        WHERE h.listing_id = p.listing_id AND h.free = 0
          AND h.hour >= p.at AND h.hour < p.at + %(duration)s ORDER BY h.hour LIMIT 1)
FROM unnest(%(listings)s::bigint[], %(points)s::int[]) AS p(listing_id, at)
"""

_SOLD_RUNS_IN = """
SELECT listing_id, free, min(hour), max(hour) + 1 FROM (
    SELECT h.listing_id, h.hour, h.free,
           h.hour - row_number() OVER (PARTITION BY h.listing_id, h.free ORDER BY h.hour) AS run
    FROM unnest(%s::bigint[], %s::int[], %s::int[]) AS r(listing_id, lo, hi)
    JOIN marketplace_listinghoursold h ON h.listing_id = r.listing_id AND h.hour >= r.lo AND h.hour < r.hi
) sold GROUP BY listing_id, free, run
"""


# hour_index() of a listing's bounds, in SQL
_HOUR_OF_START = RawSQL('floor(extract(epoch FROM "marketplace_listing"."start") / 3600)::integer', (),
                        output_field=IntegerField())
_HOUR_OF_END = RawSQL('floor(extract(epoch FROM "marketplace_listing"."end") / 3600)::integer', (),
                      output_field=IntegerField())


def card_hour_market_load(*, first: int, last: int, chip_ids=None, region_ids=None, interconnects=None,
                          max_min_hours: int | None = None, listing_ids=None,
                          catalogue: Catalogue | None = None, min_duration: int = 1,
                          sold: bool | None = True) -> CardHourMarket:
    """The supply quotes read over hours ``[first, last)``, narrowed in SQL by whichever filters
    are given (None: no filter), for demands of at least ``min_duration`` hours. Two or three
    queries whatever the window (and the catalogue's two unless given): the listings, and the
    sold runs from the table of sold hours (``marketplace_listinghoursold``), every one in the
    window or, for long demands (``LATTICE_MIN_HOURS``), only those around long free runs
    (``_sold_runs_around``); no unsold calendar row is read. ``sold=False``: the listings only
    (``CardHourMarket.sold`` is None); ``sold=None``: the sold runs only when that read is bounded
    whatever the book (``_sold_read_bounded``), for a market shared by many quotes."""
    listings = Listing.objects.filter(status=Listing.Status.ACTIVE, token_model__isnull=True,
                                      node__status=Node.Status.ACTIVE, start__lt=hour_start(last),
                                      end__gt=hour_start(first))
    if chip_ids is not None:
        listings = listings.filter(node__chip_id__in=list(chip_ids))
    if region_ids is not None:
        listings = listings.filter(node__region_id__in=list(region_ids))
    if interconnects:
        listings = listings.filter(node__interconnect__in=list(interconnects))
    if max_min_hours is not None:
        listings = listings.filter(min_hours__lte=max_min_hours)
    if listing_ids is not None:
        listings = listings.filter(pk__in=list(listing_ids))
    # hour indices computed by PostgreSQL: parsing two datetimes per listing in Python cost more
    # than the listings query itself on a 1,000-listing book
    rows = [_Supply(*row) for row in listings.annotate(start_hour=_HOUR_OF_START, end_hour=_HOUR_OF_END).order_by(
        "-id").values_list("pk", "organisation_id", "ask_per_card_hour", "cards", "min_cards", "min_hours",
                           "start_hour", "end_hour", "node__chip_id", "node__region_id", "node__interconnect",
                           "node__fabric_id")]
    min_duration = max(1, min_duration)
    runs = None
    if sold or (sold is None and _sold_read_bounded(first, last, min_duration)):
        runs, min_duration = _sold_read(rows, first, last, min_duration)
    catalogue = catalogue or catalogue_load()
    return CardHourMarket(first=first, last=last, listings=rows, sold=runs, catalogue=catalogue,
                          by_id={r.pk: r for r in catalogue.regions.values()},
                          by_ask=sorted(rows, key=lambda r: (r.ask, -r.listing_id)), min_duration=min_duration)


def _sold_read(rows: list[_Supply], first: int, last: int,
               min_duration: int) -> tuple[dict[int, list[tuple[int, int, int]]], int]:
    """The sold runs of these listings within ``[first, last)`` that demands of ``min_duration``
    hours or more need, and the least duration they answer (``CardHourMarket.min_duration``)."""
    if min_duration >= LATTICE_MIN_HOURS and (last - first) // min_duration <= LATTICE_MAX_POINTS:
        return _sold_runs_around(rows, first, last, min_duration), min_duration
    return _sold_runs(rows, first, last), 1


def _sold_read_bounded(first: int, last: int, min_duration: int) -> bool:
    """Whether ``_sold_read`` over ``[first, last)`` reads a bounded share of the book: the
    lattice's few points per listing, or a window a search would read in its first chunk anyway
    (``_chunks``)."""
    return ((min_duration >= LATTICE_MIN_HOURS and (last - first) // min_duration <= LATTICE_MAX_POINTS)
            or last - first < 2 * (FIRST_CHUNK_HOURS + min_duration))


def _sold_runs(rows: list[_Supply], first: int, last: int) -> dict[int, list[tuple[int, int, int]]]:
    """Every sold run of these listings within ``[first, last)``, sorted per listing."""
    sold: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    if rows:
        # Serial: the planner gives this read of some 10,000 rows two parallel workers, whose start
        # and merge cost more than they save and stall whenever the machine is busy (the bench's
        # explain: p99 2-3x its p50). SET LOCAL holds to the end of the block's transaction, so
        # the setting is put back before leaving it.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            cursor.execute(_SOLD_RUNS, [[r.listing_id for r in rows], first, last])
            found = cursor.fetchall()
            cursor.execute("SET LOCAL max_parallel_workers_per_gather TO DEFAULT")
        for listing_id, free, run_from, run_to in found:
            sold[listing_id].append((run_from, run_to, free))
        for runs in sold.values():
            runs.sort()
    return dict(sold)


def _sold_runs_around(rows: list[_Supply], first: int, last: int,
                      duration: int) -> dict[int, list[tuple[int, int, int]]]:
    """The sold runs quotes of ``duration`` hours or more need, read around a lattice of points.

    Within a listing's part of the window, ``[lo, hi)``, take the points ``lo + duration - 1``,
    ``lo + 2 * duration - 1``, ... below ``hi``: every run of ``duration`` hours in ``[lo, hi)``
    holds exactly one, and every hour of a free run (a card free each hour) of ``duration`` hours
    or more lies less than ``duration`` hours from one of its points. So around each point, only
    the hours between the nearest fully sold hours within ``duration`` on either side can belong
    to a long free run, and only if they span ``duration`` hours. Those *regions* get their true
    sold runs; every other hour of ``[lo, hi)`` gets a run with no card free. The least free cards
    over any ``duration`` hours or more is then what the true calendar gives: a run with a card
    free each hour lies within regions, where the runs are true, and one without such has a hour
    with none free on both. Three probes of the index per point and the sold rows of the regions
    alone (none on a book whose long runs are all broken by a fully sold hour).
    """
    points: list[tuple[int, int]] = []
    bounds: dict[int, tuple[int, int]] = {}
    for r in rows:
        lo, hi = max(first, r.start_hour), min(last, r.end_hour)
        if hi - lo >= duration:
            bounds[r.listing_id] = (lo, hi)
            points.extend((r.listing_id, at) for at in range(lo + duration - 1, hi, duration))
    if not points:
        return {}
    regions: dict[int, list[tuple[int, int]]] = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(_FULL_AROUND, {"listings": [p[0] for p in points], "points": [p[1] for p in points],
                                      "duration": duration})
        for listing_id, at, before, after in cursor.fetchall():
            lo, hi = bounds[listing_id]
            region_from = max(lo, at - duration + 1, -1 if before is None else before + 1)
            region_to = min(hi, at + duration, hi if after is None else after)
            if region_to - region_from >= duration:
                regions[listing_id].append((region_from, region_to))
        merged = {listing_id: _merged(spans) for listing_id, spans in regions.items()}
        true_runs: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
        flat = [(listing_id, a, b) for listing_id, spans in merged.items() for a, b in spans]
        if flat:
            cursor.execute(_SOLD_RUNS_IN, [[f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat]])
            for listing_id, free, run_from, run_to in cursor.fetchall():
                true_runs[listing_id].append((run_from, run_to, free))
    sold = {}
    for listing_id, (lo, hi) in bounds.items():
        runs = true_runs.get(listing_id, [])
        at = lo
        for a, b in merged.get(listing_id, ()):
            if at < a:
                runs.append((at, a, 0))
            at = b
        if at < hi:
            runs.append((at, hi, 0))
        if runs:
            sold[listing_id] = sorted(runs)
    return sold


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching ``[from, to)`` spans joined, in order."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def quote_window(*, earliest_start, latest_end) -> tuple[int, int]:
    """The hours ``[first, last)`` a quote of this window searches: from its earliest start, but
    not before the next hour, to its latest end."""
    return max(hour_index(earliest_start), current_hour_index(timezone.now()) + 1), hour_index(latest_end)


def quote_card_hours(*, organisation: Organisation, demand: CardHoursDemand,
                     market: CardHourMarket | None = None) -> dict:
    """What the market offers for this demand right now, without creating anything.

    An offer is one placement that meets every hard constraint (chip fit with that chip's card
    count, interconnect, region, a contiguous run of free slots in the window, the listing's
    minimum rental). It is *feasible* when its ask is also within the buyer's limit.

    ``market``: supply already read (``card_hour_market_load``) for quoting many demands; used
    when it covers the demand's window, else the supply is read for this demand alone.
    """
    search = _search(organisation, demand, market)
    offers = _offers(search)
    duration = demand.duration_hours
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
        "chip_options": [{"chip": o.chip.code, "cards": o.cards} for o in search.resolved.options],
        "memory_needed_gb": search.resolved.needed_gb,
        "depth": _depth(offers, lambda o: o.ask, lambda o: o.cards * duration, "card_hours"),
    }


def quote_card_hours_cheapest(*, organisation: Organisation, demand: CardHoursDemand,
                              market: CardHourMarket | None = None) -> Decimal | None:
    """The least ask among the offers ``quote_card_hours`` makes for this demand (None when it
    makes none), found without listing every offer: listings (fabrics) are tried cheapest first
    and the search stops as soon as nothing cheaper can follow. For callers that only need whether
    the market offers anything and at what price (buyer figures)."""
    search = _search(organisation, demand, market)
    fits = _first_fits(market=search.market, first=search.first, last=search.last, duration=search.duration,
                       candidates=_candidates(search, cheapest=True), fit=_fit_of(search.placement), cheapest=True)
    return min((fit[1] for _, fit in fits), default=None)


@dataclass(frozen=True)
class _Search:
    """A card-hour demand resolved against the market it is quoted on."""
    resolved: ResolvedCardHours
    market: CardHourMarket
    placement: str
    interconnects: frozenset[str]
    allowed_regions: frozenset[int]
    cards_for_chip: dict[int, int]
    chip_codes: dict[int, str]
    first: int
    last: int
    duration: int

    def admits(self, s: _Supply) -> bool:
        """Every hard constraint but free capacity."""
        return (s.chip_id in self.cards_for_chip and s.region_id in self.allowed_regions
                and s.min_hours <= self.duration and (not self.interconnects or s.interconnect in self.interconnects)
                and s.start_hour < self.last and s.end_hour > self.first)


def _search(organisation: Organisation, demand: CardHoursDemand, market: CardHourMarket | None) -> _Search:
    catalogue = market.catalogue if market else catalogue_load()
    resolved = resolve_card_hours(demand, organisation=organisation, catalogue=catalogue)
    by_id = market.by_id if market else {r.pk: r for r in catalogue.regions.values()}
    rule = region_rule(policy=demand.region.policy, allowed_codes=[r.code for r in resolved.regions],
                       home_region_id=organisation.home_region_id, by_id=by_id, lat=demand.region.lat,
                       lon=demand.region.lon, radius_km=demand.region.radius_km)
    allowed_regions = frozenset(pk for pk, region in by_id.items() if region_allows(rule, region_info(region, by_id)))
    cards_for_chip = {o.chip.pk: o.cards for o in resolved.options}
    first, last = quote_window(earliest_start=demand.earliest_start, latest_end=demand.latest_end)
    if market is None or not market.covers(first, last, demand.duration_hours):
        # the listings only: the sold runs are read chunk by chunk of the window (_first_fits)
        market = card_hour_market_load(first=first, last=last, chip_ids=cards_for_chip, region_ids=allowed_regions,
                                       interconnects=demand.interconnects, max_min_hours=demand.duration_hours,
                                       catalogue=catalogue, min_duration=demand.duration_hours, sold=False)
    return _Search(resolved=resolved, market=market, placement=demand.placement,
                   interconnects=frozenset(demand.interconnects or ()), allowed_regions=allowed_regions,
                   cards_for_chip=cards_for_chip, chip_codes={o.chip.pk: o.chip.code for o in resolved.options},
                   first=first, last=last, duration=demand.duration_hours)


def _fabric_groups(search: _Search) -> dict[tuple, list[_Supply]]:
    """Admitted listings on a fabric, by supplier, fabric and chip (in listing order)."""
    groups: dict[tuple, list[_Supply]] = defaultdict(list)
    for s in search.market.listings:
        if s.fabric_id and search.admits(s):
            groups[(s.organisation_id, s.fabric_id, s.chip_id)].append(s)
    return groups


def _candidates(search: _Search, cheapest: bool = False) -> Iterator[tuple[int, list[_Supply]]]:
    """What may make an offer, as ``(cards needed, listings)``: each admitted listing alone (single
    node) or each supplier's fabric of one chip (same fabric), in listing order (newest first) or,
    ``cheapest``, by their cheapest listing's ask. Those that could not hold the cards even wholly
    free are left out (they never make an offer)."""
    if search.placement == "single_node":
        for s in search.market.by_ask if cheapest else search.market.listings:
            if search.admits(s) and s.min_cards <= search.cards_for_chip[s.chip_id] <= s.cards:
                yield search.cards_for_chip[s.chip_id], [s]
        return
    groups = list(_fabric_groups(search).items())
    if cheapest:
        groups.sort(key=lambda kv: min(m.ask for m in kv[1]))
    for (_, _, chip_id), members in groups:
        need = search.cards_for_chip[chip_id]
        # a member is only ever taken for at least its minimum cards, and at most all of them
        if sum(m.cards for m in members if m.cards >= max(1, m.min_cards)) >= need:
            yield need, members


# (cheapest listing, ask, start hour, nodes used) of a candidate's first fit
_Fit = tuple[_Supply, Decimal, int, int]


def _single_fit(need: int, members: list[_Supply], first: int, last: int, duration: int, sold) -> _Fit | None:
    listing = members[0]
    start = _earliest_free_run(listing, need, first, last, duration, sold.get(listing.listing_id, ()))
    return None if start is None else (listing, listing.ask, start, 1)


def _fabric_fit(need: int, members: list[_Supply], first: int, last: int, duration: int, sold) -> _Fit | None:
    return _fabric_offer(members, need, duration, first, last, sold)


def _fit_of(placement: str):
    return _single_fit if placement == "single_node" else _fabric_fit


# A search reads the sold runs of its window in chunks (``_chunks``): the first FIRST_CHUNK_HOURS
# hours and the demand's duration, then each twice the one before. A listing that fits leaves the
# search, so a short demand over a window of months reads one chunk of the listings' sold hours,
# not every sold hour of the window (a million rows on a 1,000-node book a third sold).
FIRST_CHUNK_HOURS = 48


def _chunks(first: int, last: int, duration: int):
    """Spans ``[lo, hi)`` covering ``[first, last)``, in order: the first ``FIRST_CHUNK_HOURS +
    duration`` hours, then each twice as long as the one before, each starting ``duration - 1``
    hours before the one before ends. Every run of ``duration`` hours in the window lies within a
    span, and one starting before a span's start lies within an earlier span; so the first start
    found span by span is the window's first. A span that would leave less than its own length
    takes the rest of the window."""
    lo, size = first, FIRST_CHUNK_HOURS + duration
    while True:
        hi = last if last - lo < 2 * size else lo + size
        yield lo, hi
        if hi >= last:
            return
        lo, size = hi - duration + 1, 2 * size


def _first_fits(*, market: CardHourMarket, first: int, last: int, duration: int,
                candidates: Iterable[tuple[int, list[_Supply]]], fit,
                cheapest: bool = False) -> list[tuple[int, _Fit]]:
    """``(cards needed, first fit)`` of each candidate ``(cards needed, listings)`` that fits in
    ``[first, last)`` (``fit``: ``_single_fit`` or ``_fabric_fit``), in the candidates' order:
    exactly what ``fit`` gives over the whole window.

    On a market loaded without its sold runs, the window is searched in chunks (``_chunks``):
    each reads the sold runs of the listings still searched that could hold ``duration`` hours
    in it, and a candidate leaves the search at its first fit or when none of its listings can
    hold ``duration`` hours in the rest of the window. A market with its sold runs read is
    searched whole, the candidates read lazily. ``cheapest``: only the least ask matters; the
    candidates come cheapest listing first, and the search stops at the first whose cheapest
    listing asks no less than an ask already found (a fabric asks at least its cheapest
    member's), so the least ask found is the least of every candidate's."""
    whole = market.sold is not None
    pending: Iterable[tuple[int, int, list[_Supply]]] = (
        (i, need, members) for i, (need, members) in enumerate(candidates))
    found: dict[int, tuple[int, _Fit]] = {}
    best = None
    for lo, hi in [(first, last)] if whole else _chunks(first, last, duration):
        if whole:
            sold = market.sold
        else:
            pending = list(pending)
            rows = {s.listing_id: s for _, _, members in pending for s in members
                    if min(hi, s.end_hour) - max(lo, s.start_hour) >= duration}
            sold = _sold_read(list(rows.values()), lo, hi, duration)[0]
        after = hi - duration + 1  # where the next chunk starts
        still = []
        for i, need, members in pending:
            if best is not None and min(s.ask for s in members) >= best:
                break  # tried cheapest first: none after this one is cheaper either
            fits = fit(need, members, lo, hi, duration, sold)
            if fits is not None:
                found[i] = (need, fits)
                if cheapest and (best is None or fits[1] < best):
                    best = fits[1]
            elif hi < last and any(min(last, s.end_hour) - max(after, s.start_hour) >= duration for s in members):
                still.append((i, need, members))
        pending = still
        if not pending:
            break
    return [found[i] for i in sorted(found)]


def _offers(search: _Search) -> list[_Offer]:
    """Every offer, in listing order (newest listing first)."""
    fits = _first_fits(market=search.market, first=search.first, last=search.last, duration=search.duration,
                       candidates=_candidates(search), fit=_fit_of(search.placement))
    return [_Offer(search.chip_codes[lead.chip_id], search.market.by_id[lead.region_id].code, ask, need, start, used)
            for need, (lead, ask, start, used) in fits]


def _earliest_free_run(listing: _Supply, need: int, first: int, last: int, duration: int, sold) -> int | None:
    """First hour in ``[first, last)`` starting ``duration`` consecutive hours of ``listing`` with
    ``need`` cards free, from its bounds and its sold runs alone (linear in the sold runs)."""
    if need > listing.cards:
        return None
    at, end = max(first, listing.start_hour), min(last, listing.end_hour)
    for run_from, run_to, free in sold:
        if run_to <= at or free >= need:
            continue
        if run_from >= end:
            break
        if run_from - at >= duration:
            return at
        at = run_to
    return at if end - at >= duration else None


def earliest_runs(*, needs: dict[int, int], first: int, last: int, duration: int) -> dict[int, int]:
    """For each active card-hour listing id in ``needs`` (listing -> cards needed), the first hour
    in ``[first, last)`` that starts ``duration`` consecutive hours with that many cards free.

    Reads the listings' bounds and their sold runs chunk by chunk of the window, as quotes do
    (``_first_fits``; only those around long free runs when ``duration`` is long); the unsold
    calendar rows are never read.
    """
    if not needs or last - first < duration:
        return {}
    market = card_hour_market_load(first=first, last=last, listing_ids=needs, min_duration=duration, sold=False)
    fits = _first_fits(market=market, first=first, last=last, duration=duration,
                       candidates=((needs[s.listing_id], [s]) for s in market.listings), fit=_single_fit)
    return {fit[0].listing_id: fit[2] for _, fit in fits}


def _free_profile(listing: _Supply, first: int, last: int, sold) -> list[tuple[int, int, int]]:
    """The listing's free cards over ``[first, last)`` as contiguous ``(from, to, free)`` pieces
    (zero outside its ``[start, end)``)."""
    lo, hi = max(first, listing.start_hour), min(last, listing.end_hour)
    if lo >= hi:
        return [(first, last, 0)]
    pieces = [(first, lo, 0)] if first < lo else []
    at = lo
    for run_from, run_to, free in sold:
        run_from, run_to = max(run_from, lo), min(run_to, hi)
        if run_from >= run_to:
            continue
        if at < run_from:
            pieces.append((at, run_from, listing.cards))
        pieces.append((run_from, run_to, free))
        at = run_to
    if at < hi:
        pieces.append((at, hi, listing.cards))
    if hi < last:
        pieces.append((hi, last, 0))
    return pieces


def window_mins(pieces: list[tuple[int, int, int]], starts: list[int], width: int) -> list[int]:
    """For each of the ascending ``starts``, the least value of the contiguous ``pieces`` over
    hours ``[start, start + width)`` (a monotonic deque of candidate pieces; linear in pieces and
    starts). Every window must lie within the pieces."""
    out: list[int] = []
    candidates: deque[int] = deque()
    j = 0
    for start in starts:
        while j < len(pieces) and pieces[j][0] < start + width:
            while candidates and pieces[candidates[-1]][2] >= pieces[j][2]:
                candidates.pop()
            candidates.append(j)
            j += 1
        while pieces[candidates[0]][1] <= start:
            candidates.popleft()
        out.append(pieces[candidates[0]][2])
    return out


def _fabric_offer(members: list[_Supply], need: int, duration: int, first: int, last: int,
                  sold: dict[int, list]) -> tuple[_Supply, Decimal, int, int] | None:
    """Cheapest-first fill of one fabric: add nodes until their common free cards cover ``need``,
    at the earliest start that allows it; as ``(cheapest member, ask, start hour, nodes used)``.

    The members' free cards are piecewise constant, so whether the fill succeeds changes only
    where a window starts or ends at a piece boundary: only those starts are tried.
    """
    if last - first < duration:
        return None
    members = sorted(members, key=lambda l: (l.ask, l.listing_id))
    profiles = [_free_profile(m, first, last, sold.get(m.listing_id, ())) for m in members]
    latest = last - duration
    starts = {first}
    for pieces in profiles:
        for piece_from, _, _ in pieces:
            starts.update(s for s in (piece_from, piece_from - duration + 1) if first <= s <= latest)
    starts = sorted(starts)
    mins = [window_mins(pieces, starts, duration) for pieces in profiles]
    for i, start in enumerate(starts):
        remaining, used, ask = need, 0, Decimal(0)
        for member, member_mins in zip(members, mins):
            take = min(member_mins[i], remaining)
            if take >= max(1, member.min_cards):
                remaining -= take
                used += 1
                ask = max(ask, member.ask)
            if remaining == 0:
                return members[0], ask, start, used
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
