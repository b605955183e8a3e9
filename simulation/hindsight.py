"""The offline optimum a simulated market is measured against: the same orders and the same free
supply, all known in advance.

Supply is every card-hour listing of the run's suppliers over the run's hours, less what the
incumbents rented before the market opened; demand is every card-hour order the market's buyers
posted, with its window, chips, region policy and bid (an order re-opened after a failure counts
once, with its original duration and a window from the run's start, which only loosens the bound).
The welfare of serving order o on listing l is ``(bid - ask) x cards x hours``, as the online
market's welfare is counted. ``bench.optimum.lp_dual_bound`` bounds the LP relaxation from above
by exact dual prices on every listing-hour (weak duality: whatever prices the search reached, the
bound is valid, so the share of it the market captured is never overstated) and finds a feasible
offline plan beneath it: the offline optimum lies between the two, and their gap says how far the
bound can be from it.
"""
from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import numpy as np
from django.db import connection

from bench.optimum import lp_dual_bound
from marketplace.hours import hour_index
from marketplace.models import Listing, Order, Region
from matching.engine.types import INTERCONNECTS, DemandBook, SupplyBook, to_micro
from matching.snapshot import demand_book, order_rows

from .driver import SimRun


def hindsight_books(run: SimRun) -> tuple[SupplyBook, DemandBook]:
    h0, horizon = run.first_hour, run.hours
    listings = list(Listing.objects.filter(organisation_id__in=run.supplier_ids, token_model__isnull=True)
                    .order_by("pk").values_list("pk", "node_id", "organisation_id", "node__chip_id", "node__region_id",
                                                "node__interconnect", "ask_per_card_hour", "min_cards", "min_hours"))
    position = {row[0]: i for i, row in enumerate(listings)}
    free = np.zeros((len(listings), horizon), dtype=np.int32)
    with connection.cursor() as cursor:
        cursor.execute("SELECT listing_id, hour, cards_offered FROM marketplace_listinghour"
                       " WHERE listing_id = ANY(%s) AND hour >= %s AND hour < %s", [list(position), h0, h0 + horizon])
        for listing_id, hour, offered in cursor.fetchall():
            free[position[listing_id], hour - h0] = offered
        # What the incumbents rented before the market opened is not the market's to sell.
        cursor.execute(
            "SELECT p.listing_id, p.cards, a.start_hour, a.end_hour FROM marketplace_allocationpart p"
            " JOIN marketplace_allocation a ON a.id = p.allocation_id JOIN marketplace_order o ON o.id = a.order_id"
            " WHERE o.organisation_id = ANY(%s) AND a.status <> 'released'", [run.incumbent_ids])
        for listing_id, cards, start, end in cursor.fetchall():
            if listing_id in position:
                free[position[listing_id], max(0, start - h0):max(0, min(horizon, end - h0))] -= cards
    free = np.maximum(free, 0).astype(np.int16)
    supply = SupplyBook(
        h0=h0, listing_id=np.array([r[0] for r in listings], dtype=np.int64),
        node_id=np.array([r[1] for r in listings], dtype=np.int64),
        supplier=np.array([r[2] for r in listings], dtype=np.int64),
        chip=np.array([r[3] for r in listings], dtype=np.int32), region=np.array([r[4] for r in listings], dtype=np.int32),
        interconnect=np.array([INTERCONNECTS.index(r[5]) for r in listings], dtype=np.int8),
        fabric=np.full(len(listings), -1, dtype=np.int32), ask=np.array([to_micro(r[6]) for r in listings], dtype=np.int64),
        min_cards=np.array([r[7] for r in listings], dtype=np.int16),
        min_hours=np.array([r[8] for r in listings], dtype=np.int16), free=free)
    rows = order_rows(Order.objects.filter(organisation_id__in=market_buyers(run), kind=Order.Kind.CARD_HOURS))
    for row in rows:
        if row["rematch_count"]:
            row["duration_hours"] = row["original_duration_hours"] or row["duration_hours"]
            row["earliest_hour"] = hour_index(run.start)
    return supply, demand_book(rows, h0=h0, horizon=horizon, regions=list(Region.objects.all()))


def market_buyers(run: SimRun) -> list[int]:
    incumbents = set(run.incumbent_ids)
    return [pk for pk in run.buyer_ids if pk not in incumbents]


def online_columns(run: SimRun, supply: SupplyBook, demand: DemandBook):
    """What the market did, as columns (order, listing, start, cards, profit in micro-CNY): when
    they form a feasible offline plan (they do unless a failure moved work), their welfare is a
    floor under the offline optimum, whatever plan the hindsight search finds itself."""
    order_at = {int(o): i for i, o in enumerate(demand.order_id)}
    listing_at = {int(l): i for i, l in enumerate(supply.listing_id)}
    cols = ([], [], [], [], [])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.order_id, p.listing_id, a.start_hour, a.end_hour, a.cards FROM marketplace_allocation a"
            " JOIN marketplace_allocationpart p ON p.allocation_id = a.id JOIN marketplace_order o ON o.id = a.order_id"
            " WHERE a.kind = 'card_hours' AND a.status IN ('confirmed', 'running', 'completed')"
            " AND o.rematch_count = 0 AND o.organisation_id = ANY(%s)", [market_buyers(run)])
        for order_id, listing_id, start, end, cards in cursor.fetchall():
            o, l = order_at.get(order_id), listing_at.get(listing_id)
            if o is None or l is None or end - start != int(demand.duration[o]):
                continue
            for column, value in zip(cols, (o, l, start - run.first_hour, cards,
                                            (int(demand.bid[o]) - int(supply.ask[l])) * cards * (end - start))):
                column.append(value)
    return tuple(np.array(c, dtype=np.int64) for c in cols)


def hindsight_bound(run: SimRun, supply: SupplyBook, demand: DemandBook, *, time_budget: float = 30.0) -> dict:
    """The offline optimum of the run's books, pinned between two values in CNY:

    - ``bound``: the LP relaxation's upper bound (rounded up to the cent), which no offline plan
      exceeds;
    - ``plan``: the best feasible offline plan found (rounded down; the market's own placements
      count when they form one), which the offline optimum reaches at least.
    ``gap`` = (bound - plan) / bound and ``converged`` (gap within 2%); ``seconds`` and
    ``evaluations`` of the dual search, which ``time_budget`` stops."""
    lp = lp_dual_bound(supply, demand, seed_cols=online_columns(run, supply, demand), time_budget=time_budget)
    cent = Decimal("0.01")
    return {"bound": (Decimal(lp["bound"]) / 1_000_000).quantize(cent, ROUND_CEILING),
            "plan": (Decimal(lp["lower"]) / 1_000_000).quantize(cent, ROUND_FLOOR), "gap": lp["gap"],
            "converged": lp["converged"], "evaluations": lp["evaluations"], "seconds": lp["seconds"]}
