"""Reads for the token gateway. The ASGI app calls these from a thread on a cache miss only
(keys, routes and prices are cached in process for ``CACHE_TTL`` seconds), never per request."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.utils import timezone

from billing.models import Hold, UsageEvent
from marketplace.authentication import KEY_SCHEME, hash_key
from marketplace.hours import current_hour_index
from marketplace.models import AIModel, Allocation, AllocationPart, ApiKey, Role

from .crypto import credential_decrypt
from .models import KeyLimit, SupplierEndpoint, UsageDiscrepancy
from .usage import Prices

LIVE = (Allocation.Status.CONFIRMED, Allocation.Status.RUNNING)
WRITE_ROLES = (Role.OWNER, Role.OPERATOR)
PICO = Decimal(10) ** 12
# Usage events the gateway records are named gw-<request id>; estimated ones gw-est-<request id>.
GATEWAY_EVENT_PREFIX = "gw-"
ESTIMATED_EVENT_PREFIX = "gw-est-"


@dataclass(frozen=True)
class KeyInfo:
    key_id: int
    organisation_id: int
    can_spend: bool  # owner or operator; a viewer key may list models only
    requests_per_minute: int
    tokens_per_minute: int


@dataclass(frozen=True)
class Route:
    """One of the buyer's live token allocations served through a healthy gateway endpoint."""

    allocation_id: int
    supplier_id: int
    endpoint_id: int
    base_url: str
    credential: str
    upstream_model: str
    prices: Prices
    limit_pico: int  # max_spend (or the hold) in pico-CNY
    spent_pico: int  # what stored usage events of the allocation already cost
    expected_cost: Decimal  # per the order's expected mix; the routing order


def gateway_key_resolve(*, raw_key: str) -> KeyInfo | None:
    """The key behind ``sds_<prefix>_<secret>``, or None if it is malformed, unknown or revoked."""
    parts = raw_key.split("_")
    if len(parts) != 3 or parts[0] != KEY_SCHEME:
        return None
    key = ApiKey.objects.filter(prefix=parts[1], revoked_at__isnull=True).first()
    if key is None or key.hashed_secret != hash_key(raw_key):
        return None
    limit = KeyLimit.objects.filter(api_key=key).first()
    defaults = settings.SANDUISAN_GATEWAY
    return KeyInfo(key_id=key.pk, organisation_id=key.organisation_id, can_spend=key.role in WRITE_ROLES,
                   requests_per_minute=limit.requests_per_minute if limit else defaults["REQUESTS_PER_MINUTE"],
                   tokens_per_minute=limit.tokens_per_minute if limit else defaults["TOKENS_PER_MINUTE"])


def _expected_cost(allocation: Allocation) -> Decimal:
    order = allocation.order
    ratio = order.expected_cache_hit_ratio or Decimal(0)
    inputs = Decimal(order.expected_input_tokens or 1)
    return (inputs * ratio * allocation.price_input_hit_per_m + inputs * (1 - ratio) * allocation.price_input_miss_per_m
            + Decimal(order.expected_output_tokens or 0) * allocation.price_output_per_m)


def gateway_routes(*, organisation_id: int, model_name: str, now: datetime | None = None) -> tuple[bool, list[Route]]:
    """(the model is in the catalogue, the buyer's routes for it cheapest expected cost first).

    A route is a live (confirmed or running, inside its hours) token allocation of the buyer's
    for that model, on a listing with a registered endpoint not marked down by the health check.
    The region policy was applied when the allocation was matched."""
    if not AIModel.objects.filter(name=model_name).exists():
        return False, []
    hour = current_hour_index(now or timezone.now())
    allocations = list(Allocation.objects.filter(
        order__organisation_id=organisation_id, order__token_model__name=model_name, kind="tokens",
        status__in=LIVE, start_hour__lte=hour, end_hour__gt=hour).select_related("order"))
    return True, _routes(allocations, model_name)


def gateway_routes_pinned(*, organisation_id: int, allocation_id: int, model_name: str,
                          now: datetime | None = None) -> tuple[bool, list[Route]] | None:
    """The one route of a given allocation, or None when it is not a token allocation of this
    buyer (another organisation's answers exactly like one that does not exist)."""
    allocation = Allocation.objects.filter(pk=allocation_id, order__organisation_id=organisation_id,
                                           kind="tokens").select_related("order", "order__token_model").first()
    if allocation is None:
        return None
    if allocation.order.token_model.name != model_name:
        return True, []
    hour = current_hour_index(now or timezone.now())
    live = allocation.status in LIVE and allocation.start_hour <= hour < allocation.end_hour
    return True, _routes([allocation], model_name) if live else []


def _routes(allocations: list[Allocation], model_name: str) -> list[Route]:
    if not allocations:
        return []
    ids = [a.pk for a in allocations]
    listing_of = dict(AllocationPart.objects.filter(allocation_id__in=ids).values_list("allocation_id", "listing_id"))
    endpoints = {e.listing_id: e for e in SupplierEndpoint.objects.filter(
        listing_id__in=set(listing_of.values())).exclude(health=SupplierEndpoint.Health.DOWN)}
    holds = dict(Hold.objects.filter(allocation_id__in=ids).values_list("allocation_id", "amount"))
    spent = dict(UsageEvent.objects.filter(allocation_id__in=ids).values("allocation_id").annotate(
        s=Sum("amount")).values_list("allocation_id", "s"))
    routes = []
    for allocation in allocations:
        endpoint = endpoints.get(listing_of.get(allocation.pk))
        if endpoint is None:
            continue
        limit = allocation.order.max_spend if allocation.order.max_spend is not None else holds.get(allocation.pk)
        if limit is None:
            continue
        routes.append(Route(
            allocation_id=allocation.pk, supplier_id=allocation.supplier_id, endpoint_id=endpoint.pk,
            base_url=endpoint.base_url.rstrip("/"), credential=credential_decrypt(token=endpoint.credential_encrypted),
            upstream_model=endpoint.upstream_model or model_name,
            prices=Prices.from_decimals(allocation.price_input_hit_per_m, allocation.price_input_miss_per_m,
                                        allocation.price_output_per_m),
            limit_pico=int(limit * PICO), spent_pico=int((spent.get(allocation.pk) or 0) * PICO),
            expected_cost=_expected_cost(allocation)))
    routes.sort(key=lambda r: (r.expected_cost, r.allocation_id))
    return routes


def gateway_models(*, organisation_id: int, now: datetime | None = None) -> list[str]:
    """Catalogue models the buyer can call now (has a live allocation served by an endpoint)."""
    hour = current_hour_index(now or timezone.now())
    return sorted(set(Allocation.objects.filter(
        order__organisation_id=organisation_id, kind="tokens", status__in=LIVE, start_hour__lte=hour,
        end_hour__gt=hour, parts__listing__metered_by_exchange=True).values_list("order__token_model__name", flat=True)))


def endpoint_get(*, organisation_id: int, listing_id: int) -> SupplierEndpoint | None:
    return SupplierEndpoint.objects.filter(organisation_id=organisation_id, listing_id=listing_id).first()


def discrepancies_open(*, limit: int = 50) -> list[UsageDiscrepancy]:
    return list(UsageDiscrepancy.objects.filter(status=UsageDiscrepancy.Status.OPEN).select_related(
        "supplier")[:limit])


def gateway_figures() -> dict:
    """For the operators' dashboard: endpoints by health, gateway events (estimated ones apart)."""
    events = UsageEvent.objects.filter(event_id__startswith=GATEWAY_EVENT_PREFIX).aggregate(
        total=Count("id"), estimated=Count("id", filter=Q(event_id__startswith=ESTIMATED_EVENT_PREFIX)))
    health = dict(SupplierEndpoint.objects.values("health").annotate(n=Count("id")).values_list("health", "n"))
    return {"events": events["total"], "estimated_events": events["estimated"], "endpoints": health}
