"""Writes for the token gateway: endpoint registration and health, recording the usage the
gateway metered (through billing's usage-event path), request outcomes into reliability, and
reconciliation of supplier claims against the exchange's meter."""
from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections import defaultdict
from datetime import datetime, timezone as dt_timezone
from decimal import ROUND_DOWN, Decimal
from typing import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from billing.metering import UsageIn, usage_record_batch
from billing.models import UsageClaim, UsageEvent
from lifecycle.services import supplier_reliability_refresh
from config.errors import NotFound, ValidationFailed
from marketplace.models import Allocation, Listing, Organisation

from .crypto import credential_decrypt, credential_encrypt
from .models import SupplierEndpoint, UsageDiscrepancy
from .selectors import GATEWAY_EVENT_PREFIX

logger = logging.getLogger(__name__)


# --- endpoints -------------------------------------------------------------------------------------

def endpoint_register(*, organisation: Organisation, listing_id: int, base_url: str, credential: str | None,
                      upstream_model: str = "", tokens_per_minute: int | None = None) -> SupplierEndpoint:
    """Register (or replace) the endpoint serving one of the organisation's token listings.
    ``credential`` None keeps the stored one, "" removes it. From now on the exchange meters the
    listing's allocations: the supplier's own usage reports for them become claims."""
    if not base_url.startswith(("http://", "https://")):
        raise ValidationFailed.on("base_url", "Must be an http:// or https:// URL.")
    with transaction.atomic():
        listing = Listing.objects.select_for_update().filter(pk=listing_id, organisation=organisation).first()
        if listing is None:
            raise NotFound("No listing of yours has this id.")
        if not listing.serves_tokens:
            raise ValidationFailed.on("listing", "Only a token listing (with a token endpoint) can be served through "
                                                 "the gateway.")
        if tokens_per_minute is None and listing.tokens_per_minute is None:
            raise ValidationFailed.on("tokens_per_minute", "Declare the capacity this endpoint serves.")
        listing.metered_by_exchange = True
        if tokens_per_minute is not None:
            listing.tokens_per_minute = tokens_per_minute
        listing.save(update_fields=["metered_by_exchange", "tokens_per_minute", "updated_at"])
        endpoint, _ = SupplierEndpoint.objects.get_or_create(listing=listing, defaults={
            "organisation": organisation, "base_url": base_url})
        endpoint.base_url = base_url
        endpoint.upstream_model = upstream_model
        if credential is not None:
            endpoint.credential_encrypted = credential_encrypt(plaintext=credential)
        endpoint.health = SupplierEndpoint.Health.UNKNOWN
        endpoint.save()
    return endpoint


def endpoint_health_check(*, endpoint_id: int, timeout: float = 5.0, now: datetime | None = None) -> str | None:
    """Probe ``GET {base_url}/models`` with the endpoint's credential and record up or down.
    Idempotent; returns the new health, or None if the endpoint no longer exists."""
    endpoint = SupplierEndpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is None:
        return None
    request = urllib.request.Request(endpoint.base_url.rstrip("/") + "/models")
    credential = credential_decrypt(token=endpoint.credential_encrypted)
    if credential:
        request.add_header("Authorization", f"Bearer {credential}")
    error = ""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http/https only)
            ok = 200 <= response.status < 300
            error = "" if ok else f"status {response.status}"
    except urllib.error.HTTPError as failure:
        ok, error = False, f"status {failure.code}"
    except (OSError, ValueError) as failure:
        ok, error = False, str(failure)[:300]
    health = SupplierEndpoint.Health.UP if ok else SupplierEndpoint.Health.DOWN
    SupplierEndpoint.objects.filter(pk=endpoint_id).update(health=health, last_checked_at=now or timezone.now(),
                                                           last_error=error)
    return health


# --- usage the gateway metered ---------------------------------------------------------------------

def gateway_usage_record(*, events: Iterable[list]) -> dict[str, int]:
    """Record events the gateway buffered, ``[event_id, allocation_id, supplier_id, occurred_at
    (ISO), input_hit, input_miss, output]``, through billing's usage-event path (rated, bounded
    and idempotent there) as the serving supplier's. Returns counts per result status; a replay
    (the same event flushed twice after a crash) is harmless."""
    by_supplier: dict[int, list[UsageIn]] = defaultdict(list)
    for event_id, allocation_id, supplier_id, occurred_at, hit, miss, out in events:
        by_supplier[supplier_id].append(UsageIn(event_id, allocation_id, datetime.fromisoformat(occurred_at)
                                                .astimezone(dt_timezone.utc), hit, miss, out))
    counts = {"created": 0, "replayed": 0, "conflict": 0, "rejected": 0}
    for supplier_id, batch in sorted(by_supplier.items()):
        with transaction.atomic():
            results = usage_record_batch(organisation_id=supplier_id, events=batch)
        for result in results:
            counts[result["status"]] = counts.get(result["status"], 0) + 1
            if result["status"] in ("conflict", "rejected"):
                logger.warning("gateway usage event %s %s: %s", result["event_id"], result["status"],
                               result.get("error"))
    return counts


def endpoint_outcomes_record(*, outcomes: dict[int, tuple[int, int]]) -> None:
    """Fold gateway request outcomes ``{endpoint_id: (served, failed)}`` into the endpoints'
    counters and their suppliers' reliability."""
    with transaction.atomic():
        _outcomes_record(outcomes)


def _outcomes_record(outcomes: dict[int, tuple[int, int]]) -> None:
    suppliers = set()
    for endpoint_id, (served, failed) in sorted(outcomes.items()):
        updated = SupplierEndpoint.objects.filter(pk=endpoint_id).update(
            requests_served=F("requests_served") + served, requests_failed=F("requests_failed") + failed)
        if updated:
            suppliers.add(SupplierEndpoint.objects.values_list("organisation_id", flat=True).get(pk=endpoint_id))
    for organisation_id in sorted(suppliers):
        supplier_reliability_with_gateway(organisation_id=organisation_id)


def supplier_reliability_with_gateway(*, organisation_id: int) -> Decimal:
    """The card-hour reliability (billing's rule) times the share of gateway requests its
    endpoints served, smoothed by ``RELIABILITY_PRIOR_REQUESTS`` successful requests so one
    early failure does not sink a newcomer; rounded down to 0.001."""
    card_hours = supplier_reliability_refresh(organisation_id=organisation_id)
    totals = SupplierEndpoint.objects.filter(organisation_id=organisation_id).aggregate(
        served=Sum("requests_served"), failed=Sum("requests_failed"))
    prior = Decimal(settings.SANDUISAN_GATEWAY["RELIABILITY_PRIOR_REQUESTS"])
    served, failed = Decimal(totals["served"] or 0), Decimal(totals["failed"] or 0)
    reliability = (card_hours * (served + prior) / (served + failed + prior)).quantize(Decimal("0.001"),
                                                                                       rounding=ROUND_DOWN)
    Organisation.objects.filter(pk=organisation_id).update(reliability=reliability)
    return reliability


# --- reconciliation --------------------------------------------------------------------------------

def _token_sums(queryset) -> dict[int, tuple[int, Decimal]]:
    rows = queryset.values("allocation_id").annotate(
        tokens=Sum(F("input_hit_tokens") + F("input_miss_tokens") + F("output_tokens")), amount=Sum("amount"))
    return {row["allocation_id"]: (row["tokens"] or 0, row["amount"] or Decimal(0)) for row in rows}


def usage_reconcile(*, now: datetime | None = None) -> int:
    """Compare, per allocation served through the gateway, the supplier's claims with what the
    exchange metered. A difference beyond ``RECONCILE_TOLERANCE`` of the metered tokens (and
    beyond ``RECONCILE_MIN_TOKENS``) opens a discrepancy for operators; one back within it is
    resolved. Claims are never billed. Idempotent; returns how many discrepancies are open."""
    now = now or timezone.now()
    tolerance = Decimal(settings.SANDUISAN_GATEWAY["RECONCILE_TOLERANCE"])
    minimum = settings.SANDUISAN_GATEWAY["RECONCILE_MIN_TOKENS"]
    allocation_ids = set(UsageClaim.objects.values_list("allocation_id", flat=True).distinct())
    claimed = _token_sums(UsageClaim.objects.filter(allocation_id__in=allocation_ids))
    metered = _token_sums(UsageEvent.objects.filter(allocation_id__in=allocation_ids,
                                                    event_id__startswith=GATEWAY_EVENT_PREFIX))
    suppliers = dict(Allocation.objects.filter(pk__in=allocation_ids).values_list("pk", "supplier_id"))
    for allocation_id in sorted(allocation_ids):
        claimed_tokens, claimed_amount = claimed.get(allocation_id, (0, Decimal(0)))
        metered_tokens, metered_amount = metered.get(allocation_id, (0, Decimal(0)))
        difference = abs(claimed_tokens - metered_tokens)
        flagged = difference > minimum and difference > tolerance * metered_tokens
        values = {"supplier_id": suppliers[allocation_id], "metered_tokens": metered_tokens,
                  "claimed_tokens": claimed_tokens, "metered_amount": metered_amount,
                  "claimed_amount": claimed_amount}
        existing = UsageDiscrepancy.objects.filter(allocation_id=allocation_id).first()
        if flagged:
            if existing is None:
                UsageDiscrepancy.objects.create(allocation_id=allocation_id, flagged_at=now, **values)
            else:
                UsageDiscrepancy.objects.filter(pk=existing.pk).update(status=UsageDiscrepancy.Status.OPEN, **values)
        elif existing is not None and existing.status == UsageDiscrepancy.Status.OPEN:
            UsageDiscrepancy.objects.filter(pk=existing.pk).update(status=UsageDiscrepancy.Status.RESOLVED, **values)
    return UsageDiscrepancy.objects.filter(status=UsageDiscrepancy.Status.OPEN).count()
