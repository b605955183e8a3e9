"""Thin Celery wrappers around matching services. JSON arguments only; every task is idempotent.

Rounds run on a schedule (beat: every bucket with supply, every minute) and soon after new orders
arrive: an arrival asks for a round in each bucket that could serve it, debounced through Redis so
a burst of orders triggers one round per bucket, not one per order.
"""
from dataclasses import asdict

from celery import shared_task
from celery.signals import worker_init, worker_process_init
from django.conf import settings
from django.core.cache import cache
from django.db import OperationalError

from marketplace.models import Order

from . import services
from .engine.engine import engine_warm
from .snapshot import buckets_for_order, buckets_with_supply

DEBOUNCE_SECONDS = 2
# A queued round that has not started within this long is dropped by the worker (the next beat
# queues a fresh one), so rounds never pile up while workers lag or are down.
ROUND_EXPIRES_SECONDS = 120


@worker_init.connect
@worker_process_init.connect
def _engine_load(**_) -> None:
    """A worker loads the matching kernels when it starts (a pool's child when it forks), so its
    first round does not pay for it."""
    engine_warm()


def _pending_key(bucket: str) -> str:
    return f"matching:round-pending:{bucket}"


def round_enqueue(bucket: str, *, countdown: int = 0, queue: str | None = None) -> bool:
    """Queue a round for ``bucket`` unless one is already pending (queued and not yet started).
    True if queued. The pending mark lives as long as the task may wait, so an expired task
    frees its bucket too."""
    if not cache.add(_pending_key(bucket), 1, timeout=countdown + ROUND_EXPIRES_SECONDS):
        return False
    options = {"queue": queue} if queue else {}
    run_round.apply_async(args=[bucket], countdown=countdown, expires=countdown + ROUND_EXPIRES_SECONDS, **options)
    return True


def schedule_round(bucket: str) -> bool:
    """Queue a round for ``bucket`` in a moment unless one is already queued. True if queued."""
    delay = settings.SANDUISAN.get("ROUND_DEBOUNCE_SECONDS", DEBOUNCE_SECONDS)
    if not cache.add(f"matching:round-queued:{bucket}", 1, timeout=max(1, delay)):
        return False
    return round_enqueue(bucket, countdown=delay)


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
    # Started: an order arriving from now on may need a round of its own.
    cache.delete(_pending_key(bucket))
    # The task id survives retries and redelivery, so a round is committed at most once.
    try:
        return asdict(services.round_run(bucket=bucket, round_id=f"{bucket}:{self.request.id}",
                                         pause_before_commit=settings.SANDUISAN.get("PERSIST_PAUSE_SECONDS", 0)))
    except OperationalError as exc:  # a lock timeout or deadlock victim: try again shortly
        raise self.retry(exc=exc, countdown=2)


@shared_task(name="matching.run_all_rounds", time_limit=60, soft_time_limit=50, acks_late=True)
def run_all_rounds() -> list[str]:
    """Queue a round for every bucket with supply that has none pending; answers those queued."""
    return [bucket for bucket in [*buckets_with_supply(), services.TOKENS_BUCKET] if round_enqueue(bucket)]


@shared_task(name="matching.order_arrived", time_limit=60, soft_time_limit=50, acks_late=True)
def order_arrived(order_id: int) -> list[str]:
    return schedule_rounds_for_order(order_id=order_id)
