"""Thin Celery wrappers around billing services. Idempotent; JSON arguments only."""
from celery import shared_task

from . import services


@shared_task(name="billing.holds_expire", time_limit=120, soft_time_limit=100, acks_late=True)
def holds_expire() -> int:
    return services.holds_expire()
