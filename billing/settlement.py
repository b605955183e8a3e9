"""Settlement: delivered usage moves from the buyer's hold to the supplier's payable, less the
platform's commission; what is left on the hold returns to the buyer when the allocation ends.

Card-hours are metered per minute of actual use (``AllocationMeter``: started and stopped by the
supplier through ``lifecycle.services``, kept alive by heartbeats) at the match price, never beyond the allocation's service
period. Token usage is settled from the stored usage events. Every step is idempotent: settling
an allocation twice charges nothing more, and a retried Celery task is harmless.

Lock order (the global one, see ``billing.services``): the order, the allocation, its meter, its
hold, then every ledger account involved at once, in primary-key order (``charge_accounts_lock``).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Count, Max, Min, Sum
from django.utils import timezone

from config.errors import ApplicationError, Conflict, NotFound
from marketplace.hours import hour_start
from marketplace.models import Allocation, Order

from .models import AllocationMeter, Charge, Hold, UsageEvent
from .rating import TokenPrices, commission, rate_card_minutes, rate_tokens
from .services import (charge_accounts_lock, hold_capture_locked, hold_release_locked, hold_void,
                       supplier_give_back_legs, transfer_post)

logger = logging.getLogger(__name__)
ENDED = (Allocation.Status.COMPLETED, Allocation.Status.INTERRUPTED, Allocation.Status.RELEASED)
SIX = Decimal("0.000001")


@contextmanager
def sweep_item(what: str, pk: int):
    """One item of a periodic sweep: its failure is logged and the sweep goes on (the next run
    tries it again), so one bad allocation cannot stall every other."""
    try:
        yield
    except (ApplicationError, DatabaseError):
        logger.exception("%s %s failed; left for the next run", what, pk)


def commission_rate() -> Decimal:
    return Decimal(settings.SANDUISAN["COMMISSION_RATE"])


def heartbeat_grace() -> timedelta:
    return timedelta(seconds=settings.SANDUISAN["HEARTBEAT_GRACE_SECONDS"])


def service_window(allocation: Allocation) -> tuple[datetime, datetime]:
    """When the allocation may deliver: its hours, cut at the failure for an interrupted one."""
    end = allocation.delivered_end_hour if allocation.status == Allocation.Status.INTERRUPTED else allocation.end_hour
    return hour_start(allocation.start_hour), hour_start(max(end if end is not None else allocation.end_hour,
                                                             allocation.start_hour))


# --- card-hour meters -------------------------------------------------------------------------

def metered_seconds(*, meter: AllocationMeter, allocation: Allocation, now: datetime) -> int:
    """Seconds of use so far: what heartbeats accumulated, plus the open stretch since the last
    one (at most the grace period), never past the service window or the stop."""
    if meter.started_at is None:
        return 0
    _, service_end = service_window(allocation)
    seconds = meter.accumulated_seconds
    if meter.stopped_at is None:
        mark = meter.last_heartbeat_at or meter.started_at
        open_end = min(now, mark + heartbeat_grace(), service_end)
        seconds += max(0, int((open_end - mark).total_seconds()))
    # Never beyond the service window, whatever heartbeats said (a failure may shorten it later).
    return max(0, min(seconds, int((service_end - meter.started_at).total_seconds())))


def meter_advance(meter: AllocationMeter, allocation: Allocation, at: datetime) -> None:
    """Fold the stretch from the last heartbeat to ``at`` into the meter: a heartbeat within the
    grace period counts the whole stretch; after a longer silence only the grace counts."""
    _, service_end = service_window(allocation)
    mark = meter.last_heartbeat_at or meter.started_at
    end = min(at, service_end, mark + heartbeat_grace())
    meter.accumulated_seconds += max(0, int((end - mark).total_seconds()))
    meter.last_heartbeat_at = max(mark, min(at, service_end))


# --- settlement -------------------------------------------------------------------------------

@dataclass
class SettleOutcome:
    allocation_id: int
    charged: Decimal = Decimal(0)
    events: int = 0
    closed: bool = False
    unfunded_events: int = 0


def allocation_settle(*, allocation_id: int, now: datetime | None = None, final: bool | None = None) -> SettleOutcome:
    """Charge what the allocation delivered since it was last settled and, once it has ended (or
    ``final``), close its hold. Idempotent. Locks the order, allocation, meter, hold, then the
    accounts (the global order, so it can run inside a caller's transaction that holds some).

    Token usage beyond the hold (more tokens than the order expected) is charged from the buyer's
    available balance; events the wallet cannot cover either stay unsettled, oldest first kept,
    and are tried again by the next settlement."""
    now = now or timezone.now()
    order_id = Allocation.objects.filter(pk=allocation_id).values_list("order_id", flat=True).first()
    if order_id is None:
        raise NotFound("No such allocation.")
    with transaction.atomic():
        # The order first, as every writer does: a charge's foreign key to the order is checked at
        # commit (Django's constraints are deferred), and that check must not wait on a lock
        # holder who in turn waits for this allocation.
        buyer_id = Order.objects.select_for_update().filter(pk=order_id).values_list("organisation_id", flat=True).get()
        allocation = Allocation.objects.select_for_update().get(pk=allocation_id)
        outcome = SettleOutcome(allocation_id)
        meter = (AllocationMeter.objects.select_for_update().filter(allocation=allocation).first()
                 if allocation.kind == Order.Kind.CARD_HOURS else None)
        hold = Hold.objects.select_for_update().filter(allocation=allocation).first()
        accounts = charge_accounts_lock(buyer_id=buyer_id, supplier_id=allocation.supplier_id)
        if allocation.kind == Order.Kind.CARD_HOURS:
            _settle_card_hours(allocation, meter, hold, accounts, buyer_id, now, outcome)
        else:
            _settle_tokens(allocation, hold, accounts, buyer_id, outcome)
        if hold is not None and hold.status == Hold.Status.PENDING and (final or allocation.status in ENDED):
            hold_release_locked(hold=hold)
            outcome.closed = True
        return outcome


def _settle_card_hours(allocation: Allocation, meter: AllocationMeter | None, hold: Hold | None, accounts,
                       buyer_id: int, now: datetime, outcome: SettleOutcome) -> None:
    if meter is None or meter.started_at is None:
        return
    minutes = metered_seconds(meter=meter, allocation=allocation, now=now) // 60
    if minutes < meter.billed_minutes:
        # A failure cut the service window below what an earlier sweep already charged.
        _reverse_card_minutes(allocation, meter, hold, accounts, buyer_id, minutes, outcome)
        return
    if minutes == meter.billed_minutes:
        return
    total = rate_card_minutes(price_per_card_hour=allocation.price_per_card_hour, cards=allocation.cards,
                              minutes=minutes)
    amount = total - meter.billed_amount
    fee = commission(amount=amount, rate=commission_rate())
    transfer = hold_capture_locked(idempotency_id=f"settle:allocation:{allocation.pk}:minutes:{minutes}", hold=hold,
                                   accounts=accounts, amount=amount, fee=fee,
                                   memo=f"allocation {allocation.pk}: {minutes} minutes x {allocation.cards} cards")
    usage_from = meter.started_at + timedelta(minutes=meter.billed_minutes)
    Charge.objects.create(
        buyer_id=buyer_id, supplier_id=allocation.supplier_id, order_id=allocation.order_id, allocation=allocation,
        kind=Charge.Kind.CARD_HOURS,
        quantity=(Decimal(allocation.cards * (minutes - meter.billed_minutes)) / 60).quantize(SIX),
        unit_price=allocation.price_per_card_hour, amount=amount, commission=fee, usage_from=usage_from,
        usage_to=meter.started_at + timedelta(minutes=minutes), transfer=transfer)
    meter.billed_minutes, meter.billed_amount = minutes, total
    meter.save(update_fields=["billed_minutes", "billed_amount", "updated_at"])
    outcome.charged += amount


def _reverse_card_minutes(allocation: Allocation, meter: AllocationMeter, hold: Hold | None, accounts,
                          buyer_id: int, minutes: int, outcome: SettleOutcome) -> None:
    """Give back what was charged for minutes the allocation no longer delivered (its window
    shrank to the failure): the supplier and the platform return their shares, to the hold if it
    is still open, else to the wallet. Whatever the supplier's payable no longer holds (it was
    paid out) the supplier owes: its receivable, repaid from its next earnings."""
    total = rate_card_minutes(price_per_card_hour=allocation.price_per_card_hour, cards=allocation.cards,
                              minutes=minutes)
    amount = meter.billed_amount - total
    fee = commission(amount=amount, rate=commission_rate())
    legs = [*supplier_give_back_legs(accounts=accounts, share=amount - fee), (accounts["commission"].pk, -fee)]
    to_hold = hold is not None and hold.status == Hold.Status.PENDING and hold.posted_amount >= amount
    legs.append((accounts["held" if to_hold else "wallet"].pk, amount))
    transfer, _ = transfer_post(idempotency_id=f"settle:allocation:{allocation.pk}:reverse-to:{minutes}",
                                kind="settle_reversal", legs=legs,
                                memo=f"allocation {allocation.pk}: not delivered after minute {minutes}")
    if to_hold:
        hold.posted_amount -= amount
        hold.save(update_fields=["posted_amount", "updated_at"])
    end = meter.started_at + timedelta(minutes=meter.billed_minutes)
    Charge.objects.create(
        buyer_id=buyer_id, supplier_id=allocation.supplier_id, order_id=allocation.order_id, allocation=allocation,
        kind=Charge.Kind.CARD_HOURS,
        quantity=-(Decimal(allocation.cards * (meter.billed_minutes - minutes)) / 60).quantize(SIX),
        unit_price=allocation.price_per_card_hour, amount=-amount, commission=-fee,
        usage_from=meter.started_at + timedelta(minutes=minutes), usage_to=end, transfer=transfer,
        memo="charged earlier, then not delivered: the node failed")
    meter.billed_minutes, meter.billed_amount = minutes, total
    meter.save(update_fields=["billed_minutes", "billed_amount", "updated_at"])
    outcome.charged -= amount


def _settle_tokens(allocation: Allocation, hold: Hold | None, accounts, buyer_id: int, outcome: SettleOutcome) -> None:
    pending = UsageEvent.objects.filter(allocation=allocation, settled=False)
    summary = pending.aggregate(n=Count("id"), last=Max("id"), amount=Sum("amount"))
    if not summary["n"]:
        return
    funds = accounts["wallet"].balance
    if hold is not None and hold.status == Hold.Status.PENDING:
        funds += hold.amount - hold.posted_amount
    last = summary["last"]
    if summary["amount"] > funds:
        # Settle the oldest events the funds cover; the rest wait for a top-up.
        running, last = Decimal(0), None
        for pk, amount in pending.order_by("pk").values_list("pk", "amount").iterator(chunk_size=5000):
            if running + amount > funds:
                break
            running, last = running + amount, pk
        if last is None:
            outcome.unfunded_events = summary["n"]
            return
    chosen = pending.filter(pk__lte=last)
    sums = chosen.aggregate(n=Count("id"), hit=Sum("input_hit_tokens"), miss=Sum("input_miss_tokens"),
                            out=Sum("output_tokens"), amount=Sum("amount"), first=Min("occurred_at"),
                            latest=Max("occurred_at"))
    prices = TokenPrices(allocation.price_input_hit_per_m, allocation.price_input_miss_per_m,
                         allocation.price_output_per_m)
    charge = rate_tokens(prices=prices, input_hit=sums["hit"], input_miss=sums["miss"], output=sums["out"])
    # Rating is linear and exact at 12 decimals, so the kinds add up to the events' own amounts.
    assert charge.total == sums["amount"], (charge.total, sums["amount"])
    parts = [(Charge.Kind.INPUT_HIT, sums["hit"], prices.input_hit_per_m, charge.input_hit),
             (Charge.Kind.INPUT_MISS, sums["miss"], prices.input_miss_per_m, charge.input_miss),
             (Charge.Kind.OUTPUT, sums["out"], prices.output_per_m, charge.output)]
    fees = {kind: commission(amount=amount, rate=commission_rate()) for kind, _, _, amount in parts}
    if charge.total == 0:  # events with no tokens: settled, with nothing to charge or book
        outcome.events += chosen.update(settled=True)
        outcome.unfunded_events = summary["n"] - sums["n"]
        return
    transfer = hold_capture_locked(idempotency_id=f"settle:allocation:{allocation.pk}:events-to:{last}", hold=hold,
                                   accounts=accounts, amount=charge.total, fee=sum(fees.values()),
                                   memo=f"allocation {allocation.pk}: {sums['n']} usage events")
    chosen.update(settled=True, settled_transfer=transfer)
    Charge.objects.bulk_create([
        Charge(buyer_id=buyer_id, supplier_id=allocation.supplier_id, order_id=allocation.order_id,
               allocation=allocation, kind=kind, quantity=Decimal(tokens), unit_price=price, amount=amount,
               commission=fees[kind], usage_from=sums["first"], usage_to=sums["latest"], transfer=transfer)
        for kind, tokens, price, amount in parts if amount])
    outcome.charged += charge.total
    outcome.events += sums["n"]
    outcome.unfunded_events = summary["n"] - sums["n"]


def holds_expire(*, now=None) -> int:
    """Close every pending hold past its expiry: an allocation's hold is settled first (its usage
    charged, the rest released), any other is voided. Idempotent; returns how many it closed."""
    now = now or timezone.now()
    closed = 0
    for pk, allocation_id in (Hold.objects.filter(status=Hold.Status.PENDING, expires_at__lte=now).order_by("pk")
                              .values_list("pk", "allocation_id")):
        try:
            if allocation_id is not None:
                allocation_settle(allocation_id=allocation_id, now=now, final=True)
            else:
                hold_void(hold_id=pk)
            closed += 1
        except Conflict:
            continue  # settled meanwhile
        except ApplicationError:
            # One hold that cannot close must not keep every other expired hold open.
            logger.exception("hold %s could not be closed on expiry", pk)
            continue
    return closed


def settle_pending_usage(*, now: datetime | None = None) -> int:
    """Settle every allocation with unsettled token usage; returns how many events it settled."""
    ids = (UsageEvent.objects.filter(settled=False).values_list("allocation_id", flat=True)
           .distinct().order_by("allocation_id"))
    return sum(allocation_settle(allocation_id=pk, now=now).events for pk in list(ids))


def settle_due(*, now: datetime | None = None) -> int:
    """The periodic sweep: running card-hour allocations, unsettled token usage, and ended
    allocations whose hold is still open. Idempotent; returns how many allocations it settled."""
    ids = set(Allocation.objects.filter(status=Allocation.Status.RUNNING).values_list("pk", flat=True))
    ids |= set(UsageEvent.objects.filter(settled=False).values_list("allocation_id", flat=True).distinct())
    ids |= set(Hold.objects.filter(status=Hold.Status.PENDING, allocation__status__in=ENDED)
               .values_list("allocation_id", flat=True))
    for pk in sorted(ids):
        with sweep_item("settle allocation", pk):
            allocation_settle(allocation_id=pk, now=now)
    return len(ids)
