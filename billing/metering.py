"""Token metering: usage events in, rated and stored once. Set-based, so a batch of 1,000
events is a handful of statements.

Contract per event: ``event_id`` unique per reporting organisation; the same id with the same
payload answers ``replayed`` with the original result; with a different payload ``conflict``.
Refused (``rejected``, nothing stored): an allocation that is not a live token allocation
supplied by the caller, or ``occurred_at`` older than ``MAX_EVENT_AGE`` or in the future.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from marketplace.models import Allocation

from .models import UsageEvent
from .rating import TokenPrices, rate_tokens

MAX_EVENT_AGE = timedelta(days=7)
CLOCK_SKEW = timedelta(minutes=5)
MAX_BATCH = 1000


@dataclass(frozen=True)
class UsageIn:
    event_id: str
    allocation_id: int
    occurred_at: datetime
    input_hit_tokens: int
    input_miss_tokens: int
    output_tokens: int

    def payload_hash(self) -> str:
        body = [self.allocation_id, self.occurred_at.isoformat(), self.input_hit_tokens, self.input_miss_tokens,
                self.output_tokens]
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()


def usage_record_batch(*, organisation_id: int, events: list[UsageIn], now=None) -> list[dict]:
    """Record events; returns one result per event, in order: {event_id, status, amount?, error?}
    with status created | replayed | conflict | rejected."""
    now = now or timezone.now()
    allocations = {a.pk: a for a in Allocation.objects.filter(
        pk__in={e.allocation_id for e in events}, supplier_id=organisation_id, kind="tokens",
        status__in=Allocation.ACTIVE)}
    results: list[dict | None] = [None] * len(events)
    rows = []
    seen: dict[str, int] = {}
    for i, event in enumerate(events):
        allocation = allocations.get(event.allocation_id)
        if allocation is None:
            results[i] = {"event_id": event.event_id, "status": "rejected",
                          "error": {"allocation": ["No live token allocation of yours has this id."]}}
        elif event.occurred_at < now - MAX_EVENT_AGE or event.occurred_at > now + CLOCK_SKEW:
            results[i] = {"event_id": event.event_id, "status": "rejected",
                          "error": {"occurred_at": [f"Must be within the last {MAX_EVENT_AGE.days} days."]}}
        elif event.event_id in seen:  # a duplicate inside the batch: answered like a replay below
            continue
        else:
            seen[event.event_id] = i
            charge = rate_tokens(prices=TokenPrices(allocation.price_input_hit_per_m, allocation.price_input_miss_per_m,
                                                    allocation.price_output_per_m),
                                 input_hit=event.input_hit_tokens, input_miss=event.input_miss_tokens,
                                 output=event.output_tokens)
            rows.append((event, charge.total, event.payload_hash()))
    created: set[str] = set()
    if rows:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO billing_usageevent (organisation_id, event_id, allocation_id, occurred_at,"
                " input_hit_tokens, input_miss_tokens, output_tokens, amount, payload_hash, settled, created_at)"
                " SELECT %s, t.event_id, t.allocation_id, t.occurred_at, t.hit, t.miss, t.out, t.amount, t.hash,"
                " false, %s FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[], %s::bigint[], %s::bigint[],"
                " %s::bigint[], %s::numeric[], %s::text[]) AS t(event_id, allocation_id, occurred_at, hit, miss, out,"
                " amount, hash) ON CONFLICT (organisation_id, event_id) DO NOTHING RETURNING event_id",
                [organisation_id, now, [e.event_id for e, _, _ in rows], [e.allocation_id for e, _, _ in rows],
                 [e.occurred_at for e, _, _ in rows], [e.input_hit_tokens for e, _, _ in rows],
                 [e.input_miss_tokens for e, _, _ in rows], [e.output_tokens for e, _, _ in rows],
                 [a for _, a, _ in rows], [h for _, _, h in rows]])
            created = {r[0] for r in cursor.fetchall()}
    stored = {u.event_id: u for u in UsageEvent.objects.filter(
        organisation_id=organisation_id, event_id__in=[e.event_id for e in events if e.event_id in seen])}
    for i, event in enumerate(events):
        if results[i] is not None:
            continue
        original = stored.get(event.event_id)
        if original is None:
            results[i] = {"event_id": event.event_id, "status": "rejected", "error": {"event_id": ["Not stored."]}}
        elif original.payload_hash != event.payload_hash():
            results[i] = {"event_id": event.event_id, "status": "conflict",
                          "error": {"event_id": ["Already used with a different payload."]}}
        else:
            first = event.event_id in created and seen[event.event_id] == i
            results[i] = {"event_id": event.event_id, "status": "created" if first else "replayed",
                          "amount": str(original.amount)}
    return results
