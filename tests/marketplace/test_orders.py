"""Order lifecycle and slot reservation through services."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from config.errors import CapacityUnavailable, InvalidTransition, ValidationFailed
from marketplace import services
from marketplace.models import Allocation, ListingHour, Order
from lifecycle import services as lifecycle

from tests.factories import NodeFactory, make_listing

from .helpers import assert_error, card_hours_body

pytestmark = pytest.mark.django_db


def _order(client, **overrides) -> Order:
    response = client.post("/api/v1/orders", card_hours_body(**overrides), format="json")
    assert response.status_code == 201, response.content
    return Order.objects.get(pk=response.json()["id"])


def _sold(listing, start, end):
    return list(ListingHour.objects.filter(listing=listing, hour__gte=start, hour__lt=end)
                .order_by("hour").values_list("cards_sold", flat=True))


def test_model_rule_computes_cards_per_chip(buyer_client):
    body = card_hours_body(model_fit={"model": "DeepSeek-R1", "precision": "fp8", "weights_only": True},
                           placement="same_fabric")
    body.pop("chips")
    body.pop("cards")
    response = buyer_client.post("/api/v1/orders", body, format="json")
    assert response.status_code == 201, response.content
    options = {o["chip"]: o["cards"] for o in response.json()["chip_options"]}
    assert options["huawei-ascend-910b"] == 11  # 671 GB over 64 GB cards
    assert options["nvidia-h20"] == 7  # 96 GB cards
    assert options["nvidia-h800-sxm"] == 9  # 80 GB cards
    assert "kunlunxin-p800" not in options  # memory unknown: never guessed


def test_min_memory_rule_lists_every_chip_with_enough_memory(buyer_client):
    body = card_hours_body(min_memory_gb=80)
    body.pop("chips")
    response = buyer_client.post("/api/v1/orders", body, format="json")
    chips = {o["chip"] for o in response.json()["chip_options"]}
    assert "nvidia-h20" in chips and "nvidia-h200-sxm" in chips and "huawei-ascend-910b" not in chips


def test_reserve_then_cancel_releases_every_slot(buyer_client):
    listing = make_listing(NodeFactory(), ask="10")
    order = _order(buyer_client)
    first = listing.hours.first().hour
    allocation = lifecycle.slots_reserve(order_id=order.pk, claims=[services.SlotClaim(listing.pk, 4)],
                                         start_hour=first + 1, end_hour=first + 4, price_per_card_hour=Decimal("11"))
    order.refresh_from_db()
    assert order.status == "matched" and allocation.cards == 4
    assert _sold(listing, first, first + 5) == [0, 4, 4, 4, 0]
    response = buyer_client.post(f"/api/v1/orders/{order.pk}/cancel", {"reason": "changed plans"}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert _sold(listing, first, first + 5) == [0, 0, 0, 0, 0]
    assert Allocation.objects.get(pk=allocation.pk).status == "released"
    # cancelling again is harmless; the slots are not released twice
    assert buyer_client.post(f"/api/v1/orders/{order.pk}/cancel", {}, format="json").status_code == 200
    assert _sold(listing, first, first + 5) == [0, 0, 0, 0, 0]


def test_completed_orders_cannot_be_cancelled(buyer_client):
    order = _order(buyer_client)
    Order.objects.filter(pk=order.pk).update(status="completed")
    assert_error(buyer_client.post(f"/api/v1/orders/{order.pk}/cancel", {}, format="json"), 409,
                 code="invalid_transition")


def test_reservation_checks_every_hard_constraint(buyer_client):
    listing = make_listing(NodeFactory(), ask="10")  # a Gui'an (Guizhou) node with InfiniBand
    first = listing.hours.first().hour
    claim = [services.SlotClaim(listing.pk, 4)]
    order = _order(buyer_client, region={"policy": "regions", "regions": ["CN-SH"]})
    with pytest.raises(ValidationFailed, match="allowed regions"):
        lifecycle.slots_reserve(order_id=order.pk, claims=claim, start_hour=first, end_hour=first + 3,
                                price_per_card_hour=Decimal("10"))
    order = _order(buyer_client)
    with pytest.raises(ValidationFailed, match="below the supplier's ask"):
        lifecycle.slots_reserve(order_id=order.pk, claims=claim, start_hour=first, end_hour=first + 3,
                                price_per_card_hour=Decimal("9.99"))
    with pytest.raises(ValidationFailed, match="above the buyer's limit"):
        lifecycle.slots_reserve(order_id=order.pk, claims=claim, start_hour=first, end_hour=first + 3,
                                price_per_card_hour=Decimal("12.51"))
    with pytest.raises(ValidationFailed, match="exactly 4 cards"):
        lifecycle.slots_reserve(order_id=order.pk, claims=[services.SlotClaim(listing.pk, 3)], start_hour=first,
                                end_hour=first + 3, price_per_card_hour=Decimal("10"))
    with pytest.raises(ValidationFailed, match="3 contiguous hours"):
        lifecycle.slots_reserve(order_id=order.pk, claims=claim, start_hour=first, end_hour=first + 4,
                                price_per_card_hour=Decimal("10"))
    ib_only = _order(buyer_client, interconnects=["roce"])
    with pytest.raises(ValidationFailed, match="interconnect"):
        lifecycle.slots_reserve(order_id=ib_only.pk, claims=claim, start_hour=first, end_hour=first + 3,
                                price_per_card_hour=Decimal("10"))
    assert not Allocation.objects.exists()
    assert sum(ListingHour.objects.values_list("cards_sold", flat=True)) == 0


def test_multi_node_needs_one_fabric_and_sells_all_or_nothing(buyer_client):
    supplier = NodeFactory().organisation
    a = make_listing(NodeFactory(organisation=supplier, fabric_id="ib-1"))
    b = make_listing(NodeFactory(organisation=supplier, fabric_id="ib-1"))
    c = make_listing(NodeFactory(organisation=supplier, fabric_id="ib-2"))
    first = a.hours.first().hour
    order = _order(buyer_client, cards=12, placement="same_fabric")
    with pytest.raises(ValidationFailed, match="one fabric"):
        lifecycle.slots_reserve(order_id=order.pk, claims=[services.SlotClaim(a.pk, 8), services.SlotClaim(c.pk, 4)],
                                start_hour=first, end_hour=first + 3, price_per_card_hour=Decimal("10"))
    # b is short of cards in one hour: nothing at all is sold
    ListingHour.objects.filter(listing=b, hour=first + 2).update(cards_sold=6)
    with pytest.raises(CapacityUnavailable):
        lifecycle.slots_reserve(order_id=order.pk, claims=[services.SlotClaim(a.pk, 8), services.SlotClaim(b.pk, 4)],
                                start_hour=first, end_hour=first + 3, price_per_card_hour=Decimal("10"))
    assert _sold(a, first, first + 3) == [0, 0, 0]
    allocation = lifecycle.slots_reserve(order_id=order.pk,
                                         claims=[services.SlotClaim(a.pk, 8), services.SlotClaim(b.pk, 4)],
                                         start_hour=first + 3, end_hour=first + 6, price_per_card_hour=Decimal("10"))
    assert allocation.cards == 12 and allocation.parts.count() == 2


def test_an_order_is_matched_once(buyer_client):
    listing = make_listing(NodeFactory())
    first = listing.hours.first().hour
    order = _order(buyer_client)
    lifecycle.slots_reserve(order_id=order.pk, claims=[services.SlotClaim(listing.pk, 4)], start_hour=first,
                            end_hour=first + 3, price_per_card_hour=Decimal("10"))
    with pytest.raises(InvalidTransition):
        lifecycle.slots_reserve(order_id=order.pk, claims=[services.SlotClaim(listing.pk, 4)], start_hour=first,
                                end_hour=first + 3, price_per_card_hour=Decimal("10"))
    assert _sold(listing, first, first + 3) == [4, 4, 4]


def test_database_refuses_overselling_even_without_the_service():
    listing = make_listing(NodeFactory())
    with pytest.raises(IntegrityError), transaction.atomic():
        ListingHour.objects.filter(listing=listing).update(cards_sold=9)
    with pytest.raises(IntegrityError), transaction.atomic():
        ListingHour.objects.create(listing=listing, node=listing.node, hour=listing.hours.first().hour,
                                   node_cards=8, cards_offered=1)  # the node-hour is already listed


def test_withdraw_keeps_sold_slots_and_frees_the_rest(supplier_client, buyer_client):
    node = NodeFactory(organisation=supplier_client.organisation)
    listing = make_listing(node)
    first = listing.hours.first().hour
    order = _order(buyer_client)
    lifecycle.slots_reserve(order_id=order.pk, claims=[services.SlotClaim(listing.pk, 4)], start_hour=first,
                            end_hour=first + 3, price_per_card_hour=Decimal("10"))
    response = supplier_client.post(f"/api/v1/listings/{listing.pk}/withdraw", {}, format="json")
    assert response.status_code == 200 and response.json()["status"] == "withdrawn"
    rows = list(ListingHour.objects.filter(listing=listing).order_by("hour").values_list("hour", "cards_offered",
                                                                                        "cards_sold"))
    assert rows == [(first, 4, 4), (first + 1, 4, 4), (first + 2, 4, 4)]
    # the freed node-hours can be listed again
    relist = make_listing(node, start=listing.start + timedelta(hours=3), hours=5)
    assert relist.hours.count() == 5


def test_orders_expire_once_their_window_can_no_longer_hold_them(buyer_client):
    from marketplace.tasks import orders_expire
    from tests.factories import next_hour

    # given one order that still fits (24-hour window) and one whose window has shrunk to 2 hours for 3
    fits = _order(buyer_client)
    stale = _order(buyer_client)
    Order.objects.filter(pk=stale.pk).update(earliest_start=next_hour(-5), latest_end=next_hour(2))
    # when the expiry task runs (twice: it is idempotent)
    assert orders_expire.run() == 1
    assert orders_expire.run() == 0
    # then only the stale one expired
    assert Order.objects.get(pk=stale.pk).status == "expired"
    assert Order.objects.get(pk=fits.pk).status == "open"
