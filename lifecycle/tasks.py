"""Thin Celery wrappers around lifecycle services. Idempotent; JSON arguments only."""
from celery import shared_task

from . import services


@shared_task(name="lifecycle.allocations_close_due", time_limit=300, soft_time_limit=270, acks_late=True)
def allocations_close_due() -> int:
    return services.allocations_close_due()
