"""Settlement in real Celery workers: retried and duplicated tasks on two workers charge every
event once; the periodic sweep closes allocations whose hours ran out."""
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.metering import UsageIn, usage_record_batch
from billing.models import Charge, Hold, UsageEvent
from billing.tasks import settle_allocation, settle_due
from lifecycle.tasks import allocations_close_due

from tests.factories import OrganisationFactory
from tests.workers import wait_for

from .helpers import assert_books_balance, token_allocation

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_duplicated_settlement_tasks_on_two_workers_charge_each_event_once(workers, queue, client_for):
    # given token usage waiting to be settled
    supplier = OrganisationFactory(is_supplier=True, is_buyer=False)
    tokens = token_allocation(supplier, client_for(is_supplier=False, is_buyer=True))
    usage_record_batch(organisation_id=supplier.pk, events=[
        UsageIn(f"e-{i}", tokens.pk, timezone.now(), 100, 2_000, 300 + i) for i in range(200)])
    total = UsageEvent.objects.aggregate(s=Sum("amount"))["s"]
    a, b = workers("alpha"), workers("beta")
    # when the same settlement is enqueued many times, beside sweeps, on two real workers
    for _ in range(6):
        settle_allocation.apply_async(args=[tokens.pk], queue=queue)
        settle_due.apply_async(queue=queue)
    allocations_close_due.apply_async(queue=queue)
    wait_for(lambda: a.succeeded() + b.succeeded() == 13, what="all settlement tasks")
    # then every event is charged exactly once and the books balance
    assert not UsageEvent.objects.filter(settled=False).exists()
    assert Charge.objects.filter(allocation=tokens).aggregate(s=Sum("amount"))["s"] == total
    assert Hold.objects.get(allocation=tokens).posted_amount == min(total, Decimal("32.25"))
    assert_books_balance()
