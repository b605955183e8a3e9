"""Thin Celery wrappers around matching services. JSON arguments only; every task is idempotent.

Rounds run on a schedule (beat: every bucket with supply, every minute) and soon after new orders
arrive: an arrival asks for a round in each bucket that could serve it, debounced through Redis so
a burst of orders triggers one round per bucket, not one per order.
"""
from dataclasses import asdict

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import OperationalError

from marketplace.models import Order

from . import services
from .snapshot import buckets_for_order, buckets_with_supply

DEBOUNCE_SECONDS = 2


def schedule_round(bucket: str) -> bool:
    """Queue a round for ``bucket`` in a moment unless one is already queued. True if queued."""
    delay = settings.SANDUISAN.get("ROUND_DEBOUNCE_SECONDS", DEBOUNCE_SECONDS)
    if not cache.add(f"matching:round-queued:{bucket}", 1, timeout=max(1, delay)):
        return False
    run_round.apply_async(args=[bucket], countdown=delay)
    return True


def schedule_rounds_for_order(*, order_id: int) -> list[str]:
    """Ask for a round soon in every bucket that could serve the order (debounced)."""
    order = Order.objects.filter(pk=order_id).first()
    if order is None:
        return []
    buckets = [services.TOKENS_BUCKET] if order.kind == Order.Kind.TOKENS else buckets_for_order(order)
    for bucket in buckets:
        schedule_round(bucket)
    return buckets


@shared_task(bind=True, name="matching.run_round", acks_late=True, time_limit=600, soft_time_limit=540,
             max_retries=3)
def run_round(self, bucket: str) -> dict:
    # The task id survives retries and redelivery, so a round is committed at most once.
    try:
        return asdict(services.round_run(bucket=bucket, round_id=f"{bucket}:{self.request.id}",
                                         pause_before_commit=settings.SANDUISAN.get("PERSIST_PAUSE_SECONDS", 0)))
    except OperationalError as exc:  # a lock timeout or deadlock victim: try again shortly
        raise self.retry(exc=exc, countdown=2)


@shared_task(name="matching.run_all_rounds", time_limit=60, soft_time_limit=50, acks_late=True)
def run_all_rounds() -> list[str]:
    buckets = [*buckets_with_supply(), services.TOKENS_BUCKET]
    for bucket in buckets:
        run_round.delay(bucket)
    return buckets


@shared_task(name="matching.order_arrived", time_limit=60, soft_time_limit=50, acks_late=True)
def order_arrived(order_id: int) -> list[str]:
    return schedule_rounds_for_order(order_id=order_id)
