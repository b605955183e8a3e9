"""The gateway's Redis side: key names, and flushing what the ASGI app buffered (usage events and
request outcomes) into the database in batches.

The app appends one JSON event per served request to the list ``gw:usage`` and counts endpoint
outcomes in the hash ``gw:outcomes``; ``usage_flush`` moves them into billing (1,000 events per
batch, the usage-event fast path) under a Redis lock, so one flusher runs at a time whether it is
the app's background loop or the ``gateway.usage_flush`` Celery task. An event is removed from
the list only after its batch committed; a crash in between flushes it again, which billing
answers as a replay (idempotent by event id), so every served request is recorded exactly once.
"""
from __future__ import annotations

import uuid
from functools import lru_cache

import orjson
import redis
from django.conf import settings
from django.db import close_old_connections

from . import services

USAGE_LIST = "gw:usage"
OUTCOMES = "gw:outcomes"  # field "<endpoint_id>:ok" / "<endpoint_id>:fail" -> count
COUNTS = "gw:usage:counts"  # flush results by status, for operators and the bench
FLUSH_LOCK = "gw:flush-lock"
BATCH = 1000
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def spend_key(allocation_id: int) -> str:
    return f"gw:spend:{allocation_id}"


@lru_cache(maxsize=1)
def redis_sync() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def usage_flush(*, max_batches: int = 1000, outcomes: bool = True) -> dict[str, int]:
    """Flush buffered usage and (unless ``outcomes`` is false) outcomes. Returns counts per result
    status (empty when another flusher holds the lock). Idempotent and safe to run from several
    processes."""
    client = redis_sync()
    token = uuid.uuid4().hex
    if not client.set(FLUSH_LOCK, token, nx=True, px=60_000):
        return {}
    close_old_connections()
    totals: dict[str, int] = {}
    try:
        for _ in range(max_batches):
            items = client.lrange(USAGE_LIST, 0, BATCH - 1)
            if not items:
                break
            counts = services.gateway_usage_record(events=[orjson.loads(item) for item in items])
            client.ltrim(USAGE_LIST, len(items), -1)
            pipe = client.pipeline(transaction=False)
            for status, n in counts.items():
                if n:
                    pipe.hincrby(COUNTS, status, n)
                    totals[status] = totals.get(status, 0) + n
            pipe.execute()
            client.pexpire(FLUSH_LOCK, 60_000)
        if outcomes:
            _outcomes_flush(client)
    finally:
        client.eval(_RELEASE, 1, FLUSH_LOCK, token)
    return totals


def _outcomes_flush(client: redis.Redis) -> None:
    staging = f"{OUTCOMES}:{uuid.uuid4().hex}"
    try:
        client.rename(OUTCOMES, staging)  # atomic: new outcomes go to a fresh hash
    except redis.ResponseError:  # nothing counted since the last flush
        return
    raw = client.hgetall(staging)
    client.delete(staging)
    outcomes: dict[int, list[int]] = {}
    for field, value in raw.items():
        endpoint, _, kind = field.decode().partition(":")
        pair = outcomes.setdefault(int(endpoint), [0, 0])
        pair[0 if kind == "ok" else 1] += int(value)
    services.endpoint_outcomes_record(outcomes={k: (v[0], v[1]) for k, v in outcomes.items()})
