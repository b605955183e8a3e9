"""The operators' dashboard through Django's test client: staff only, the page and its charts
render, and approving or rejecting a flagged match changes the database."""
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from billing.models import Hold
from marketplace.models import Allocation, Order
from matching import services as matching
from matching.models import MatchReview, ReviewPolicy

from tests.factories import NodeFactory, admin_user, make_listing
from tests.matching.helpers import post_order

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client():
    client = Client()
    client.force_login(admin_user("ops", "matching.decide_review"))
    return client


def _two_flagged_matches(buyer_client):
    ReviewPolicy.objects.create(value_threshold=Decimal("10"))  # every match waits for an admin
    make_listing(NodeFactory(), ask="9")
    first, second = post_order(buyer_client, start_in=2), post_order(buyer_client, start_in=2)  # decided in time
    matching.round_run(bucket="*:*")
    return [MatchReview.objects.get(allocation__order=order) for order in (first, second)]


def test_only_platform_admins_see_the_dashboard(buyer_client):
    anonymous = Client()
    assert anonymous.get("/dashboard/").status_code == 302  # to the admin login
    member = Client()
    member.force_login(get_user_model().objects.create_user(username="member", password="x"))
    assert member.get("/dashboard/").status_code == 302
    assert anonymous.get("/dashboard/charts/prices.png").status_code == 302


def test_the_page_shows_the_book_reviews_failures_and_charts(admin_client, buyer_client):
    reviews = _two_flagged_matches(buyer_client)
    page = admin_client.get("/dashboard/")
    html = page.content.decode()
    assert page.status_code == 200
    for review in reviews:
        assert f'id="review-{review.pk}"' in html
    assert "nvidia-h800-sxm" in html and "Order book depth" in html and "Recent failures" in html
    for chart in ("/dashboard/charts/utilisation.png", "/dashboard/charts/prices.png"):
        assert chart in html
        image = admin_client.get(chart)
        assert image.status_code == 200 and image["Content-Type"] == "image/png"
        assert image.content[:8] == b"\x89PNG\r\n\x1a\n" and len(image.content) > 2000


def test_staff_without_the_reviewer_permission_see_reviews_but_no_decision_buttons(buyer_client):
    # given flagged matches and a staff user who is not a reviewer
    reviews = _two_flagged_matches(buyer_client)
    viewer = Client()
    viewer.force_login(admin_user("auditor"))
    # when the page renders for that user
    html = viewer.get("/dashboard/").content.decode()
    # then the reviews are listed without Approve or Reject, and a forged POST still changes nothing
    assert all(f'id="review-{review.pk}"' in html for review in reviews)
    assert 'name="approve"' not in html and "needs the reviewer permission" in html
    page = viewer.post(f"/dashboard/reviews/{reviews[0].pk}/approve", {}, follow=True)
    assert page.status_code == 200 and "matching.decide_review" in page.content.decode()
    reviews[0].refresh_from_db()
    assert reviews[0].status == "pending"


def test_approve_and_reject_from_the_page_change_the_database(admin_client, buyer_client):
    approve, reject = _two_flagged_matches(buyer_client)
    response = admin_client.post(f"/dashboard/reviews/{approve.pk}/approve", {})
    assert response.status_code == 302
    response = admin_client.post(f"/dashboard/reviews/{reject.pk}/reject", {"reason": "supplier unknown"},
                                 follow=True)
    assert f"Match review {reject.pk} rejected." in response.content.decode()
    approve.refresh_from_db(), reject.refresh_from_db()
    assert approve.status == "approved" and approve.decided_by.username == "ops"
    assert Order.objects.get(pk=approve.allocation.order_id).status == "matched"
    assert reject.status == "rejected" and reject.decision_reason == "supplier unknown"
    assert Allocation.objects.get(pk=reject.allocation_id).status == "released"
    assert Hold.objects.get(allocation=reject.allocation).status == "voided"
    # a second decision on the same review is refused with a message, not an error page
    page = admin_client.post(f"/dashboard/reviews/{reject.pk}/approve", {}, follow=True)
    assert page.status_code == 200 and "already rejected" in page.content.decode()
    # decisions are POSTs (with the CSRF token the page's forms carry)
    assert admin_client.get("/dashboard/reviews/1/approve").status_code == 405
