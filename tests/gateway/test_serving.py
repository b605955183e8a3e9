"""The gateway served as a real process, driven by the official openai SDK against a fake
upstream process: wire format, streaming, both usage dialects, metering through billing."""
from decimal import Decimal

import openai
import pytest

from billing.models import UsageEvent
from billing.rating import TokenPrices, rate_tokens

from .helpers import CHAT, buy_tokens, flushed_events, sdk, supplier_with_endpoint

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
PRICES = TokenPrices(Decimal("0.5"), Decimal("2"), Decimal("8"))


def test_chat_completion_is_served_and_metered_once_in_the_openai_dialect(gateway, upstream, buyer_client):
    # given a buyer holding an allocation on an endpoint that reports usage the OpenAI way
    supplier_with_endpoint(upstream.url, "openai")
    allocation = buy_tokens(buyer_client)

    # when the buyer calls the gateway with the official SDK
    raw = sdk(gateway, buyer_client.key).chat.completions.with_raw_response.create(
        model="DeepSeek-V3", messages=CHAT, max_tokens=7)
    completion = raw.parse()

    # then it gets the upstream's answer, and the exchange records one rated event for it
    assert completion.choices[0].message.content == "".join(f"tok{i} " for i in range(7))
    assert raw.headers["x-sanduisan-allocation"] == str(allocation.pk)
    [event] = flushed_events(1)
    assert event.event_id == f"gw-{raw.headers['x-request-id']}"
    assert (event.allocation_id, event.input_hit_tokens, event.input_miss_tokens, event.output_tokens) == (
        allocation.pk, 40, 60, 7)
    assert event.amount == rate_tokens(prices=PRICES, input_hit=40, input_miss=60, output=7).total
    assert event.organisation_id == allocation.supplier_id


def test_stream_passes_chunks_through_and_meters_the_deepseek_dialect(gateway, upstream, buyer_client):
    # given an endpoint that reports usage the DeepSeek way
    supplier_with_endpoint(upstream.url, "deepseek")
    allocation = buy_tokens(buyer_client)

    # when the buyer streams without asking for usage
    chunks = list(sdk(gateway, buyer_client.key).chat.completions.create(
        model="DeepSeek-V3", messages=CHAT, max_tokens=4, stream=True))

    # then every content chunk arrives in order, the gateway asked the upstream for usage but did
    # not pass the usage-only chunk on, and the event has DeepSeek's cache split
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 "
    assert all(c.choices for c in chunks)
    assert upstream.stats()["include_usage"]["deepseek"] is True
    assert upstream.stats()["auth"]["deepseek"] == "Bearer up-secret"
    [event] = flushed_events(1)
    assert (event.allocation_id, event.input_hit_tokens, event.input_miss_tokens, event.output_tokens) == (
        allocation.pk, 30, 70, 4)


def test_stream_with_include_usage_gives_the_client_the_usage_chunk(gateway, upstream, buyer_client):
    supplier_with_endpoint(upstream.url, "openai")
    buy_tokens(buyer_client)

    chunks = list(sdk(gateway, buyer_client.key).chat.completions.create(
        model="DeepSeek-V3", messages=CHAT, max_tokens=3, stream=True, stream_options={"include_usage": True}))

    assert chunks[-1].usage.prompt_tokens == 100 and chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 40
    [event] = flushed_events(1)
    assert (event.input_hit_tokens, event.input_miss_tokens, event.output_tokens) == (40, 60, 3)


def test_legacy_completions_and_models(gateway, upstream, buyer_client):
    supplier_with_endpoint(upstream.url, "openai")
    buy_tokens(buyer_client)
    client = sdk(gateway, buyer_client.key)

    completion = client.completions.create(model="DeepSeek-V3", prompt="Once upon", max_tokens=2)
    streamed = list(client.completions.create(model="DeepSeek-V3", prompt="Once upon", max_tokens=2, stream=True))

    assert completion.choices[0].text == "tok0 tok1 "
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "tok0 tok1 "
    assert [m.id for m in client.models.list()] == ["DeepSeek-V3"]
    assert len(flushed_events(2)) == 2


def test_no_usage_from_upstream_is_estimated_and_marked(gateway, upstream, buyer_client):
    # given an upstream that never reports usage
    supplier_with_endpoint(upstream.url, "nousage")
    allocation = buy_tokens(buyer_client)

    # when a 9-byte prompt streams 6 chunks
    chunks = list(sdk(gateway, buyer_client.key).chat.completions.create(
        model="DeepSeek-V3", messages=CHAT, max_tokens=6, stream=True))

    # then the documented rule counts ceil(9 / 4) = 3 input tokens on miss and 6 output tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 6
    [event] = flushed_events(1)
    assert event.event_id.startswith("gw-est-")
    assert (event.allocation_id, event.input_hit_tokens, event.input_miss_tokens, event.output_tokens) == (
        allocation.pk, 0, 3, 6)


def test_errors_are_in_openai_shape(gateway, upstream, buyer_client, client_for):
    supplier_with_endpoint(upstream.url, "openai")
    buy_tokens(buyer_client)

    with pytest.raises(openai.AuthenticationError) as bad_key:
        sdk(gateway, "sds_nope_nope").chat.completions.create(model="DeepSeek-V3", messages=CHAT)
    with pytest.raises(openai.NotFoundError) as unknown_model:
        sdk(gateway, buyer_client.key).chat.completions.create(model="GPT-9", messages=CHAT)
    other = client_for(is_supplier=False, is_buyer=True)
    with pytest.raises(openai.InternalServerError) as no_allocation:
        sdk(gateway, other.key).chat.completions.create(model="DeepSeek-V3", messages=CHAT)

    assert bad_key.value.status_code == 401 and bad_key.value.code == "invalid_api_key"
    assert unknown_model.value.status_code == 404 and unknown_model.value.code == "model_not_found"
    assert no_allocation.value.status_code == 503 and no_allocation.value.code == "no_allocation"
    assert set(no_allocation.value.body) == {"message", "type", "param", "code"}
    assert not UsageEvent.objects.exists()


def test_content_detection_reads_chunk_bytes():
    from gateway.app import _has_content

    assert _has_content(b'{"choices":[{"delta":{"content":"hi"}}]}')
    assert _has_content(b'{"choices": [{"delta": {"content": "hi"}}]}')
    assert _has_content(b'{"choices":[{"text":"x","index":0}]}')
    assert not _has_content(b'{"choices":[{"delta":{"role":"assistant","content":""}}]}')
    assert not _has_content(b'{"choices":[{"delta":{"content":null}}]}')
    assert not _has_content(b'{"choices":[],"usage":{"prompt_tokens":1}}')
