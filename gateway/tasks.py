"""Thin Celery wrappers for the token gateway. Idempotent, JSON arguments, explicit limits."""
from celery import shared_task

from . import buffer, services
from .models import SupplierEndpoint

CHECK_EXPIRES = 55  # a check still queued when the next sweep runs is dropped


@shared_task(name="gateway.endpoint_check", time_limit=20, soft_time_limit=15, acks_late=True, expires=CHECK_EXPIRES)
def endpoint_check(endpoint_id: int) -> str | None:
    return services.endpoint_health_check(endpoint_id=endpoint_id)


@shared_task(name="gateway.endpoints_check", time_limit=60, soft_time_limit=50, acks_late=True, expires=CHECK_EXPIRES)
def endpoints_check() -> int:
    """Queue one health check per registered endpoint."""
    ids = list(SupplierEndpoint.objects.values_list("pk", flat=True))
    for endpoint_id in ids:
        endpoint_check.apply_async(args=[endpoint_id], expires=CHECK_EXPIRES)
    return len(ids)


@shared_task(name="gateway.usage_flush", time_limit=120, soft_time_limit=100, acks_late=True, expires=60)
def usage_flush() -> dict:
    """Backstop for the gateway's own flusher (e.g. after the gateway stopped)."""
    return buffer.usage_flush()


@shared_task(name="gateway.usage_reconcile", time_limit=300, soft_time_limit=270, acks_late=True, expires=600)
def usage_reconcile() -> int:
    return services.usage_reconcile()
