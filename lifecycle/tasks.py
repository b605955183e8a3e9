"""Thin Celery wrappers around lifecycle services. Idempotent; JSON arguments only."""
from celery import shared_task

from . import services


@shared_task(name="lifecycle.allocations_close_due", time_limit=300, soft_time_limit=270, acks_late=True)
def allocations_close_due() -> int:
    return services.allocations_close_due()


@shared_task(name="lifecycle.reviews_expire_due", time_limit=120, soft_time_limit=100, acks_late=True)
def reviews_expire_due() -> int:
    return services.reviews_expire_due()
