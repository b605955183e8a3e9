"""Matching writes: running and persisting rounds (allocations, their holds, flagged matches'
reviews). Deciding reviews and failing nodes are lifecycle steps (``lifecycle.services``).

Lock order (the same as marketplace.services, so nothing deadlocks):
    node (FOR SHARE here) -> order -> allocation -> listing-hours by (listing_id, hour), then
    ledger accounts.
"""
from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
from django.db import connection, transaction
from django.utils import timezone

from config.errors import Unavailable
from config.sql import bool_array, int_array, int_columns
from marketplace.demand import order_region_rule, region_info
from marketplace.hours import current_hour_index, hour_index
from marketplace.models import (Allocation, AllocationPart, Listing, Node, Order, Organisation,
                                Region)
from marketplace.selectors import related_parties, trade_barred, trades_barred
from marketplace.services import nodes_lock_shared

from billing.rating import max_cost_card_hours
from billing.services import (InsufficientFunds, MatchHold, allocation_hold_expiry, allocation_hold_place,
                              buyer_funds_lock, match_holds_place)

from .engine.engine import opening_best, run_engine
from .engine.types import MICRO, EngineParams, EngineResult, from_micro
from .models import MatchReview, MatchRound, ReviewPolicy
from .snapshot import load_snapshot

TOKENS_BUCKET = "tokens"


@dataclass
class RoundOutcome:
    round_id: str
    bucket: str
    status: str
    matches: int = 0
    flagged: int = 0
    skipped_stale: int = 0
    replayed: bool = False
    # With ``probe``: the orders that had a feasible placement within their bid when the round
    # opened (they could have been served by this round, whether or not they were).
    servable: tuple[int, ...] = ()  # a tuple: the Celery task returns the outcome as JSON


def review_policy_current() -> ReviewPolicy:
    return ReviewPolicy.objects.order_by("-pk").first() or ReviewPolicy()


# --- rounds -----------------------------------------------------------------------------------

def round_run(*, bucket: str, round_id: str | None = None, price_rule: str | None = None,
              now=None, pause_before_commit: float = 0.0, probe: bool = False) -> RoundOutcome:
    """Load a snapshot of ``bucket``, run the engine and persist the result atomically.
    ``probe`` also reports which orders could have been served at the opening (``servable``).

    Idempotent by ``round_id``: a round that already committed is not run again (a retried or
    redelivered task is a no-op). ``pause_before_commit`` exists for the crash test only.
    """
    if connection.vendor != "postgresql":
        raise Unavailable("Matching rounds need PostgreSQL (row locks, SKIP LOCKED); set DATABASE_URL.",
                          code="postgresql_required")
    round_id = round_id or f"{bucket}:{uuid.uuid4().hex}"
    if MatchRound.objects.filter(round_id=round_id).exists():
        done = MatchRound.objects.get(round_id=round_id)
        return RoundOutcome(round_id, bucket, done.status, done.matches, done.flagged, done.skipped_stale, True)
    if bucket == TOKENS_BUCKET:
        return _token_round(round_id=round_id, now=now)
    t0 = time.perf_counter()
    snapshot = load_snapshot(bucket, now=now)
    t1 = time.perf_counter()
    params = EngineParams(excluded_pairs=snapshot.excluded_pairs, related_parties=snapshot.related_parties,
                          price_rule=price_rule or EngineParams.price_rule)
    result = run_engine(snapshot.supply, snapshot.demand, params)
    servable: tuple[int, ...] = ()
    if probe and snapshot.supply.size and snapshot.demand.size:
        best = opening_best(snapshot.supply, snapshot.demand)
        servable = tuple(snapshot.demand.order_id[best >= 0].tolist())
    t2 = time.perf_counter()
    outcome = round_persist(round_id=round_id, bucket=bucket, result=result, price_rule=params.price_rule,
                            orders_considered=snapshot.demand.size, listings_considered=snapshot.supply.size,
                            timings=(t1 - t0, t2 - t1), pause_before_commit=pause_before_commit)
    outcome.servable = servable
    return outcome


def round_persist(*, round_id: str, bucket: str, result: EngineResult, price_rule: str, orders_considered: int = 0,
                  listings_considered: int = 0, timings: tuple[float, float] = (0.0, 0.0),
                  pause_before_commit: float = 0.0) -> RoundOutcome:
    """Write an engine result in one transaction: allocations, their parts, sold slots, order
    states and reviews all commit together or not at all.

    Everything the engine assumed is re-checked under locks, because other rounds, buyers and
    suppliers may have acted since the snapshot: nodes are taken FOR SHARE, orders FOR UPDATE
    SKIP LOCKED (an order another round holds is simply left for later), then the touched
    listing-hours FOR UPDATE in (listing_id, hour) order, then the buyers' ledger accounts. A
    match that no longer fits is dropped; its order stays open for the next round. Matches are
    taken in result order: one is accepted if its order is locked and open, every listing and
    node it uses is active, every slot it needs is still free after the matches accepted before
    it, its buyer may trade with every supplier, and the buyer's available funds cover its hold.

    Every step is a fixed number of set-based statements over arrays (a round commits tens of
    thousands of matches), with the arrays sent as array literals (``config.sql``).
    """
    t_start = time.perf_counter()
    matches = result.count
    with transaction.atomic():
        if MatchRound.objects.select_for_update().filter(round_id=round_id).exists():
            done = MatchRound.objects.get(round_id=round_id)
            return RoundOutcome(round_id, bucket, done.status, done.matches, done.flagged, done.skipped_stale, True)
        if matches == 0:
            MatchRound.objects.create(round_id=round_id, bucket=bucket, status=MatchRound.Status.EMPTY,
                                      price_rule=price_rule, orders_considered=orders_considered,
                                      listings_considered=listings_considered, load_ms=int(timings[0] * 1000),
                                      engine_ms=int(timings[1] * 1000))
            return RoundOutcome(round_id, bucket, MatchRound.Status.EMPTY)

        listing_ids = np.unique(result.part_listing_id)
        cells = _Cells(result)
        # The reads and locks go out as one pipeline, in the global lock order (nodes FOR SHARE,
        # orders, then listing-hours; ledger accounts after): PostgreSQL runs them back to back
        # while Python reads each answer. So each names its rows by itself (nodes by a subquery).
        with connection.connection.pipeline(), ExitStack() as stack:
            settings_, listings, nodes, order_rows, hour_rows = (stack.enter_context(connection.cursor())
                                                                 for _ in range(5))
            # The round sorts and hashes tens of thousands of listing-hours (the lock below, the
            # calendar update): with the default 4 MB both spill to temporary files.
            settings_.execute("SET LOCAL work_mem = '64MB'")
            listings.execute("SELECT id, node_id, organisation_id, status FROM marketplace_listing"
                             " WHERE id = ANY(%s::bigint[])", [int_array(listing_ids)])
            nodes.execute("SELECT id, status, region_id FROM marketplace_node WHERE id IN (SELECT node_id FROM"
                          " marketplace_listing WHERE id = ANY(%s::bigint[])) ORDER BY id FOR SHARE",
                          [int_array(listing_ids)])
            # Joined to the id array rather than filtered by ``= ANY``: the plan stays a join
            # whatever the statistics say about a freshly loaded table.
            order_rows.execute(
                "SELECT o.id, o.organisation_id, o.max_price_per_card_hour FROM unnest(%s::bigint[]) AS t(id)"
                " JOIN marketplace_order o ON o.id = t.id WHERE o.status = 'open' AND o.kind = 'card_hours'"
                " AND NOT EXISTS (SELECT 1 FROM marketplace_allocation a WHERE a.order_id = o.id"
                " AND a.status = ANY(%s)) ORDER BY o.id FOR UPDATE OF o SKIP LOCKED",
                [int_array(result.order_id), list(Allocation.ACTIVE)])
            # Listing-hours every match touches, locked in (listing_id, hour) order.
            hour_rows.execute(
                "SELECT string_agg(concat_ws(',', s.id, s.listing_id, s.hour, s.free), ',') FROM ("
                " SELECT lh.id, lh.listing_id, lh.hour, lh.cards_offered - lh.cards_sold AS free"
                " FROM marketplace_listinghour lh JOIN unnest(%s::bigint[], %s::int[]) AS t(listing_id, hour)"
                " ON lh.listing_id = t.listing_id AND lh.hour = t.hour"
                " ORDER BY lh.listing_id, lh.hour FOR UPDATE OF lh) AS s",
                [int_array(cells.listing), int_array(cells.hour)])
            listing_rows = {row[0]: row for row in listings.fetchall()}
            node_rows = {r[0]: r for r in nodes.fetchall()}
            orders = {pk: (organisation_id, limit) for pk, organisation_id, limit in order_rows.fetchall()}
            cells.found(int_columns(hour_rows.fetchone()[0], 4))
        # Every match holds its buyer's maximum cost; ledger accounts are locked last.
        buyer_ids = {organisation_id for organisation_id, _ in orders.values()}
        funds = buyer_funds_lock(organisation_ids=buyer_ids)
        # No self-dealing, checked again now: a related-party mark may be newer than the snapshot.
        related = related_parties(organisation_ids=buyer_ids)

        # What each listing and match can still be, from the rows just locked.
        listing_of_part = np.searchsorted(listing_ids, result.part_listing_id)
        locked_listings = [listing_rows.get(pk) for pk in listing_ids.tolist()]
        sellable = np.array([row is not None and row[3] == Listing.Status.ACTIVE
                             and node_rows.get(row[1], (0, ""))[1] == Node.Status.ACTIVE for row in locked_listings],
                            dtype=np.bool_)
        supplier = np.array([row[2] if row else -1 for row in locked_listings], dtype=np.int64)[listing_of_part]
        node = np.array([row[1] if row else -1 for row in locked_listings], dtype=np.int64)[listing_of_part]
        match_orders = result.order_id.tolist()
        buyer = np.array([orders.get(pk, (-1,))[0] for pk in match_orders], dtype=np.int64)
        barred = trades_barred(buyer_ids=buyer[cells.match_of_part], supplier_ids=supplier, related=related)
        starts = result.part_ptr[:-1]  # every match has at least one part
        usable = (buyer >= 0) & np.logical_and.reduceat(sellable[listing_of_part], starts) & cells.all_found()
        trading = usable & ~np.logical_or.reduceat(barred, starts)
        hours = (result.end_hour - result.start_hour).tolist()
        cards = result.cards.tolist()
        cost = {i: max_cost_card_hours(max_price_per_card_hour=orders[match_orders[i]][1], cards=cards[i],
                                       hours=hours[i]) for i in np.flatnonzero(trading).tolist()}
        accepted, short = _accept(cells, trading, cost, buyer, funds)

        idx = np.array(accepted, dtype=np.int64)
        first_part = result.part_ptr[idx]
        flags = _review_flags(result, idx, supplier=supplier[first_part], buyer=buyer[idx],
                              node_region=np.array([node_rows[n][2] for n in node[first_part].tolist()],
                                                   dtype=np.int64))
        flagged = np.array([i in flags for i in accepted], dtype=np.bool_)
        now = timezone.now()
        # Ids drawn first, so the writes below need no answer from each other: they go out as one
        # pipeline, and PostgreSQL works through them while Python prepares the holds.
        allocation = np.full(matches, -1, dtype=np.int64)
        with connection.cursor() as cursor:
            cursor.execute("SELECT string_agg(nextval(s)::text, ',') FROM generate_series(1, %s),"
                           " pg_get_serial_sequence('marketplace_allocation', 'id') AS s", [len(accepted)])
            allocation[idx] = int_columns(cursor.fetchone()[0], 1)[:, 0]
        part_of_accepted = np.flatnonzero(allocation[cells.match_of_part] >= 0)
        confirmed = [match_orders[i] for i in accepted if i not in flags]
        with connection.connection.pipeline(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO marketplace_allocation (id, order_id, supplier_id, kind, status, start_hour, end_hour,"
                " cards, price_per_card_hour, price_rule, round_id, created_at, updated_at)"
                " SELECT t.id, t.order_id, t.supplier_id, 'card_hours',"
                " CASE WHEN t.flagged THEN 'pending_review' ELSE 'confirmed' END, t.start_hour, t.end_hour, t.cards,"
                " t.price * 0.000001, %s, %s, %s, %s FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[],"
                " %s::boolean[], %s::int[], %s::int[], %s::int[], %s::bigint[]) AS t(id, order_id, supplier_id,"
                " flagged, start_hour, end_hour, cards, price)",
                [result.price_rule, round_id, now, now, int_array(allocation[idx]), int_array(result.order_id[idx]),
                 int_array(supplier[first_part]), bool_array(flagged), int_array(result.start_hour[idx]),
                 int_array(result.end_hour[idx]), int_array(result.cards[idx]), int_array(result.price[idx])])
            cursor.execute(
                "INSERT INTO marketplace_allocationpart (allocation_id, listing_id, node_id, cards)"
                " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::int[])",
                [int_array(allocation[cells.match_of_part[part_of_accepted]]),
                 int_array(result.part_listing_id[part_of_accepted]), int_array(node[part_of_accepted]),
                 int_array(result.part_cards[part_of_accepted])])
            sold = cells.sold(accepted)
            if sold[0].size:
                cursor.execute(
                    "UPDATE marketplace_listinghour lh SET cards_sold = lh.cards_sold + t.n"
                    " FROM unnest(%s::bigint[], %s::int[]) AS t(id, n) WHERE lh.id = t.id",
                    [int_array(sold[0]), int_array(sold[1])])
            if confirmed:
                cursor.execute("UPDATE marketplace_order o SET status = 'matched', status_reason = '', updated_at = %s"
                               " FROM unnest(%s::bigint[]) AS t(id) WHERE o.id = t.id", [now, int_array(confirmed)])
            if short:  # why these orders stay open: their buyers' funds ran out
                cursor.execute("UPDATE marketplace_order o SET status_reason = t.reason"
                               " FROM unnest(%s::bigint[], %s::text[]) AS t(id, reason) WHERE o.id = t.id",
                               [int_array(match_orders[i] for i in short),
                                [_short_of_funds(extra) for extra in short.values()]])
            end_hours = result.end_hour.tolist()
            expiry = {h: allocation_hold_expiry(end_hour=h) for h in set(end_hours[i] for i in accepted)}
            match_holds_place(holds=[
                MatchHold(organisation_id=int(buyer[i]), allocation_id=int(allocation[i]), amount=cost[i],
                          expires_at=expiry[end_hours[i]]) for i in accepted], batch_reference=f"round:{round_id}")
        reviews = [MatchReview(allocation_id=int(allocation[i]), reasons=flags[i]) for i in accepted if i in flags]
        MatchReview.objects.bulk_create(reviews, batch_size=5000)
        if pause_before_commit:
            time.sleep(pause_before_commit)
        welfare = sum(result.surplus[idx].tolist())
        MatchRound.objects.create(
            round_id=round_id, bucket=bucket, status=MatchRound.Status.COMMITTED, price_rule=price_rule,
            orders_considered=orders_considered, listings_considered=listings_considered, matches=len(accepted),
            flagged=len(reviews), skipped_stale=matches - len(accepted), welfare=from_micro(welfare),
            load_ms=int(timings[0] * 1000), engine_ms=int(timings[1] * 1000),
            persist_ms=int((time.perf_counter() - t_start) * 1000))
    return RoundOutcome(round_id, bucket, MatchRound.Status.COMMITTED, len(accepted), len(reviews),
                        matches - len(accepted))


class _Cells:
    """The listing-hours a result touches: every (part, hour) of every match as a row of the
    ``expanded`` arrays (grouped by match, in match order), and the distinct cells, sorted by
    (listing_id, hour), that ``found`` fills with the locked rows' ids and free cards."""

    def __init__(self, result: EngineResult):
        self.match_of_part = np.repeat(np.arange(result.count), np.diff(result.part_ptr))
        duration = (result.end_hour - result.start_hour)[self.match_of_part]
        part = np.repeat(np.arange(self.match_of_part.size), duration)
        offset = np.arange(part.size) - np.repeat(np.cumsum(duration) - duration, duration)
        hour = result.start_hour[self.match_of_part][part] + offset
        self.first_hour = int(hour.min())
        self.span = int(hour.max()) - self.first_hour + 1
        key = result.part_listing_id[part] * self.span + (hour - self.first_hour)
        self.keys, self.cell = np.unique(key, return_inverse=True)  # cell: expanded row -> distinct cell
        self.cards = result.part_cards[part]
        self.match = self.match_of_part[part]
        self.ptr = np.searchsorted(self.match, np.arange(result.count + 1))  # expanded rows of match i
        self.listing, self.hour = self.keys // self.span, self.keys % self.span + self.first_hour
        self.row_id = np.full(self.keys.size, -1, dtype=np.int64)
        self.free = np.full(self.keys.size, -1, dtype=np.int64)  # -1: no calendar row, never enough

    def found(self, rows: np.ndarray) -> None:
        """Record the locked rows, (id, listing_id, hour, free cards) each."""
        at = np.searchsorted(self.keys, rows[:, 1] * self.span + (rows[:, 2] - self.first_hour))
        self.row_id[at], self.free[at] = rows[:, 0], rows[:, 3]

    def all_found(self) -> np.ndarray:
        """Per match: every cell it needs has a calendar row."""
        return np.logical_and.reduceat(self.row_id[self.cell] >= 0, self.ptr[:-1])

    def fits(self, matches: np.ndarray) -> bool:
        """Whether these matches all fit the free cards together."""
        rows = np.isin(self.match, matches)
        need = np.bincount(self.cell[rows], weights=self.cards[rows], minlength=self.keys.size)
        return bool(np.all(need <= self.free))

    def sold(self, accepted: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, cards sold) of the cells the accepted matches take."""
        rows = np.isin(self.match, np.array(accepted, dtype=np.int64))
        need = np.bincount(self.cell[rows], weights=self.cards[rows], minlength=self.keys.size).astype(np.int64)
        taken = np.flatnonzero(need > 0)
        return self.row_id[taken], need[taken]


def _accept(cells: _Cells, trading: np.ndarray, cost: dict[int, Decimal], buyer: np.ndarray,
            funds: dict[int, Decimal]) -> tuple[list[int], dict[int, dict]]:
    """The matches to commit, in result order, and those dropped for their buyer's funds (with
    the amounts). ``trading``: order locked, listings and nodes active, calendar rows present, no
    barred pair. Taken one by one, a trading match needs its slots still free after those
    accepted before it, then its hold covered by what is left of its buyer's funds. When every
    trading match fits the slots and every buyer's funds at once (the usual case: the snapshot
    is seconds old), that is the answer without the walk."""
    candidates = np.flatnonzero(trading)
    need: dict[int, Decimal] = defaultdict(Decimal)
    buyers = buyer.tolist()
    for i in candidates.tolist():
        need[buyers[i]] += cost[i]
    if cells.fits(candidates) and all(total <= funds[b] for b, total in need.items()):
        return candidates.tolist(), {}
    free = cells.free.copy()
    left = dict(funds)
    accepted: list[int] = []
    short: dict[int, dict] = {}
    for i in candidates.tolist():
        rows = slice(cells.ptr[i], cells.ptr[i + 1])
        taken, cards = cells.cell[rows], cells.cards[rows]
        if np.any(free[taken] < cards):
            continue
        if left[buyers[i]] < cost[i]:
            short[i] = {"needed": cost[i], "available": left[buyers[i]]}
            continue
        left[buyers[i]] -= cost[i]
        free[taken] -= cards
        accepted.append(i)
    return accepted, short


def _review_flags(result: EngineResult, accepted: np.ndarray, *, supplier: np.ndarray, buyer: np.ndarray,
                  node_region: np.ndarray) -> dict[int, list]:
    """Which accepted matches wait for an admin, and why (the policy in force). ``supplier``,
    ``buyer`` and ``node_region`` are per accepted match (its first part's supplier and node)."""
    policy = review_policy_current()
    if not policy.enabled or not accepted.size:
        return {}
    hours = result.end_hour[accepted] - result.start_hour[accepted]
    # value > threshold, in exact integers: value_micro > threshold_micro <=> > floor(threshold_micro)
    value_micro = result.price[accepted] * result.cards[accepted] * hours
    high = value_micro > int(math.floor(policy.value_threshold * MICRO))
    reliability = dict(Organisation.objects.filter(pk__in=set(supplier.tolist())).values_list("pk", "reliability"))
    unreliable = {pk for pk, r in reliability.items() if r < policy.min_supplier_reliability}
    low = np.isin(supplier, list(unreliable))
    outside = np.zeros(accepted.size, dtype=np.bool_)
    if policy.flag_outside_buyer_country:
        by_id = {r.pk: r for r in Region.objects.all()}
        country = {pk: _country(region, by_id) for pk, region in by_id.items()}
        home = dict(Organisation.objects.filter(pk__in=set(buyer.tolist())).values_list("pk", "home_region_id"))
        buyer_country = [country[home[b]] if home.get(b) else None for b in buyer.tolist()]
        node_country = [country[r] for r in node_region.tolist()]
        outside = np.array([b is not None and b != n for b, n in zip(buyer_country, node_country)], dtype=np.bool_)
    flags: dict[int, list] = {}
    for k in np.flatnonzero(high | low | outside).tolist():
        i = int(accepted[k])
        reasons = []
        if high[k]:
            value = from_micro(int(result.price[i])) * int(result.cards[i]) * int(hours[k])
            reasons.append({"code": "high_value", "message": f"worth {value} CNY, above {policy.value_threshold}"})
        if low[k]:
            reasons.append({"code": "low_reliability",
                            "message": f"supplier reliability {reliability[int(supplier[k])]} below "
                                       f"{policy.min_supplier_reliability}"})
        if outside[k]:
            reasons.append({"code": "outside_buyer_country",
                            "message": f"runs in {node_country[k]}, the buyer is in {buyer_country[k]}"})
        flags[i] = reasons
    return flags


def _country(region: Region, by_id: dict[int, Region]) -> str:
    while region.parent_id:
        region = by_id[region.parent_id]
    return region.code


def _token_round(*, round_id: str, now=None) -> RoundOutcome:
    """Token orders go to endpoints serving their model, cheapest expected cost first, within
    the region policy and every one of the buyer's three price limits. Endpoints sell at their
    posted prices (``posted``); they are not capacity-limited per order."""
    from .engine.tokens import TokenEndpointOffer, TokenOrderSpec, match_tokens

    now = now or timezone.now()
    regions = list(Region.objects.all())
    by_id = {r.pk: r for r in regions}
    infos = {r.pk: region_info(r, by_id) for r in regions}
    endpoints = [TokenEndpointOffer(listing_id=l.pk, model_id=l.token_model_id, region=infos[l.node.region_id],
                                    input_hit=l.price_input_hit_per_m, input_miss=l.price_input_miss_per_m,
                                    output=l.price_output_per_m, supplier=l.organisation_id)
                 for l in Listing.objects.filter(status=Listing.Status.ACTIVE, token_model__isnull=False,
                                                 node__status=Node.Status.ACTIVE, end__gt=now).select_related("node")]
    orders = list(Order.objects.filter(status=Order.Status.OPEN, kind=Order.Kind.TOKENS)
                  .select_related("organisation").prefetch_related("allowed_regions").order_by("pk"))
    specs = []
    for o in orders:
        specs.append(TokenOrderSpec(order_id=o.pk, model_id=o.token_model_id, rule=order_region_rule(o, by_id),
                                    input_tokens=o.expected_input_tokens or 0, output_tokens=o.expected_output_tokens or 0,
                                    cache_hit_ratio=o.expected_cache_hit_ratio or Decimal(0),
                                    max_input_hit=o.max_price_input_hit_per_m, max_input_miss=o.max_price_input_miss_per_m,
                                    max_output=o.max_price_output_per_m, buyer=o.organisation_id))
    pairs = match_tokens(specs, endpoints, related_parties(organisation_ids={o.organisation_id for o in orders}))
    count = 0
    with transaction.atomic():
        if MatchRound.objects.select_for_update().filter(round_id=round_id).exists():
            return RoundOutcome(round_id, TOKENS_BUCKET, MatchRound.Status.COMMITTED, replayed=True)
        listings = {l.pk: l for l in Listing.objects.filter(pk__in=[p[1] for p in pairs])}
        # The global lock order: the endpoints' nodes FOR SHARE (a failing node waits; a failed one
        # sells nothing), the orders (skipping any another round holds), then every buyer's ledger
        # accounts at once; each hold below re-locks only its own buyer's.
        nodes_lock_shared(node_ids=[l.node_id for l in listings.values()])
        live_nodes = set(Node.objects.filter(pk__in=[l.node_id for l in listings.values()],
                                             status=Node.Status.ACTIVE).values_list("pk", flat=True))
        orders = {o.pk: o for o in Order.objects.select_for_update(skip_locked=True).filter(
            pk__in=[p[0] for p in pairs], status=Order.Status.OPEN).order_by("pk")}
        buyer_funds_lock(organisation_ids={o.organisation_id for o in orders.values()})
        related = related_parties(organisation_ids={o.organisation_id for o in orders.values()})
        now_hour = current_hour_index(now)
        for order_id, listing_id in sorted(pairs):
            order = orders.pop(order_id, None)
            listing = listings[listing_id]
            if (order is None or listing.status != Listing.Status.ACTIVE or listing.node_id not in live_nodes
                    or trade_barred(buyer_id=order.organisation_id, supplier_id=listing.organisation_id,
                                    related=related)):
                continue
            try:
                with transaction.atomic():  # a savepoint: a buyer short of funds rolls back alone
                    _token_allocation_create(order, listing, now_hour, round_id)
            except InsufficientFunds as short:
                Order.objects.filter(pk=order.pk).update(status_reason=_short_of_funds(short.extra))
                continue
            count += 1
        MatchRound.objects.create(round_id=round_id, bucket=TOKENS_BUCKET,
                                  status=MatchRound.Status.COMMITTED if count else MatchRound.Status.EMPTY,
                                  price_rule="posted", orders_considered=len(specs),
                                  listings_considered=len(endpoints), matches=count)
    return RoundOutcome(round_id, TOKENS_BUCKET, MatchRound.Status.COMMITTED if count else MatchRound.Status.EMPTY,
                        count)


def _token_allocation_create(order: Order, listing: Listing, now_hour: int, round_id: str) -> Allocation:
    """Sell a token endpoint to a locked open order at its posted prices and hold the order's
    expected maximum cost (InsufficientFunds rolls the caller's savepoint back)."""
    allocation = Allocation.objects.create(
        order=order, supplier_id=listing.organisation_id, kind=Order.Kind.TOKENS,
        status=Allocation.Status.CONFIRMED, start_hour=now_hour,
        end_hour=max(now_hour + 1, hour_index(listing.end)), cards=listing.cards,
        price_per_card_hour=listing.ask_per_card_hour, price_rule="posted",
        price_input_hit_per_m=listing.price_input_hit_per_m,
        price_input_miss_per_m=listing.price_input_miss_per_m, price_output_per_m=listing.price_output_per_m,
        round_id=round_id)
    AllocationPart.objects.create(allocation=allocation, listing=listing, node_id=listing.node_id, cards=listing.cards)
    allocation_hold_place(allocation=allocation, order=order)
    order.status = Order.Status.MATCHED
    order.status_reason = ""
    order.save(update_fields=["status", "status_reason", "updated_at"])
    return allocation


def _short_of_funds(extra: dict) -> str:
    """The reason an order stays unmatched, shown on the order and by explain."""
    return (f"insufficient funds: the match needs a hold of {extra.get('needed')} CNY and the wallet has "
            f"{extra.get('available')} CNY available")[:300]
