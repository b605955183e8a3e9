"""Usage a supplier reports for allocations the exchange meters itself (listings served through
the token gateway): stored as claims for reconciliation, never rated into a charge. The exchange's
own events for those allocations are the billable ones (recorded by the gateway through
``metering.usage_record_batch``)."""
from __future__ import annotations

from django.db.models import Q
from django.utils import timezone

from marketplace.models import AllocationPart

from .metering import CLOCK_SKEW, MAX_EVENT_AGE, TOO_OLD, UsageIn, usage_record_batch, usage_rejected
from .models import UsageClaim
from .rating import TokenPrices, rate_tokens

def exchange_metered_allocations(*, organisation_id: int, allocation_ids: set[int]) -> dict[int, TokenPrices]:
    """Of these allocations, the caller's token allocations on listings the exchange meters,
    with their prices."""
    if not allocation_ids:
        return {}
    rows = AllocationPart.objects.filter(
        Q(allocation_id__in=[i for i in allocation_ids if i < 2**63]), allocation__supplier_id=organisation_id,
        allocation__kind="tokens", listing__metered_by_exchange=True).values_list(
        "allocation_id", "allocation__price_input_hit_per_m", "allocation__price_input_miss_per_m",
        "allocation__price_output_per_m")
    return {pk: TokenPrices(hit, miss, out) for pk, hit, miss, out in rows}


def usage_claims_record(*, organisation_id: int, events: list[UsageIn], prices: dict[int, TokenPrices],
                        now=None) -> list[dict]:
    """Store claims (idempotent by event id per organisation); one result per event, status
    ``reconciliation`` (stored or replayed) or ``rejected`` (outside the time window)."""
    now = now or timezone.now()
    results, rows = [], []
    for event in events:
        if event.occurred_at < now - MAX_EVENT_AGE or event.occurred_at > now + CLOCK_SKEW:
            results.append(usage_rejected(event.event_id, "out_of_period", "occurred_at", TOO_OLD))
            continue
        amount = rate_tokens(prices=prices[event.allocation_id], input_hit=event.input_hit_tokens,
                             input_miss=event.input_miss_tokens, output=event.output_tokens).total
        rows.append(UsageClaim(organisation_id=organisation_id, event_id=event.event_id,
                               allocation_id=event.allocation_id, occurred_at=event.occurred_at,
                               input_hit_tokens=event.input_hit_tokens, input_miss_tokens=event.input_miss_tokens,
                               output_tokens=event.output_tokens, amount=amount))
        results.append({"event_id": event.event_id, "status": "reconciliation", "amount": "0",
                        "detail": "This allocation is metered by the exchange; your report is kept for "
                                  "reconciliation and not billed."})
    UsageClaim.objects.bulk_create(rows, ignore_conflicts=True)
    return results


def usage_record_or_claim(*, organisation_id: int, events: list[UsageIn]) -> list[dict]:
    """Events for allocations the exchange meters (served through the token gateway) become
    claims for reconciliation; the rest are recorded and billed. One result per event, in order."""
    metered = exchange_metered_allocations(organisation_id=organisation_id,
                                           allocation_ids={e.allocation_id for e in events})
    if not metered:
        return usage_record_batch(organisation_id=organisation_id, events=events)
    claims = [e for e in events if e.allocation_id in metered]
    billed = [e for e in events if e.allocation_id not in metered]
    by_event = iter(usage_claims_record(organisation_id=organisation_id, events=claims, prices=metered))
    recorded = iter(usage_record_batch(organisation_id=organisation_id, events=billed) if billed else [])
    return [next(by_event) if e.allocation_id in metered else next(recorded) for e in events]
