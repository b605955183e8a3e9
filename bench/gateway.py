"""The token gateway under load: a fake upstream called directly, and the same through the gateway,
by many concurrent streaming clients, in one run.

    .venv/bin/python -m bench.gateway            # about 90 seconds
    .venv/bin/python -m bench.gateway --quick    # a smoke run, about 30 seconds

Uses its own database, ``sanduisan_bench_gw`` (created and migrated if missing, emptied each run),
and the Redis of ``BENCH_REDIS_URL`` (default db 14; its ``gw:*`` keys are deleted). Creates the demo
market of ``make run``: the demo supplier's DeepSeek-V3 token listing served by the fake upstream
(``gateway.fake_upstream``, its own uvicorn process), the demo buyer's allocation on it, then
starts the gateway (``gateway.asgi``, uvicorn with uvloop and httptools, ``--gateway-workers``
processes) and its usage flusher (``gateway.flusher``, outcomes every 5 s as ``scripts/run.sh``
runs it) against that database, both keeping their database connections (``CONN_MAX_AGE`` 60 s,
as in production; the test settings' default 0 would reconnect on every flush).

The client (this process: asyncio + aiohttp, one pooled session per target) runs ``--clients``
concurrent streams, each sending chat completions with ``stream=true`` and ``max_tokens``
chunks, back to back, for ``--seconds``; first the upstream directly, then through the gateway
(each after a warm-up). Time to first byte (TTFB) is from sending the request to the first SSE
event; requests per second count completed streams. Then, once the flusher has recorded the
events the saturated phase buffered, both are measured again for TTFB alone at ``--paced-rps``
requests a second each, for ``max(6, --seconds)`` seconds (open loop, so the latency is not
queueing behind a saturated CPU). The two paced schedules run in the same window, interleaved
(a direct request, half a period later a gateway request, ...): a burst of others' work on the
shared machine then delays both paths alike instead of whichever ran at that moment, so the
difference is the gateway's. (Until 2026-11-30 the paced phases ran one after the other, half
as long each, right after the saturated phase while the flusher was still recording its
backlog; the client's garbage collector, walking Django's heap in this process, could pause it
mid-measurement: it is now frozen with ``gc.freeze`` before measuring.) Figures:

- ``direct_rps``, ``gateway_rps``: completed streams per second at saturation;
- ``gateway_ttfb_p50_ms``, ``gateway_ttfb_p99_ms``: the gateway's ADDED TTFB (gateway minus
  direct, per percentile) in the paced phase; ``saturated_added_ttfb_p50_ms`` / ``_p99_ms`` the
  same at saturation;
- ``direct_ttfb_p99_halves_ms``, ``through_ttfb_p99_halves_ms``: each path's p99 in the first and
  the second half of the paced phase: how far the machine alone moves a p99 within one run;
- ``gateway_cpu_ms_per_request``, ``upstream_cpu_ms_per_request``: CPU time (user + system) the
  gateway's processes and the fake upstream's spent per request at saturation: a figure that
  others' load on the machine disturbs much less than rates and latencies;
- ``client_cpu_ms_per_request``: the same for this client process, [direct, through the gateway]:
  the client is not the bottleneck (about 0.2 ms per stream against the gateway's 0.4 ms), but it
  shares the 2 cores with the gateway, the upstream, Redis, the flusher and PostgreSQL, so
  ``gateway_rps`` is bounded by all of them together;
- ``usage_recorded_ratio``: usage events stored by the exchange / streams the gateway completed
  (every gateway request of the run, warm-up included), after the flusher drained the buffer.

The machine has 2 cores shared by the client, both servers, Redis and PostgreSQL; the bench waits
(``--wait-for-quiet`` seconds at most; at most 10 s again before the paced phase) for an idle CPU
before measuring and reports how idle it was (``cpu_idle_before_run``, ``cpu_idle_before_paced``).
The last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp

from bench.e2e import setup_django

BENCH_DB = "sanduisan_bench_gw"
BODY = {"model": "DeepSeek-V3", "messages": [{"role": "user", "content": "Say hello to the exchange"}],
        "stream": True}


def _market(upstream_url: str) -> tuple[str, int]:
    """The demo market (``seed_demo``, ``seed_gateway_demo``): the demo supplier's endpoint on the
    fake upstream, the demo buyer's allocation on it, with budget and key limits far above what
    the run uses. Returns (a fresh buyer key, allocation id)."""
    from django.apps import apps
    from django.core.management import call_command
    from django.db import connection

    from gateway.models import KeyLimit
    from marketplace import services as market
    from marketplace.models import Allocation, Order, Organisation, Role

    tables = [m._meta.db_table for name in ("billing", "gateway") for m in apps.get_app_config(name).get_models()]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE marketplace_organisation, matching_matchround, {', '.join(tables)} "
                       f"RESTART IDENTITY CASCADE")
    call_command("seed_demo", stdout=open(os.devnull, "w"))
    call_command("seed_gateway_demo", upstream=f"{upstream_url}/openai/v1", stdout=open(os.devnull, "w"))
    allocation = Allocation.objects.get(kind="tokens")
    Order.objects.filter(pk=allocation.order_id).update(max_spend=Decimal("100000"))
    key, buyer_key = market.api_key_create(organisation=Organisation.objects.get(slug="demo-buyer"), name="bench",
                                           role=Role.OWNER)
    KeyLimit.objects.create(api_key=key, requests_per_minute=10**9, tokens_per_minute=10**12)
    return buyer_key, allocation.pk


async def _one(session: aiohttp.ClientSession, url: str, headers: dict, body: bytes) -> float:
    """One streamed request; returns its TTFB in seconds. Raises on a non-200 or a broken stream."""
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: status {response.status}: {(await response.read())[:200]!r}")
        ttfb = None
        tail = b""
        async for data in response.content.iter_any():
            if ttfb is None:
                ttfb = time.perf_counter() - started
            tail = (tail + data)[-32:]
        if b"[DONE]" not in tail:
            raise RuntimeError(f"{url}: stream ended without [DONE]")
    return ttfb


async def _saturate(url: str, headers: dict, body: bytes, *, clients: int, seconds: float) -> tuple[list, int, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        ttfbs: list[float] = []
        deadline = time.perf_counter() + seconds

        async def loop():
            while time.perf_counter() < deadline:
                ttfbs.append(await _one(session, url, headers, body))

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return ttfbs, len(ttfbs), elapsed


async def _paced(targets: list[tuple[str, dict]], body: bytes, *, rps: float, seconds: float) -> list[list[float]]:
    """Open loop: each target gets ``rps`` requests a second for ``seconds``, the targets' schedules
    interleaved (target k's i-th request at (i + k / len(targets)) / rps), so that whatever else
    the machine does in that window delays every target alike. Returns each target's TTFBs."""
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) for _ in targets]
    try:
        tasks: list[list[asyncio.Future]] = [[] for _ in targets]
        start = time.perf_counter()
        for i in range(int(rps * seconds)):
            for k, ((url, headers), session) in enumerate(zip(targets, sessions)):
                delay = start + (i + k / len(targets)) / rps - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks[k].append(asyncio.ensure_future(_one(session, url, headers, body)))
        return [list(await asyncio.gather(*mine)) for mine in tasks]
    finally:
        for session in sessions:
            await session.close()


def _group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every process in a process group (a server and its workers)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _cpu_idle(seconds: float = 1.0) -> float:
    """Share of the machine's CPU time that was idle over ``seconds`` (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)
    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def _wait_for_quiet(*, threshold: float = 0.8, max_wait: float = 120) -> float:
    """Wait (at most ``max_wait`` s) until the CPU is mostly idle: others' work on a 2-core machine
    would otherwise be measured as the gateway's. Returns the idle share when it started."""
    deadline = time.monotonic() + max_wait
    idle = _cpu_idle()
    while idle < threshold and time.monotonic() < deadline:
        idle = _cpu_idle()
    return idle


def _drain(client, timeout: float = 120) -> None:
    """Wait until the flusher emptied the gateway's usage buffer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and client.llen("gw:usage"):
        time.sleep(0.2)


def _halves(values: list) -> tuple[list, list]:
    middle = len(values) // 2
    return values[:middle], values[middle:]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--paced-rps", type=float, default=100)
    parser.add_argument("--max-tokens", type=int, default=16, help="chunks per stream")
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument("--wait-for-quiet", type=float, default=120,
                        help="seconds to wait at most for an idle CPU before measuring")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 4
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    os.environ["REDIS_URL"] = redis_url
    setup_django(BENCH_DB)
    from django.db import connection

    from billing.models import UsageEvent
    from gateway.buffer import redis_sync, usage_flush
    from gateway.servers import Flusher, Server

    client = redis_sync()
    stale = list(client.scan_iter("gw:*", count=1000))
    if stale:
        client.delete(*stale)
    logs = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    upstream = Server("gateway.fake_upstream:app", log=logs / "upstream.log")
    gateway = flusher = None
    try:
        key, allocation_id = _market(upstream.url)
        connection.close()
        # Server processes keep their database connections as in production (CONN_MAX_AGE 60 s):
        # under the test settings' default (0) the flusher connected anew five times a second, a
        # PostgreSQL backend forked each time, and the cache refreshes connected too.
        env = {"DATABASE_URL": os.environ["DATABASE_URL"], "REDIS_URL": redis_url,
               "DJANGO_SETTINGS_MODULE": "config.settings.test", "SANDUISAN_TEST_CONN_MAX_AGE": "60",
               "SANDUISAN_GATEWAY_CACHE_TTL": "5"}
        gateway = Server("gateway.asgi:application", log=logs / "gateway.log", workers=args.gateway_workers, env=env)
        # the flusher as scripts/run.sh starts it (python -m gateway.flusher: outcomes every 5 s)
        flusher = Flusher(log=logs / "flusher.log", env=env, outcomes_interval=5.0)
        body = json.dumps({**BODY, "max_tokens": args.max_tokens}).encode()
        direct_url = f"{upstream.url}/openai/v1/chat/completions"
        gateway_url = f"{gateway.url}/v1/chat/completions"
        direct_headers = {"Content-Type": "application/json", "Authorization": "Bearer demo-upstream-secret"}
        gateway_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        served = 0

        def run(coroutine):
            return asyncio.run(coroutine)

        # This process holds Django's heap too: frozen, a full collection of it cannot stall the
        # client's event loop (and so every request in flight) in the middle of a measurement.
        gc.collect()
        gc.freeze()
        cpu_idle = _wait_for_quiet(max_wait=args.wait_for_quiet)
        # warm-up: connections, caches, the first budget reservation
        run(_saturate(direct_url, direct_headers, body, clients=args.clients, seconds=1))
        ttfbs, n, _ = run(_saturate(gateway_url, gateway_headers, body, clients=args.clients, seconds=1))
        served += n

        cpu, own = _group_cpu_seconds(upstream.process.pid), time.process_time()
        direct_ttfb, direct_n, direct_s = run(_saturate(direct_url, direct_headers, body, clients=args.clients,
                                                        seconds=args.seconds))
        upstream_cpu_ms = (_group_cpu_seconds(upstream.process.pid) - cpu) * 1000 / max(1, direct_n)
        client_direct_cpu_ms = (time.process_time() - own) * 1000 / max(1, direct_n)
        cpu, own = _group_cpu_seconds(gateway.process.pid), time.process_time()
        gateway_ttfb, gateway_n, gateway_s = run(_saturate(gateway_url, gateway_headers, body, clients=args.clients,
                                                           seconds=args.seconds))
        gateway_cpu_ms = (_group_cpu_seconds(gateway.process.pid) - cpu) * 1000 / max(1, gateway_n)
        client_gateway_cpu_ms = (time.process_time() - own) * 1000 / max(1, gateway_n)
        served += gateway_n
        # The saturated phase left thousands of usage events buffered: the flusher records them
        # before the paced phase, which measures latency at a steady 100 req/s, not beside a backlog.
        _drain(client)
        paced_idle = _wait_for_quiet(max_wait=min(10.0, args.wait_for_quiet))
        paced_seconds = max(6.0, args.seconds)
        gc.collect()
        direct_paced, gateway_paced = run(_paced([(direct_url, direct_headers), (gateway_url, gateway_headers)], body,
                                                 rps=args.paced_rps, seconds=paced_seconds))
        served += len(gateway_paced)

        # drain: the gateway's flusher records the buffered events; then count them
        _drain(client)
        usage_flush()
        recorded = UsageEvent.objects.filter(allocation_id=allocation_id, event_id__startswith="gw-").count()
    finally:
        for process in (gateway, flusher, upstream):
            if process is not None:
                process.stop()

    figures = {
        "clients": args.clients, "seconds": args.seconds, "max_tokens": args.max_tokens,
        "gateway_workers": args.gateway_workers, "paced_rps": args.paced_rps,
        "cpu_idle_before_run": round(cpu_idle, 2), "load_average_1m_after": float(open("/proc/loadavg").read().split()[0]),
        "direct_rps": round(direct_n / direct_s, 1), "gateway_rps": round(gateway_n / gateway_s, 1),
        "cpu_idle_before_paced": round(paced_idle, 2),
        "direct_ttfb_p50_ms": round(_pct(direct_paced, 0.5), 2), "direct_ttfb_p99_ms": round(_pct(direct_paced, 0.99), 2),
        # the direct path's p99 in each half of the paced phase: how much the machine alone moves a p99
        "direct_ttfb_p99_halves_ms": [round(_pct(half, 0.99), 2) for half in _halves(direct_paced)],
        "through_ttfb_p99_halves_ms": [round(_pct(half, 0.99), 2) for half in _halves(gateway_paced)],
        "through_ttfb_p50_ms": round(_pct(gateway_paced, 0.5), 2),
        "through_ttfb_p99_ms": round(_pct(gateway_paced, 0.99), 2),
        "gateway_ttfb_p50_ms": round(_pct(gateway_paced, 0.5) - _pct(direct_paced, 0.5), 2),
        "gateway_ttfb_p99_ms": round(_pct(gateway_paced, 0.99) - _pct(direct_paced, 0.99), 2),
        "saturated_added_ttfb_p50_ms": round(_pct(gateway_ttfb, 0.5) - _pct(direct_ttfb, 0.5), 2),
        "saturated_added_ttfb_p99_ms": round(_pct(gateway_ttfb, 0.99) - _pct(direct_ttfb, 0.99), 2),
        "gateway_cpu_ms_per_request": round(gateway_cpu_ms, 3), "upstream_cpu_ms_per_request": round(upstream_cpu_ms, 3),
        "client_cpu_ms_per_request": [round(client_direct_cpu_ms, 3), round(client_gateway_cpu_ms, 3)],
        "gateway_requests_served": served, "usage_events_recorded": recorded,
        "usage_recorded_ratio": round(recorded / served, 6) if served else None,
    }
    print(f"direct:  {figures['direct_rps']:>8} streams/s saturated; TTFB p50 {figures['direct_ttfb_p50_ms']} ms, "
          f"p99 {figures['direct_ttfb_p99_ms']} ms at {args.paced_rps:g} req/s")
    print(f"gateway: {figures['gateway_rps']:>8} streams/s saturated; TTFB p50 {figures['through_ttfb_p50_ms']} ms, "
          f"p99 {figures['through_ttfb_p99_ms']} ms at {args.paced_rps:g} req/s")
    print(f"added TTFB at {args.paced_rps:g} req/s: p50 {figures['gateway_ttfb_p50_ms']} ms, "
          f"p99 {figures['gateway_ttfb_p99_ms']} ms; saturated ({args.clients} clients): "
          f"p50 {figures['saturated_added_ttfb_p50_ms']} ms, p99 {figures['saturated_added_ttfb_p99_ms']} ms")
    print(f"CPU per streamed request: gateway {gateway_cpu_ms:.3f} ms (so about {1000 / gateway_cpu_ms:.0f} req/s per "
          f"dedicated core), fake upstream {upstream_cpu_ms:.3f} ms")
    print(f"CPU per streamed request of this client: {client_direct_cpu_ms:.3f} ms direct, "
          f"{client_gateway_cpu_ms:.3f} ms through the gateway")
    print(f"machine: CPU {cpu_idle:.0%} idle before the run; 1-minute load average {figures['load_average_1m_after']} "
          f"after it (2 cores)")
    print(f"usage: {recorded} events recorded for {served} streams served (ratio {figures['usage_recorded_ratio']})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
