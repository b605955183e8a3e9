"""The flusher's two paces: usage events every turn, endpoint outcomes (and the reliability they
feed) only on the turns that ask for them (``python -m gateway.flusher --outcomes-interval``)."""
import orjson
import pytest
from django.utils import timezone

from billing.models import UsageEvent
from gateway.buffer import OUTCOMES, USAGE_LIST, redis_sync, usage_flush
from gateway.models import SupplierEndpoint

from .helpers import buy_tokens, supplier_with_endpoint

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_flush_without_outcomes_records_events_and_leaves_outcomes_buffered(buyer_client):
    # given one served request buffered as the gateway buffers it: its event and its outcome
    _, listing = supplier_with_endpoint("http://127.0.0.1:9", "openai")
    allocation = buy_tokens(buyer_client)
    endpoint = SupplierEndpoint.objects.get(listing=listing)
    client = redis_sync()
    client.rpush(USAGE_LIST, orjson.dumps(["gw-buffer-1", allocation.pk, allocation.supplier_id,
                                           timezone.now().isoformat(), 10, 20, 5]))
    client.hincrby(OUTCOMES, f"{endpoint.pk}:ok", 1)

    # when a turn flushes events only
    usage_flush(outcomes=False)

    # then the event is recorded and the outcome still waits in Redis, not yet counted
    assert UsageEvent.objects.filter(event_id="gw-buffer-1", allocation=allocation).exists()
    assert not client.llen(USAGE_LIST) and client.hgetall(OUTCOMES) == {f"{endpoint.pk}:ok".encode(): b"1"}
    endpoint.refresh_from_db()
    assert (endpoint.requests_served, endpoint.requests_failed) == (0, 0)

    # and the next full flush folds it into the endpoint's counters
    usage_flush()
    endpoint.refresh_from_db()
    assert (endpoint.requests_served, endpoint.requests_failed) == (1, 0)
    assert not client.exists(OUTCOMES)
