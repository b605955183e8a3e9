from decimal import Decimal

import openai
from rest_framework.test import APIClient

from billing.models import UsageEvent
from gateway.buffer import FLUSH_LOCK, OUTCOMES, USAGE_LIST, redis_sync, usage_flush
from marketplace import services as market
from marketplace.models import Allocation, Role
from matching import services as matching
from tests.factories import NodeFactory, OrganisationFactory, make_listing
from tests.marketplace.helpers import tokens_body
from tests.workers import wait_for


def supplier_with_endpoint(upstream_url: str, mode: str, *, prices=("0.5", "2", "8"), credential="up-secret",
                           supplier=None):
    """A supplier whose DeepSeek-V3 token listing is served at ``<fake upstream>/<mode>/v1``,
    registered through the API. Returns (supplier, listing)."""
    supplier = supplier or OrganisationFactory(is_supplier=True, is_buyer=False)
    node = NodeFactory(organisation=supplier)
    listing = make_listing(node, token_endpoint=market.TokenEndpoint("DeepSeek-V3", *map(Decimal, prices)))
    _, key = market.api_key_create(organisation=supplier, name="endpoint", role=Role.OWNER)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = client.put(f"/api/v1/listings/{listing.pk}/endpoint", {
        "base_url": f"{upstream_url}/{mode}/v1", "credential": credential, "tokens_per_minute": 10_000_000},
        format="json")
    assert response.status_code == 200, response.content
    return supplier, listing


def buy_tokens(buyer_client, **order) -> Allocation:
    """A token order of the buyer, matched now to the cheapest endpoint serving DeepSeek-V3."""
    response = buyer_client.post("/api/v1/orders", tokens_body(**order), format="json")
    assert response.status_code == 201, response.content
    matching.round_run(bucket="tokens")
    return Allocation.objects.get(order_id=response.json()["id"], kind="tokens")


def sdk(gateway, key: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=kwargs.pop("max_retries", 0),
                         timeout=kwargs.pop("timeout", 20), **kwargs)


def gateway_events(allocation_ids=None):
    events = UsageEvent.objects.filter(event_id__startswith="gw-")
    if allocation_ids is not None:
        events = events.filter(allocation_id__in=allocation_ids)
    return events


def drained() -> bool:
    """Nothing buffered in Redis and no flush under way."""
    client = redis_sync()
    return not client.llen(USAGE_LIST) and not client.exists(OUTCOMES) and not client.exists(FLUSH_LOCK)


def flushed_events(count: int, allocation_ids=None) -> list[UsageEvent]:
    """Wait until the flusher process recorded ``count`` events and drained the buffer, flush
    once more ourselves, and return the events."""
    wait_for(lambda: gateway_events(allocation_ids).count() >= count, timeout=20, what=f"{count} usage events")
    wait_for(drained, timeout=20, what="the gateway's buffer drained")
    usage_flush()
    return list(gateway_events(allocation_ids).order_by("id"))


CHAT = [{"role": "user", "content": "Say hello"}]
