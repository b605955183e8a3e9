"""Load one bucket of the market from PostgreSQL into engine arrays (reads only).

A bucket is ``vendor:hub`` with ``*`` wildcards (``nvidia:guizhou``, ``huawei:*``, ``*:*``): supply
is the listings of nodes whose chip vendor and region hub match; demand is every open card-hour
order that accepts at least one chip of that vendor. Buckets may overlap; persisting a round
re-checks everything under row locks, so overlapping rounds are safe.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from django.db import connection
from django.utils import timezone
from django.utils.text import slugify

from marketplace.demand import region_info, region_rule
from marketplace.hours import current_hour_index, hour_index
from marketplace.models import Allocation, ChipType, Listing, Node, Order, Region
from marketplace.selectors import related_parties
from matching.engine.geo import RegionRule, region_allows
from matching.engine.types import (ANY_INTERCONNECT, INTERCONNECTS, SAME_FABRIC, SINGLE_NODE, DemandBook,
                                   SupplyBook, interconnect_mask, to_micro)

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
    demand_rows = _open_orders(wanted_chips)
    last_hour = max([hour_index(r["latest_end"]) for r in demand_rows] or [h0 + 1])
    horizon = max(1, min(MAX_HORIZON_HOURS, last_hour - h0))

    n = len(rows)
    listing_id = np.array([r[0] for r in rows], dtype=np.int64)
    free = np.zeros((n, horizon), dtype=np.int16)
    if n:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT listing_id, hour, cards_offered - cards_sold FROM marketplace_listinghour "
                "WHERE listing_id = ANY(%s) AND hour >= %s AND hour < %s",
                [listing_id.tolist(), h0, h0 + horizon])
            data = np.array(cursor.fetchall(), dtype=np.int64).reshape(-1, 3)
        position = {lid: i for i, lid in enumerate(listing_id.tolist())}
        if data.size:
            rows_idx = np.fromiter((position[x] for x in data[:, 0]), dtype=np.int64, count=data.shape[0])
            free[rows_idx, data[:, 1] - h0] = data[:, 2]
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

    demand = demand_book(demand_rows, h0=h0, horizon=horizon, regions=regions)
    excluded = _excluded_pairs(demand.order_id)
    related = related_parties(organisation_ids=set(demand.buyer.tolist()))
    return Snapshot(bucket=bucket, supply=supply, demand=demand, excluded_pairs=excluded, related_parties=related,
                    listing_node={int(r[0]): int(r[1]) for r in rows},
                    listing_supplier={int(r[0]): int(r[2]) for r in rows})


def demand_book(demand_rows: list[dict], *, h0: int, horizon: int, regions: list[Region]) -> DemandBook:
    """Engine arrays for order rows (``order_rows``), hours relative to ``h0``, windows cut at
    ``horizon``."""
    by_id = {r.pk: r for r in regions}
    n_regions = max(by_id) + 1
    rules: dict[RegionRule, int] = {}
    infos = {r.pk: region_info(r, by_id) for r in regions}
    o_rule, opt_ptr, opt_chip, opt_cards = [], [0], [], []
    for r in demand_rows:
        rule = region_rule(policy=r["region_policy"], allowed_codes=r["regions"], home_region_id=r["home_region_id"],
                           by_id=by_id, lat=r["center_lat"], lon=r["center_lon"], radius_km=r["radius_km"])
        o_rule.append(rules.setdefault(rule, len(rules)))
        for chip_id, cards in r["options"]:
            opt_chip.append(chip_id)
            opt_cards.append(cards)
        opt_ptr.append(len(opt_chip))
    allowed = np.zeros((max(1, len(rules)), n_regions), dtype=np.bool_)
    for rule, i in rules.items():
        for pk, info in infos.items():
            allowed[i, pk] = region_allows(rule, info)
    return DemandBook(
        order_id=np.array([r["id"] for r in demand_rows], dtype=np.int64),
        arrival=np.array([r["id"] for r in demand_rows], dtype=np.int64),
        bid=np.array([to_micro(r["max_price_per_card_hour"]) for r in demand_rows], dtype=np.int64),
        duration=np.array([r["duration_hours"] for r in demand_rows], dtype=np.int32),
        earliest=np.array([max(0, hour_index(r["earliest_start"]) - h0) for r in demand_rows], dtype=np.int32),
        latest_end=np.array([max(0, min(horizon, hour_index(r["latest_end"]) - h0)) for r in demand_rows],
                            dtype=np.int32),
        interconnects=np.array([interconnect_mask(r["interconnects"]) if r["interconnects"] else ANY_INTERCONNECT
                                for r in demand_rows], dtype=np.int8),
        placement=np.array([SAME_FABRIC if r["placement"] == Order.Placement.SAME_FABRIC else SINGLE_NODE
                            for r in demand_rows], dtype=np.int8),
        rule=np.array(o_rule, dtype=np.int32), opt_ptr=np.array(opt_ptr, dtype=np.int64),
        opt_chip=np.array(opt_chip, dtype=np.int32), opt_cards=np.array(opt_cards, dtype=np.int16), allowed=allowed,
        buyer=np.array([r["organisation_id"] for r in demand_rows], dtype=np.int64),
    )


def _open_orders(chip_ids: set[int]) -> list[dict]:
    """Open card-hour orders accepting one of these chips, without a live allocation (one under
    review is live), each with its chip options and allowed regions."""
    live = Allocation.objects.filter(status__in=Allocation.ACTIVE).values("order_id")
    return order_rows(Order.objects.filter(status=Order.Status.OPEN, kind=Order.Kind.CARD_HOURS,
                                           chip_options__chip_id__in=list(chip_ids)).exclude(pk__in=live),
                      chip_ids=chip_ids)


def order_rows(orders, *, chip_ids: set[int] | None = None) -> list[dict]:
    """Card-hour orders (a queryset) as rows for ``demand_book``, each with its chip options (only
    those of ``chip_ids``, if given) and allowed regions; orders left with no option are dropped."""
    orders = list(orders.distinct().order_by("pk")
                  .values("id", "duration_hours", "earliest_start", "latest_end", "max_price_per_card_hour",
                          "interconnects", "placement", "region_policy", "center_lat", "center_lon", "radius_km",
                          "organisation_id", "organisation__home_region_id", "original_duration_hours",
                          "rematch_count"))
    if not orders:
        return []
    ids = [o["id"] for o in orders]
    options: dict[int, list[tuple[int, int]]] = {}
    regions: dict[int, list[str]] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT order_id, chip_id, cards FROM marketplace_orderchipoption WHERE order_id = ANY(%s) "
                       "ORDER BY order_id, chip_id", [ids])
        for order_id, chip_id, cards in cursor.fetchall():
            if chip_ids is None or chip_id in chip_ids:
                options.setdefault(order_id, []).append((chip_id, cards))
        cursor.execute("SELECT ar.order_id, r.code FROM marketplace_order_allowed_regions ar "
                       "JOIN marketplace_region r ON r.id = ar.region_id WHERE ar.order_id = ANY(%s)", [ids])
        for order_id, code in cursor.fetchall():
            regions.setdefault(order_id, []).append(code)
    for o in orders:
        o["options"] = options.get(o["id"], [])
        o["regions"] = regions.get(o["id"], [])
        o["home_region_id"] = o.pop("organisation__home_region_id")
    return [o for o in orders if o["options"]]


def _excluded_pairs(order_ids: np.ndarray) -> frozenset[tuple[int, int]]:
    from .models import RejectedPairing

    if order_ids.size == 0:
        return frozenset()
    return frozenset(RejectedPairing.objects.filter(order_id__in=order_ids.tolist()).values_list("order_id",
                                                                                                 "listing_id"))
