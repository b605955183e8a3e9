"""One matching round end to end on PostgreSQL: load the book, run the engine, commit allocations.

Uses its own database, ``sanduisan_bench`` or the one named by ``BENCH_E2E_DATABASE`` (created and
migrated if missing, emptied each run), on the PostgreSQL of ``BENCH_DATABASE_URL`` (default
postgres://postgres@127.0.0.1:5432/).

    .venv/bin/python -m bench.e2e [--orders 20000 --nodes 4000 --repeat 3]

The last line is one JSON object of its figures.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

BENCH_DB = "sanduisan_bench"


def setup_django(database: str = BENCH_DB) -> None:
    """Point Django at the bench's own database on the local PostgreSQL, creating and migrating it."""
    base = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/").rstrip("/")
    os.environ["DATABASE_URL"] = f"{base}/{database}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone():
            conn.execute(f'CREATE DATABASE "{database}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _load(supply, demand, meta, h0: int) -> None:
    """Write the generated market into the database (not timed)."""
    from decimal import Decimal

    from django.db import connection, transaction

    from billing.batch import wallets_top_up

    from marketplace.hours import hour_start
    from marketplace.models import (ChipType, Listing, ListingHour, Node, Order, OrderChipOption, Organisation,
                                    Region)
    from matching.engine.types import INTERCONNECTS, from_micro

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE marketplace_organisation, matching_matchround, billing_transfer, billing_account"
                       " RESTART IDENTITY CASCADE")
    chips = {c.code: c.pk for c in ChipType.objects.all()}
    regions = {r.code: r for r in Region.objects.all()}
    horizon = supply.free.shape[1]
    with transaction.atomic():
        suppliers = {s: Organisation(name=f"supplier {s}", slug=f"s-{s}", is_supplier=True)
                     for s in np.unique(supply.supplier).tolist()}
        buyers = {b: Organisation(name=f"buyer {b}", slug=f"b-{b}", is_buyer=True,
                                  home_region=regions[meta.region_codes[b]])
                  for b in np.unique(meta.buyer_region).tolist()}
        Organisation.objects.bulk_create([*suppliers.values(), *buyers.values()])
        # Every match holds its buyer's maximum cost: fund the buyers so money never limits the round.
        # (one set-based top-up: one transaction locks its accounts once, all in id order)
        wallets_top_up(top_ups=[(buyer.pk, Decimal("1000000000"), f"bench:{buyer.slug}") for buyer in buyers.values()])
        nodes = [Node(organisation=suppliers[int(supply.supplier[i])], name=f"n{i}",
                      chip_id=chips[meta.chips[int(supply.chip[i])]], card_count=int(meta.cards[i]),
                      region=regions[meta.region_codes[int(supply.region[i])]],
                      interconnect=INTERCONNECTS[int(supply.interconnect[i])],
                      fabric_id=f"fab-{supply.fabric[i]}" if supply.fabric[i] >= 0 else "")
                 for i in range(supply.size)]
        Node.objects.bulk_create(nodes, batch_size=5000)
        listings = [Listing(organisation=n.organisation, node=n, cards=n.card_count, start=hour_start(h0),
                            end=hour_start(h0 + horizon), ask_per_card_hour=from_micro(int(supply.ask[i])))
                    for i, n in enumerate(nodes)]
        Listing.objects.bulk_create(listings, batch_size=5000)
        hours = []
        for i, (listing, node) in enumerate(zip(listings, nodes)):
            for j in np.flatnonzero(meta.offered[i] > 0).tolist():
                offered = int(meta.offered[i, j])
                hours.append(ListingHour(listing=listing, node=node, hour=h0 + j, node_cards=node.card_count,
                                         cards_offered=offered, cards_sold=offered - int(supply.free[i, j])))
        ListingHour.objects.bulk_create(hours, batch_size=10000)

        chip_codes = {i: code for i, code in enumerate(meta.chips)}
        orders, options, allowed = [], [], []
        for o in range(demand.size):
            rule = meta.rules[int(demand.rule[o])]
            mask = int(demand.interconnects[o])
            order = Order(
                organisation=buyers[int(meta.buyer_region[o])], kind="card_hours", chip_rule="chips",
                cards=int(demand.opt_cards[demand.opt_ptr[o]]),
                placement="same_fabric" if demand.placement[o] else "single_node",
                interconnects=[] if mask == 15 else [n for k, n in enumerate(INTERCONNECTS) if mask >> k & 1],
                duration_hours=int(demand.duration[o]), earliest_start=hour_start(h0 + int(demand.earliest[o])),
                latest_end=hour_start(h0 + int(demand.latest_end[o])),
                max_price_per_card_hour=from_micro(int(demand.bid[o])), region_policy=rule.policy,
                center_lat=rule.center[0] if rule.center else None, center_lon=rule.center[1] if rule.center else None,
                radius_km=int(rule.radius_km) if rule.radius_km else None)
            orders.append(order)
        Order.objects.bulk_create(orders, batch_size=5000)
        through = Order.allowed_regions.through
        for o, order in enumerate(orders):
            for k in range(int(demand.opt_ptr[o]), int(demand.opt_ptr[o + 1])):
                options.append(OrderChipOption(order=order, chip_id=chips[chip_codes[int(demand.opt_chip[k])]],
                                               cards=int(demand.opt_cards[k])))
            rule = meta.rules[int(demand.rule[o])]
            if rule.policy == "regions":
                allowed.extend(through(order_id=order.pk, region_id=regions[code].pk) for code in rule.allowed)
        OrderChipOption.objects.bulk_create(options, batch_size=10000)
        through.objects.bulk_create(allowed, batch_size=10000)


def run_e2e(*, n_orders: int, n_nodes: int, repeat: int = 3) -> dict:
    """``repeat`` rounds, each over the same market freshly written, and the median: a 2-core
    machine shared with others varies by a quarter from one run to the next, so one round says
    little. Prints each round's line, then the runs; the figures returned are the median round's,
    with every round's time beside them."""
    setup_django(os.environ.get("BENCH_E2E_DATABASE", BENCH_DB))
    from bench.market import generate_market

    market = generate_market(seed=21, n_orders=n_orders, n_nodes=n_nodes)
    runs = [_e2e_once(market, n_orders=n_orders, n_nodes=n_nodes) for _ in range(max(1, repeat))]
    times = [run["e2e_round_s"] for run in runs]
    median = sorted(runs, key=lambda run: run["e2e_round_s"])[(len(runs) - 1) // 2]
    print(f"end-to-end rounds: {', '.join(f'{t:.2f}' for t in times)} s; median {median['e2e_round_s']:.2f} s")
    return {**median, "e2e_round_runs_s": times, "e2e_round_min_s": min(times), "e2e_round_max_s": max(times)}


def _e2e_once(market, *, n_orders: int, n_nodes: int) -> dict:
    """One round over a freshly written market. Not timed: writing the market, then VACUUM ANALYZE
    (a live database's tables have statistics and are vacuumed by autovacuum; tables written a
    second ago have no statistics, so the planner would be timed guessing, and autovacuum would
    start on them during the round) and loading the engine's compiled kernels (a worker does that
    once when it starts, ``matching.tasks``; the time is reported as ``e2e_kernels_s``)."""
    from django.db import connection
    from django.db.models import F, Sum
    from django.utils import timezone

    from marketplace.hours import current_hour_index
    from marketplace.models import Allocation, ListingHour
    from matching.engine.engine import engine_warm
    from matching.models import MatchRound
    from matching.services import round_run

    supply, demand, meta = market
    h0 = current_hour_index(timezone.now()) + 1
    t0 = time.perf_counter()
    _load(supply, demand, meta, h0)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine_warm()
    kernels_s = time.perf_counter() - t0
    sold_before = ListingHour.objects.aggregate(s=Sum("cards_sold"))["s"]

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    server0, client0 = _cpu_seconds(backend), time.process_time()
    t0 = time.perf_counter()
    outcome = round_run(bucket="*:*", round_id="bench-e2e")
    e2e_s = time.perf_counter() - t0
    client_cpu, server1 = time.process_time() - client0, _cpu_seconds(backend)
    server_cpu = server1 - server0 if server0 is not None and server1 is not None else None

    round_ = MatchRound.objects.get(round_id=outcome.round_id)
    sold_after = ListingHour.objects.aggregate(s=Sum("cards_sold"))["s"]
    allocated = Allocation.objects.aggregate(s=Sum(F("cards") * (F("end_hour") - F("start_hour"))))["s"] or 0
    if sold_after - sold_before != allocated:
        raise RuntimeError("the calendar and the allocations disagree")
    engine_s = round_.engine_ms / 1000
    load_round_s, persist_s = round_.load_ms / 1000, round_.persist_ms / 1000
    # What the round's own phases leave: the commit (deferred foreign-key and balanced-ledger
    # checks, the WAL flush) and the idempotency look-ups around them.
    commit_s = max(0.0, e2e_s - load_round_s - engine_s - persist_s)
    print(f"end-to-end round {n_orders:,} orders x {n_nodes:,} nodes on PostgreSQL: {e2e_s:.2f} s "
          f"(load {load_round_s:.2f} s, engine {engine_s:.2f} s, persist {persist_s:.2f} s, "
          f"commit {commit_s:.2f} s; {round_.matches:,} allocations committed; "
          f"{e2e_s / max(engine_s, 1e-9):.1f}x the engine alone; setup {load_s:.0f} s and kernel loading "
          f"{kernels_s:.2f} s not timed)")
    if server_cpu is not None:
        # On a busy machine the wall time includes waiting for a core; the CPU the round used
        # (this process and its PostgreSQL backend, which take turns) is what an idle one would take.
        print(f"CPU used by the round: {client_cpu + server_cpu:.2f} s (Python {client_cpu:.2f} s, "
              f"PostgreSQL backend {server_cpu:.2f} s)")
    return {"e2e_round_s": round(e2e_s, 3), "e2e_load_s": load_round_s, "e2e_engine_s": engine_s,
            "e2e_persist_s": persist_s, "e2e_commit_s": round(commit_s, 3), "e2e_matches": round_.matches,
            "e2e_kernels_s": round(kernels_s, 3),
            "e2e_round_cpu_s": round(client_cpu + server_cpu, 3) if server_cpu is not None else None}


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of a local process, from /proc; None where that is not readable
    (PostgreSQL on another machine, no procfs)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="One end-to-end matching round on PostgreSQL.")
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=4_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds to run, each on a freshly written market")
    args = parser.parse_args()
    print(json.dumps(run_e2e(n_orders=args.orders, n_nodes=args.nodes, repeat=args.repeat)))
