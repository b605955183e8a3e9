"""The table of sold hours quotes read (``marketplace_listinghoursold``) follows every write to
the slot calendar, whoever makes it: PostgreSQL's triggers keep it, not the services."""
import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import F

from marketplace.models import ListingHour
from tests.factories import NodeFactory, make_listing

pytestmark = pytest.mark.django_db


def sold_table() -> set[tuple[int, int, int]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT listing_id, hour, free FROM marketplace_listinghoursold")
        return set(cursor.fetchall())


def sold_in_calendar() -> set[tuple[int, int, int]]:
    return {(row.listing_id, row.hour, row.cards_offered - row.cards_sold)
            for row in ListingHour.objects.filter(cards_sold__gt=0)}


def test_the_sold_hours_follow_every_kind_of_calendar_write():
    # given two listings of 8 cards, 6 hours each, nothing sold
    a, b = make_listing(NodeFactory(card_count=8), hours=6), make_listing(NodeFactory(card_count=8), hours=6)
    first = ListingHour.objects.filter(listing=a).order_by("hour").first().hour
    assert sold_table() == set()

    # when hours are sold, sold more, fully sold, partly released, released, withdrawn, deleted
    steps = [
        lambda: ListingHour.objects.filter(listing=a, hour__lt=first + 3).update(cards_sold=2),
        lambda: ListingHour.objects.filter(listing=a).update(cards_sold=F("cards_sold") + 1),
        lambda: ListingHour.objects.filter(listing=b, hour=first + 1).update(cards_sold=8),
        lambda: ListingHour.objects.filter(listing=a, hour=first).update(cards_sold=1),
        lambda: ListingHour.objects.filter(listing=a, hour=first + 5).update(cards_sold=0),
        lambda: ListingHour.objects.filter(listing=a, hour__gte=first + 2).update(cards_offered=F("cards_sold")),
        lambda: ListingHour.objects.filter(listing=a, hour=first + 4).delete(),
        lambda: ListingHour.objects.filter(listing=b).update(cards_sold=F("cards_sold")),  # no change at all
    ]
    seen = []
    for step in steps:
        step()
        # then after each, the table is exactly the calendar's sold hours, with their free cards
        assert sold_table() == sold_in_calendar()
        seen.append(len(sold_table()))
    assert seen == [3, 6, 7, 7, 6, 6, 5, 5]
    assert (b.pk, first + 1, 0) in sold_table()  # fully sold: free 0, what the long quotes look for
    assert (a.pk, first + 2, 0) in sold_table()  # withdrawn down to what was sold

    # and a new calendar row written already sold is there too
    ListingHour.objects.create(listing=a, node=a.node, hour=first + 4, node_cards=8, cards_offered=8, cards_sold=3)
    assert (a.pk, first + 4, 5) in sold_table() and sold_table() == sold_in_calendar()


def test_a_listing_hour_keeps_its_listing_and_hour():
    # given a calendar row
    listing = make_listing(NodeFactory(card_count=8), hours=2)
    row = ListingHour.objects.filter(listing=listing).order_by("hour").first()

    # when something tries to move it to another hour, then PostgreSQL refuses
    with pytest.raises(IntegrityError, match="keeps its listing and hour"), transaction.atomic():
        ListingHour.objects.filter(pk=row.pk).update(hour=F("hour") + 1000)

    # while saving it unchanged (every column written) is fine
    row.cards_sold = 4
    row.save()
    assert sold_table() == {(listing.pk, row.hour, 4)}


def test_a_listing_has_one_calendar_row_per_hour():
    # given a listing's calendar row for an hour
    listing = make_listing(NodeFactory(card_count=8), hours=1)
    row = ListingHour.objects.get(listing=listing)

    # when another row for that listing and hour is written (even on another node), then it is refused:
    # the table of sold hours is keyed by (listing, hour)
    with pytest.raises(IntegrityError), transaction.atomic():
        ListingHour.objects.create(listing=listing, node=NodeFactory(card_count=8), hour=row.hour, node_cards=8,
                                   cards_offered=8, cards_sold=1)
