"""Token metering end to end: batches of 1,000 usage events POSTed to a real HTTP server.

    .venv/bin/python -m bench.metering            # 200,000 events, a few minutes
    .venv/bin/python -m bench.metering --quick    # 20,000 events, under a minute

Uses its own database, ``sanduisan_bench`` (see ``bench/e2e.py``), emptied each run. Creates a
supplier, a buyer, a token listing and, through a matching round, a token allocation; starts
gunicorn (``--workers``, sync workers, default 2 on this 2-core machine) on a free local port
against the same database; posts fresh batches from ``--clients`` client threads until N events
are stored (``events_per_s``), then the same batches again (``replay_events_per_s``). Baseline
in the same run: a raw psycopg ``executemany`` of ``INSERT ... ON CONFLICT DO NOTHING`` of N
fresh rows into the same table (``raw_insert_rows_per_s``). Finally, when
``billing.settlement.settle_pending_usage`` exists, one call is timed over at least 100,000
unsettled events (``settle_100k_s``, scaled to 100,000 events when more were settled). The
last line printed is one JSON object with every figure.

The server runs with ``config.settings.test`` except that database connections are kept
between requests (``CONN_MAX_AGE=60``, as in ``config.settings.base`` and production); the test
settings close them after each request, which a server would never do.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal
from pathlib import Path

import orjson

from bench.e2e import BENCH_DB, setup_django

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000
SETTLE_MIN = 100_000


def wsgi_app():
    """gunicorn's application factory (``bench.metering:wsgi_app()``): the project's WSGI app with
    database connections kept between requests."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    import django
    from django.conf import settings

    django.setup()
    settings.DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("BENCH_CONN_MAX_AGE", "60"))
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


# --- setup (not timed) ------------------------------------------------------------------------------

def _market() -> tuple[int, str, int, int]:
    """A supplier with a token endpoint, a buyer's token order matched to it. Returns
    (supplier id, supplier API key, allocation id, buyer id)."""
    from django.apps import apps
    from django.db import connection
    from django.utils import timezone
    from rest_framework.test import APIClient

    from marketplace import services as market
    from marketplace.models import Allocation, Role
    from matching.services import round_run

    with connection.cursor() as cursor:
        billing = ", ".join(m._meta.db_table for m in apps.get_app_config("billing").get_models())
        cursor.execute(f"TRUNCATE marketplace_organisation, matching_matchround, {billing} RESTART IDENTITY CASCADE")
    supplier = market.organisation_create(name="bench supplier", slug="bench-supplier", is_supplier=True)
    buyer = market.organisation_create(name="bench buyer", slug="bench-buyer", is_buyer=True,
                                       home_region_code="CN-SH")
    _, supplier_key = market.api_key_create(organisation=supplier, name="bench", role=Role.OWNER)
    _, buyer_key = market.api_key_create(organisation=buyer, name="bench", role=Role.OWNER)
    node = market.node_create(organisation=supplier, name="bench-node", chip_code="nvidia-h800-sxm", card_count=8,
                              region_code="CN-GZ-GA", interconnect="infiniband")
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    market.listing_create(organisation=supplier, node_id=node.pk, cards=8, start=start,
                          end=start + timedelta(hours=24), ask_per_card_hour=Decimal("10.00"),
                          token_endpoint=market.TokenEndpoint("DeepSeek-V3", Decimal("0.5"), Decimal("2"),
                                                              Decimal("8"), tokens_per_minute=10**12))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {buyer_key}")
    response = client.post("/api/v1/orders", {
        "kind": "tokens", "model": "DeepSeek-V3", "expected_input_tokens": 10_000_000,
        "expected_output_tokens": 2_000_000, "expected_cache_hit_ratio": "0.25",
        "max_prices": {"input_hit_per_m": "0.5", "input_miss_per_m": "2", "output_per_m": "8"},
        "max_spend": "1000000000"}, format="json")
    if response.status_code != 201:
        raise RuntimeError(f"token order refused: {response.status_code} {response.content[:500]!r}")
    round_run(bucket="tokens")
    allocation = Allocation.objects.filter(kind="tokens").first()
    if allocation is None:  # a token order may need a funded wallet
        _top_up(buyer.pk, "bench")
        round_run(bucket="tokens")
        allocation = Allocation.objects.filter(kind="tokens").first()
    if allocation is None:
        raise RuntimeError("the matching round made no token allocation")
    # The events are spread over the last hour: the allocation has been live since before then,
    # and its buyer agreed to far more than they cost (max_spend above), so none is refused.
    Allocation.objects.filter(pk=allocation.pk).update(start_hour=allocation.start_hour - 2)
    return supplier.pk, supplier_key, allocation.pk, buyer.pk


def _top_up(organisation_id: int, reference: str) -> None:
    from billing.services import wallet_top_up

    wallet_top_up(organisation_id=organisation_id, amount=Decimal("1000000"), reference=reference)


def _events(allocation_id: int, prefix: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    now = datetime.now(dt_timezone.utc)
    return [{"event_id": f"{prefix}-{i}", "allocation": allocation_id,
             "occurred_at": (now - timedelta(seconds=rng.randrange(1, 3600))).isoformat().replace("+00:00", "Z"),
             "input_hit_tokens": rng.randrange(0, 2000), "input_miss_tokens": rng.randrange(0, 2000),
             "output_tokens": rng.randrange(0, 1000)} for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the server -------------------------------------------------------------------------------------

def _start_server(port: int, workers: int, log) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": os.environ["DATABASE_URL"], "DJANGO_SETTINGS_MODULE": "config.settings.test",
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", "sync",
         "--bind", f"127.0.0.1:{port}", "--backlog", "128", "--timeout", "120", "--log-level", "warning",
         "bench.metering:wsgi_app()"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_ready(port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/usage-events/batch")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not answer in time")


def _post_all(port: int, key: str, bodies: list[bytes], clients: int, expect: str) -> tuple[float, dict]:
    """POST every body once, from ``clients`` threads; returns (seconds, summed counts)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    lock = threading.Lock()
    todo = iter(range(len(bodies)))
    totals: dict[str, int] = {}
    failures: list[str] = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None or failures:
                    return
                conn.request("POST", "/api/v1/usage-events/batch", body=bodies[i], headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    failures.append(f"{response.status}: {data[:300]!r}")
                    return
                counts = orjson.loads(data)["counts"]
                with lock:
                    for status, n in counts.items():
                        totals[status] = totals.get(status, 0) + n
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"requests failed: {failures[:3]}")
    if totals.get(expect, 0) != sum(totals.values()):
        raise RuntimeError(f"expected every event {expect}, got {totals}")
    return elapsed, totals


# --- the baseline -----------------------------------------------------------------------------------

INSERT = ("INSERT INTO billing_usageevent (organisation_id, event_id, allocation_id, occurred_at, input_hit_tokens,"
          " input_miss_tokens, output_tokens, amount, payload_hash, settled, created_at)"
          " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, false, %s)"
          " ON CONFLICT (organisation_id, event_id) DO NOTHING")


def _raw_rows(organisation_id: int, allocation_id: int, prefix: str, n: int, seed: int) -> list[tuple]:
    from billing.rating import TokenPrices, rate_tokens
    from marketplace.models import Allocation

    a = Allocation.objects.get(pk=allocation_id)
    prices = TokenPrices(a.price_input_hit_per_m, a.price_input_miss_per_m, a.price_output_per_m)
    now = datetime.now(dt_timezone.utc)
    rows = []
    for e in _events(allocation_id, prefix, n, seed):
        at = datetime.fromisoformat(e["occurred_at"])
        amount = rate_tokens(prices=prices, input_hit=e["input_hit_tokens"], input_miss=e["input_miss_tokens"],
                             output=e["output_tokens"]).total
        digest = hashlib.sha256(json.dumps([allocation_id, at.isoformat(), e["input_hit_tokens"],
                                            e["input_miss_tokens"], e["output_tokens"]]).encode()).hexdigest()
        rows.append((organisation_id, e["event_id"], allocation_id, at, e["input_hit_tokens"],
                     e["input_miss_tokens"], e["output_tokens"], amount, digest, now))
    return rows


def _raw_insert(url: str, rows: list[tuple]) -> float:
    import psycopg

    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cursor:
            cursor.executemany(INSERT, rows)  # psycopg 3 pipelines executemany
        conn.commit()
        return time.perf_counter() - t0


# --- settlement -------------------------------------------------------------------------------------

def _settle(url: str, organisation_id: int, allocation_id: int, buyer_id: int) -> dict:
    try:
        from billing import settlement
    except ImportError:
        settlement = None
    settle = getattr(settlement, "settle_pending_usage", None)
    if settle is None:
        print("settlement: billing.settlement.settle_pending_usage is missing; not timed")
        return {"settle_100k_s": None, "settle_s": None, "settled_events": None}
    from billing.models import UsageEvent

    unsettled = UsageEvent.objects.filter(settled=False).count()
    if unsettled < SETTLE_MIN:
        _raw_insert(url, _raw_rows(organisation_id, allocation_id, "fill", SETTLE_MIN - unsettled, seed=3))
        unsettled = UsageEvent.objects.filter(settled=False).count()
    _top_up(buyer_id, "bench-settle")
    t0 = time.perf_counter()
    settled = settle()
    elapsed = time.perf_counter() - t0
    per_100k = elapsed * SETTLE_MIN / settled if settled else None
    print(f"settlement: {settled:,} of {unsettled:,} unsettled events in {elapsed:.2f} s"
          f" ({per_100k and round(per_100k, 2)} s per 100,000)")
    return {"settle_100k_s": per_100k and round(per_100k, 3), "settle_s": round(elapsed, 3),
            "settled_events": settled}


# --- main -------------------------------------------------------------------------------------------

def run(*, events: int, workers: int, clients: int, database: str = BENCH_DB) -> dict:
    setup_django(database)
    url = os.environ["DATABASE_URL"]
    from django.db import connection

    supplier_id, key, allocation_id, buyer_id = _market()
    batches = -(-events // BATCH)
    all_events = _events(allocation_id, "http", batches * BATCH, seed=1)
    bodies = [orjson.dumps({"events": all_events[i:i + BATCH]}) for i in range(0, len(all_events), BATCH)]
    warm = [orjson.dumps({"events": _events(allocation_id, f"warm{w}", 10, seed=w)}) for w in range(2 * workers)]
    connection.close()

    port = _free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="bench-metering-", suffix=".log", delete=False)
    server = _start_server(port, workers, log)
    try:
        _wait_ready(port, server)
        _post_all(port, key, warm, clients, "created")  # imports, URLconf, first database connections
        http_s, counts = _post_all(port, key, bodies, clients, "created")
        replay_s, _ = _post_all(port, key, bodies, clients, "replayed")
    except Exception:
        log.flush()
        log.seek(0)
        print(log.read()[-3000:], file=sys.stderr)
        raise
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        os.unlink(log.name)

    n = counts["created"]
    from billing.models import UsageEvent

    stored = UsageEvent.objects.filter(event_id__startswith="http-").count()
    if stored != n:
        raise RuntimeError(f"{n:,} events reported created but {stored:,} stored")
    events_per_s = n / http_s
    replay_per_s = n / replay_s
    print(f"HTTP batches of {BATCH:,} ({workers} gunicorn sync workers, {clients} client threads): "
          f"{n:,} events in {http_s:.2f} s = {events_per_s:,.0f} events/s; "
          f"replayed in {replay_s:.2f} s = {replay_per_s:,.0f} events/s")

    rows = _raw_rows(supplier_id, allocation_id, "raw", n, seed=2)
    raw_s = _raw_insert(url, rows)
    raw_per_s = n / raw_s
    print(f"baseline raw psycopg executemany INSERT ... ON CONFLICT DO NOTHING: {n:,} rows in {raw_s:.2f} s = "
          f"{raw_per_s:,.0f} rows/s; HTTP path is {events_per_s / raw_per_s:.2f}x the raw insert")
    with connection.cursor() as cursor:  # the baseline rows are not usage anyone reported
        cursor.execute("DELETE FROM billing_usageevent WHERE event_id LIKE 'raw-%%'")

    figures = {"events_per_s": round(events_per_s), "replay_events_per_s": round(replay_per_s),
               "raw_insert_rows_per_s": round(raw_per_s), "ratio_vs_raw": round(events_per_s / raw_per_s, 3)}
    figures.update(_settle(url, supplier_id, allocation_id, buyer_id))
    figures.update({"events": n, "workers": workers, "clients": clients})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 events")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--clients", type=int, default=4, help="client threads")
    parser.add_argument("--database", default=BENCH_DB, help="emptied each run (default %(default)s)")
    args = parser.parse_args()
    events = args.events or (20_000 if args.quick else 200_000)
    print(json.dumps(run(events=events, workers=args.workers, clients=args.clients, database=args.database)))


if __name__ == "__main__":
    main()
