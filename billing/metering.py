"""Token metering: usage events in, rated and stored once. Set-based, so a batch of 1,000
events is a handful of statements.

Contract per event: ``event_id`` unique per reporting organisation; the same id with the same
payload answers ``replayed`` with the original result; with a different payload ``conflict``.
Accepted for a token allocation supplied by the caller that is ``confirmed``, ``running``,
``completed`` or ``interrupted``, within what the buyer agreed to (``usage_record_batch``): the
event occurred inside the allocation's live period (``CLOCK_SKEW`` either side) and arrives at
most ``USAGE_REPORT_GRACE_MINUTES`` after its end (settlement charges late usage later); the
allocation's accepted usage stays within the order's ``max_spend`` and within what the endpoint's
``tokens_per_minute`` could have served since the allocation started. Refused (``rejected`` with
a ``code``, nothing stored): any other allocation (another supplier's, not a token allocation,
``pending_review`` or ``released``), or an event outside those bounds.

Validation (``usage_event_parse`` / ``usage_batch_parse``) is plain Python on the decoded JSON,
with the messages DRF's serializer fields give, so the single and batch endpoints answer alike.
Integers must be JSON integers and the event id a JSON string (what the OpenAPI schema says);
booleans, floats, numeric strings and keys the schema does not name are refused, and so is a
datetime without a time zone.
"""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal
from typing import NamedTuple

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from config.api.strict import DATETIME_OUT_OF_RANGE, MAX_MOMENT, MIN_MOMENT
from config.errors import ValidationFailed
from marketplace.hours import hour_start
from marketplace.models import Allocation

from .rating import TokenPrices, rate_tokens

MAX_EVENT_AGE = timedelta(days=7)
CLOCK_SKEW = timedelta(minutes=5)
MAX_BATCH = 1000
MAX_TOKENS = 10**12
MAX_EVENT_ID = 200
# Token allocations that take usage: live ones, and ended ones (late events are settled later).
USAGE_STATUSES = (Allocation.Status.CONFIRMED, Allocation.Status.RUNNING, Allocation.Status.COMPLETED,
                  Allocation.Status.INTERRUPTED)
_BIGINT = 2**63 - 1
_UTC = dt_timezone.utc


class UsageIn(NamedTuple):
    event_id: str
    allocation_id: int
    occurred_at: datetime  # aware, in UTC
    input_hit_tokens: int
    input_miss_tokens: int
    output_tokens: int

    def payload_hash(self) -> str:
        # sha256 of json.dumps([allocation, occurred_at.isoformat(), hit, miss, out]), spelled out.
        return hashlib.sha256(f'[{self.allocation_id}, "{self.occurred_at.isoformat()}", {self.input_hit_tokens}, '
                              f'{self.input_miss_tokens}, {self.output_tokens}]'.encode()).hexdigest()


# --- validation ------------------------------------------------------------------------------------
# The messages are DRF's (CharField, IntegerField, DateTimeField, Serializer, ListSerializer).

REQUIRED = "This field is required."
NULL = "This field may not be null."
NO_DATA = "No data provided"
BLANK = "This field may not be blank."
NOT_A_STRING = "Not a valid string."
TOO_LONG = f"Ensure this field has no more than {MAX_EVENT_ID} characters."
NULL_CHARACTERS = "Null characters are not allowed."
NOT_AN_INTEGER = "A valid integer is required."
BAD_DATETIME = ("Datetime has wrong format. Use one of these formats instead: "
                "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].")
NAIVE_DATETIME = ("Datetime has no time zone. Add a UTC offset or Z: "
                  "YYYY-MM-DDThh:mm[:ss[.uuuuuu]](+HH:MM|-HH:MM|Z).")
DATETIME_OVERFLOW = "Datetime value out of range."
EMPTY_LIST = "This list may not be empty."
LIST_TOO_LONG = f"Ensure this field has no more than {MAX_BATCH} elements."
UNKNOWN_FIELD = "Unknown field."  # config.api.strict's message
_MISSING = object()
_EVENT_FIELDS = frozenset({"event_id", "allocation", "occurred_at", "input_hit_tokens", "input_miss_tokens",
                           "output_tokens"})
_BATCH_FIELDS = frozenset({"events"})
_SURROGATE = re.compile("[\ud800-\udfff]")


def _not_a_dict(value) -> str:
    return f"Invalid data. Expected a dictionary, but got {type(value).__name__}."


def _event_id(value) -> tuple[str | None, list[str] | None]:
    if value is _MISSING:
        return None, [REQUIRED]
    if type(value) is str:
        value = value.strip()
        if not value:
            return None, [BLANK]
    elif value is None:
        return None, [NULL]
    else:
        return None, [NOT_A_STRING]
    errors = []
    if len(value) > MAX_EVENT_ID:
        errors.append(TOO_LONG)
    if "\x00" in value:
        errors.append(NULL_CHARACTERS)
    if not value.isascii() and (surrogate := _SURROGATE.search(value)):
        errors.append(f"Surrogate characters are not allowed: U+{ord(surrogate.group()):X}.")
    return (None, errors) if errors else (value, None)


def _integer(value, *, default, minimum: int, maximum: int | None) -> tuple[int | None, list[str] | None]:
    if value is _MISSING:
        return (default, None) if default is not None else (None, [REQUIRED])
    if value is None:
        return None, [NULL]
    if type(value) is not int:  # bools, floats and strings too: a count is a JSON integer
        return None, [NOT_AN_INTEGER]
    if maximum is not None and value > maximum:
        return None, [f"Ensure this value is less than or equal to {maximum}."]
    if value < minimum:
        return None, [f"Ensure this value is greater than or equal to {minimum}."]
    return value, None


def _datetime(value) -> tuple[datetime | None, list[str] | None]:
    if value is _MISSING:
        return None, [REQUIRED]
    if value is None:
        return None, [NULL]
    if type(value) is not str:
        return None, [NOT_A_STRING]
    try:
        parsed = parse_datetime(value)  # datetime.fromisoformat, then Django's looser pattern
    except (ValueError, TypeError):
        parsed = None
    if parsed is None:
        return None, [BAD_DATETIME]
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None, [NAIVE_DATETIME]
    try:
        moment = parsed.astimezone(_UTC)
    except OverflowError:
        return None, [DATETIME_OVERFLOW]
    if not MIN_MOMENT <= moment < MAX_MOMENT:
        return None, [DATETIME_OUT_OF_RANGE]
    return moment, None


def _event_slow(item) -> tuple[UsageIn | None, dict[str, list[str]] | list[str]]:
    """One event, every field checked; errors as DRF gives them (a dict by field, or a list for
    an item that is not an object)."""
    if item is None:
        return None, [NULL]
    if not isinstance(item, dict):
        return None, [_not_a_dict(item)]
    get = item.get
    values, errors = {}, {key: [UNKNOWN_FIELD] for key in sorted(map(str, item.keys() - _EVENT_FIELDS))}
    for name, (value, error) in (
            ("event_id", _event_id(get("event_id", _MISSING))),
            ("allocation", _integer(get("allocation", _MISSING), default=None, minimum=1, maximum=None)),
            ("occurred_at", _datetime(get("occurred_at", _MISSING))),
            ("input_hit_tokens", _integer(get("input_hit_tokens", _MISSING), default=0, minimum=0,
                                          maximum=MAX_TOKENS)),
            ("input_miss_tokens", _integer(get("input_miss_tokens", _MISSING), default=0, minimum=0,
                                           maximum=MAX_TOKENS)),
            ("output_tokens", _integer(get("output_tokens", _MISSING), default=0, minimum=0, maximum=MAX_TOKENS))):
        if error:
            errors[name] = error
        values[name] = value
    if errors:
        return None, errors
    return UsageIn(values["event_id"], values["allocation"], values["occurred_at"], values["input_hit_tokens"],
                   values["input_miss_tokens"], values["output_tokens"]), {}


def _events_parse(items: list) -> tuple[list[UsageIn], dict[str, list[str]]]:
    """Validate decoded JSON events. Returns (events, errors by "index.field"); the common,
    well-formed event takes the first branch, anything else is checked field by field."""
    events: list[UsageIn] = []
    errors: dict[str, list[str]] = {}
    fromisoformat = datetime.fromisoformat
    for index, item in enumerate(items):
        if type(item) is dict and item.keys() <= _EVENT_FIELDS:
            get = item.get
            event_id, allocation, at = get("event_id"), get("allocation"), get("occurred_at")
            hit, miss, out = get("input_hit_tokens", 0), get("input_miss_tokens", 0), get("output_tokens", 0)
            if (type(event_id) is str and type(allocation) is int and type(at) is str and type(hit) is int
                    and type(miss) is int and type(out) is int and allocation >= 1 and 0 <= hit <= MAX_TOKENS
                    and 0 <= miss <= MAX_TOKENS and 0 <= out <= MAX_TOKENS and event_id.isascii()
                    and "\x00" not in event_id):
                event_id = event_id.strip()
                if 0 < len(event_id) <= MAX_EVENT_ID:
                    try:
                        moment = fromisoformat(at)
                    except ValueError:
                        moment = None
                    if moment is not None and moment.tzinfo is _UTC and MIN_MOMENT <= moment < MAX_MOMENT:
                        events.append(UsageIn(event_id, allocation, moment, hit, miss, out))
                        continue
        event, problems = _event_slow(item)
        if event is not None:
            events.append(event)
        elif isinstance(problems, list):
            errors[str(index)] = problems
        else:
            for name, messages in problems.items():
                errors[f"{index}.{name}"] = messages
    return events, errors


def _refuse(fields: dict[str, list[str]]) -> ValidationFailed:
    message = fields["non_field_errors"][0] if set(fields) == {"non_field_errors"} else "Invalid input."
    return ValidationFailed(message, fields=fields)


def usage_event_parse(data) -> UsageIn:
    """One event from a decoded JSON body, or ``ValidationFailed`` with errors by field."""
    if data is None:
        raise _refuse({"non_field_errors": [NO_DATA]})
    if not isinstance(data, dict):
        raise _refuse({"non_field_errors": [_not_a_dict(data)]})
    events, errors = _events_parse([data])
    if errors:
        raise _refuse({key.partition(".")[2]: messages for key, messages in errors.items()})
    return events[0]


def usage_batch_parse(data) -> list[UsageIn]:
    """``{"events": [...]}`` (1 to 1,000) from a decoded JSON body, or ``ValidationFailed`` with
    errors by dotted path, e.g. ``events.3.occurred_at``."""
    if data is None:
        raise _refuse({"non_field_errors": [NO_DATA]})
    if not isinstance(data, dict):
        raise _refuse({"non_field_errors": [_not_a_dict(data)]})
    unknown = sorted(map(str, data.keys() - _BATCH_FIELDS))
    if unknown:
        raise _refuse({key: [UNKNOWN_FIELD] for key in unknown})
    items = data.get("events", _MISSING)
    if items is _MISSING:
        raise _refuse({"events": [REQUIRED]})
    if items is None:
        raise _refuse({"events": [NULL]})
    if not isinstance(items, list):
        raise _refuse({"events": [f'Expected a list of items but got type "{type(items).__name__}".']})
    if not items:
        raise _refuse({"events": [EMPTY_LIST]})
    if len(items) > MAX_BATCH:
        raise _refuse({"events": [LIST_TOO_LONG]})
    events, errors = _events_parse(items)
    if errors:
        raise _refuse({f"events.{key}": messages for key, messages in errors.items()})
    return events


# --- recording -------------------------------------------------------------------------------------

# Parameters are bound server side (psycopg's own cursor on Django's connection): the event ids
# as a binary text[]; the other columns, all plain ASCII (digits, ISO datetimes, Decimal text, hex),
# as one comma-joined text each, split by PostgreSQL. Both are several times cheaper, in Python
# and in PostgreSQL, than Django's client-side quoting of 8 x 1,000 literals. The columns are
# listed, so nullable columns added later take their defaults.
_INSERT = (
    "INSERT INTO billing_usageevent (organisation_id, event_id, allocation_id, occurred_at, input_hit_tokens,"
    " input_miss_tokens, output_tokens, amount, payload_hash, settled, created_at)"
    " SELECT %b::bigint, t.event_id, t.allocation_id, t.occurred_at, t.hit, t.miss, t.out, t.amount, t.hash, false,"
    " %b::timestamptz FROM unnest(%b::text[], string_to_array(%b::text, ',')::bigint[],"
    " string_to_array(%b::text, ',')::timestamptz[], string_to_array(%b::text, ',')::bigint[],"
    " string_to_array(%b::text, ',')::bigint[], string_to_array(%b::text, ',')::bigint[],"
    " string_to_array(%b::text, ',')::numeric[], string_to_array(%b::text, ','))"
    " AS t(event_id, allocation_id, occurred_at, hit, miss, out, amount, hash)"
    " ON CONFLICT (organisation_id, event_id) DO NOTHING RETURNING event_id")
_STORED = ("SELECT event_id, payload_hash, amount FROM billing_usageevent"
           " WHERE organisation_id = %b::bigint AND event_id = ANY(%b::text[])")
# Create-or-lock each allocation's running total, in allocation id order (so batches never
# deadlock), and read it: ON CONFLICT DO UPDATE locks the existing row like an UPDATE.
_TOTALS_LOCK = (
    "INSERT INTO billing_tokenusagetotal AS u (allocation_id, amount, tokens, refused_over_budget,"
    " refused_implausible) SELECT t.a, 0, 0, 0, 0 FROM unnest(%b::bigint[]) AS t(a) ORDER BY t.a"
    " ON CONFLICT (allocation_id) DO UPDATE SET tokens = u.tokens"
    " RETURNING allocation_id, amount, tokens, latest_occurred_at")
_TOTALS_ADD = (
    "UPDATE billing_tokenusagetotal u SET amount = u.amount + d.amount, tokens = u.tokens + d.tokens,"
    " latest_occurred_at = GREATEST(u.latest_occurred_at, d.latest),"
    " refused_over_budget = u.refused_over_budget + d.over, refused_implausible = u.refused_implausible + d.imp"
    " FROM unnest(%b::bigint[], %b::numeric[], %b::bigint[], %b::timestamptz[], %b::bigint[], %b::bigint[])"
    " AS d(a, amount, tokens, latest, over, imp) WHERE u.allocation_id = d.a")
_REFUSED_DELETE = "DELETE FROM billing_usageevent WHERE organisation_id = %b::bigint AND event_id = ANY(%b::text[])"
_NO_ALLOCATION = "No token allocation of yours that takes usage has this id."
TOO_OLD = f"Must be within the last {MAX_EVENT_AGE.days} days."


def _binary_cursor() -> psycopg.Cursor:
    """A server-side-binding cursor on Django's connection (same transaction, same session)."""
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


class _Bounds:
    """What one allocation may still take: its prices, live period, budget and capacity, and
    the running totals (locked for the batch)."""

    __slots__ = ("prices", "start", "end", "max_spend", "per_minute", "amount", "tokens", "latest",
                 "added_amount", "added_tokens", "over", "implausible")

    def __init__(self, prices: TokenPrices, start: datetime, end: datetime, max_spend: Decimal, per_minute: int):
        self.prices, self.start, self.end, self.max_spend, self.per_minute = prices, start, end, max_spend, per_minute
        self.amount, self.tokens, self.latest = Decimal(0), 0, None
        self.added_amount, self.added_tokens, self.over, self.implausible = Decimal(0), 0, 0, 0

    def capacity_at(self, moment: datetime) -> int:
        """Tokens the endpoint could have served from the start of the allocation to ``moment``,
        counted in started minutes (the minute in progress counts whole). A moment before the
        start, which the live period accepts within the clock skew, counts as the first minute:
        the skew the period allows must not turn an honest event into an implausible one."""
        return self.per_minute * (max(int((moment - self.start).total_seconds()) // 60, 0) + 1)


def usage_bounds(*, organisation_id: int, allocation_ids) -> dict[int, _Bounds]:
    """Each token allocation of the supplier that takes usage: prices, live period
    ``[start of the hour it was confirmed in, end of service]``, budget (the order's
    ``max_spend``, else its hold) and the endpoint's capacity (``tokens_per_minute``, else the
    default per card)."""
    per_card = int(settings.SANDUISAN["DEFAULT_TOKENS_PER_MINUTE_PER_CARD"])
    rows = Allocation.objects.filter(
        pk__in=allocation_ids, supplier_id=organisation_id, kind="tokens", status__in=USAGE_STATUSES).values_list(
        "pk", "price_input_hit_per_m", "price_input_miss_per_m", "price_output_per_m", "status", "start_hour",
        "end_hour", "delivered_end_hour", "cards", "order__max_spend", "hold__amount", "parts__listing__tokens_per_minute")
    bounds = {}
    for pk, hit, miss, out, status, first, last, delivered, cards, max_spend, held, per_minute in rows:
        if status == Allocation.Status.INTERRUPTED and delivered is not None:
            last = max(first, delivered)
        budget = max_spend if max_spend is not None else (held or Decimal(0))
        bounds[pk] = _Bounds(TokenPrices(hit, miss, out), hour_start(first), hour_start(last), budget,
                             per_minute or cards * per_card)
    return bounds


def usage_rejected(event_id: str, code: str, field: str, message: str) -> dict:
    return {"event_id": event_id, "status": "rejected", "code": code, "error": {field: [message]}}


def usage_record_batch(*, organisation_id: int, events: list[UsageIn], now=None) -> list[dict]:
    """Record events; returns one result per event, in order: {event_id, status, code?, amount?,
    error?} with status created | replayed | conflict | rejected. Rejection codes:
    ``unknown_allocation``, ``out_of_period`` (occurred outside the allocation's live period, or
    reported after its late grace), ``implausible`` (more tokens than the endpoint could have
    served since the allocation started), ``over_budget`` (the allocation's accepted usage would
    cost more than ``max_spend``). A rejected event is not stored; its id stays free. A stored
    event id is answered first (``replayed`` with its original result, or ``conflict``), whatever
    changed since.

    Atomic, and a handful of statements per batch whatever its size: the allocations' bounds;
    one INSERT ... ON CONFLICT DO NOTHING RETURNING of the events that pass the per-event checks;
    then their allocations' running totals, created or locked in allocation id order, against
    which the new events are judged in batch order (those beyond the endpoint's capacity or the
    max_spend are deleted again, inside this transaction, so never seen); one UPDATE of the
    totals. Concurrent batches on one allocation queue only for that last part, so the budget is
    never exceeded and the inserts still run in parallel."""
    now = now or timezone.now()
    oldest, newest = now - MAX_EVENT_AGE, now + CLOCK_SKEW
    late_grace = timedelta(minutes=int(settings.SANDUISAN["USAGE_REPORT_GRACE_MINUTES"]))
    wanted = sorted({e.allocation_id for e in events if e.allocation_id <= _BIGINT})
    sha256 = hashlib.sha256
    results: list[dict | None] = [None] * len(events)
    hashes: list[str | None] = [None] * len(events)
    with transaction.atomic(), connection.wrap_database_errors, _binary_cursor() as cursor:
        bounds = usage_bounds(organisation_id=organisation_id, allocation_ids=wanted) if wanted else {}
        first: dict[str, int] = {}  # event id -> index of its first new occurrence in the batch
        ids, allocations, moments, hits, misses, outs, amounts, digests, costs = [], [], [], [], [], [], [], [], []
        for i, (event_id, allocation_id, occurred_at, hit, miss, out) in enumerate(events):
            moment = occurred_at.isoformat()
            # = UsageIn.payload_hash(), inlined
            hashes[i] = digest = sha256(f'[{allocation_id}, "{moment}", {hit}, {miss}, {out}]'.encode()).hexdigest()
            bound = bounds.get(allocation_id)
            if bound is None:
                results[i] = usage_rejected(event_id, "unknown_allocation", "allocation", _NO_ALLOCATION)
            elif occurred_at < oldest or occurred_at > newest:
                results[i] = usage_rejected(event_id, "out_of_period", "occurred_at", TOO_OLD)
            elif occurred_at < bound.start - CLOCK_SKEW or occurred_at > bound.end + CLOCK_SKEW:
                results[i] = usage_rejected(event_id, "out_of_period", "occurred_at", (
                    f"Outside the allocation's live period, {bound.start.isoformat()} to {bound.end.isoformat()}."))
            elif now > bound.end + late_grace:
                results[i] = usage_rejected(event_id, "out_of_period", "occurred_at", (
                    f"Reported too late: usage must arrive within {late_grace} of the allocation's end."))
            elif event_id not in first:
                first[event_id] = i
                ids.append(event_id)
                allocations.append(allocation_id)
                moments.append(moment)
                hits.append(hit)
                misses.append(miss)
                outs.append(out)
                cost = rate_tokens(prices=bound.prices, input_hit=hit, input_miss=miss, output=out).total
                amounts.append(str(cost))
                costs.append((cost, hit + miss + out, occurred_at))
                digests.append(digest)
        created: set[str] = set()
        stored: dict[str, tuple[str, str]] = {}  # event id -> (payload hash, amount) of rows stored before
        if ids:
            join = ",".join
            cursor.execute(_INSERT, [organisation_id, now, ids, join(map(str, allocations)), join(moments),
                                     join(map(str, hits)), join(map(str, misses)), join(map(str, outs)),
                                     join(amounts), join(digests)], prepare=False)
            created = {row[0] for row in cursor.fetchall()}
        # Rows stored before this batch: ids it did not create, and ids of deliveries it refused.
        refused_early = [i for i, r in enumerate(results) if r is not None]
        unknown = {e for e in ids if e not in created} | {events[i].event_id for i in refused_early} - created
        if unknown:
            cursor.execute(_STORED, [organisation_id, list(unknown)], prepare=False)
            stored = {event_id: (digest, str(amount)) for event_id, digest, amount in cursor.fetchall()}
        live = sorted({allocations[n] for n, e in enumerate(ids) if e in created})
        if live:
            cursor.execute(_TOTALS_LOCK, [live], prepare=False)
            for pk, amount, tokens, latest in cursor.fetchall():
                bound = bounds[pk]
                bound.amount, bound.tokens, bound.latest = amount, tokens, latest
            refused = []
            for n, event_id in enumerate(ids):
                if event_id not in created:
                    continue
                bound = bounds[allocations[n]]
                cost, tokens, occurred_at = costs[n]
                latest = occurred_at if bound.latest is None or occurred_at > bound.latest else bound.latest
                if bound.tokens + tokens > bound.capacity_at(latest):
                    bound.implausible += 1
                    results[first[event_id]] = usage_rejected(event_id, "implausible", "output_tokens", (
                        f"More tokens than the endpoint ({bound.per_minute} tokens a minute) could have served "
                        f"since {bound.start.isoformat()}."))
                elif bound.amount + cost > bound.max_spend:
                    bound.over += 1
                    results[first[event_id]] = usage_rejected(event_id, "over_budget", "allocation", (
                        f"The allocation's usage would cost more than its max_spend of {bound.max_spend} CNY "
                        f"({bound.amount} accepted so far)."))
                else:
                    bound.amount += cost
                    bound.tokens += tokens
                    bound.latest = latest
                    bound.added_amount += cost
                    bound.added_tokens += tokens
                    continue
                refused.append(event_id)
            if refused:
                cursor.execute(_REFUSED_DELETE, [organisation_id, refused], prepare=False)
                created.difference_update(refused)
            cursor.execute(_TOTALS_ADD, [
                live, [bounds[pk].added_amount for pk in live], [bounds[pk].added_tokens for pk in live],
                [bounds[pk].latest for pk in live], [bounds[pk].over for pk in live],
                [bounds[pk].implausible for pk in live]], prepare=False)
    # A stored id is answered with its first result (a replay or a conflict) even where this
    # delivery would be refused: stored before the batch, or created earlier in it.
    for i in refused_early:
        event_id = events[i].event_id
        if event_id in stored or (event_id in created and first[event_id] < i):
            results[i] = None
    mine = {e: (digests[n], amounts[n]) for n, e in enumerate(ids) if e in created}
    for i, result in enumerate(results):
        if result is not None:
            continue
        event_id = events[i].event_id
        original = mine.get(event_id) or stored.get(event_id)
        if original is None and event_id in first:  # a repeat, in this batch, of an event refused above
            results[i] = {**results[first[event_id]], "event_id": event_id}
        elif original is None:
            results[i] = usage_rejected(event_id, "not_stored", "event_id", "Not stored.")
        elif original[0] != hashes[i]:
            results[i] = {"event_id": event_id, "status": "conflict", "code": "idempotency_conflict",
                          "error": {"event_id": ["Already used with a different payload."]}}
        else:
            new = first.get(event_id) == i and event_id in created
            results[i] = {"event_id": event_id, "status": "created" if new else "replayed", "amount": original[1]}
    return results
