"""The allocation lifecycle in one place: reserve (with the buyer's hold), confirm or reject a
flagged match, start, heartbeat and stop the meter, fail a node, release, settle and credit.

Calls run one way, down: this module orchestrates marketplace's records (orders, slots,
allocations), matching's records (reviews, failures; rounds are requested through
``matching.tasks``) and billing's ledger (holds, settlement). None of those import this module.
API views, the admin site, the dashboard, Celery tasks and the simulation call in here.

Lock order, everywhere: node -> listing -> order -> allocation -> listing-hours by
(listing_id, hour) -> meter -> hold -> ledger accounts in primary-key order.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import Account, AllocationMeter, Charge
from billing.rating import exact
from billing.services import account_get_or_create, allocation_hold_place, transfer_post
from billing.settlement import allocation_settle, meter_advance, service_window, heartbeat_grace, sweep_item
from config.errors import InvalidTransition, NotFound, ValidationFailed
from marketplace import services as market
from marketplace.demand import CardHoursDemand, TokensDemand
from marketplace.hours import current_hour_index, hour_start
from marketplace.models import Allocation, Node, Order, Organisation
from marketplace.services import CANCELLABLE, SlotClaim, allocation_release_locked, allocation_release_unused_locked
from matching.models import FailureImpact, MatchReview, NodeFailure, RejectedPairing
from matching.tasks import order_arrived, schedule_rounds_for_order


# --- orders -----------------------------------------------------------------------------------

def order_create_card_hours(*, organisation: Organisation, demand: CardHoursDemand,
                            workload: dict | None = None) -> Order:
    """Place a card-hour order and, once it is committed, ask for matching rounds soon."""
    with transaction.atomic():
        order = market.order_create_card_hours(organisation=organisation, demand=demand, workload=workload)
        _after_commit_request_matching(order.pk)
        return order


def order_create_tokens(*, organisation: Organisation, demand: TokensDemand, workload: dict | None = None) -> Order:
    """Place a token order and, once it is committed, ask for a token round soon."""
    with transaction.atomic():
        order = market.order_create_tokens(organisation=organisation, demand=demand, workload=workload)
        _after_commit_request_matching(order.pk)
        return order


def _after_commit_request_matching(order_id: int) -> None:
    if settings.SANDUISAN.get("AUTO_MATCH"):
        # robust: the order is committed either way; a broker hiccup is logged, and the
        # every-minute rounds pick the order up regardless.
        transaction.on_commit(lambda: order_arrived.delay(order_id), robust=True)


def order_cancel(*, organisation: Organisation, order_id: int, reason: str = "") -> Order:
    """Cancel an open or matched order and put every slot it held back on sale; holds return."""
    with transaction.atomic():
        order = Order.objects.select_for_update().filter(organisation=organisation, pk=order_id).first()
        if order is None:
            raise NotFound("No such order.")
        if order.status == Order.Status.CANCELLED:
            return order
        if order.status not in CANCELLABLE:
            raise InvalidTransition(f"An order that is {order.status} cannot be cancelled.",
                                    fields={"status": [f"Cannot cancel from {order.status}."]})
        # Only live allocations: an interrupted one already gave its undelivered hours back.
        released = list(order.allocations.filter(status__in=Allocation.ACTIVE)
                        .order_by("pk").values_list("pk", flat=True))
        for allocation_id in released:
            allocation_release_locked(allocation_id=allocation_id)
            allocation_settle(allocation_id=allocation_id, final=True)  # nothing delivered: the hold returns
        order.status = Order.Status.CANCELLED
        order.status_reason = reason[:300] or "cancelled by the buyer"
        order.save(update_fields=["status", "status_reason", "updated_at"])
        return order


# --- reserve ----------------------------------------------------------------------------------

def slots_reserve(*, order_id: int, claims: list[SlotClaim], start_hour: int, end_hour: int,
                  price_per_card_hour: Decimal, price_rule: str = "ask", round_id: str = "",
                  status: str = Allocation.Status.CONFIRMED) -> Allocation:
    """Sell the claimed card-hour slots to one open order (``marketplace.services.slots_sell``:
    all or nothing, every hard constraint re-checked under locks) and hold the buyer's maximum
    cost, in one transaction: ``InsufficientFunds`` (409, with the amounts) sells nothing."""
    with transaction.atomic():
        order, allocation = market.slots_sell(order_id=order_id, claims=claims, start_hour=start_hour,
                                              end_hour=end_hour, price_per_card_hour=price_per_card_hour,
                                              price_rule=price_rule, round_id=round_id, status=status)
        allocation_hold_place(allocation=allocation, order=order)
        return allocation


# --- review -----------------------------------------------------------------------------------

def review_approve(*, review_id: int, admin_user_id: int, reason: str = "") -> MatchReview:
    """Confirm a flagged match: the allocation stands and its order is matched."""
    with transaction.atomic():
        review = _review_for_decision(review_id)
        order = Order.objects.select_for_update().get(pk=review.allocation.order_id)
        allocation = Allocation.objects.select_for_update().get(pk=review.allocation_id)
        if allocation.status != Allocation.Status.PENDING_REVIEW or order.status != Order.Status.OPEN:
            raise InvalidTransition("This match is no longer waiting for review.")
        allocation.status = Allocation.Status.CONFIRMED
        allocation.save(update_fields=["status", "updated_at"])
        order.status = Order.Status.MATCHED
        order.save(update_fields=["status", "updated_at"])
        return _decide(review, MatchReview.Status.APPROVED, admin_user_id, reason)


def review_reject(*, review_id: int, admin_user_id: int, reason: str) -> MatchReview:
    """Refuse a flagged match: its capacity goes back on sale, the order returns to the book, and
    the engine never proposes this order on these listings again."""
    if not reason or not reason.strip():
        raise ValidationFailed.on("reason", "Say why the match is rejected.")
    with transaction.atomic():
        review = _review_for_decision(review_id)
        order = Order.objects.select_for_update().get(pk=review.allocation.order_id)
        if review.allocation.status != Allocation.Status.PENDING_REVIEW:
            raise InvalidTransition("This match is no longer waiting for review.")
        allocation_release_locked(allocation_id=review.allocation_id)
        allocation_settle(allocation_id=review.allocation_id, final=True)  # the hold returns to the buyer
        RejectedPairing.objects.bulk_create(
            [RejectedPairing(order=order, listing_id=p.listing_id, review=review)
             for p in review.allocation.parts.all()], ignore_conflicts=True)
        decided = _decide(review, MatchReview.Status.REJECTED, admin_user_id, reason)
    transaction.on_commit(lambda: schedule_rounds_for_order(order_id=order.pk), robust=True)
    return decided


def _review_for_decision(review_id: int) -> MatchReview:
    review = MatchReview.objects.select_for_update().select_related("allocation").filter(pk=review_id).first()
    if review is None:
        raise NotFound("No such review.")
    if review.status != MatchReview.Status.PENDING:
        raise InvalidTransition(f"This match was already {review.status}.")
    return review


def _decide(review: MatchReview, status: str, admin_user_id: int, reason: str) -> MatchReview:
    review.status = status
    review.decided_by_id = admin_user_id
    review.decided_at = timezone.now()
    review.decision_reason = reason.strip()
    review.save(update_fields=["status", "decided_by", "decided_at", "decision_reason"])
    return review


# --- failure ----------------------------------------------------------------------------------

def node_fail(*, node_id: int, organisation: Organisation | None = None, reason: str = "",
              reported_by_id: int | None = None, now=None) -> NodeFailure:
    """Mark a node failed and re-match what it had not yet delivered.

    ``organisation`` scopes the call to the node's supplier (None: a platform admin). The node
    delivered nothing from the hour it failed in. Every live allocation on it still running past
    that hour is released from then on (on all its nodes: a job moves whole); an allocation that
    had started is ``interrupted`` and its order is re-opened for the remaining hours, starting at
    the next whole hour, its window stretched if needed; one that had not started is released and
    its order re-opened as it was. Each is recorded as a ``FailureImpact`` for billing's credits.
    """
    now = now or timezone.now()
    failed_hour = current_hour_index(now)
    next_hour = failed_hour + 1
    with transaction.atomic():
        nodes = Node.objects.select_for_update().filter(pk=node_id)
        if organisation is not None:
            nodes = nodes.filter(organisation=organisation)
        node = nodes.first()
        if node is None:
            raise NotFound("No such node.")
        if node.status == Node.Status.FAILED:
            raise InvalidTransition("The node is already marked failed.")
        node.status = Node.Status.FAILED
        node.save(update_fields=["status", "updated_at"])
        failure = NodeFailure.objects.create(node=node, failed_hour=failed_hour, reason=reason[:2000],
                                             reported_by_id=reported_by_id,
                                             reported_by_supplier=organisation is not None)
        affected = (Allocation.objects.filter(parts__node=node, status__in=Allocation.ACTIVE, end_hour__gt=failed_hour,
                                              kind=Order.Kind.CARD_HOURS)
                    .values_list("pk", "order_id").distinct().order_by("order_id", "pk"))
        reopened = []
        for allocation_id, order_id in affected:
            order = Order.objects.select_for_update().get(pk=order_id)
            allocation = Allocation.objects.select_for_update().get(pk=allocation_id)
            started = allocation.start_hour <= failed_hour
            lost_from = max(allocation.start_hour, failed_hour)
            FailureImpact.objects.create(failure=failure, allocation=allocation,
                                         hours_lost=allocation.end_hour - lost_from, cards=allocation.cards,
                                         started=started)
            MatchReview.objects.filter(allocation=allocation, status=MatchReview.Status.PENDING).update(
                status=MatchReview.Status.WITHDRAWN, decided_at=now, decision_reason="the node failed")
            allocation_release_locked(allocation_id=allocation.pk, from_hour=lost_from)
            if started:
                # Undelivered: the hour it failed in and every hour after it; redone from the next hour.
                remaining = allocation.end_hour - failed_hour
                Allocation.objects.filter(pk=allocation.pk).update(status=Allocation.Status.INTERRUPTED,
                                                                   delivered_end_hour=failed_hour)
                order.original_duration_hours = order.original_duration_hours or order.duration_hours
                order.duration_hours = remaining
                order.earliest_start = hour_start(next_hour)
                order.latest_end = max(order.latest_end, hour_start(next_hour + remaining))
            order.status = Order.Status.OPEN
            order.rematch_count += 1
            order.status_reason = f"re-matching after node failure {failure.pk}"
            order.save()
            reopened.append(order.pk)
        # Settle what was delivered, close the holds, credit the buyers, re-rate the supplier.
        failure_settle(failure_id=failure.pk, now=now)
    transaction.on_commit(lambda: [schedule_rounds_for_order(order_id=pk) for pk in reopened], robust=True)
    return failure


# --- the meter: start, heartbeat, stop ---------------------------------------------------------

def _meter_locked(*, organisation: Organisation | None,
                  allocation_id: int) -> tuple[Order, Allocation, AllocationMeter]:
    """The order, allocation and meter, locked in the global order (order first). ``organisation``
    scopes the call to the allocation's supplier; None is the platform itself."""
    allocation = Allocation.objects.filter(pk=allocation_id).first()
    if allocation is None or (organisation is not None and allocation.supplier_id != organisation.pk):
        raise NotFound("No such allocation.")
    if allocation is None:
        raise NotFound("No such allocation.")
    order = Order.objects.select_for_update().get(pk=allocation.order_id)
    allocation = Allocation.objects.select_for_update().get(pk=allocation_id)
    meter, _ = AllocationMeter.objects.select_for_update().get_or_create(allocation=allocation)
    return order, allocation, meter


def allocation_start(*, organisation: Organisation, allocation_id: int, now: datetime | None = None) -> AllocationMeter:
    """The supplier starts the buyer's work. Billing runs from now (or the first hour of the
    allocation, if the supplier is early). Locks order, then allocation. Starting twice is a no-op."""
    now = now or timezone.now()
    with transaction.atomic():
        order, allocation, meter = _meter_locked(organisation=organisation, allocation_id=allocation_id)
        if allocation.status == Allocation.Status.RUNNING:
            return meter
        start, end = service_window(allocation)
        if allocation.kind != Order.Kind.CARD_HOURS or allocation.status != Allocation.Status.CONFIRMED:
            raise InvalidTransition(f"An allocation that is {allocation.status} cannot be started.",
                                    fields={"status": [f"Cannot start from {allocation.status}."]})
        if not start - heartbeat_grace() <= now < end:
            raise InvalidTransition(f"The allocation runs from {start.isoformat()} to {end.isoformat()}.",
                                    fields={"start": ["Outside the allocation's hours."]})
        meter.started_at = max(now, start)
        meter.last_heartbeat_at = meter.started_at
        meter.save()
        allocation.status = Allocation.Status.RUNNING
        allocation.save(update_fields=["status", "updated_at"])
        order.status = Order.Status.RUNNING
        order.save(update_fields=["status", "updated_at"])
        return meter


def allocation_heartbeat(*, organisation: Organisation, allocation_id: int,
                         now: datetime | None = None) -> AllocationMeter:
    """The work is still running. Locks the allocation, then its meter."""
    now = now or timezone.now()
    with transaction.atomic():
        allocation = Allocation.objects.select_for_update().filter(pk=allocation_id, supplier=organisation).first()
        if allocation is None:
            raise NotFound("No such allocation.")
        if allocation.status != Allocation.Status.RUNNING:
            raise InvalidTransition(f"The allocation is {allocation.status}, not running.",
                                    fields={"status": [f"Not running ({allocation.status})."]})
        meter = AllocationMeter.objects.select_for_update().get(allocation=allocation)
        meter_advance(meter, allocation, now)
        meter.save()
        return meter


def allocation_stop(*, organisation: Organisation | None, allocation_id: int, now: datetime | None = None) -> AllocationMeter:
    """The work ended (the supplier says so, or the allocation's hours ran out): the allocation
    and its order complete, unused whole hours go back on sale, and the allocation is settled
    and its hold closed in the same transaction. Stopping twice is a no-op."""
    now = now or timezone.now()
    with transaction.atomic():
        order, allocation, meter = _meter_locked(organisation=organisation, allocation_id=allocation_id)
        if allocation.status == Allocation.Status.COMPLETED:
            return meter
        if allocation.status not in (Allocation.Status.RUNNING, Allocation.Status.CONFIRMED):
            raise InvalidTransition(f"An allocation that is {allocation.status} cannot be stopped.",
                                    fields={"status": [f"Cannot stop from {allocation.status}."]})
        if allocation.kind == Order.Kind.CARD_HOURS and meter.started_at is None:
            if organisation is not None:
                # A supplier cannot walk away from a sale by stopping it before it starts: an
                # allocation never started counts as not delivered when its hours run out.
                raise InvalidTransition("The allocation has not started; it cannot be stopped.",
                                        fields={"status": ["Not started."]})
            return _no_show_locked(order, allocation, meter, now)
        if meter.started_at is not None and meter.stopped_at is None:
            meter_advance(meter, allocation, now)
            meter.stopped_at = max(meter.started_at, min(now, service_window(allocation)[1]))
            meter.save()
        allocation_release_unused_locked(allocation=allocation, from_hour=current_hour_index(now) + 1)
        allocation.status = Allocation.Status.COMPLETED
        allocation.save(update_fields=["status", "updated_at"])
        if not order.allocations.filter(status__in=Allocation.ACTIVE).exists():
            order.status = Order.Status.COMPLETED
            order.save(update_fields=["status", "updated_at"])
        allocation_settle(allocation_id=allocation.pk, now=now, final=True)
        return meter


def _no_show_locked(order: Order, allocation: Allocation, meter: AllocationMeter, now: datetime) -> AllocationMeter:
    """The allocation's hours ran out and its supplier never started it: nothing is charged, the
    hold returns, the order goes back to the book (it expires if its window has closed), and the
    supplier's reliability counts every card-hour as not delivered."""
    allocation.status = Allocation.Status.INTERRUPTED
    allocation.delivered_end_hour = allocation.start_hour
    allocation.save(update_fields=["status", "delivered_end_hour", "updated_at"])
    if not order.allocations.filter(status__in=Allocation.ACTIVE).exists():
        next_start = max(order.earliest_start, hour_start(current_hour_index(now) + 1))
        if next_start + timedelta(hours=order.duration_hours) <= order.latest_end:
            order.status, order.earliest_start = Order.Status.OPEN, next_start
            order.status_reason = "the supplier never started the work; re-matching"
            order.rematch_count += 1
        else:
            order.status = Order.Status.EXPIRED
            order.status_reason = "the supplier never started the work and the window has closed"
        order.save(update_fields=["status", "rematch_count", "status_reason", "earliest_start", "updated_at"])
    allocation_settle(allocation_id=allocation.pk, now=now, final=True)
    supplier_reliability_refresh(organisation_id=allocation.supplier_id)
    return meter


def allocations_close_due(*, now: datetime | None = None) -> int:
    """Close every live allocation whose hours have run out: card-hours stopped at their end (one
    its supplier never started is a no-show, see ``_no_show_locked``); tokens at the listing's
    end. Idempotent; one that fails is logged and left for the next run. Returns how many closed."""
    now = now or timezone.now()
    due = (Allocation.objects.filter(status__in=(Allocation.Status.CONFIRMED, Allocation.Status.RUNNING),
                                     end_hour__lte=current_hour_index(now))
           .order_by("pk").values_list("pk", flat=True))
    closed = 0
    for pk in due:
        with sweep_item("close allocation", pk):
            allocation_stop(organisation=None, allocation_id=pk, now=now)
            closed += 1
    return closed


# --- failures: service credits and reliability --------------------------------------------------

def failure_settle(*, failure_id: int, now: datetime | None = None) -> list[Charge]:
    """Settle what a node failure touched and compensate the buyers. Call inside the atomic block
    that recorded the failure. Each affected allocation is settled and its hold closed; the buyer
    was never charged for the hour of the failure or after it (the service window ends there).
    A buyer whose work had started also gets a service credit: ``SERVICE_CREDIT_RATE`` of the lost
    card-hours' value, paid by the platform. The supplier's reliability is recomputed."""
    failure = NodeFailure.objects.select_related("node").get(pk=failure_id)
    credits = []
    rate = Decimal(settings.SANDUISAN["SERVICE_CREDIT_RATE"])
    for impact in FailureImpact.objects.filter(failure=failure).select_related("allocation__order").order_by("pk"):
        allocation = impact.allocation
        allocation_settle(allocation_id=allocation.pk, now=now, final=True)
        value = exact(allocation.price_per_card_hour * impact.cards * impact.hours_lost)
        credit = exact(value * rate)
        # Credited only where the work had really started (by its meter, not the clock).
        started = AllocationMeter.objects.filter(allocation=allocation, started_at__isnull=False).exists()
        if not started or credit <= 0:
            continue
        buyer_id = allocation.order.organisation_id
        platform = account_get_or_create(organisation_id=None, kind=Account.Kind.PLATFORM_CREDITS)
        wallet = account_get_or_create(organisation_id=buyer_id, kind=Account.Kind.BUYER_WALLET)
        transfer, created = transfer_post(idempotency_id=f"service-credit:impact:{impact.pk}", kind="service_credit",
                                          legs=[(platform.pk, -credit), (wallet.pk, credit)],
                                          memo=f"node {failure.node_id} failed under allocation {allocation.pk}")
        if not created:
            continue
        at = hour_start(failure.failed_hour)
        credits.append(Charge.objects.create(
            buyer_id=buyer_id, supplier=None, order_id=allocation.order_id, allocation=allocation,
            kind=Charge.Kind.SERVICE_CREDIT, quantity=Decimal(impact.cards * impact.hours_lost),
            unit_price=allocation.price_per_card_hour, amount=-credit, commission=Decimal(0), usage_from=at,
            usage_to=at, transfer=transfer,
            memo=f"{rate:%} of {impact.cards * impact.hours_lost} card-hours lost to a node failure"))
    supplier_reliability_refresh(organisation_id=failure.node.organisation_id)
    return credits


def supplier_reliability_refresh(*, organisation_id: int) -> Decimal:
    """Reliability = share of committed card-hours delivered, smoothed by a prior of fully
    delivered card-hours (``RELIABILITY_PRIOR_CARD_HOURS``) so one early failure does not sink a
    new supplier: (delivered + prior) / (delivered + lost + prior), rounded down to 0.001.
    Delivered card-hours are what the meters billed; lost ones are those a node failure took,
    plus every card-hour of an allocation the supplier never started (a no-show)."""
    prior = Decimal(settings.SANDUISAN["RELIABILITY_PRIOR_CARD_HOURS"])
    sold = Allocation.objects.filter(supplier_id=organisation_id, kind=Order.Kind.CARD_HOURS)
    delivered = sum((Decimal(minutes * cards) / 60 for minutes, cards in AllocationMeter.objects.filter(
        allocation__in=sold).values_list("billed_minutes", "allocation__cards")), Decimal(0))
    lost = sum((Decimal(i.cards * i.hours_lost) for i in FailureImpact.objects.filter(
        allocation__supplier_id=organisation_id)), Decimal(0))
    no_shows = sold.filter(status=Allocation.Status.INTERRUPTED, failure_impacts__isnull=True)
    lost += sum((Decimal(cards * (end - start)) for cards, start, end in no_shows.values_list(
        "cards", "start_hour", "end_hour")), Decimal(0))
    reliability = ((delivered + prior) / (delivered + lost + prior)).quantize(Decimal("0.001"), rounding="ROUND_DOWN")
    Organisation.objects.filter(pk=organisation_id).update(reliability=reliability)
    return reliability
