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
from matching.engine.geo import RegionRule, region_allows
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
    demand_rows = _open_orders(wanted_chips, every_chip=len(wanted_chips) == len(chips))
    last_hour = max([r["latest_hour"] for r in demand_rows] or [h0 + 1])
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

    demand = demand_book(demand_rows, h0=h0, horizon=horizon, regions=regions,
                         region_ids=set(supply.region.tolist()))
    excluded = _excluded_pairs(demand.order_id)
    related = related_parties(organisation_ids=set(demand.buyer.tolist()))
    return Snapshot(bucket=bucket, supply=supply, demand=demand, excluded_pairs=excluded, related_parties=related,
                    listing_node={int(r[0]): int(r[1]) for r in rows},
                    listing_supplier={int(r[0]): int(r[2]) for r in rows})


def demand_book(demand_rows: list[dict], *, h0: int, horizon: int, regions: list[Region],
                region_ids: set[int] | None = None) -> DemandBook:
    """Engine arrays for order rows (``order_rows``), hours relative to ``h0``, windows cut at
    ``horizon``. With ``region_ids`` (the regions the supply book holds) only those columns of
    ``allowed`` are evaluated; the others stay False, which no listing of that book reads."""
    by_id = {r.pk: r for r in regions}
    n_regions = max(by_id) + 1
    infos = {r.pk: region_info(r, by_id) for r in regions}
    # Orders share a few region rules; build each once (a rule depends only on these fields).
    rules: dict[RegionRule, int] = {}
    rule_of: dict[tuple, int] = {}
    o_rule, opt_ptr, opt_chip, opt_cards = [], [0], [], []
    for r in demand_rows:
        key = (r["region_policy"], tuple(r["regions"]), r["home_region_id"], r["center_lat"], r["center_lon"],
               r["radius_km"])
        index = rule_of.get(key)
        if index is None:
            rule = region_rule(policy=r["region_policy"], allowed_codes=r["regions"],
                               home_region_id=r["home_region_id"], by_id=by_id, lat=r["center_lat"],
                               lon=r["center_lon"], radius_km=r["radius_km"])
            index = rule_of[key] = rules.setdefault(rule, len(rules))
        o_rule.append(index)
        for chip_id, cards in r["options"]:
            opt_chip.append(chip_id)
            opt_cards.append(cards)
        opt_ptr.append(len(opt_chip))
    allowed = np.zeros((max(1, len(rules)), n_regions), dtype=np.bool_)
    columns = [(pk, info) for pk, info in infos.items() if region_ids is None or pk in region_ids]
    for rule, i in rules.items():
        for pk, info in columns:
            allowed[i, pk] = region_allows(rule, info)
    count = len(demand_rows)

    def column(key: str, dtype) -> np.ndarray:
        return np.fromiter((r[key] for r in demand_rows), dtype=dtype, count=count)

    return DemandBook(
        order_id=column("id", np.int64), arrival=column("id", np.int64), bid=column("bid_micro", np.int64),
        duration=column("duration_hours", np.int32),
        earliest=np.maximum(0, column("earliest_hour", np.int64) - h0).astype(np.int32),
        latest_end=np.clip(column("latest_hour", np.int64) - h0, 0, horizon).astype(np.int32),
        interconnects=column("interconnect_mask", np.int8),
        placement=np.fromiter((SAME_FABRIC if r["placement"] == Order.Placement.SAME_FABRIC else SINGLE_NODE
                               for r in demand_rows), dtype=np.int8, count=count),
        rule=np.array(o_rule, dtype=np.int32), opt_ptr=np.array(opt_ptr, dtype=np.int64),
        opt_chip=np.array(opt_chip, dtype=np.int32), opt_cards=np.array(opt_cards, dtype=np.int16), allowed=allowed,
        buyer=column("organisation_id", np.int64),
    )


def _open_orders(chip_ids: set[int], *, every_chip: bool = False) -> list[dict]:
    """Open card-hour orders accepting one of these chips, without a live allocation (one under
    review is live), each with its chip options and allowed regions. With ``every_chip`` (a
    bucket of every vendor) the chip filter is left to ``order_rows``, which drops orders without
    an option, instead of a semi-join per order."""
    live = Allocation.objects.filter(status__in=Allocation.ACTIVE).values("order_id")
    orders = Order.objects.filter(status=Order.Status.OPEN, kind=Order.Kind.CARD_HOURS).exclude(pk__in=live)
    if not every_chip:
        orders = orders.filter(chip_options__chip_id__in=list(chip_ids))
    return order_rows(orders, chip_ids=chip_ids)


def order_rows(orders, *, chip_ids: set[int] | None = None) -> list[dict]:
    """Card-hour orders (a queryset) as rows for ``demand_book``, in id order, each with its chip
    options (only those of ``chip_ids``, if given) and allowed regions; orders left with no option
    are dropped. Hours are hour indexes (``earliest_hour``, ``latest_hour``), the price limit is
    in micro-CNY (``bid_micro``) and the acceptable interconnects a mask (``interconnect_mask``),
    all computed by PostgreSQL: a round reads tens of thousands of orders."""
    ids_sql, ids_params = orders.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT o.id, o.duration_hours, floor(extract(epoch FROM o.earliest_start) / 3600)::bigint,"
            " floor(extract(epoch FROM o.latest_end) / 3600)::bigint, (o.max_price_per_card_hour * %s)::bigint,"
            " o.interconnects::text, o.placement, o.region_policy, o.center_lat, o.center_lon, o.radius_km,"
            " o.organisation_id, g.home_region_id, o.original_duration_hours, o.rematch_count"
            " FROM marketplace_order o JOIN marketplace_organisation g ON g.id = o.organisation_id"
            f" WHERE o.id IN ({ids_sql}) ORDER BY o.id", [MICRO, *ids_params])
        fetched = cursor.fetchall()
        if not fetched:
            return []
        ids = int_array([row[0] for row in fetched])
        options: dict[int, list[tuple[int, int]]] = {}
        regions: dict[int, list[str]] = {}
        cursor.execute("SELECT order_id, chip_id, cards FROM marketplace_orderchipoption"
                       " WHERE order_id = ANY(%s::bigint[]) ORDER BY order_id, chip_id", [ids])
        for order_id, chip_id, cards in cursor.fetchall():
            if chip_ids is None or chip_id in chip_ids:
                options.setdefault(order_id, []).append((chip_id, cards))
        cursor.execute("SELECT ar.order_id, r.code FROM marketplace_order_allowed_regions ar"
                       " JOIN marketplace_region r ON r.id = ar.region_id WHERE ar.order_id = ANY(%s::bigint[])"
                       " ORDER BY ar.order_id, r.code", [ids])
        for order_id, code in cursor.fetchall():
            regions.setdefault(order_id, []).append(code)
    masks: dict[str, int] = {}
    rows = []
    for (pk, duration, earliest, latest, bid, interconnects, placement, policy, lat, lon, radius, organisation_id,
         home, original, rematches) in fetched:
        if pk not in options:
            continue
        mask = masks.get(interconnects)
        if mask is None:
            mask = masks[interconnects] = interconnect_mask(json.loads(interconnects) or ())
        rows.append({"id": pk, "duration_hours": duration, "earliest_hour": earliest, "latest_hour": latest,
                     "bid_micro": bid, "interconnect_mask": mask, "placement": placement, "region_policy": policy,
                     "center_lat": lat, "center_lon": lon, "radius_km": radius, "organisation_id": organisation_id,
                     "home_region_id": home, "original_duration_hours": original, "rematch_count": rematches,
                     "options": options[pk], "regions": regions.get(pk, [])})
    return rows


def _excluded_pairs(order_ids: np.ndarray) -> frozenset[tuple[int, int]]:
    if order_ids.size == 0:
        return frozenset()
    with connection.cursor() as cursor:
        cursor.execute("SELECT order_id, listing_id FROM matching_rejectedpairing WHERE order_id = ANY(%s::bigint[])",
                       [int_array(order_ids)])
        return frozenset(cursor.fetchall())
