"""Failover, circuit breaker, broken streams, budgets, rate limits and isolation, through the
gateway process with the official SDK."""
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest

from gateway.buffer import usage_flush
from gateway.models import KeyLimit, SupplierEndpoint
from gateway.servers import free_port
from marketplace.models import ApiKey, Order, Organisation

from .helpers import CHAT, buy_tokens, flushed_events, gateway_events, sdk, supplier_with_endpoint

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
CHEAP = ("0.4", "1.6", "6")


def two_routes(upstream, buyer_client, failing_mode: str):
    """The buyer holds two allocations: the cheaper one on a ``failing_mode`` endpoint
    (``refused``: a port nobody listens on)."""
    _, good_listing = supplier_with_endpoint(upstream.url, "openai")
    good = buy_tokens(buyer_client)
    base = f"http://127.0.0.1:{free_port()}" if failing_mode == "refused" else upstream.url
    _, bad_listing = supplier_with_endpoint(base, failing_mode, prices=CHEAP)
    bad = buy_tokens(buyer_client)
    assert (good.parts.get().listing_id, bad.parts.get().listing_id) == (good_listing.pk, bad_listing.pk)
    return bad, good


@pytest.mark.parametrize("mode", ["fail", "stall", "refused"])
def test_failover_before_the_first_byte(gateway, upstream, buyer_client, mode):
    # given the cheaper endpoint answers 500, stalls past the first-byte timeout, or refuses connections
    bad, good = two_routes(upstream, buyer_client, mode)

    # when the buyer streams
    chunks = list(sdk(gateway, buyer_client.key).chat.completions.create(
        model="DeepSeek-V3", messages=CHAT, max_tokens=3, stream=True))

    # then the other endpoint served it whole, was billed, and the failure counts against the first
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 "
    [event] = flushed_events(1)
    assert event.allocation_id == good.pk
    failing = SupplierEndpoint.objects.get(listing__allocation_parts__allocation=bad)
    assert (failing.requests_failed, failing.requests_served) == (1, 0)
    assert Organisation.objects.get(pk=bad.supplier_id).reliability < 1


def test_the_circuit_breaker_skips_a_failing_endpoint(gateway, upstream, buyer_client):
    bad, good = two_routes(upstream, buyer_client, "fail-breaker")
    client = sdk(gateway, buyer_client.key)

    for _ in range(5):
        client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=1)

    # three consecutive failures open the breaker: the last two requests never reach it
    assert upstream.stats()["requests"]["fail-breaker"] == 3
    assert {e.allocation_id for e in flushed_events(5)} == {good.pk}


def test_every_endpoint_failing_is_a_502_and_bills_nothing(gateway, upstream, buyer_client):
    supplier_with_endpoint(upstream.url, "fail-all")
    buy_tokens(buyer_client)

    with pytest.raises(openai.InternalServerError) as failure:
        sdk(gateway, buyer_client.key).chat.completions.create(model="DeepSeek-V3", messages=CHAT)

    assert failure.value.status_code == 502 and failure.value.code == "upstream_error"
    usage_flush()
    assert not gateway_events().exists()


def test_a_stream_broken_mid_way_ends_with_an_error_and_bills_what_was_delivered(gateway, upstream, buyer_client):
    # given an endpoint that drops the stream after 3 content chunks
    supplier_with_endpoint(upstream.url, "break")
    allocation = buy_tokens(buyer_client)
    received = []

    # when the buyer streams 10 tokens
    with pytest.raises(openai.APIError) as broken:
        for chunk in sdk(gateway, buyer_client.key).chat.completions.create(
                model="DeepSeek-V3", messages=CHAT, max_tokens=10, stream=True):
            received.append(chunk.choices[0].delta.content)

    # then the 3 chunks arrived, an error event ended the stream, and the estimate bills exactly
    # those 3 output tokens (plus ceil(9 bytes / 4) = 3 input), marked estimated
    assert "".join(c or "" for c in received) == "tok0 tok1 tok2 "
    assert "stream broke" in broken.value.message
    [event] = flushed_events(1)
    assert event.event_id.startswith("gw-est-")
    assert (event.allocation_id, event.input_miss_tokens, event.output_tokens) == (allocation.pk, 3, 3)
    assert SupplierEndpoint.objects.get(listing__allocation_parts__allocation=allocation).requests_failed == 1


def test_budget_exhausted_stops_the_next_request(gateway, upstream, buyer_client):
    # given an allocation whose max_spend covers one request: the fake upstream serves 40 hit + 60
    # miss + 5 output = 0.000180 CNY; the gateway reserves 9 prompt bytes as miss tokens + 5
    # output = 0.000058 CNY before forwarding, and settles to the actual cost after
    supplier_with_endpoint(upstream.url, "openai")
    allocation = buy_tokens(buyer_client)
    Order.objects.filter(pk=allocation.order_id).update(max_spend=Decimal("0.000200"))
    client = sdk(gateway, buyer_client.key)

    served = []
    with pytest.raises(openai.APIStatusError) as refused:
        for _ in range(5):
            served.append(client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=5))

    # then the gateway refused with 402 before the budget was overrun, and nothing beyond it was billed
    assert refused.value.status_code == 402 and refused.value.code == "insufficient_quota"
    events = flushed_events(len(served))
    assert len(events) == len(served) == 1
    assert sum(e.amount for e in events) == Decimal("0.000180")


def test_rate_limit_per_key_answers_429_with_retry_after(gateway, upstream, buyer_client):
    supplier_with_endpoint(upstream.url, "openai")
    buy_tokens(buyer_client)
    KeyLimit.objects.create(api_key=ApiKey.objects.get(organisation=buyer_client.organisation),
                            requests_per_minute=2, tokens_per_minute=10**9)
    client = sdk(gateway, buyer_client.key)

    client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=1)
    client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=1)

    assert limited.value.code == "rate_limit_exceeded"
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 61
    assert len(flushed_events(2)) == 2


def test_tokens_per_minute_limit(gateway, upstream, buyer_client):
    supplier_with_endpoint(upstream.url, "openai")
    buy_tokens(buyer_client)
    KeyLimit.objects.create(api_key=ApiKey.objects.get(organisation=buyer_client.organisation),
                            requests_per_minute=1000, tokens_per_minute=150)
    client = sdk(gateway, buyer_client.key)

    client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=5)  # 105 tokens counted
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=50)


def test_another_organisations_allocation_is_404(gateway, upstream, buyer_client, client_for):
    supplier_with_endpoint(upstream.url, "openai")
    theirs = buy_tokens(client_for(is_supplier=False, is_buyer=True))
    mine = buy_tokens(buyer_client)
    client = sdk(gateway, buyer_client.key)

    with pytest.raises(openai.NotFoundError) as hidden:
        client.chat.completions.create(model="DeepSeek-V3", messages=CHAT,
                                       extra_headers={"X-Sanduisan-Allocation": str(theirs.pk)})
    pinned = client.chat.completions.with_raw_response.create(
        model="DeepSeek-V3", messages=CHAT, extra_headers={"X-Sanduisan-Allocation": str(mine.pk)})

    assert hidden.value.code == "allocation_not_found"
    assert pinned.headers["x-sanduisan-allocation"] == str(mine.pk)
    assert [e.allocation_id for e in flushed_events(1)] == [mine.pk]


def test_a_viewer_key_cannot_spend(gateway, upstream, client_for):
    buyer = client_for(is_supplier=False, is_buyer=True, role="viewer")
    with pytest.raises(openai.PermissionDeniedError):
        sdk(gateway, buyer.key).chat.completions.create(model="DeepSeek-V3", messages=CHAT)


def test_usage_is_recorded_exactly_once_under_retries_and_concurrency(gateway, upstream, buyer_client):
    # given an endpoint that fails its first two requests, then serves
    supplier_with_endpoint(upstream.url, "flaky-2-once")
    allocation = buy_tokens(buyer_client)

    # when the SDK retries (502 twice, then success) ...
    retried = sdk(gateway, buyer_client.key, max_retries=3).chat.completions.create(
        model="DeepSeek-V3", messages=CHAT, max_tokens=2)
    # ... a client repeats a request with one Idempotency-Key ...
    client = sdk(gateway, buyer_client.key)
    client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=2,
                                   extra_headers={"Idempotency-Key": "job-17"})
    with pytest.raises(openai.ConflictError):
        client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=2,
                                       extra_headers={"Idempotency-Key": "job-17"})
    # ... and 24 requests race, half streaming
    def call(i):
        if i % 2:
            return len(list(client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=2,
                                                           stream=True)))
        return client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=2)
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, range(24)))

    # then exactly one event per served request: 1 + 1 + 24, each once, even after flushing again
    assert retried.choices[0].message.content == "tok0 tok1 " and len(results) == 24
    events = flushed_events(26)
    usage_flush()
    assert len(events) == gateway_events().count() == 26
    assert len({e.event_id for e in events}) == 26
    assert {e.allocation_id for e in events} == {allocation.pk}
