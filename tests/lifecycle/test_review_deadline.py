"""Review with a deadline (issue 9, point 7): a flagged match not decided before its allocation
would start, or within the review timeout, expires: its slots and hold are released and its order
goes back to the book; approving or rejecting it then answers 409. Until a match is confirmed, the
supplier sees neither the workload nor who the buyer is."""
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from billing.models import Hold
from lifecycle import services as lifecycle
from lifecycle.tasks import reviews_expire_due
from marketplace.hours import hour_start
from marketplace.models import Allocation, ListingHour, Order
from matching import services as matching
from matching.models import MatchReview, ReviewPolicy

from tests.billing.helpers import assert_books_balance, balance
from tests.factories import NodeFactory, make_listing
from tests.marketplace.helpers import assert_error
from tests.matching.helpers import post_order
from tests.workers import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_api():
    client = APIClient()
    client.force_login(get_user_model().objects.create_superuser(username="reviewer", password="x"))
    return client


def _flagged(supplier_client, buyer_client, *, start_in: int = 1) -> MatchReview:
    """A match that waits for review (every match is flagged by the policy)."""
    ReviewPolicy.objects.create(value_threshold=Decimal("10"))
    make_listing(NodeFactory(organisation=supplier_client.organisation), ask="9", start=None)
    order = post_order(buyer_client, start_in=start_in)
    matching.round_run(bucket="*:*")
    return MatchReview.objects.get(allocation__order=order, status="pending")


def test_the_supplier_sees_neither_workload_nor_buyer_until_the_match_is_confirmed(supplier_client, buyer_client,
                                                                                  admin_api):
    review = _flagged(supplier_client, buyer_client, start_in=2)  # decided well before its deadline
    buyer = buyer_client.organisation
    # while the match waits for review, the supplier's views of it carry no workload and no buyer
    listed = supplier_client.get("/api/v1/allocations").json()["results"]
    detail = supplier_client.get(f"/api/v1/allocations/{review.allocation_id}").json()
    for shown in (listed[0], detail):
        assert shown["status"] == "pending_review" and shown["workload"] is None
    text = json.dumps([listed, detail, supplier_client.get(f"/api/v1/allocations/{review.allocation_id}/meter").json(),
                       supplier_client.get("/api/v1/charges").json()])
    for secret in ("registry.example", "serve.py", "ssh-ed25519", buyer.name, buyer.slug):
        assert secret not in text
    # the buyer sees its own workload all along
    assert buyer_client.get(f"/api/v1/allocations/{review.allocation_id}").json()["workload"]["image"]
    # once an admin approves, the supplier sees what to run
    assert admin_api.post(f"/api/v1/admin/reviews/{review.pk}/approve", {}, format="json").status_code == 200
    shown = supplier_client.get(f"/api/v1/allocations/{review.allocation_id}").json()
    assert shown["status"] == "confirmed" and shown["workload"]["command"] == "python serve.py"


def test_an_undecided_match_expires_when_its_allocation_would_start(supplier_client, buyer_client, admin_api):
    review = _flagged(supplier_client, buyer_client)
    allocation = review.allocation
    buyer = buyer_client.organisation
    assert balance(buyer.pk, "buyer_held") > 0
    assert admin_api.get(f"/api/v1/admin/reviews/{review.pk}").json()["decide_by"].startswith(
        hour_start(allocation.start_hour).isoformat()[:19])
    # a minute before its first hour nothing is due
    start = hour_start(allocation.start_hour)
    assert lifecycle.reviews_expire_due(now=start - timedelta(minutes=1)) == 0
    # when the sweep runs at its first hour (twice: it is idempotent)
    assert lifecycle.reviews_expire_due(now=start) == 1
    assert lifecycle.reviews_expire_due(now=start) == 0
    # then the match expired, its slots are back on sale and its hold returned ...
    review.refresh_from_db()
    assert review.status == "expired" and review.decided_by is None and review.decided_at == start
    assert Allocation.objects.get(pk=allocation.pk).status == "released"
    assert not ListingHour.objects.filter(cards_sold__gt=0).exists()
    assert Hold.objects.get(allocation=allocation).status == "voided" and balance(buyer.pk, "buyer_held") == 0
    # ... its order is back in the book
    order = Order.objects.get(pk=allocation.order_id)
    assert order.status == "open" and "not reviewed in time" in order.status_reason
    # and deciding it now answers 409
    assert_error(admin_api.post(f"/api/v1/admin/reviews/{review.pk}/approve", {}, format="json"), 409,
                 code="review_expired")
    assert_error(admin_api.post(f"/api/v1/admin/reviews/{review.pk}/reject", {"reason": "late"}, format="json"), 409,
                 code="review_expired")
    assert_books_balance()


def test_the_policy_timeout_expires_a_match_first_when_it_is_sooner(supplier_client, buyer_client, settings):
    settings.SANDUISAN = {**settings.SANDUISAN, "REVIEW_TIMEOUT_HOURS": 2}
    review = _flagged(supplier_client, buyer_client, start_in=6)  # its allocation starts in about 6 hours
    assert lifecycle.review_deadline(review=review) == review.created_at + timedelta(hours=2)
    assert lifecycle.reviews_expire_due(now=review.created_at + timedelta(hours=1)) == 0
    assert lifecycle.reviews_expire_due(now=review.created_at + timedelta(hours=2)) == 1
    assert MatchReview.objects.get(pk=review.pk).status == "expired"


def test_a_match_past_its_deadline_cannot_be_approved_before_the_sweep_runs(supplier_client, buyer_client,
                                                                            admin_api, settings):
    settings.SANDUISAN = {**settings.SANDUISAN, "REVIEW_TIMEOUT_HOURS": 0}
    review = _flagged(supplier_client, buyer_client)
    # when an admin approves a match whose deadline (the timeout, zero here) has passed
    assert_error(admin_api.post(f"/api/v1/admin/reviews/{review.pk}/approve", {}, format="json"), 409,
                 code="review_expired")
    # then nothing changed until the sweep expires it
    assert Allocation.objects.get(pk=review.allocation_id).status == "pending_review"
    assert reviews_expire_due.run() == 1
    assert MatchReview.objects.get(pk=review.pk).status == "expired"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_the_expiry_task_once_however_often_it_is_sent(supplier_client, buyer_client, workers,
                                                                          queue):
    review = _flagged(supplier_client, buyer_client)
    worker = workers("reviews", SANDUISAN_REVIEW_TIMEOUT_HOURS="0")
    for _ in range(3):
        reviews_expire_due.apply_async(queue=queue)
    wait_for(lambda: worker.succeeded() == 3, what="three expiry sweeps")
    assert MatchReview.objects.get(pk=review.pk).status == "expired"
    assert Allocation.objects.get(pk=review.allocation_id).status == "released"
    assert not ListingHour.objects.filter(cards_sold__gt=0).exists()
    assert_books_balance()
