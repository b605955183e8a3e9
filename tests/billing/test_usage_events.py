"""Token usage events through the API: rated once, replays answered, conflicts and strangers refused."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import UsageEvent

from tests.concurrency import race
from tests.marketplace.helpers import assert_error

from .helpers import usage_event_body as _event



@pytest.mark.django_db
def test_an_event_is_rated_once_and_replays_answer_the_original(supplier_client, token_allocation):
    body = _event(token_allocation)
    first = supplier_client.post("/api/v1/usage-events", body, format="json")
    assert first.status_code == 201 and Decimal(first.json()["amount"]) == Decimal("35.5")  # 1.5 + 14 + 20
    replay = supplier_client.post("/api/v1/usage-events", body, format="json")
    assert replay.status_code == 200 and replay.json()["status"] == "replayed"
    assert replay.json()["amount"] == first.json()["amount"]
    assert_error(supplier_client.post("/api/v1/usage-events", {**body, "output_tokens": 1}, format="json"), 409,
                 code="idempotency_conflict")
    assert UsageEvent.objects.count() == 1


@pytest.mark.django_db
def test_old_foreign_and_malformed_events_are_refused(supplier_client, buyer_client, client_for, token_allocation):
    old = (timezone.now() - timedelta(days=8)).isoformat()
    assert_error(supplier_client.post("/api/v1/usage-events", _event(token_allocation, occurred_at=old),
                                      format="json"), 400, field="occurred_at")
    stranger = client_for(is_supplier=True)
    assert_error(stranger.post("/api/v1/usage-events", _event(token_allocation), format="json"), 400,
                 field="allocation")
    assert_error(buyer_client.post("/api/v1/usage-events", _event(token_allocation), format="json"), 400,
                 field="allocation")
    assert_error(supplier_client.post("/api/v1/usage-events", _event(token_allocation, output_tokens=-5),
                                      format="json"), 400, field="output_tokens")
    assert not UsageEvent.objects.exists()


@pytest.mark.django_db
def test_batch_reports_each_event(supplier_client, token_allocation):
    supplier_client.post("/api/v1/usage-events", _event(token_allocation, "seen"), format="json")
    events = [_event(token_allocation, f"b-{i}", input_hit_tokens=10, input_miss_tokens=10, output_tokens=i)
              for i in range(500)]
    events += [_event(token_allocation, "seen"), _event(token_allocation, "seen", output_tokens=9),
               _event(token_allocation, "b-0", input_hit_tokens=10, input_miss_tokens=10, output_tokens=0),
               {**_event(token_allocation, "x"), "allocation": 10**9}]
    response = supplier_client.post("/api/v1/usage-events/batch", {"events": events}, format="json")
    assert response.status_code == 200
    assert response.json()["counts"] == {"created": 500, "replayed": 2, "conflict": 1, "rejected": 1}
    assert UsageEvent.objects.count() == 501
    too_many = [_event(token_allocation, f"m-{i}") for i in range(1001)]
    assert_error(supplier_client.post("/api/v1/usage-events/batch", {"events": too_many}, format="json"), 400,
                 field="events")


@pytest.mark.django_db(transaction=True)
def test_duplicate_deliveries_racing_are_stored_once(supplier_client, token_allocation):
    body = _event(token_allocation, "race")
    client = supplier_client.__class__
    statuses = [r.status_code for r in race([
        lambda: client(supplier_client.organisation, supplier_client.key).post("/api/v1/usage-events", body,
                                                                               format="json")] * 8)]
    assert sorted(statuses) == [200] * 7 + [201]
    assert UsageEvent.objects.filter(event_id="race").count() == 1
