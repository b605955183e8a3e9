"""Thin Celery wrappers around marketplace services. Idempotent; JSON arguments only."""
from celery import shared_task

from . import services


@shared_task(name="marketplace.orders_expire", time_limit=120, soft_time_limit=100, acks_late=True)
def orders_expire() -> int:
    return services.order_expire_due()


@shared_task(name="marketplace.idempotency_records_purge", time_limit=120, soft_time_limit=100, acks_late=True)
def idempotency_records_purge() -> int:
    return services.idempotency_records_purge()
