"""Supplier endpoints (write-only, encrypted credential; health checks by a real Celery worker)
and reconciliation of supplier claims against what the gateway metered."""
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from billing.models import UsageClaim, UsageEvent
from gateway import services
from gateway.models import SupplierEndpoint, UsageDiscrepancy
from gateway.servers import free_port
from gateway.tasks import endpoint_check
from tests.billing.helpers import occurred_for
from tests.factories import NodeFactory, make_listing
from tests.workers import wait_for
from marketplace import services as market

from .helpers import CHAT, buy_tokens, flushed_events, sdk, supplier_with_endpoint

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_the_credential_is_write_only_and_encrypted_at_rest(upstream, supplier_client):
    _, listing = supplier_with_endpoint(upstream.url, "openai", credential="sk-very-secret",
                                        supplier=supplier_client.organisation)

    shown = supplier_client.get(f"/api/v1/listings/{listing.pk}/endpoint")

    assert shown.status_code == 200
    assert "sk-very-secret" not in shown.content.decode() and shown.json()["has_credential"] is True
    with connection.cursor() as cursor:
        cursor.execute("SELECT credential_encrypted FROM gateway_supplierendpoint")
        [(stored,)] = cursor.fetchall()
    assert "sk-very-secret" not in stored and stored
    listing.refresh_from_db()
    assert listing.metered_by_exchange and listing.tokens_per_minute == 10_000_000


def test_only_a_token_listing_of_ones_own_takes_an_endpoint(supplier_client, client_for):
    card_listing = make_listing(NodeFactory(organisation=supplier_client.organisation))
    token_listing = make_listing(NodeFactory(), token_endpoint=market.TokenEndpoint(
        "DeepSeek-V3", Decimal("0.5"), Decimal("2"), Decimal("8")))
    body = {"base_url": "http://127.0.0.1:9/v1", "tokens_per_minute": 1000}

    not_tokens = supplier_client.put(f"/api/v1/listings/{card_listing.pk}/endpoint", body, format="json")
    others = supplier_client.put(f"/api/v1/listings/{token_listing.pk}/endpoint", body, format="json")
    bad_url = supplier_client.put(f"/api/v1/listings/{card_listing.pk}/endpoint", {"base_url": "ftp://x"},
                                  format="json")

    assert not_tokens.status_code == 400 and "listing" in not_tokens.json()["error"]["fields"]
    assert others.status_code == 404
    assert bad_url.status_code == 400 and "base_url" in bad_url.json()["error"]["fields"]


def test_a_celery_worker_checks_endpoint_health(upstream, workers, queue):
    _, up_listing = supplier_with_endpoint(upstream.url, "openai")
    _, down_listing = supplier_with_endpoint(f"http://127.0.0.1:{free_port()}", "openai")
    up, down = (SupplierEndpoint.objects.get(listing=listing) for listing in (up_listing, down_listing))
    workers("health")

    for endpoint in (up, down):
        endpoint_check.apply_async(args=[endpoint.pk], queue=queue)

    wait_for(lambda: SupplierEndpoint.objects.filter(last_checked_at__isnull=False).count() == 2, timeout=60,
             what="both endpoints checked")
    up.refresh_from_db()
    down.refresh_from_db()
    assert (up.health, down.health) == ("up", "down")
    assert upstream.stats()["auth"]["openai"] == "Bearer up-secret"
    assert down.last_error


def test_a_down_endpoint_is_not_routed_to(gateway, upstream, buyer_client):
    _, listing = supplier_with_endpoint(upstream.url, "openai")
    buy_tokens(buyer_client)
    SupplierEndpoint.objects.filter(listing=listing).update(health="down")

    with pytest.raises(Exception) as refused:
        sdk(gateway, buyer_client.key).chat.completions.create(model="DeepSeek-V3", messages=CHAT)

    assert refused.value.status_code == 503


def test_supplier_reports_are_claims_and_an_over_reporting_supplier_is_flagged(gateway, upstream, buyer_client,
                                                                               client_for):
    # given a supplier whose endpoint the gateway metered: 3 requests of 40 + 60 + 5 tokens
    supplier, _ = supplier_with_endpoint(upstream.url, "openai")
    allocation = buy_tokens(buyer_client)
    client = sdk(gateway, buyer_client.key)
    for _ in range(3):
        client.chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=5)
    metered = flushed_events(3)

    # when the supplier reports ten times that through the usage-event API
    reporter = client_for(supplier)
    response = reporter.post("/api/v1/usage-events", {
        "event_id": "own-1", "allocation": allocation.pk, "occurred_at": occurred_for(allocation).isoformat(),
        "input_hit_tokens": 1200, "input_miss_tokens": 1800, "output_tokens": 150}, format="json")
    open_count = services.usage_reconcile()

    # then the report is kept as a claim and not billed, and operators see the discrepancy
    assert response.status_code == 201 and response.json()["status"] == "reconciliation"
    assert not UsageEvent.objects.filter(event_id="own-1").exists()
    assert UsageClaim.objects.get(event_id="own-1").output_tokens == 150
    assert sum(e.amount for e in UsageEvent.objects.filter(allocation=allocation)) == sum(e.amount for e in metered)
    assert open_count == 1
    flagged = UsageDiscrepancy.objects.get(allocation=allocation)
    assert (flagged.metered_tokens, flagged.claimed_tokens, flagged.status) == (315, 3150, "open")
    admin = Client()
    admin.force_login(get_user_model().objects.create_user(username="ops", password="x", is_staff=True))
    page = admin.get("/dashboard/").content.decode()
    assert "Token gateway: usage reconciliation" in page and "3150" in page


def test_an_honest_supplier_report_is_not_flagged(gateway, upstream, buyer_client, client_for):
    supplier, _ = supplier_with_endpoint(upstream.url, "deepseek")
    allocation = buy_tokens(buyer_client)
    sdk(gateway, buyer_client.key).chat.completions.create(model="DeepSeek-V3", messages=CHAT, max_tokens=5)
    flushed_events(1)

    client_for(supplier).post("/api/v1/usage-events/batch", {"events": [{
        "event_id": "own-1", "allocation": allocation.pk, "occurred_at": occurred_for(allocation).isoformat(),
        "input_hit_tokens": 30, "input_miss_tokens": 70, "output_tokens": 5}]}, format="json")

    assert services.usage_reconcile() == 0
    assert not UsageDiscrepancy.objects.exists()
