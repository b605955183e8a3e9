"""Listing reads."""
from datetime import timedelta

import pytest

from marketplace.hours import hour_index
from marketplace.models import ListingHour
from tests.factories import NodeFactory, make_listing, next_hour

from .helpers import iso

pytestmark = pytest.mark.django_db


def test_listing_list_counts_card_hours_in_one_query(supplier_client, django_assert_max_num_queries):
    nodes = [NodeFactory(organisation=supplier_client.organisation) for _ in range(5)]
    listings = [make_listing(n, hours=10) for n in nodes]
    ListingHour.objects.filter(listing=listings[0]).update(cards_sold=2)
    with django_assert_max_num_queries(6):  # auth, count, page: not one per listing
        rows = supplier_client.get("/api/v1/listings").json()["results"]
    by_id = {r["id"]: r["card_hours"] for r in rows}
    assert by_id[listings[0].pk] == {"offered": 80, "sold": 20}
    assert by_id[listings[1].pk] == {"offered": 80, "sold": 0}


def test_creating_a_90_day_listing_lays_out_every_hour_of_the_calendar(supplier_client, django_assert_max_num_queries):
    # given an active 8-card node of the supplier
    node = NodeFactory(organisation=supplier_client.organisation, card_count=8)
    start = next_hour(1)
    end = start + timedelta(hours=2160)

    # when it lists 6 cards for 90 days (the calendar in one statement, not one row per hour)
    with django_assert_max_num_queries(14):
        response = supplier_client.post("/api/v1/listings", {
            "node": node.pk, "cards": 6, "start": iso(start), "end": iso(end), "ask_per_card_hour": "9.50"},
            format="json")

    # then every hour [start, end) is on the calendar once, with the node's cards and none sold
    assert response.status_code == 201, response.content
    assert response.json()["card_hours"] == {"offered": 6 * 2160, "sold": 0}
    rows = ListingHour.objects.filter(listing_id=response.json()["id"])
    assert list(rows.order_by("hour").values_list("hour", flat=True)) == list(
        range(hour_index(start), hour_index(end)))
    assert set(rows.values_list("node_id", "node_cards", "cards_offered", "cards_sold")) == {(node.pk, 8, 6, 0)}
