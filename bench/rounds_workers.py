"""Rounds of different buckets on several real Celery workers: the same backlog matched by 1 and
by 2 workers, each a ``celery worker`` process (solo pool) on PostgreSQL and Redis.

Uses its own database, ``sanduisan_bench_workers`` (created and migrated if missing, emptied and
reloaded before each pass), and the broker of ``CELERY_BROKER_URL``. Each pass loads the same
generated market, starts the workers and waits until they are ready (not timed), then queues one
``matching.run_round`` per ``vendor:hub`` bucket with supply and times until every round has
committed. Overlapping buckets are safe (orders are taken FOR UPDATE SKIP LOCKED): an order two
rounds want goes to whichever locks it first. After each pass the slot calendar must agree with
the allocations.

    .venv/bin/python -m bench.rounds_workers [--orders 20000 --nodes 4000]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DB = "sanduisan_bench_workers"


def _workers(n: int, queue: str, database_url: str, log_dir: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "DATABASE_URL": database_url,
           "CELERY_TASK_DEFAULT_QUEUE": queue}
    return [subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue, "-P", "solo", "-n",
         f"bench{i}-{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
        cwd=ROOT, env=env, stdout=open(log_dir / f"worker{i}.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True) for i in range(n)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def one_pass(n_workers: int, market, h0: int, database_url: str) -> dict:
    from django.db.models import F, Sum

    from bench.e2e import _load
    from config.celery import app
    from marketplace.models import Allocation, ListingHour
    from matching.models import MatchRound
    from matching.snapshot import buckets_with_supply

    supply, demand, meta = market
    _load(supply, demand, meta, h0)
    sold_before = ListingHour.objects.aggregate(s=Sum("cards_sold"))["s"]
    buckets = buckets_with_supply()
    queue = f"bench-rounds-{uuid.uuid4().hex[:8]}"
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / queue
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = _workers(n_workers, queue, database_url, log_dir)
    try:
        deadline = time.monotonic() + 120
        while len(app.control.ping(timeout=0.5) or []) < n_workers:  # every worker up before the clock starts
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start; see {log_dir}")
        t0 = time.perf_counter()
        for bucket in buckets:
            app.send_task("matching.run_round", args=[bucket], queue=queue)
        deadline = time.monotonic() + 1800
        while MatchRound.objects.count() < len(buckets):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"rounds did not finish; see {log_dir}")
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
    finally:
        _stop(processes)
    sold = ListingHour.objects.aggregate(s=Sum("cards_sold"))["s"] - sold_before
    allocated = Allocation.objects.aggregate(s=Sum(F("cards") * (F("end_hour") - F("start_hour"))))["s"] or 0
    if sold != allocated:
        raise RuntimeError("the calendar and the allocations disagree")
    return {"seconds": seconds, "buckets": len(buckets), "matches": Allocation.objects.count(),
            "busiest_round_s": max(r.load_ms + r.engine_ms + r.persist_ms for r in MatchRound.objects.all()) / 1000}


def rounds_workers(*, n_orders: int, n_nodes: int) -> dict:
    from bench.e2e import setup_django

    setup_django(DB)
    from django.conf import settings
    from django.utils import timezone

    from bench.market import generate_market
    from marketplace.hours import current_hour_index

    db = settings.DATABASES["default"]
    database_url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    market = generate_market(seed=21, n_orders=n_orders, n_nodes=n_nodes)
    h0 = current_hour_index(timezone.now()) + 1
    one = one_pass(1, market, h0, database_url)
    two = one_pass(2, market, h0, database_url)
    speedup = one["seconds"] / two["seconds"]
    print(f"rounds of {one['buckets']} buckets, {n_orders:,} orders x {n_nodes:,} nodes on real Celery workers: "
          f"1 worker {one['seconds']:.2f} s ({one['matches']:,} allocations), 2 workers {two['seconds']:.2f} s "
          f"({two['matches']:,} allocations): speed-up {speedup:.2f}x (the busiest round alone "
          f"{two['busiest_round_s']:.2f} s)")
    return {"rounds_1_worker_s": round(one["seconds"], 3), "rounds_2_workers_s": round(two["seconds"], 3),
            "rounds_speedup_2_workers": round(speedup, 3), "rounds_buckets": one["buckets"],
            "rounds_matches_1_worker": one["matches"], "rounds_matches_2_workers": two["matches"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=4_000)
    args = parser.parse_args(argv)
    figures = rounds_workers(n_orders=args.orders, n_nodes=args.nodes)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
