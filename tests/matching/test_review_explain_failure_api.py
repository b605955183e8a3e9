"""Review, explain and failure paths through the API."""
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from marketplace.hours import hour_start
from marketplace.models import Allocation, ChipType, ListingHour, Node, Order, Region
from marketplace.selectors import card_hour_market_load
from matching import selectors, services
from matching.models import FailureImpact, MatchReview, NodeFailure, RejectedPairing, ReviewPolicy
from lifecycle import services as lifecycle

from tests.factories import NodeFactory, admin_user, make_listing
from tests.marketplace.helpers import assert_error, iso, tokens_body

from .helpers import assert_calendar_consistent, post_order

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client():
    user = admin_user("ops", "matching.decide_review", "matching.fail_node", password="pw-ops-123")
    client = APIClient()
    client.force_authenticate(user)
    client.user = user
    return client


@pytest.fixture
def flagged(buyer_client):
    """Two matches waiting for review: any match above 100 CNY is flagged."""
    ReviewPolicy.objects.create(value_threshold=Decimal("100"))
    listing = make_listing(NodeFactory(), ask="9")
    alternative = make_listing(NodeFactory(), ask="9.5")
    orders = [post_order(buyer_client, start_in=2), post_order(buyer_client, start_in=2)]  # decided in time
    outcome = services.round_run(bucket="*:*")
    assert outcome.flagged == 2
    return {"orders": orders, "listing": listing, "alternative": alternative,
            "reviews": list(MatchReview.objects.order_by("pk"))}


def test_flagged_matches_wait_and_the_order_explains_it(buyer_client, flagged):
    order = flagged["orders"][0]
    assert Order.objects.get(pk=order.pk).status == "open"
    assert Allocation.objects.get(order=order).status == "pending_review"
    explain = buyer_client.get(f"/api/v1/orders/{order.pk}/explain").json()
    assert explain["reasons"][0]["code"] == "waiting_for_review"
    assert explain["reasons"][0]["flags"][0]["code"] == "high_value"
    # the slots are held while the admin decides
    assert sum(ListingHour.objects.values_list("cards_sold", flat=True)) == 2 * 4 * 3


def test_admin_approves_and_rejects_with_a_recorded_reason(admin_client, flagged):
    first, second = flagged["reviews"]
    pending = admin_client.get("/api/v1/admin/reviews?status=pending").json()
    assert {r["id"] for r in pending["results"]} == {first.pk, second.pk}

    approved = admin_client.post(f"/api/v1/admin/reviews/{first.pk}/approve", {}, format="json")
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert approved.json()["decided_by"] == "ops"
    assert Allocation.objects.get(pk=first.allocation_id).status == "confirmed"
    assert Order.objects.get(pk=first.allocation.order_id).status == "matched"

    assert_error(admin_client.post(f"/api/v1/admin/reviews/{second.pk}/reject", {}, format="json"), 400,
                 field="reason")
    rejected = admin_client.post(f"/api/v1/admin/reviews/{second.pk}/reject",
                                 {"reason": "buyer failed KYC"}, format="json")
    assert rejected.status_code == 200 and rejected.json()["decision_reason"] == "buyer failed KYC"
    second.refresh_from_db()
    assert second.status == "rejected" and second.decided_at is not None and second.decided_by_id == admin_client.user.pk
    # rejection frees the capacity and returns the order to the book, never to be paired so again
    assert Allocation.objects.get(pk=second.allocation_id).status == "released"
    order = Order.objects.get(pk=second.allocation.order_id)
    assert order.status == "open"
    assert RejectedPairing.objects.filter(order=order, listing=flagged["listing"]).exists()
    assert_calendar_consistent()
    # a decision is final
    assert_error(admin_client.post(f"/api/v1/admin/reviews/{second.pk}/approve", {}, format="json"), 409)
    # the next round offers the order elsewhere (and flags that too, under this policy)
    services.round_run(bucket="*:*")
    again = Allocation.objects.exclude(pk=second.allocation_id).get(order=order)
    assert again.parts.get().listing_id == flagged["alternative"].pk


def test_review_endpoints_are_for_platform_admins_only(buyer_client, flagged):
    review = flagged["reviews"][0]
    assert buyer_client.get("/api/v1/admin/reviews").status_code == 403
    assert buyer_client.post(f"/api/v1/admin/reviews/{review.pk}/approve", {}, format="json").status_code == 403
    assert MatchReview.objects.get(pk=review.pk).status == "pending"


def test_unflagged_matches_confirm_on_their_own(buyer_client):
    make_listing(NodeFactory(), ask="9")
    order = post_order(buyer_client)
    services.round_run(bucket="*:*")
    assert Order.objects.get(pk=order.pk).status == "matched"
    assert not MatchReview.objects.exists()


def test_matches_outside_the_buyers_country_are_flagged(buyer_client):
    make_listing(NodeFactory(region=Region.objects.get(code="SG")), ask="9")
    order = post_order(buyer_client)
    services.round_run(bucket="*:*")
    review = MatchReview.objects.get(allocation__order=order)
    assert [r["code"] for r in review.reasons] == ["outside_buyer_country"]


@pytest.mark.parametrize("setup,overrides,code", [
    ("none", {}, "no_chip_fits"),
    ("shanghai_only", {"region": {"policy": "regions", "regions": ["CN-GZ"]}}, "no_supply_in_allowed_regions"),
    ("roce_node", {"interconnects": ["infiniband"]}, "interconnect_unavailable"),
    ("sold_out", {}, "capacity_taken"),
    ("dear", {}, "price_gap"),
    ("cheap", {}, "matchable"),
])
def test_explain_says_why_an_order_is_not_matched(buyer_client, setup, overrides, code):
    if setup == "shanghai_only":
        make_listing(NodeFactory(region=Region.objects.get(code="CN-SH")), ask="9")
    elif setup == "roce_node":
        make_listing(NodeFactory(interconnect="roce"), ask="9")
    elif setup == "sold_out":
        listing = make_listing(NodeFactory(), ask="9")
        ListingHour.objects.filter(listing=listing).update(cards_sold=8)
    elif setup == "dear":
        make_listing(NodeFactory(), ask="15")
    elif setup == "cheap":
        make_listing(NodeFactory(), ask="9")
    if setup != "none":
        make_listing(NodeFactory(chip=ChipType.objects.get(code="nvidia-h20")), ask="5")  # another chip, cheaper
    order = post_order(buyer_client, **overrides)
    explain = buyer_client.get(f"/api/v1/orders/{order.pk}/explain")
    assert explain.status_code == 200
    body = explain.json()
    assert body["reasons"][0]["code"] == code
    if code == "price_gap":
        assert Decimal(body["reasons"][0]["best_feasible_ask"]) == Decimal("15")
        assert any(a["kind"] == "price" for a in body["alternatives"])
    if code in ("price_gap", "capacity_taken", "interconnect_unavailable"):
        kinds = {a["kind"] for a in body["alternatives"]}
        assert "other_chip" in kinds  # the H20 (96 GB) would do
    if code == "no_supply_in_allowed_regions":
        assert any(a["kind"] == "wider_region" for a in body["alternatives"])


def test_explain_is_scoped_to_the_buyer(buyer_client, client_for):
    order = post_order(buyer_client)
    assert client_for().get(f"/api/v1/orders/{order.pk}/explain").status_code == 404


def test_supplier_marks_a_node_failed_and_unfinished_work_is_rematched(supplier_client, buyer_client):
    from django.utils import timezone

    from marketplace import services as market
    from marketplace.hours import current_hour_index
    from tests.factories import next_hour

    # given, on one node, an allocation that started two hours ago and one that starts later
    now_hour = current_hour_index(timezone.now())
    node = NodeFactory(organisation=supplier_client.organisation)
    listing = make_listing(node, ask="9", start=next_hour(-3), hours=30)
    make_listing(NodeFactory(), ask="9.5")  # another supplier's healthy node
    running = post_order(buyer_client, start_in=-3, window_hours=30)
    future = post_order(buyer_client, start_in=-3, window_hours=30)
    started = lifecycle.slots_reserve(order_id=running.pk, claims=[market.SlotClaim(listing.pk, 4)],
                                      start_hour=now_hour - 2, end_hour=now_hour + 1, price_per_card_hour=Decimal("10"))
    waiting = lifecycle.slots_reserve(order_id=future.pk, claims=[market.SlotClaim(listing.pk, 4)],
                                      start_hour=now_hour + 2, end_hour=now_hour + 5, price_per_card_hour=Decimal("10"))

    # when the supplier reports the failure
    response = supplier_client.post(f"/api/v1/nodes/{node.pk}/fail", {"reason": "ECC errors, hung"}, format="json")
    assert response.status_code == 201, response.content
    failure = NodeFailure.objects.get()
    assert failure.reported_by_supplier and failure.failed_hour == now_hour
    assert Node.objects.get(pk=node.pk).status == "failed"

    # then the running allocation is interrupted: 2 hours delivered, the failed hour lost
    started.refresh_from_db()
    waiting.refresh_from_db()
    impacts = {i.allocation_id: i for i in FailureImpact.objects.all()}
    assert set(impacts) == {started.pk, waiting.pk}
    assert started.status == "interrupted" and started.delivered_end_hour == now_hour
    assert impacts[started.pk].hours_lost == 1 and impacts[started.pk].started
    assert waiting.status == "released" and impacts[waiting.pk].hours_lost == 3 and not impacts[waiting.pk].started
    reopened = Order.objects.get(pk=running.pk)
    assert reopened.status == "open" and reopened.rematch_count == 1
    assert reopened.duration_hours == 1 and reopened.original_duration_hours == 3
    assert Order.objects.get(pk=future.pk).status == "open"
    # the failed node's future slots were released (the delivered past hours stay sold)
    assert set(ListingHour.objects.filter(listing=listing, hour__gte=now_hour).values_list("cards_sold",
                                                                                          flat=True)) == {0}
    assert sum(ListingHour.objects.filter(listing=listing, hour__lt=now_hour).values_list("cards_sold", flat=True)) == 8

    # and the next round puts the remaining work on a healthy node
    services.round_run(bucket="*:*")
    for order in (running, future):
        order.refresh_from_db()
        live = Allocation.objects.filter(order=order, status__in=Allocation.ACTIVE)
        assert order.status == "matched" and live.count() == 1
        assert live.get().parts.get().node_id != node.pk


def test_failure_is_scoped_and_admins_can_report_it(client_for, admin_client):
    node = NodeFactory()
    stranger = client_for(is_supplier=True)
    assert_error(stranger.post(f"/api/v1/nodes/{node.pk}/fail", {}, format="json"), 404)
    assert Node.objects.get(pk=node.pk).status == "active"
    response = admin_client.post(f"/api/v1/admin/nodes/{node.pk}/fail", {"reason": "datacentre power loss"},
                                 format="json")
    assert response.status_code == 201 and not NodeFailure.objects.get().reported_by_supplier
    assert_error(admin_client.post(f"/api/v1/admin/nodes/{node.pk}/fail", {}, format="json"), 409)


def test_patching_status_failed_goes_through_the_failure_path(supplier_client):
    node = NodeFactory(organisation=supplier_client.organisation)
    response = supplier_client.patch(f"/api/v1/nodes/{node.pk}", {"status": "failed"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "failed"
    assert NodeFailure.objects.filter(node=node).exists()


def test_admin_can_run_a_round_and_list_rounds(admin_client, buyer_client):
    make_listing(NodeFactory(), ask="9")
    post_order(buyer_client)
    response = admin_client.post("/api/v1/admin/rounds", {"bucket": "*:*"}, format="json")
    assert response.status_code == 201 and response.json()["matches"] == 1
    assert_error(admin_client.post("/api/v1/admin/rounds", {"bucket": "DROP TABLE"}, format="json"), 400,
                 field="bucket")
    assert admin_client.get("/api/v1/admin/rounds").json()["count"] == 1


def test_rounds_refuse_a_database_without_row_locks(tmp_path):
    """On the laptop default (a real SQLite file), a round answers 'PostgreSQL required'."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings.local", SANDUISAN_VAR_DIR=str(tmp_path))
    code = ("import django; django.setup()\n"
            "from django.core.management import call_command; call_command('migrate', verbosity=0)\n"
            "from config.errors import Unavailable\nfrom matching.services import round_run\n"
            "try:\n    round_run(bucket='*:*')\nexcept Unavailable as exc:\n    print('refused:', exc.code)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "refused: postgresql_required" in result.stdout, result.stderr[-2000:]


def _mixed_book(buyer_client) -> list[Order]:
    """One buyer's orders waiting for every kind of reason, beside the two flagged matches."""
    make_listing(NodeFactory(), ask="15", hours=12)
    orders = [
        post_order(buyer_client),  # matchable at 9.50 (4 cards left beside the flagged match)
        post_order(buyer_client, max_price_per_card_hour="5"),  # price_gap
        post_order(buyer_client, chips=["huawei-ascend-910b"]),  # no_chip_fits
        post_order(buyer_client, interconnects=["roce"]),  # interconnect_unavailable
        post_order(buyer_client, region={"policy": "regions", "regions": ["CN-SH"]}),  # not in the region
        post_order(buyer_client, duration_hours=25, window_hours=30),  # capacity_taken: no listing is that long
        post_order(buyer_client, cards=12, placement="same_fabric"),  # no fabric listed
        post_order(buyer_client, max_price_per_card_hour="200", cards=64, duration_hours=100, window_hours=100,
                   placement="same_fabric"),  # insufficient_funds: holds 1.28 M against 1 M
    ]
    response = buyer_client.post("/api/v1/orders", tokens_body(), format="json")
    assert response.status_code == 201, response.content
    orders.append(Order.objects.get(pk=response.json()["id"]))  # no endpoint serves the model
    cancelled = post_order(buyer_client, max_price_per_card_hour="5")
    assert buyer_client.post(f"/api/v1/orders/{cancelled.pk}/cancel", {}, format="json").status_code == 200
    return orders + [cancelled]


def test_wait_reasons_read_together_are_explains_first_reasons(buyer_client, client_for, flagged):
    # given a buyer with orders waiting for every kind of reason, and another buyer's order
    orders = flagged["orders"] + _mixed_book(buyer_client)
    stranger = post_order(client_for(is_supplier=False, is_buyer=True))
    # when their reasons are read in one go
    found = selectors.order_wait_reasons(organisation=buyer_client.organisation,
                                         order_ids=[o.pk for o in orders] + [stranger.pk])
    # then each order's is the first reason its explain gives, and the stranger's order is left out
    expected = {o.pk: selectors.order_explain(organisation=buyer_client.organisation, order_id=o.pk)["reasons"][0]["code"]
                for o in orders}
    assert found == expected
    assert sorted(found.values()) == sorted([
        "waiting_for_review", "waiting_for_review", "matchable", "price_gap", "no_chip_fits",
        "interconnect_unavailable", "no_supply_in_allowed_regions", "capacity_taken", "capacity_taken",
        "insufficient_funds", "no_endpoint_for_model", "not_open"])


def test_wait_reasons_cost_the_same_queries_for_five_orders_or_twenty(buyer_client):
    # given listings and twenty open orders that all have offers
    make_listing(NodeFactory(), ask="9")
    make_listing(NodeFactory(), ask="11")
    orders = [post_order(buyer_client, max_price_per_card_hour=str(5 + i % 2 * 5)) for i in range(20)]

    def queries(some: list[Order]) -> int:
        with CaptureQueriesContext(connection) as captured:
            found = selectors.order_wait_reasons(organisation=buyer_client.organisation, order_ids=[o.pk for o in some])
        assert set(found.values()) == {"price_gap", "matchable"}
        return len(captured)

    # when five, then all twenty, are read; then both take the same number of queries
    assert queries(orders[:5]) == queries(orders)


def test_long_orders_explained_alone_or_together_read_the_same_reasons(buyer_client):
    """Orders of a day or more read the market coarsened to their duration (only the sold hours
    around long free runs): alone, each with its own duration, or together, with the shortest."""
    # given a 72-hour node at 9 with a sold-out hour at +30 (free runs of 30 and 41 hours), and a
    # 100-hour node at 12 with 6 of its 8 cards sold over +50..+55
    cheap, dear = make_listing(NodeFactory(), ask="9", hours=72), make_listing(NodeFactory(), ask="12", hours=100)
    first = cheap.hours.order_by("hour").first().hour
    ListingHour.objects.filter(listing=cheap, hour=first + 30).update(cards_sold=8)
    ListingHour.objects.filter(listing=dear, hour__gte=first + 50, hour__lt=first + 56).update(cards_sold=6)
    orders = [
        post_order(buyer_client, duration_hours=40, window_hours=72, max_price_per_card_hour="10"),  # cheap fits
        post_order(buyer_client, duration_hours=45, window_hours=72, max_price_per_card_hour="10"),  # dear only
        post_order(buyer_client, duration_hours=60, cards=8, window_hours=72,
                   max_price_per_card_hour="20"),  # 8 cards for 60 hours: neither
    ]
    # when each is explained alone, and all are read together
    alone = [selectors.order_explain(organisation=buyer_client.organisation, order_id=o.pk)["reasons"][0]["code"]
             for o in orders]
    together = selectors.order_wait_reasons(organisation=buyer_client.organisation, order_ids=[o.pk for o in orders])
    # then both give what the calendar says
    assert alone == ["matchable", "price_gap", "capacity_taken"]
    assert [together[o.pk] for o in orders] == alone


def test_short_orders_over_long_windows_explained_alone_or_together_search_the_whole_window(buyer_client):
    """Short orders over windows of many days share a market of the listings alone (their sold
    hours are too many to read at once): each quote reads the sold hours it needs, chunk by chunk
    of the window, and still finds runs only late in the window."""
    # given a 300-hour node at 9 sold out for its first 200 hours, and one at 12 with 6 of its 8
    # cards sold for 290 hours
    cheap, dear = make_listing(NodeFactory(), ask="9", hours=300), make_listing(NodeFactory(), ask="12", hours=300)
    first = cheap.hours.order_by("hour").first().hour
    ListingHour.objects.filter(listing=cheap, hour__lt=first + 200).update(cards_sold=8)
    ListingHour.objects.filter(listing=dear, hour__lt=first + 290).update(cards_sold=6)
    orders = [
        post_order(buyer_client, window_hours=300, max_price_per_card_hour="10"),  # cheap, from +200
        post_order(buyer_client, window_hours=300, max_price_per_card_hour="8"),  # cheap at 9: price gap
        post_order(buyer_client, window_hours=199, max_price_per_card_hour="20"),  # 4 cards: neither
    ]
    assert card_hour_market_load(first=first, last=first + 300, min_duration=3, sold=None).sold is None
    # when each is explained alone, and all are read together
    explains = [selectors.order_explain(organisation=buyer_client.organisation, order_id=o.pk) for o in orders]
    together = selectors.order_wait_reasons(organisation=buyer_client.organisation, order_ids=[o.pk for o in orders])
    # then both give what the calendar says, and the price gap's offer starts after the sold-out hours
    alone = [e["reasons"][0]["code"] for e in explains]
    assert alone == ["matchable", "price_gap", "capacity_taken"]
    assert [together[o.pk] for o in orders] == alone
    offer = next(a["offer"] for a in explains[1]["alternatives"] if a["kind"] == "price")
    assert (Decimal(offer["ask_per_card_hour"]), offer["start"]) == (Decimal("9"), iso(hour_start(first + 200)))
