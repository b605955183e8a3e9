"""Idempotency-Key on creating orders and listings."""
import pytest

from marketplace.models import IdempotencyRecord, Listing, Order

from tests.concurrency import race
from tests.factories import NodeFactory

from .helpers import assert_error, card_hours_body, listing_body


@pytest.mark.django_db
def test_order_replay_returns_the_first_response_and_creates_once(buyer_client):
    body = card_hours_body()
    first = buyer_client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    again = buyer_client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


@pytest.mark.django_db
def test_same_key_different_body_is_409(buyer_client):
    buyer_client.post("/api/v1/orders", card_hours_body(), format="json", HTTP_IDEMPOTENCY_KEY="k")
    response = buyer_client.post("/api/v1/orders", card_hours_body(cards=8), format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert_error(response, 409, code="idempotency_conflict")
    assert Order.objects.count() == 1


@pytest.mark.django_db
def test_listing_replay_and_conflict(supplier_client):
    node = NodeFactory(organisation=supplier_client.organisation)
    body = listing_body(node.pk)
    first = supplier_client.post("/api/v1/listings", body, format="json", HTTP_IDEMPOTENCY_KEY="l")
    again = supplier_client.post("/api/v1/listings", body, format="json", HTTP_IDEMPOTENCY_KEY="l")
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    assert_error(supplier_client.post("/api/v1/listings", {**body, "cards": 4}, format="json",
                                      HTTP_IDEMPOTENCY_KEY="l"), 409)
    assert Listing.objects.count() == 1


@pytest.mark.django_db
def test_keys_are_per_organisation_and_failed_requests_are_not_recorded(client_for):
    a = client_for(is_buyer=True)
    b = client_for(is_buyer=True)
    assert a.post("/api/v1/orders", card_hours_body(), format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 201
    assert b.post("/api/v1/orders", card_hours_body(), format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 201
    bad = a.post("/api/v1/orders", card_hours_body(cards=0), format="json", HTTP_IDEMPOTENCY_KEY="k2")
    assert bad.status_code == 400
    fixed = a.post("/api/v1/orders", card_hours_body(), format="json", HTTP_IDEMPOTENCY_KEY="k2")
    assert fixed.status_code == 201
    assert Order.objects.count() == 3 and IdempotencyRecord.objects.count() == 3


@pytest.mark.django_db
def test_overlong_key_is_a_field_error(buyer_client):
    assert_error(buyer_client.post("/api/v1/orders", card_hours_body(), format="json", HTTP_IDEMPOTENCY_KEY="x" * 201),
                 400, field="Idempotency-Key")


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_requests_with_one_key_create_once(client_for):
    # given 6 clients racing the same key on separate PostgreSQL connections
    buyer = client_for(is_buyer=True)
    body = card_hours_body()
    client = buyer.__class__
    responses = race([lambda: client(buyer.organisation, buyer.key).post(
        "/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="race")] * 6)
    results = [(r.status_code, r.json().get("id")) for r in responses]
    # then exactly one order exists and every caller got it
    assert Order.objects.count() == 1
    assert {r for r in results} == {(201, Order.objects.get().pk)}
