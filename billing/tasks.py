"""Thin Celery wrappers around billing services. Idempotent; JSON arguments only."""
from celery import shared_task

from config.errors import NotFound

from . import invoicing, settlement


@shared_task(name="billing.holds_expire", time_limit=120, soft_time_limit=100, acks_late=True)
def holds_expire() -> int:
    return settlement.holds_expire()


@shared_task(name="billing.settle_allocation", time_limit=120, soft_time_limit=100, acks_late=True)
def settle_allocation(allocation_id: int) -> str:
    try:
        return str(settlement.allocation_settle(allocation_id=allocation_id).charged)
    except NotFound:  # deleted meanwhile (tests reset the database): nothing to settle
        return "0"


@shared_task(name="billing.settle_due", time_limit=600, soft_time_limit=540, acks_late=True)
def settle_due() -> int:
    return settlement.settle_due()


@shared_task(name="billing.invoices_issue_monthly", time_limit=1800, soft_time_limit=1700, acks_late=True)
def invoices_issue_monthly() -> int:
    return invoicing.invoices_issue_monthly()
