"""Matching writes: running and persisting rounds (allocations, their holds, flagged matches'
reviews). Deciding reviews and failing nodes are lifecycle steps (``lifecycle.services``).

Lock order (the same as marketplace.services, so nothing deadlocks):
    node (FOR SHARE here) -> order -> allocation -> listing-hours by (listing_id, hour), then
    ledger accounts.
"""
from __future__ import annotations

import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
from django.db import connection, transaction
from django.utils import timezone

from config.errors import Unavailable
from marketplace.demand import order_region_rule, region_info
from marketplace.hours import current_hour_index, hour_index
from marketplace.models import (Allocation, AllocationPart, Listing, Node, Order, Organisation,
                                Region)

from billing.services import (InsufficientFunds, MatchHold, allocation_hold_expiry, allocation_hold_place,
                              allocation_max_cost, buyer_funds_lock, match_holds_place)

from .engine.engine import run_engine
from .engine.types import EngineParams, EngineResult, from_micro
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


def review_policy_current() -> ReviewPolicy:
    return ReviewPolicy.objects.order_by("-pk").first() or ReviewPolicy()


# --- rounds -----------------------------------------------------------------------------------

def round_run(*, bucket: str, round_id: str | None = None, price_rule: str | None = None,
              now=None, pause_before_commit: float = 0.0) -> RoundOutcome:
    """Load a snapshot of ``bucket``, run the engine and persist the result atomically.

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
    params = EngineParams(excluded_pairs=snapshot.excluded_pairs, price_rule=price_rule or EngineParams.price_rule)
    result = run_engine(snapshot.supply, snapshot.demand, params)
    t2 = time.perf_counter()
    return round_persist(round_id=round_id, bucket=bucket, result=result, price_rule=params.price_rule,
                         orders_considered=snapshot.demand.size, listings_considered=snapshot.supply.size,
                         timings=(t1 - t0, t2 - t1), pause_before_commit=pause_before_commit)


def round_persist(*, round_id: str, bucket: str, result: EngineResult, price_rule: str, orders_considered: int = 0,
                  listings_considered: int = 0, timings: tuple[float, float] = (0.0, 0.0),
                  pause_before_commit: float = 0.0) -> RoundOutcome:
    """Write an engine result in one transaction: allocations, their parts, sold slots, order
    states and reviews all commit together or not at all.

    Everything the engine assumed is re-checked under locks, because other rounds, buyers and
    suppliers may have acted since the snapshot: nodes are taken FOR SHARE, orders FOR UPDATE
    SKIP LOCKED (an order another round holds is simply left for later), then the touched
    listing-hours FOR UPDATE in (listing_id, hour) order. A match that no longer fits is dropped;
    its order stays open for the next round.
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

        part_listing = result.part_listing_id
        listing_rows = {row[0]: row for row in Listing.objects.filter(pk__in=np.unique(part_listing).tolist())
                        .values_list("pk", "node_id", "organisation_id", "status", "ask_per_card_hour")}
        node_ids = sorted({row[1] for row in listing_rows.values()})
        with connection.cursor() as cursor:
            cursor.execute("SELECT id, status, region_id FROM marketplace_node WHERE id = ANY(%s) "
                           "ORDER BY id FOR SHARE", [node_ids])
            node_rows = {r[0]: r for r in cursor.fetchall()}
            cursor.execute(
                "SELECT o.id FROM marketplace_order o WHERE o.id = ANY(%s) AND o.status = 'open' AND NOT EXISTS ("
                " SELECT 1 FROM marketplace_allocation a WHERE a.order_id = o.id AND a.status = ANY(%s))"
                " ORDER BY o.id FOR UPDATE SKIP LOCKED",
                [result.order_id.tolist(), list(Allocation.ACTIVE)])
            lockable = {r[0] for r in cursor.fetchall()}
            # Listing-hours every match touches, locked in (listing_id, hour) order.
            cells_l, cells_h = _touched_cells(result)
            cursor.execute(
                "SELECT lh.id, lh.listing_id, lh.hour, lh.cards_offered - lh.cards_sold FROM marketplace_listinghour lh"
                " JOIN unnest(%s::bigint[], %s::int[]) AS t(listing_id, hour)"
                " ON lh.listing_id = t.listing_id AND lh.hour = t.hour"
                " ORDER BY lh.listing_id, lh.hour FOR UPDATE OF lh",
                [cells_l.tolist(), cells_h.tolist()])
            cell_rows = cursor.fetchall()
        cell_id = {(l, h): pk for pk, l, h, _ in cell_rows}
        remaining = {(l, h): free for _, l, h, free in cell_rows}
        # Every match holds its buyer's maximum cost; ledger accounts are locked last.
        orders = {o.pk: o for o in Order.objects.filter(pk__in=lockable).only(
            "pk", "kind", "organisation_id", "max_price_per_card_hour")}
        funds = buyer_funds_lock(organisation_ids={o.organisation_id for o in orders.values()})
        cost: dict[int, Decimal] = {}
        short: dict[int, dict] = {}

        accepted: list[int] = []
        sold: dict[int, int] = defaultdict(int)
        for i in range(matches):
            order_id = int(result.order_id[i])
            lo, hi = int(result.part_ptr[i]), int(result.part_ptr[i + 1])
            parts = [(int(result.part_listing_id[p]), int(result.part_cards[p])) for p in range(lo, hi)]
            hours = range(int(result.start_hour[i]), int(result.end_hour[i]))
            ok = order_id in lockable and all(
                l in listing_rows and listing_rows[l][3] == Listing.Status.ACTIVE
                and node_rows.get(listing_rows[l][1], (0, ""))[1] == Node.Status.ACTIVE
                and all(remaining.get((l, h), -1) >= c for h in hours) for l, c in parts)
            if not ok:
                continue
            buyer = orders[order_id].organisation_id
            needed = allocation_max_cost(order=orders[order_id], cards=int(result.cards[i]), hours=len(hours))
            if funds[buyer] < needed:
                short[order_id] = {"needed": needed, "available": funds[buyer]}
                continue
            funds[buyer] -= needed
            cost[order_id] = needed
            for l, c in parts:
                for h in hours:
                    remaining[(l, h)] -= c
                    sold[cell_id[(l, h)]] += c
            accepted.append(i)
        for order_id, extra in short.items():
            Order.objects.filter(pk=order_id).update(status_reason=_short_of_funds(extra))

        flags = _review_flags(result, accepted, listing_rows, node_rows)
        now = timezone.now()
        # Set-based inserts: one statement each for allocations and parts (the ORM's per-value
        # preparation costs seconds at tens of thousands of rows).
        idx = np.array(accepted, dtype=np.int64)
        first_part = result.part_listing_id[result.part_ptr[idx]] if idx.size else np.zeros(0, np.int64)
        order_ids = result.order_id[idx].tolist()
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO marketplace_allocation (order_id, supplier_id, kind, status, start_hour, end_hour, cards,"
                " price_per_card_hour, price_rule, round_id, created_at, updated_at)"
                " SELECT t.order_id, t.supplier_id, 'card_hours', t.status, t.start_hour, t.end_hour, t.cards, t.price,"
                " %s, %s, %s, %s FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::int[], %s::int[], %s::int[],"
                " %s::numeric[]) AS t(order_id, supplier_id, status, start_hour, end_hour, cards, price)"
                " RETURNING id, order_id",
                [result.price_rule, round_id, now, now, order_ids,
                 [listing_rows[int(l)][2] for l in first_part],
                 [Allocation.Status.PENDING_REVIEW if flags.get(i) else Allocation.Status.CONFIRMED for i in accepted],
                 result.start_hour[idx].tolist(), result.end_hour[idx].tolist(), result.cards[idx].tolist(),
                 [from_micro(int(p)) for p in result.price[idx]]])
            # an order has at most one allocation per round, so the order id names its allocation
            allocation_of = {order_id: pk for pk, order_id in cursor.fetchall()}
            part_alloc, part_listing_ids, part_nodes, part_cards = [], [], [], []
            for i in accepted:
                pk = allocation_of[int(result.order_id[i])]
                for p in range(int(result.part_ptr[i]), int(result.part_ptr[i + 1])):
                    listing = listing_rows[int(result.part_listing_id[p])]
                    part_alloc.append(pk)
                    part_listing_ids.append(listing[0])
                    part_nodes.append(listing[1])
                    part_cards.append(int(result.part_cards[p]))
            cursor.execute(
                "INSERT INTO marketplace_allocationpart (allocation_id, listing_id, node_id, cards)"
                " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::int[])",
                [part_alloc, part_listing_ids, part_nodes, part_cards])
        match_holds_place(holds=[
            MatchHold(organisation_id=orders[order_id].organisation_id, allocation_id=allocation_of[order_id],
                      amount=cost[order_id], expires_at=allocation_hold_expiry(end_hour=int(result.end_hour[i])))
            for i, order_id in zip(accepted, order_ids)], batch_reference=f"round:{round_id}")
        reviews = [MatchReview(allocation_id=allocation_of[int(result.order_id[i])], reasons=flags[i])
                   for i in accepted if flags.get(i)]
        MatchReview.objects.bulk_create(reviews, batch_size=5000)
        with connection.cursor() as cursor:
            if sold:
                cursor.execute(
                    "UPDATE marketplace_listinghour lh SET cards_sold = lh.cards_sold + t.n"
                    " FROM unnest(%s::bigint[], %s::int[]) AS t(id, n) WHERE lh.id = t.id",
                    [list(sold.keys()), list(sold.values())])
            confirmed = [int(result.order_id[i]) for i in accepted if not flags.get(i)]
            if confirmed:
                cursor.execute("UPDATE marketplace_order SET status = 'matched', status_reason = '', updated_at = %s"
                               " WHERE id = ANY(%s)",
                               [now, confirmed])
        if pause_before_commit:
            time.sleep(pause_before_commit)
        welfare = sum(int(result.surplus[i]) for i in accepted)
        MatchRound.objects.create(
            round_id=round_id, bucket=bucket, status=MatchRound.Status.COMMITTED, price_rule=price_rule,
            orders_considered=orders_considered, listings_considered=listings_considered, matches=len(accepted),
            flagged=len(reviews), skipped_stale=matches - len(accepted), welfare=from_micro(welfare),
            load_ms=int(timings[0] * 1000), engine_ms=int(timings[1] * 1000),
            persist_ms=int((time.perf_counter() - t_start) * 1000))
    return RoundOutcome(round_id, bucket, MatchRound.Status.COMMITTED, len(accepted), len(reviews),
                        matches - len(accepted))


def _touched_cells(result: EngineResult) -> tuple[np.ndarray, np.ndarray]:
    match_of_part = np.repeat(np.arange(result.count), np.diff(result.part_ptr))
    duration = (result.end_hour - result.start_hour)[match_of_part]
    listing = np.repeat(result.part_listing_id, duration)
    offset = np.arange(int(duration.sum())) - np.repeat(np.cumsum(duration) - duration, duration)
    hour = np.repeat(result.start_hour[match_of_part], duration) + offset
    cells = np.unique(np.stack([listing, hour]), axis=1)
    return cells[0], cells[1]


def _review_flags(result: EngineResult, accepted: list[int], listing_rows: dict, node_rows: dict) -> dict[int, list]:
    """Which accepted matches wait for an admin, and why (the policy in force)."""
    policy = review_policy_current()
    if not policy.enabled or not accepted:
        return {}
    supplier_ids = {listing_rows[int(result.part_listing_id[result.part_ptr[i]])][2] for i in accepted}
    reliability = dict(Organisation.objects.filter(pk__in=supplier_ids).values_list("pk", "reliability"))
    by_id = {r.pk: r for r in Region.objects.all()}
    buyer_home = dict(Order.objects.filter(pk__in=[int(result.order_id[i]) for i in accepted])
                      .values_list("pk", "organisation__home_region_id"))
    flags: dict[int, list] = {}
    for i in accepted:
        reasons = []
        hours = int(result.end_hour[i] - result.start_hour[i])
        value = from_micro(int(result.price[i])) * int(result.cards[i]) * hours
        if value > policy.value_threshold:
            reasons.append({"code": "high_value", "message": f"worth {value} CNY, above {policy.value_threshold}"})
        listing = listing_rows[int(result.part_listing_id[result.part_ptr[i]])]
        if reliability.get(listing[2], Decimal(1)) < policy.min_supplier_reliability:
            reasons.append({"code": "low_reliability",
                            "message": f"supplier reliability {reliability[listing[2]]} below "
                                       f"{policy.min_supplier_reliability}"})
        home = buyer_home.get(int(result.order_id[i]))
        if policy.flag_outside_buyer_country and home:
            buyer_country = _country(by_id[home], by_id)
            node_country = _country(by_id[node_rows[listing[1]][2]], by_id)
            if buyer_country != node_country:
                reasons.append({"code": "outside_buyer_country",
                                "message": f"runs in {node_country}, the buyer is in {buyer_country}"})
        if reasons:
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
                                    output=l.price_output_per_m)
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
                                    max_output=o.max_price_output_per_m))
    pairs = match_tokens(specs, endpoints)
    count = 0
    with transaction.atomic():
        if MatchRound.objects.select_for_update().filter(round_id=round_id).exists():
            return RoundOutcome(round_id, TOKENS_BUCKET, MatchRound.Status.COMMITTED, replayed=True)
        listings = {l.pk: l for l in Listing.objects.filter(pk__in=[p[1] for p in pairs]).select_related("node")}
        now_hour = current_hour_index(now)
        for order_id, listing_id in sorted(pairs):
            order = Order.objects.select_for_update(skip_locked=True).filter(pk=order_id,
                                                                             status=Order.Status.OPEN).first()
            listing = listings[listing_id]
            if order is None or listing.status != Listing.Status.ACTIVE:
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
