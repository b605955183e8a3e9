"""Load one bucket of the market from PostgreSQL into engine arrays (reads only).

A bucket is ``vendor:hub`` with ``*`` wildcards (``nvidia:guizhou``, ``huawei:*``, ``*:*``): supply
is the listings of nodes whose chip vendor and region hub match; demand is every open card-hour
order that accepts at least one chip of that vendor. Buckets may overlap; persisting a round
re-checks everything under row locks, so overlapping rounds are safe.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from django.db import connection
from django.utils import timezone
from django.utils.text import slugify

from config.sql import int_array, int_columns
from marketplace.demand import region_info, region_rule
from marketplace.hours import current_hour_index
from marketplace.models import Allocation, ChipType, Listing, Node, Order, Region
from marketplace.selectors import related_parties
from matching.engine.geo import RegionRule, rules_allow
from matching.engine.types import (INTERCONNECTS, MICRO, SAME_FABRIC, SINGLE_NODE, DemandBook, SupplyBook,
                                   interconnect_mask, to_micro)

MAX_HORIZON_HOURS = 24 * 14  # a round looks two weeks ahead; later hours are matched later
OTHER_HUB = "other"


@dataclass
class Snapshot:
    bucket: str
    supply: SupplyBook
    demand: DemandBook
    excluded_pairs: frozenset[tuple[int, int]] = frozenset()
    related_parties: frozenset[tuple[int, int]] = frozenset()
    listing_node: dict[int, int] = field(default_factory=dict)
    listing_supplier: dict[int, int] = field(default_factory=dict)


def vendor_slug(vendor: str) -> str:
    return slugify(vendor)


def hub_of(region: Region, by_id: dict[int, Region]) -> str:
    current = region
    while current is not None:
        if current.hub:
            return current.hub
        current = by_id.get(current.parent_id) if current.parent_id else None
    return OTHER_HUB


def parse_bucket(bucket: str) -> tuple[str, str]:
    vendor, _, hub = bucket.partition(":")
    return vendor or "*", hub or "*"


def buckets_with_supply(*, now=None) -> list[str]:
    """Every vendor:hub that has active card-hour listings ending after the next hour."""
    now = now or timezone.now()
    by_id = {r.pk: r for r in Region.objects.all()}
    rows = (Listing.objects.filter(status=Listing.Status.ACTIVE, token_model__isnull=True,
                                   node__status=Node.Status.ACTIVE, end__gt=now)
            .values_list("node__chip__vendor", "node__region_id").distinct())
    return sorted({f"{vendor_slug(v)}:{hub_of(by_id[r], by_id)}" for v, r in rows})


def buckets_for_order(order: Order) -> list[str]:
    vendors = {vendor_slug(v) for v in order.chip_options.values_list("chip__vendor", flat=True)}
    return [b for b in buckets_with_supply() if parse_bucket(b)[0] in vendors]


def load_snapshot(bucket: str, *, now=None) -> Snapshot:
    now = now or timezone.now()
    h0 = current_hour_index(now) + 1  # the next whole hour is the first that can still be sold
    vendor, hub = parse_bucket(bucket)
    regions = list(Region.objects.all())
    by_id = {r.pk: r for r in regions}
    hubs = {r.pk: hub_of(r, by_id) for r in regions}
    hub_index = {h: i for i, h in enumerate(sorted(set(hubs.values())))}
    chips = {c.pk: vendor_slug(c.vendor) for c in ChipType.objects.all()}
    wanted_chips = {pk for pk, v in chips.items() if vendor in ("*", v)}

    # --- supply -----------------------------------------------------------------------------
    listings = Listing.objects.filter(
        status=Listing.Status.ACTIVE, token_model__isnull=True, node__status=Node.Status.ACTIVE,
        node__chip_id__in=list(wanted_chips), end__gt=now,
    ).values_list("pk", "node_id", "organisation_id", "node__chip_id", "node__region_id", "node__interconnect",
                  "node__fabric_id", "ask_per_card_hour", "min_cards", "min_hours")
    rows = [row for row in listings if hub in ("*", hubs[row[4]])]
    open_orders = _open_orders(wanted_chips, every_chip=len(wanted_chips) == len(chips))
    last_hour = int(open_orders.latest_hour.max()) if open_orders.size else h0 + 1
    horizon = max(1, min(MAX_HORIZON_HOURS, last_hour - h0))

    n = len(rows)
    listing_id = np.array([r[0] for r in rows], dtype=np.int64)
    free = np.zeros((n, horizon), dtype=np.int16)
    if n:
        # The free calendar as (listing, hour, free cards) triples in one text column: tens of
        # thousands of rows read as tuples cost more than the query.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT string_agg(concat_ws(',', listing_id, hour - %s, cards_offered - cards_sold), ',')"
                " FROM marketplace_listinghour WHERE listing_id = ANY(%s::bigint[]) AND hour >= %s AND hour < %s",
                [h0, int_array(listing_id), h0, h0 + horizon])
            data = int_columns(cursor.fetchone()[0], 3)
        by_id = np.argsort(listing_id)
        free[by_id[np.searchsorted(listing_id, data[:, 0], sorter=by_id)], data[:, 1]] = data[:, 2]
    fabric_ids: dict[tuple, int] = {}
    fabric = np.array([fabric_ids.setdefault((r[2], r[6], r[3]), len(fabric_ids)) if r[6] else -1 for r in rows],
                      dtype=np.int32)
    supply = SupplyBook(
        h0=h0, listing_id=listing_id, node_id=np.array([r[1] for r in rows], dtype=np.int64),
        supplier=np.array([r[2] for r in rows], dtype=np.int64), chip=np.array([r[3] for r in rows], dtype=np.int32),
        region=np.array([r[4] for r in rows], dtype=np.int32),
        interconnect=np.array([INTERCONNECTS.index(r[5]) for r in rows], dtype=np.int8), fabric=fabric,
        ask=np.array([to_micro(r[7]) for r in rows], dtype=np.int64),
        min_cards=np.array([r[8] for r in rows], dtype=np.int16), min_hours=np.array([r[9] for r in rows], dtype=np.int16),
        free=free, price_bucket=np.array([r[3] * 1000 + hub_index[hubs[r[4]]] for r in rows], dtype=np.int64),
    )

    demand = demand_book_of(open_orders, h0=h0, horizon=horizon, regions=regions,
                            region_ids=set(supply.region.tolist()))
    excluded = _excluded_pairs(demand.order_id)
    related = related_parties(organisation_ids=set(demand.buyer.tolist()))
    return Snapshot(bucket=bucket, supply=supply, demand=demand, excluded_pairs=excluded, related_parties=related,
                    listing_node={int(r[0]): int(r[1]) for r in rows},
                    listing_supplier={int(r[0]): int(r[2]) for r in rows})


@dataclass
class OrderColumns:
    """Card-hour orders as columns, in id order: what ``demand_book_of`` needs. Hours are hour
    indexes, the price limit is in micro-CNY, the acceptable interconnects a mask; options are CSR
    (order i accepts ``opt_chip[opt_ptr[i]:opt_ptr[i + 1]]`` with the matching ``opt_cards``);
    ``region_keys`` holds each order's region policy fields (policy, allowed region codes, the
    buyer's home region, centre latitude and longitude, radius)."""

    id: np.ndarray
    duration_hours: np.ndarray
    earliest_hour: np.ndarray
    latest_hour: np.ndarray
    bid_micro: np.ndarray
    interconnect_mask: np.ndarray
    same_fabric: np.ndarray
    organisation_id: np.ndarray
    original_duration_hours: np.ndarray  # 0 where not set
    rematch_count: np.ndarray
    region_keys: list[tuple]
    opt_ptr: np.ndarray
    opt_chip: np.ndarray
    opt_cards: np.ndarray

    @property
    def size(self) -> int:
        return int(self.id.shape[0])


def demand_book(demand_rows: list[dict], *, h0: int, horizon: int, regions: list[Region],
                region_ids: set[int] | None = None) -> DemandBook:
    """Engine arrays for order rows (``order_rows``), hours relative to ``h0``, windows cut at
    ``horizon`` (see ``demand_book_of``)."""
    opt_ptr = np.cumsum([0] + [len(r["options"]) for r in demand_rows]).astype(np.int64)
    options = [option for r in demand_rows for option in r["options"]]
    columns = OrderColumns(
        **{key: np.array([r[key] for r in demand_rows], dtype=np.int64) for key in (
            "id", "duration_hours", "earliest_hour", "latest_hour", "bid_micro", "interconnect_mask",
            "organisation_id", "rematch_count")},
        same_fabric=np.array([r["placement"] == Order.Placement.SAME_FABRIC for r in demand_rows], dtype=np.bool_),
        original_duration_hours=np.array([r["original_duration_hours"] or 0 for r in demand_rows], dtype=np.int64),
        region_keys=[(r["region_policy"], tuple(r["regions"]), r["home_region_id"], r["center_lat"], r["center_lon"],
                      r["radius_km"]) for r in demand_rows],
        opt_ptr=opt_ptr, opt_chip=np.array([c for c, _ in options], dtype=np.int64).reshape(-1),
        opt_cards=np.array([n for _, n in options], dtype=np.int64).reshape(-1))
    return demand_book_of(columns, h0=h0, horizon=horizon, regions=regions, region_ids=region_ids)


def demand_book_of(orders: OrderColumns, *, h0: int, horizon: int, regions: list[Region],
                   region_ids: set[int] | None = None) -> DemandBook:
    """Engine arrays for orders, hours relative to ``h0``, windows cut at ``horizon``. With
    ``region_ids`` (the regions the supply book holds) only those columns of ``allowed`` are
    evaluated; the others stay False, which no listing of that book reads."""
    by_id = {r.pk: r for r in regions}
    n_regions = max(by_id) + 1
    infos = {r.pk: region_info(r, by_id) for r in regions}
    # Orders share region rules; build each once (a rule depends only on the key's fields).
    rules: dict[RegionRule, int] = {}
    rule_of: dict[tuple, int] = {}
    for key in orders.region_keys:
        if key not in rule_of:
            policy, codes, home, lat, lon, radius = key
            rule = region_rule(policy=policy, allowed_codes=codes, home_region_id=home, by_id=by_id, lat=lat,
                               lon=lon, radius_km=radius)
            rule_of[key] = rules.setdefault(rule, len(rules))
    allowed = np.zeros((max(1, len(rules)), n_regions), dtype=np.bool_)
    columns = [pk for pk in infos if region_ids is None or pk in region_ids]
    if rules and columns:
        allowed[:len(rules), columns] = rules_allow(list(rules), [infos[pk] for pk in columns])
    return DemandBook(
        order_id=orders.id.astype(np.int64), arrival=orders.id.astype(np.int64),
        bid=orders.bid_micro.astype(np.int64), duration=orders.duration_hours.astype(np.int32),
        earliest=np.maximum(0, orders.earliest_hour - h0).astype(np.int32),
        latest_end=np.clip(orders.latest_hour - h0, 0, horizon).astype(np.int32),
        interconnects=orders.interconnect_mask.astype(np.int8),
        placement=np.where(orders.same_fabric, SAME_FABRIC, SINGLE_NODE).astype(np.int8),
        rule=np.array([rule_of[key] for key in orders.region_keys], dtype=np.int32),
        opt_ptr=orders.opt_ptr.astype(np.int64), opt_chip=orders.opt_chip.astype(np.int32),
        opt_cards=orders.opt_cards.astype(np.int16), allowed=allowed, buyer=orders.organisation_id.astype(np.int64),
    )


def _open_orders(chip_ids: set[int], *, every_chip: bool = False) -> OrderColumns:
    """Open card-hour orders accepting one of these chips, without a live allocation (one under
    review is live), each with its chip options and allowed regions. With ``every_chip`` (a
    bucket of every vendor) the chip filter is left to ``order_columns``, which drops orders
    without an option, instead of a semi-join per order."""
    live = Allocation.objects.filter(status__in=Allocation.ACTIVE).values("order_id")
    orders = Order.objects.filter(status=Order.Status.OPEN, kind=Order.Kind.CARD_HOURS).exclude(pk__in=live)
    if not every_chip:
        orders = orders.filter(chip_options__chip_id__in=list(chip_ids))
    return order_columns(orders, chip_ids=chip_ids)


def order_columns(orders, *, chip_ids: set[int] | None = None) -> OrderColumns:
    """Card-hour orders (a queryset) as columns, with their chip options (only those of
    ``chip_ids``, if given) and allowed regions; orders left with no option are dropped. Hours,
    prices in micro-CNY and the options are computed and read as arrays: a round reads tens of
    thousands of orders."""
    ids_sql, ids_params = orders.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT o.id, o.duration_hours, floor(extract(epoch FROM o.earliest_start) / 3600)::bigint,"
            " floor(extract(epoch FROM o.latest_end) / 3600)::bigint, (o.max_price_per_card_hour * %s)::bigint,"
            " o.organisation_id, coalesce(o.original_duration_hours, 0), o.rematch_count, o.interconnects::text,"
            " o.placement, o.region_policy, g.home_region_id, o.center_lat, o.center_lon, o.radius_km"
            " FROM marketplace_order o JOIN marketplace_organisation g ON g.id = o.organisation_id"
            f" WHERE o.id IN ({ids_sql}) ORDER BY o.id", [MICRO, *ids_params])
        fetched = cursor.fetchall()
        ids = int_array([row[0] for row in fetched])
        # unordered: numpy sorts the (order, chip) pairs faster than the aggregate would
        cursor.execute("SELECT string_agg(concat_ws(',', order_id, chip_id, cards), ',')"
                       " FROM marketplace_orderchipoption WHERE order_id = ANY(%s::bigint[])", [ids])
        options = int_columns(cursor.fetchone()[0], 3)
        options = options[np.lexsort((options[:, 1], options[:, 0]))]
        cursor.execute("SELECT ar.order_id, r.code FROM marketplace_order_allowed_regions ar"
                       " JOIN marketplace_region r ON r.id = ar.region_id WHERE ar.order_id = ANY(%s::bigint[])"
                       " ORDER BY ar.order_id, r.code", [ids])
        codes: dict[int, list[str]] = {}
        for order_id, code in cursor.fetchall():
            codes.setdefault(order_id, []).append(code)
    if chip_ids is not None:
        options = options[np.isin(options[:, 1], np.array(sorted(chip_ids), dtype=np.int64))]
    columns = list(zip(*fetched)) or [()] * 15
    numbers = np.array(columns[:8], dtype=np.int64).reshape(8, -1)
    kept = np.flatnonzero(np.isin(numbers[0], options[:, 0]))  # orders with an option left
    numbers = numbers[:, kept]
    masks: dict[str, int] = {}
    for text in set(columns[8]):
        masks[text] = interconnect_mask(json.loads(text) or ())
    picked = kept.tolist()
    placement, policy, home, lat, lon, radius = ([column[k] for k in picked] for column in columns[9:])
    return OrderColumns(
        id=numbers[0], duration_hours=numbers[1], earliest_hour=numbers[2], latest_hour=numbers[3],
        bid_micro=numbers[4], organisation_id=numbers[5], original_duration_hours=numbers[6],
        rematch_count=numbers[7],
        interconnect_mask=np.array([masks[columns[8][k]] for k in picked], dtype=np.int64).reshape(-1),
        same_fabric=np.array([p == Order.Placement.SAME_FABRIC for p in placement], dtype=np.bool_).reshape(-1),
        region_keys=[(p, tuple(codes.get(pk, ())), h, la, lo, r)
                     for pk, p, h, la, lo, r in zip(numbers[0].tolist(), policy, home, lat, lon, radius)],
        opt_ptr=np.append(np.searchsorted(options[:, 0], numbers[0]), options.shape[0]).astype(np.int64),
        opt_chip=options[:, 1].copy(), opt_cards=options[:, 2].copy())


def order_rows(orders, *, chip_ids: set[int] | None = None) -> list[dict]:
    """``order_columns`` as one dict per order (for callers that adjust orders before
    ``demand_book``): id, duration_hours, earliest_hour, latest_hour, bid_micro,
    interconnect_mask, placement, region_policy, regions (allowed codes), home_region_id,
    center_lat, center_lon, radius_km, organisation_id, original_duration_hours (None where not
    set), rematch_count and options [(chip id, cards)]."""
    c = order_columns(orders, chip_ids=chip_ids)
    rows = []
    for i in range(c.size):
        policy, codes, home, lat, lon, radius = c.region_keys[i]
        lo, hi = int(c.opt_ptr[i]), int(c.opt_ptr[i + 1])
        rows.append({
            "id": int(c.id[i]), "duration_hours": int(c.duration_hours[i]), "earliest_hour": int(c.earliest_hour[i]),
            "latest_hour": int(c.latest_hour[i]), "bid_micro": int(c.bid_micro[i]),
            "interconnect_mask": int(c.interconnect_mask[i]),
            "placement": Order.Placement.SAME_FABRIC if c.same_fabric[i] else Order.Placement.SINGLE_NODE,
            "region_policy": policy, "regions": list(codes), "home_region_id": home, "center_lat": lat,
            "center_lon": lon, "radius_km": radius, "organisation_id": int(c.organisation_id[i]),
            "original_duration_hours": int(c.original_duration_hours[i]) or None,
            "rematch_count": int(c.rematch_count[i]),
            "options": list(zip(c.opt_chip[lo:hi].tolist(), c.opt_cards[lo:hi].tolist()))})
    return rows


def _excluded_pairs(order_ids: np.ndarray) -> frozenset[tuple[int, int]]:
    if order_ids.size == 0:
        return frozenset()
    with connection.cursor() as cursor:
        cursor.execute("SELECT order_id, listing_id FROM matching_rejectedpairing WHERE order_id = ANY(%s::bigint[])",
                       [int_array(order_ids)])
        return frozenset(cursor.fetchall())
