from decimal import Decimal

from django.db.models import Sum

from marketplace.models import Allocation, AllocationPart, ListingHour, Order
from tests.marketplace.helpers import card_hours_body


def post_order(client, **overrides) -> Order:
    response = client.post("/api/v1/orders", card_hours_body(**overrides), format="json")
    assert response.status_code == 201, response.content
    return Order.objects.get(pk=response.json()["id"])


def assert_calendar_consistent() -> None:
    """Every listing-hour's sold cards equal what live allocations hold there, within capacity;
    no order holds two live card-hour allocations."""
    held: dict[tuple[int, int], int] = {}
    live = Allocation.objects.filter(status__in=Allocation.ACTIVE, kind="card_hours")
    for part in AllocationPart.objects.filter(allocation__in=live).select_related("allocation"):
        for hour in range(part.allocation.start_hour, part.allocation.end_hour):
            held[(part.listing_id, hour)] = held.get((part.listing_id, hour), 0) + part.cards
    for row in ListingHour.objects.all():
        assert row.cards_sold == held.get((row.listing_id, row.hour), 0), (row.listing_id, row.hour)
        assert row.cards_sold <= row.cards_offered
    per_order = live.values("order_id").annotate(n=Sum("cards")).values_list("order_id", flat=True)
    assert len(per_order) == len(set(per_order))


def assert_prices_rational() -> None:
    for allocation in Allocation.objects.filter(kind="card_hours").select_related("order"):
        asks = [p.listing.ask_per_card_hour for p in allocation.parts.select_related("listing")]
        assert max(asks) <= allocation.price_per_card_hour <= allocation.order.max_price_per_card_hour
        assert allocation.price_per_card_hour == allocation.price_per_card_hour.quantize(Decimal("0.000001"))
