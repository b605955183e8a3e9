"""An admin in a real browser: Playwright drives Debian's Chromium (never a browser of its own)
against a live server. The admin logs in, sees the dashboard's charts render, approves one
flagged match and rejects another with a reason; the database reflects both. Screenshots are
kept under test-artifacts/."""
import os
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connections

from matching import services as matching
from matching.models import MatchReview, ReviewPolicy

from tests.factories import NodeFactory, admin_user, make_listing
from tests.matching.helpers import post_order

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Flags for a root, offline, headless run (no sandbox as root; no calls home on a closed network).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make test "
                                                                "installs it)")]


@pytest.fixture
def browser():
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are safe.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Chromium never runs under the suite's preloads (scripts/test_near_the_hour.sh fakes the
        # clock with libfaketime, which hangs its page loads); the live server keeps the fake clock.
        env = {name: value for name, value in os.environ.items() if name != "LD_PRELOAD"}
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS, env=env)
        yield chromium
        chromium.close()
        # While Playwright's loop runs, Django keeps the test's ORM connection in that loop's context,
        # which pytest-django's teardown never sees: close it here, or it stays open and the test
        # database cannot be dropped ("being accessed by other users").
        connections.close_all()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def test_an_admin_reviews_flagged_matches_in_the_dashboard(live_server, browser, buyer_client):
    # given two matches the review policy flags, and a platform admin
    ReviewPolicy.objects.create(value_threshold=Decimal("10"))
    make_listing(NodeFactory(), ask="9")
    # Matches starting two hours out: a review must be decided before its first hour, and a browser
    # test started just before the hour would otherwise see the reject refused as too late.
    orders = [post_order(buyer_client, start_in=2), post_order(buyer_client, start_in=2)]
    matching.round_run(bucket="*:*")
    approve, reject = (MatchReview.objects.get(allocation__order=order) for order in orders)
    admin_user("ops", "matching.decide_review", password="correct horse")
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})

    # when the admin opens the dashboard, is sent to log in, and logs in
    page.goto(f"{live_server.url}/dashboard/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/dashboard/")
    # then both charts render as images with real pixels
    for chart in ("#chart-utilisation", "#chart-prices"):
        page.wait_for_function(f"document.querySelector('{chart}').complete "
                               f"&& document.querySelector('{chart}').naturalWidth > 100")
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # when the admin approves one match and rejects the other with a reason
    with page.expect_navigation():
        page.click(f"#review-{approve.pk} button[name=approve]")
    assert page.inner_text(".messages") == f"Match review {approve.pk} approved."
    page.fill(f"#review-{reject.pk} input[name=reason]", "supplier not vetted yet")
    with page.expect_navigation():
        page.click(f"#review-{reject.pk} button[name=reject]")
    assert page.inner_text(".messages") == f"Match review {reject.pk} rejected."
    page.screenshot(path=str(ARTIFACTS / "dashboard-after-review.png"), full_page=True)

    # then the database reflects both decisions, by this admin
    approve.refresh_from_db(), reject.refresh_from_db()
    assert (approve.status, approve.decided_by.username) == ("approved", "ops")
    assert (reject.status, reject.decision_reason) == ("rejected", "supplier not vetted yet")
    assert approve.allocation.order.status == "matched"
    assert reject.allocation.__class__.objects.get(pk=reject.allocation_id).status == "released"
    assert not page.query_selector(f"#review-{approve.pk}") and not page.query_selector(f"#review-{reject.pk}")
