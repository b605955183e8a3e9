"""Races real PostgreSQL connections for the same card-hour slots: exactly the capacity is sold."""
import random
from decimal import Decimal

import pytest
from config.errors import CapacityUnavailable
from marketplace import services
from marketplace.models import Allocation, ListingHour, Order
from lifecycle import services as lifecycle

from tests.concurrency import race
from tests.factories import NodeFactory, OrganisationFactory, make_listing

from .helpers import card_hours_body

pytestmark = pytest.mark.django_db(transaction=True)


def _orders(buyer, n: int, **overrides) -> list[int]:
    from marketplace.apis import CardHoursInput

    serializer = CardHoursInput(data=card_hours_body(**overrides))
    serializer.is_valid(raise_exception=True)
    return [services.order_create_card_hours(organisation=buyer, demand=serializer.to_demand(serializer.validated_data)).pk
            for _ in range(n)]


def test_twelve_buyers_race_for_eight_cards_and_exactly_eight_win():
    # given one 8-card node listed for 24 hours and 12 one-card orders for the same 3 hours
    listing = make_listing(NodeFactory(), ask="10")
    start = listing.hours.first().hour + 2
    orders = _orders(OrganisationFactory(), 12, cards=1)

    # when all 12 reserve at once on separate connections
    results = race([
        (lambda oid=oid: lifecycle.slots_reserve(order_id=oid, claims=[services.SlotClaim(listing.pk, 1)],
                                                start_hour=start, end_hour=start + 3,
                                                price_per_card_hour=Decimal("10")))
        for oid in orders])

    # then exactly 8 succeed, 4 are told the capacity is gone, and the calendar agrees
    wins = [r for r in results if isinstance(r, Allocation)]
    losses = [r for r in results if isinstance(r, CapacityUnavailable)]
    assert len(wins) == 8 and len(losses) == 4, results
    sold = list(ListingHour.objects.filter(listing=listing, hour__gte=start, hour__lt=start + 3)
                .values_list("cards_sold", flat=True))
    assert sold == [8, 8, 8]
    assert Order.objects.filter(status="matched").count() == 8
    assert Order.objects.filter(status="open").count() == 4
    assert sum(a.cards for a in Allocation.objects.all()) == 8


def test_overlapping_windows_and_mixed_sizes_never_oversell_any_hour():
    # given two listings on one fabric and 16 orders of 1-4 cards over staggered overlapping hours
    supplier = OrganisationFactory()
    a = make_listing(NodeFactory(organisation=supplier, fabric_id="ib"), ask="10")
    b = make_listing(NodeFactory(organisation=supplier, fabric_id="ib"), ask="10")
    first = a.hours.first().hour
    buyer = OrganisationFactory()
    rng = random.Random(7)
    jobs = []
    for i in range(16):
        cards = rng.randint(1, 4)
        offset = rng.randint(0, 3)
        [oid] = _orders(buyer, 1, cards=cards * 2, placement="same_fabric")
        # half claim (a, b), half (b, a): locks are always taken in listing order, so no deadlock
        claims = [services.SlotClaim(a.pk, cards), services.SlotClaim(b.pk, cards)]
        if i % 2:
            claims.reverse()
        jobs.append(lambda oid=oid, claims=claims, offset=offset: lifecycle.slots_reserve(
            order_id=oid, claims=claims, start_hour=first + offset, end_hour=first + offset + 3,
            price_per_card_hour=Decimal("10")))

    results = race(jobs)

    # then nothing but clean wins and capacity refusals came back
    assert all(isinstance(r, (Allocation, CapacityUnavailable)) for r in results), results
    wins = [r for r in results if isinstance(r, Allocation)]
    assert wins
    # and for every hour, what the calendar says is sold equals what the allocations hold, within capacity
    for listing in (a, b):
        for row in ListingHour.objects.filter(listing=listing):
            held = sum(p.cards for p in listing.allocation_parts.filter(
                allocation__start_hour__lte=row.hour, allocation__end_hour__gt=row.hour,
                allocation__status="confirmed"))
            assert row.cards_sold == held <= row.cards_offered


def test_cancel_racing_reservations_keeps_the_calendar_exact():
    # given a listing with 4 cards sold to one order and 8 orders wanting 4 cards each
    listing = make_listing(NodeFactory(), ask="10")
    start = listing.hours.first().hour
    buyer = OrganisationFactory()
    [held] = _orders(buyer, 1, cards=4)
    lifecycle.slots_reserve(order_id=held, claims=[services.SlotClaim(listing.pk, 4)], start_hour=start,
                            end_hour=start + 3, price_per_card_hour=Decimal("10"))
    others = _orders(buyer, 8, cards=4)

    # when the holder cancels while the others race
    jobs = [lambda: lifecycle.order_cancel(organisation=buyer, order_id=held)]
    jobs += [(lambda oid=oid: lifecycle.slots_reserve(order_id=oid, claims=[services.SlotClaim(listing.pk, 4)],
                                                     start_hour=start, end_hour=start + 3,
                                                     price_per_card_hour=Decimal("10"))) for oid in others]
    results = race(jobs)

    # then 1 or 2 of the others won (depending on timing) and the calendar matches exactly
    wins = [r for r in results[1:] if isinstance(r, Allocation)]
    assert 1 <= len(wins) <= 2
    assert all(isinstance(r, (Allocation, CapacityUnavailable)) for r in results[1:]), results
    sold = set(ListingHour.objects.filter(listing=listing, hour__gte=start, hour__lt=start + 3)
               .values_list("cards_sold", flat=True))
    assert sold == {4 * len(wins)}
