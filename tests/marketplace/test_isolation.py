"""One organisation never sees or changes another's data: every endpoint answers 404."""
import pytest

from marketplace import services
from marketplace.models import Listing, Node, Order
from lifecycle import services as lifecycle

from tests.factories import NodeFactory, make_listing

from .helpers import assert_error, card_hours_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(client_for):
    """Org A (supplier and buyer) with a node, listing, order, allocation and key; org B, a stranger."""
    a = client_for(is_supplier=True, is_buyer=True)
    b = client_for(is_supplier=True, is_buyer=True)
    node = NodeFactory(organisation=a.organisation)
    listing = make_listing(node)
    response = a.post("/api/v1/orders", card_hours_body(), format="json")
    assert response.status_code == 201
    order = Order.objects.get(pk=response.json()["id"])
    second = Order.objects.get(pk=a.post("/api/v1/orders", card_hours_body(), format="json").json()["id"])
    allocation = lifecycle.slots_reserve(order_id=second.pk, claims=[services.SlotClaim(listing.pk, 4)],
                                         start_hour=listing.hours.first().hour, end_hour=listing.hours.first().hour + 3,
                                         price_per_card_hour=listing.ask_per_card_hour)
    key = a.organisation.api_keys.first()
    return {"a": a, "b": b, "node": node, "listing": listing, "order": order, "allocation": allocation, "key": key}


@pytest.mark.parametrize("method,path,body", [
    ("get", "/api/v1/nodes/{node}", None),
    ("patch", "/api/v1/nodes/{node}", {"status": "offline"}),
    ("get", "/api/v1/listings/{listing}", None),
    ("patch", "/api/v1/listings/{listing}", {"ask_per_card_hour": "1.00"}),
    ("post", "/api/v1/listings/{listing}/withdraw", {}),
    ("get", "/api/v1/orders/{order}", None),
    ("post", "/api/v1/orders/{order}/cancel", {}),
    ("get", "/api/v1/allocations/{allocation}", None),
    ("post", "/api/v1/api-keys/{key}/revoke", {}),
])
def test_other_organisations_objects_answer_404_and_stay_unchanged(world, method, path, body):
    # given org B knows the ids of org A's objects
    url = path.format(node=world["node"].pk, listing=world["listing"].pk, order=world["order"].pk,
                      allocation=world["allocation"].pk, key=world["key"].pk)
    # when B asks for or changes them
    response = getattr(world["b"], method)(url, body, format="json") if body is not None else world["b"].get(url)
    # then the answer is 404 in the common error shape, and nothing changed
    assert_error(response, 404, code="not_found")
    assert Node.objects.get(pk=world["node"].pk).status == "active"
    assert Listing.objects.get(pk=world["listing"].pk).status == "active"
    assert Listing.objects.get(pk=world["listing"].pk).ask_per_card_hour == world["listing"].ask_per_card_hour
    assert Order.objects.get(pk=world["order"].pk).status == "open"
    world["key"].refresh_from_db()
    assert world["key"].revoked_at is None


@pytest.mark.parametrize("path", ["/api/v1/nodes", "/api/v1/listings", "/api/v1/orders", "/api/v1/allocations",
                                  "/api/v1/api-keys"])
def test_lists_show_only_own_objects(world, path):
    own = world["a"].get(path)
    other = world["b"].get(path)
    assert own.status_code == other.status_code == 200
    assert own.json()["count"] >= 1
    ids_a = {row["id"] for row in own.json()["results"]}
    ids_b = {row["id"] for row in other.json()["results"]}
    assert ids_a.isdisjoint(ids_b)
    if path != "/api/v1/api-keys":
        assert other.json()["count"] == 0


def test_listing_on_another_organisations_node_is_refused(world):
    body = {"node": world["node"].pk, "cards": 8, "start": "2030-01-01T00:00:00Z", "end": "2030-01-01T05:00:00Z",
            "ask_per_card_hour": "5"}
    assert_error(world["b"].post("/api/v1/listings", body, format="json"), 400, field="node")


def test_workload_is_visible_to_the_matched_supplier_only(world, client_for):
    # given org A bought capacity from a third-party supplier C
    c = client_for(is_supplier=True, is_buyer=False)
    node = NodeFactory(organisation=c.organisation)
    listing = make_listing(node)
    order = world["order"]
    allocation = lifecycle.slots_reserve(order_id=order.pk, claims=[services.SlotClaim(listing.pk, 4)],
                                         start_hour=listing.hours.first().hour, end_hour=listing.hours.first().hour + 3,
                                         price_per_card_hour=listing.ask_per_card_hour)
    # then C sees the workload on its allocation, B sees nothing at all
    seen = c.get(f"/api/v1/allocations/{allocation.pk}").json()
    assert seen["workload"]["ssh_public_key"].startswith("ssh-ed25519")
    assert seen["workload"]["image"] == "registry.example/llm:1"
    assert_error(world["b"].get(f"/api/v1/allocations/{allocation.pk}"), 404)
    assert c.get(f"/api/v1/orders/{order.pk}").status_code == 404
    # when the match is released (the buyer cancels), the supplier no longer sees the workload
    assert world["a"].post(f"/api/v1/orders/{order.pk}/cancel", {}, format="json").status_code == 200
    assert c.get(f"/api/v1/allocations/{allocation.pk}").json()["workload"] is None


def test_unauthenticated_and_revoked_keys_are_refused(world, client_for):
    anonymous = world["a"].__class__(world["a"].organisation, "sds_bad_key")
    assert_error(anonymous.get("/api/v1/nodes"), 401)
    revoke = world["a"].post(f"/api/v1/api-keys/{world['key'].pk}/revoke", {}, format="json")
    assert revoke.status_code == 200
    assert_error(world["a"].get("/api/v1/nodes"), 401)


def test_viewer_keys_are_read_only(client_for):
    viewer = client_for(role="viewer", is_supplier=True, is_buyer=True)
    assert viewer.get("/api/v1/orders").status_code == 200
    assert_error(viewer.post("/api/v1/orders", card_hours_body(), format="json"), 403, code="permission_denied")


def test_role_by_organisation_kind(supplier_client, buyer_client):
    assert_error(buyer_client.post("/api/v1/nodes", {"name": "x", "chip": "nvidia-h20", "card_count": 8,
                                                     "region": "CN-SH", "interconnect": "pcie"}, format="json"), 403)
    assert_error(supplier_client.post("/api/v1/orders", card_hours_body(), format="json"), 403)
