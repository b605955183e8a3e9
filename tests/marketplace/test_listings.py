"""Listing reads."""
import pytest

from marketplace.models import ListingHour
from tests.factories import NodeFactory, make_listing

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
