"""Where the simulated market's welfare goes, against hindsight: the latest simulated market in
``DATABASE_URL`` (``manage.py simulate`` leaves it there) replayed through one plain greedy under
different knowledge of the future.

The greedy places each order on the listing that fits with the best surplus (net of prices when
given; the earliest start among equals), in a given sequence: arrival order reproduces the market
(a check on the replay), and the other sequences and reserve prices show what ordering within a
round, holding orders until their start, hindsight and scarcity prices are worth. Prints one line
per replay and, last, one JSON object (welfare in CNY).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sanduisan_sim .venv/bin/python bench/hindsight_replay.py
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(budget: float) -> dict:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    import django

    django.setup()
    from django.db.models import Min

    from bench.optimum import greedy_plan, lp_dual_bound
    from marketplace.hours import hour_start
    from marketplace.models import ListingHour, Order, Organisation
    from simulation.driver import SimRun
    from simulation.hindsight import hindsight_books, online_columns

    latest = Organisation.objects.filter(slug__regex=r"^sim\d+-[0-9a-f]{8}-s\d+$").order_by("-pk").first()
    if latest is None:
        raise SystemExit("no simulated market in this database: run manage.py simulate first")
    tag = latest.slug.rsplit("-", 1)[0]

    def side(letter: str) -> list[int]:
        return sorted(Organisation.objects.filter(slug__regex=rf"^{re.escape(tag)}-{letter}\d+$")
                      .values_list("pk", flat=True))

    suppliers, incumbents = side("s"), side("i")
    first = ListingHour.objects.filter(listing__organisation_id__in=suppliers).aggregate(h=Min("hour"))["h"]
    hours = Order.objects.filter(organisation_id__in=incumbents).values_list("duration_hours", flat=True).first()
    run = SimRun(tag=tag, start=hour_start(first), end=hour_start(first + hours), first_hour=first, hours=hours,
                 supplier_ids=suppliers, buyer_ids=side("b") + incumbents, incumbent_ids=incumbents)
    supply, demand = hindsight_books(run)
    seed = online_columns(run, supply, demand)
    # Each hour's orders arrive in one burst, stamped together: the stamps' rank is the arrival hour.
    created = dict(Order.objects.filter(pk__in=demand.order_id.tolist()).values_list("pk", "created_at"))
    rank = {stamp: i for i, stamp in enumerate(sorted(set(created.values())))}
    arrival = np.array([rank[created[int(o)]] for o in demand.order_id])
    t0 = time.perf_counter()
    lp = lp_dual_bound(supply, demand, seed_cols=seed, time_budget=budget)
    print(f"{tag}: {demand.size:,} orders, {supply.size} listings; offline optimum between {lp['lower'] / 1e6:,.0f} "
          f"and {lp['bound'] / 1e6:,.0f} CNY ({time.perf_counter() - t0:.0f} s); the market's placements "
          f"{seed[4].sum() / 1e6:,.0f} CNY", flush=True)

    pk, bid = np.arange(demand.size), demand.bid
    replays = {
        "market_replay": ("arrival order (the market, replayed)", np.lexsort((pk, arrival)), None, -np.inf),
        "round_by_bid": ("each round by bid, highest first", np.lexsort((-bid, arrival)), None, -np.inf),
        "held_to_start_by_bid": ("every order held until its start hour, then by bid",
                                 np.lexsort((-bid, np.maximum(arrival, demand.earliest))), None, -np.inf),
        "hindsight_by_bid": ("hindsight: all orders by bid, highest first", np.argsort(-bid, kind="stable"), None,
                             -np.inf),
        "reserve_prices": ("arrival order, hindsight prices as reserve prices", np.lexsort((pk, arrival)), lp["lam"],
                           0.0),
        "reserve_prices_x0.75": ("arrival order, 0.75 x hindsight prices as reserve prices", np.lexsort((pk, arrival)),
                                 lp["lam"] * 0.75, 0.0),
    }
    out = {"orders": int(demand.size), "market_cny": round(seed[4].sum() / 1e6),
           "offline_plan_cny": round(lp["lower"] / 1e6), "lp_bound_cny": round(lp["bound"] / 1e6)}
    for key, (what, sequence, lam, floor) in replays.items():
        plan = greedy_plan(supply, demand, sequence=sequence, lam=lam, floor=floor)
        print(f"  {what}: {plan['value'] / 1e6:,.0f} CNY ({plan['value'] / lp['bound']:.3f} of the bound), "
              f"{plan['orders']:,} orders served", flush=True)
        out[f"{key}_cny"] = round(plan["value"] / 1e6)
        out[f"{key}_orders"] = plan["orders"]
    return out


if __name__ == "__main__":
    print(json.dumps(main(float(sys.argv[1]) if len(sys.argv) > 1 else 30.0)))
