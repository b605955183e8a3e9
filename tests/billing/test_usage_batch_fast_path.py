"""The hand-written validation and recording of usage events: DRF's messages and error paths,
statuses in order, late usage for ended allocations, refusal of released ones."""
import hashlib
import json
from datetime import timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.apis import UsageEventInput
from billing.metering import UsageIn, usage_event_parse
from billing.models import UsageEvent
from config.api.errors import flatten_errors
from config.errors import ValidationFailed
from marketplace.models import Allocation, Role

from tests.marketplace.helpers import assert_error

from .helpers import occurred_for, usage_event_body as _event

BATCH = "/api/v1/usage-events/batch"
SINGLE = "/api/v1/usage-events"



def _batch(client, events):
    return client.post(BATCH, {"events": events}, format="json")


BAD_FIELDS = [
    ("allocation", "x", "A valid integer is required."),
    ("allocation", True, "A valid integer is required."),
    ("allocation", 1.5, "A valid integer is required."),
    ("allocation", 3.0, "A valid integer is required."),  # floats are refused, even whole ones
    ("allocation", 0, "Ensure this value is greater than or equal to 1."),
    ("allocation", None, "This field may not be null."),
    ("output_tokens", -5, "Ensure this value is greater than or equal to 0."),
    ("output_tokens", False, "A valid integer is required."),
    ("output_tokens", 10**12 + 1, "Ensure this value is less than or equal to 1000000000000."),
    ("output_tokens", [1], "A valid integer is required."),
    ("input_hit_tokens", "", "A valid integer is required."),
    ("input_miss_tokens", "1" * 1001, "A valid integer is required."),
    ("input_miss_tokens", "12", "A valid integer is required."),  # a count is a JSON integer, as the schema says
    ("event_id", "", "This field may not be blank."),
    ("event_id", "   ", "This field may not be blank."),
    ("event_id", "e" * 201, "Ensure this field has no more than 200 characters."),
    ("event_id", True, "Not a valid string."),
    ("event_id", {"a": 1}, "Not a valid string."),
    ("event_id", "a\x00b", "Null characters are not allowed."),
    ("occurred_at", "yesterday", "Datetime has wrong format."),
    ("occurred_at", 1700000000, "Not a valid string."),
    ("occurred_at", "1999-12-31T23:00:00Z", "Must be from 2000-01-01"),
    ("occurred_at", "2026-13-01T00:00:00Z", "Datetime has wrong format."),
    ("occurred_at", "2026-01-01T00:00:00", "Datetime has no time zone."),
    ("occurred_at", "2026-01-01", "Datetime has no time zone."),
    ("occurred_at", "0001-01-01T00:00:00+01:00", "Datetime value out of range."),
]


@pytest.mark.django_db
@pytest.mark.parametrize("field,value,message", BAD_FIELDS, ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD_FIELDS])
def test_a_bad_event_is_refused_by_its_position_and_field(supplier_client, token_allocation, field, value, message):
    events = [_event(token_allocation, f"ok-{i}") for i in range(5)]
    events[3][field] = value
    error = assert_error(_batch(supplier_client, events), 400, field=f"events.3.{field}", code="validation_error")
    assert set(error["fields"]) == {f"events.3.{field}"} and error["fields"][f"events.3.{field}"][0].startswith(message)
    single = assert_error(supplier_client.post(SINGLE, events[3], format="json"), 400, field=field)
    assert single["fields"] == {field: error["fields"][f"events.3.{field}"]}  # the same words on both endpoints
    assert not UsageEvent.objects.exists()


@pytest.mark.django_db
def test_missing_fields_and_items_that_are_not_objects(supplier_client, token_allocation):
    events = [_event(token_allocation, "a"), {"allocation": token_allocation.pk}, None, "x", _event(token_allocation)]
    del events[4]["occurred_at"]
    error = assert_error(_batch(supplier_client, events), 400)
    assert error["fields"] == {"events.1.event_id": ["This field is required."],
                               "events.1.occurred_at": ["This field is required."],
                               "events.2": ["This field may not be null."],
                               "events.3": ["Invalid data. Expected a dictionary, but got str."],
                               "events.4.occurred_at": ["This field is required."]}
    assert error["message"] == "Invalid input."


@pytest.mark.django_db
def test_the_batch_itself_is_checked(supplier_client, token_allocation):
    too_many = [_event(token_allocation, f"m-{i}") for i in range(1001)]
    error = assert_error(_batch(supplier_client, too_many), 400, field="events")
    assert error["fields"]["events"] == ["Ensure this field has no more than 1000 elements."]
    assert assert_error(_batch(supplier_client, []), 400, field="events")["fields"]["events"] == [
        "This list may not be empty."]
    assert_error(supplier_client.post(BATCH, {"events": {"a": 1}}, format="json"), 400, field="events")
    assert_error(supplier_client.post(BATCH, {}, format="json"), 400, field="events")
    assert_error(supplier_client.post(BATCH, {"events": None}, format="json"), 400, field="events")
    listed = assert_error(supplier_client.post(BATCH, [1], format="json"), 400, field="non_field_errors")
    assert listed["message"] == "Invalid data. Expected a dictionary, but got list."
    for path in (BATCH, SINGLE):
        assert_error(supplier_client.post(path, b'{"events": [', content_type="application/json"), 400,
                     code="malformed_request")
        assert_error(supplier_client.post(path, b"NaN", content_type="application/json"), 400,
                     code="malformed_request")
    assert not UsageEvent.objects.exists()


@pytest.mark.django_db
def test_mixed_batch_answers_each_event_in_order(supplier_client, token_allocation):
    seen = supplier_client.post(SINGLE, _event(token_allocation, "seen"), format="json")
    assert seen.status_code == 201
    old = (timezone.now() - timedelta(days=8)).isoformat()
    future = (timezone.now() + timedelta(minutes=10)).isoformat()
    events = [
        _event(token_allocation, "new-1"),                                   # created
        _event(token_allocation, "seen"),                                    # replayed (stored before)
        _event(token_allocation, "seen", output_tokens=1),                   # conflict
        _event(token_allocation, "stranger", allocation=10**9),              # rejected: not an allocation
        _event(token_allocation, "old", occurred_at=old),                    # rejected: too old
        _event(token_allocation, "future", occurred_at=future),              # rejected: in the future
        _event(token_allocation, "new-1"),                                   # replayed: a duplicate in the batch
        _event(token_allocation, "new-1", input_hit_tokens=0),               # conflict with the batch's own event
        _event(token_allocation, "new-2", input_hit_tokens=0, input_miss_tokens=0, output_tokens=0),  # created
        _event(token_allocation, "huge", allocation=2**63),                  # rejected: past bigint, never queried
    ]
    response = _batch(supplier_client, events)
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [r["event_id"] for r in results] == [e["event_id"] for e in events]
    assert [r["status"] for r in results] == ["created", "replayed", "conflict", "rejected", "rejected", "rejected",
                                              "replayed", "conflict", "created", "rejected"]
    assert response.json()["counts"] == {"created": 2, "replayed": 2, "conflict": 2, "rejected": 4}
    assert results[0]["amount"] == results[6]["amount"] == seen.json()["amount"] == results[1]["amount"]
    assert Decimal(results[0]["amount"]) == Decimal("35.5")
    assert set(results[3]["error"]) == {"allocation"} and set(results[4]["error"]) == {"occurred_at"}
    assert set(results[5]["error"]) == {"occurred_at"} and set(results[2]["error"]) == {"event_id"}
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == ["new-1", "new-2", "seen"]
    # what a created event answers is what is stored, and what its replays answer
    stored = {u.event_id: u for u in UsageEvent.objects.all()}
    assert results[8]["amount"] == str(stored["new-2"].amount)
    again = _batch(supplier_client, [events[0], events[8]]).json()
    assert [(r["status"], r["amount"]) for r in again["results"]] == [("replayed", results[0]["amount"]),
                                                                       ("replayed", results[8]["amount"])]


@pytest.mark.django_db
def test_an_offset_is_stored_in_utc_and_replays_match_in_any_spelling(supplier_client, token_allocation):
    occurred = occurred_for(token_allocation)
    moment = occurred.astimezone(dt_timezone(timedelta(hours=8)))
    first = _batch(supplier_client, [_event(token_allocation, "tz", occurred_at=moment.isoformat())])
    assert first.json()["results"][0]["status"] == "created"
    assert UsageEvent.objects.get(event_id="tz").occurred_at == occurred
    zulu = occurred.isoformat().replace("+00:00", "Z")
    again = supplier_client.post(SINGLE, _event(token_allocation, "tz", occurred_at=zulu), format="json")
    assert again.status_code == 200 and again.json()["status"] == "replayed"


@pytest.mark.django_db
def test_types_are_the_schemas_and_ids_are_trimmed(supplier_client, token_allocation):
    """Integer strings and numeric event ids are refused (the schema says integer and string);
    surrounding blanks of an event id are trimmed, as DRF's CharField does."""
    body = _event(token_allocation, "  padded  ", allocation=str(token_allocation.pk))
    assert_error(supplier_client.post(SINGLE, body, format="json"), 400, field="allocation")
    numeric = _batch(supplier_client, [_event(token_allocation, 12345)])
    assert_error(numeric, 400, field="events.0.event_id")
    response = supplier_client.post(SINGLE, _event(token_allocation, "  padded  "), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["event_id"] == "padded"
    assert set(UsageEvent.objects.values_list("event_id", flat=True)) == {"padded"}


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["completed", "interrupted", "running"])
def test_late_usage_for_an_ended_allocation_is_accepted(supplier_client, token_allocation, status):
    # the allocation ran from eight days ago to the start of this hour: its usage may still arrive
    # within the late grace (an hour) after its end
    Allocation.objects.filter(pk=token_allocation.pk).update(
        status=status, start_hour=token_allocation.start_hour - 8 * 24, end_hour=token_allocation.start_hour,
        delivered_end_hour=token_allocation.start_hour)
    late = (timezone.now() - timedelta(days=6)).isoformat()
    response = _batch(supplier_client, [_event(token_allocation, "late", occurred_at=late)])
    assert response.json()["results"][0]["status"] == "created"
    too_late = (timezone.now() - timedelta(days=7, minutes=1)).isoformat()
    assert_error(supplier_client.post(SINGLE, _event(token_allocation, "later", occurred_at=too_late),
                                      format="json"), 400, field="occurred_at")
    assert UsageEvent.objects.filter(allocation=token_allocation).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("status", ["released", "pending_review"])
def test_usage_for_a_released_or_unreviewed_allocation_is_refused(supplier_client, token_allocation, status):
    Allocation.objects.filter(pk=token_allocation.pk).update(status=status)
    response = _batch(supplier_client, [_event(token_allocation, "x")])
    assert response.json()["results"][0]["status"] == "rejected"
    assert set(response.json()["results"][0]["error"]) == {"allocation"}
    assert_error(supplier_client.post(SINGLE, _event(token_allocation, "y"), format="json"), 400, field="allocation")
    assert not UsageEvent.objects.exists()


@pytest.mark.django_db
def test_only_writers_of_the_supplier_report(supplier_client, buyer_client, client_for, token_allocation, client):
    viewer = client_for(organisation=supplier_client.organisation, role=Role.VIEWER)
    assert_error(_batch(viewer, [_event(token_allocation)]), 403, code="permission_denied")
    assert client.post(BATCH, {"events": [_event(token_allocation)]}, content_type="application/json"
                       ).status_code in (401, 403)
    foreign = _batch(buyer_client, [_event(token_allocation)])
    assert foreign.status_code == 200 and foreign.json()["results"][0]["status"] == "rejected"
    assert not UsageEvent.objects.exists()


# --- the pure parts ----------------------------------------------------------------------------------

def test_payload_hash_is_the_one_stored_rows_carry():
    from datetime import datetime

    event = UsageIn("e", 7, datetime(2026, 1, 2, 3, 4, 5, 60, tzinfo=dt_timezone.utc), 1, 0, 10**12)
    body = [7, event.occurred_at.isoformat(), 1, 0, 10**12]
    assert event.payload_hash() == hashlib.sha256(json.dumps(body).encode()).hexdigest()


# Inputs on which the hand-written validation must say exactly what DRF's serializer said.
SAME_AS_DRF = [
    {}, {"event_id": None, "allocation": None, "occurred_at": None, "input_hit_tokens": None},
    {"event_id": "", "allocation": "x", "occurred_at": "nope", "output_tokens": "1.5"},
    {"event_id": "  ", "allocation": 0, "occurred_at": 5, "output_tokens": "-3"},
    {"event_id": "a" * 201, "allocation": "12.0", "occurred_at": "2026-01-01T00:00:00+08:00", "output_tokens": 10**13},
    {"event_id": 12, "allocation": "12", "occurred_at": "2026-01-01T00:00:00Z", "input_hit_tokens": -1},
    {"event_id": True, "allocation": [1], "occurred_at": {"a": 1}, "output_tokens": "", "input_miss_tokens": "1" * 1001},
    {"event_id": "a\x00b", "allocation": 1, "occurred_at": "2026-01-01T00:00:00+99:00"},
    {"event_id": "x", "allocation": 1, "occurred_at": "0001-01-01T00:00:00+01:00"},
    {"event_id": "x\ud800y", "allocation": 2**70, "occurred_at": "2026-1-1 1:2:3Z"},
    {"event_id": " ok ", "allocation": 3, "occurred_at": "2026-01-01T00:00:00.123456-05:30", "output_tokens": 5},
]


@pytest.mark.parametrize("data", SAME_AS_DRF, ids=range(len(SAME_AS_DRF)))
def test_validation_says_what_drf_said(data):
    serializer = UsageEventInput(data=data)
    drf_ok = serializer.is_valid()
    try:
        event = usage_event_parse(data)
    except ValidationFailed as exc:
        assert not drf_ok and exc.fields == flatten_errors(serializer.errors)
    else:
        assert drf_ok, serializer.errors
        v = serializer.validated_data
        assert event == UsageIn(v["event_id"], v["allocation"], v["occurred_at"], v["input_hit_tokens"],
                                v["input_miss_tokens"], v["output_tokens"])
        assert event.occurred_at.isoformat() == v["occurred_at"].isoformat()
