"""Bad input answers 400 naming the field, in one error shape; never a 500, and nothing is stored."""
from datetime import timedelta

import pytest

from marketplace.models import Listing, ListingHour, Node, Order

from tests.factories import NodeFactory, next_hour

from .helpers import assert_error, card_hours_body, iso, listing_body, tokens_body

pytestmark = pytest.mark.django_db


def _window(start_in, hours):
    start = next_hour(start_in)
    return {"earliest_start": iso(start), "latest_end": iso(start + timedelta(hours=hours))}


@pytest.mark.parametrize("overrides,field", [
    ({"chips": ["nvidia-h999"]}, "chips"),
    ({"chips": []}, "chips"),
    ({"cards": 0}, "cards"),
    ({"cards": 65}, "cards"),
    ({"cards": "eight"}, "cards"),
    ({"cards": None}, "cards"),
    ({"duration_hours": 0}, "duration_hours"),
    ({"duration_hours": -3}, "duration_hours"),
    ({"duration_hours": 30}, "duration_hours"),  # longer than the 24-hour window
    ({"duration_hours": 10**9}, "duration_hours"),
    ({"max_price_per_card_hour": "0"}, "max_price_per_card_hour"),
    ({"max_price_per_card_hour": "-1"}, "max_price_per_card_hour"),
    ({"max_price_per_card_hour": "1.1234567"}, "max_price_per_card_hour"),
    ({"max_price_per_card_hour": "1e400"}, "max_price_per_card_hour"),
    ({"max_price_per_card_hour": "abc"}, "max_price_per_card_hour"),
    ({"placement": "two_nodes"}, "placement"),
    ({"interconnects": ["carrier-pigeon"]}, "interconnects.0"),
    ({"window": {"earliest_start": "2030-01-01T00:30:00Z", "latest_end": "2030-01-02T00:00:00Z"}},
     "window.earliest_start"),
    ({"window": {"earliest_start": "2030-01-02T00:00:00Z", "latest_end": "2030-01-01T00:00:00Z"}},
     "window.latest_end"),
    ({"window": {"earliest_start": "not a date", "latest_end": "2030-01-01T00:00:00Z"}}, "window.earliest_start"),
    ({"window": {"earliest_start": "2030-01-01T00:00:00Z"}}, "window.latest_end"),
    ({"window": {"earliest_start": "2020-01-01T00:00:00Z", "latest_end": "2020-01-02T00:00:00Z"}},
     "window.latest_end"),
    ({"region": {"policy": "regions", "regions": ["CN-XX"]}}, "region.regions"),
    ({"region": {"policy": "regions", "regions": []}}, "region.regions"),
    ({"region": {"policy": "within_km", "lat": 31.2}}, "region.lon"),
    ({"region": {"policy": "within_km", "lat": 91, "lon": 0, "radius_km": 10}}, "region.lat"),
    ({"region": {"policy": "mars"}}, "region.policy"),
    ({"workload": {"ssh_public_key": "not a key"}}, "workload.ssh_public_key"),
    ({"min_memory_gb": 64}, "chips"),  # two chip rules at once
    ({"kind": "gpus"}, "kind"),
])
def test_card_hours_order_field_errors(buyer_client, overrides, field):
    response = buyer_client.post("/api/v1/orders", card_hours_body(**overrides), format="json")
    assert_error(response, 400, field=field, code="validation_error")
    assert not Order.objects.exists()


def test_model_fit_errors(buyer_client):
    body = card_hours_body(chips=None, cards=None, model_fit={"model": "GPT-17"})
    body.pop("chips")
    assert_error(buyer_client.post("/api/v1/orders", body, format="json"), 400, field="model")
    body["model_fit"] = {"model": "DeepSeek-R1", "precision": "fp2"}
    assert_error(buyer_client.post("/api/v1/orders", body, format="json"), 400, field="model_fit.precision")
    # 671B at fp8 cannot fit in 2 cards of anything in the catalogue
    body["model_fit"] = {"model": "DeepSeek-R1", "precision": "fp8"}
    body["cards"] = 2
    assert_error(buyer_client.post("/api/v1/orders", body, format="json"), 400, field="cards")


def test_own_province_without_home_region(client_for):
    buyer = client_for(is_supplier=False, is_buyer=True, home_region=None)
    response = buyer.post("/api/v1/orders", card_hours_body(region={"policy": "own_province"}), format="json")
    assert_error(response, 400, field="region.policy")


@pytest.mark.parametrize("overrides,field", [
    ({"model": "no-such-model"}, "model"),
    ({"expected_input_tokens": -1}, "expected_input_tokens"),
    ({"expected_output_tokens": 10**20}, "expected_output_tokens"),
    ({"expected_cache_hit_ratio": "1.5"}, "expected_cache_hit_ratio"),
    ({"max_prices": {"input_hit_per_m": "0.5", "input_miss_per_m": "2"}}, "max_prices.output_per_m"),
    ({"max_prices": {"input_hit_per_m": "0", "input_miss_per_m": "2", "output_per_m": "8"}},
     "max_prices.input_hit_per_m"),
])
def test_tokens_order_field_errors(buyer_client, overrides, field):
    assert_error(buyer_client.post("/api/v1/orders", tokens_body(**overrides), format="json"), 400, field=field)
    assert not Order.objects.exists()


@pytest.mark.parametrize("overrides,field", [
    ({"cards": 9}, "cards"),
    ({"cards": 0}, "cards"),
    ({"ask_per_card_hour": "0"}, "ask_per_card_hour"),
    ({"ask_per_card_hour": "0.0000001"}, "ask_per_card_hour"),
    ({"min_cards": 9}, "min_cards"),
    ({"min_hours": 100}, "min_hours"),
    ({"node": 10**9}, "node"),
    ({"node": "first"}, "node"),
    ({"start": "2030-01-01T00:15:00Z", "end": "2030-01-01T05:00:00Z"}, "start"),
    ({"start": "2030-01-01T05:00:00Z", "end": "2030-01-01T05:00:00Z"}, "end"),
    ({"start": "2030-01-01T00:00:00Z", "end": "2030-12-01T00:00:00Z"}, "end"),
    ({"token_endpoint": {"model": "nope", "tokens_per_minute": 100000, "price_input_hit_per_m": "1", "price_input_miss_per_m": "2",
                         "price_output_per_m": "8"}}, "token_endpoint.model"),
    ({"token_endpoint": {"model": "DeepSeek-V3"}}, "token_endpoint.price_output_per_m"),
])
def test_listing_field_errors(supplier_client, overrides, field):
    node = NodeFactory(organisation=supplier_client.organisation)
    response = supplier_client.post("/api/v1/listings", listing_body(node.pk, **overrides), format="json")
    assert_error(response, 400, field=field)
    assert not Listing.objects.exists() and not ListingHour.objects.exists()


@pytest.mark.parametrize("overrides,field", [
    ({"chip": "nvidia-h999"}, "chip"),
    ({"region": "CN-XX"}, "region"),
    ({"card_count": 0}, "card_count"),
    ({"card_count": 1000}, "card_count"),
    ({"interconnect": "wifi"}, "interconnect"),
    ({"fabric_id": "ib-1", "interconnect": "pcie"}, "fabric_id"),
    ({"name": ""}, "name"),
])
def test_node_field_errors(supplier_client, overrides, field):
    body = {"name": "n1", "chip": "huawei-ascend-910b", "card_count": 8, "region": "CN-GZ", "interconnect": "roce"}
    body.update(overrides)
    assert_error(supplier_client.post("/api/v1/nodes", body, format="json"), 400, field=field)
    assert not Node.objects.exists()


def test_duplicate_node_name(supplier_client):
    body = {"name": "n1", "chip": "huawei-ascend-910b", "card_count": 8, "region": "CN-GZ", "interconnect": "roce"}
    assert supplier_client.post("/api/v1/nodes", body, format="json").status_code == 201
    assert_error(supplier_client.post("/api/v1/nodes", body, format="json"), 400, field="name")
    assert Node.objects.count() == 1


@pytest.mark.parametrize("raw", [b"{bad json", b"[1, 2]", b"null", b'{"kind": NaN}', b"\xff\xfe"])
def test_malformed_bodies_never_500(buyer_client, raw):
    response = buyer_client.generic("POST", "/api/v1/orders", raw, content_type="application/json")
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


def test_wrong_content_type_and_method(buyer_client):
    assert_error(buyer_client.generic("POST", "/api/v1/orders", b"kind=x", content_type="text/plain"), 415)
    assert_error(buyer_client.delete("/api/v1/orders"), 405)


def test_listing_overlap_on_same_node_is_a_conflict(supplier_client):
    node = NodeFactory(organisation=supplier_client.organisation)
    assert supplier_client.post("/api/v1/listings", listing_body(node.pk), format="json").status_code == 201
    response = supplier_client.post("/api/v1/listings", listing_body(node.pk, start_in=5, cards=2), format="json")
    assert_error(response, 409, code="listing_overlap")
    assert Listing.objects.count() == 1 and ListingHour.objects.count() == 24


def test_inactive_node_cannot_be_listed(supplier_client):
    node = NodeFactory(organisation=supplier_client.organisation, status="failed")
    assert_error(supplier_client.post("/api/v1/listings", listing_body(node.pk), format="json"), 400, field="node")


def test_node_status_transitions(supplier_client):
    node = NodeFactory(organisation=supplier_client.organisation)
    assert supplier_client.patch(f"/api/v1/nodes/{node.pk}", {"status": "draining"}, format="json").status_code == 200
    assert_error(supplier_client.patch(f"/api/v1/nodes/{node.pk}", {"status": "sideways"}, format="json"), 400,
                 field="status")
    node.refresh_from_db()
    assert node.status == "draining"
