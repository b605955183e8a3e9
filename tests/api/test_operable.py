"""Operable: a PostgreSQL restart costs no 500 (connection health checks, on a real server process
that keeps its connections); beat queues at most one pending round per bucket and round tasks
expire; idempotency records are purged after their TTL; production settings pass
``check --deploy`` and trust the proxy's HTTPS header only when told to; seed_demo refuses them;
GET /api/v1/ is an index with links; filters by another organisation's id answer exactly as for a
missing id."""
import json
import os
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from config.celery import app as celery_app
from marketplace import services
from marketplace.models import IdempotencyRecord, Role
from matching import tasks
from matching.services import TOKENS_BUCKET

from tests.factories import NodeFactory, OrganisationFactory, make_listing
from tests.marketplace.helpers import card_hours_body

from .servers import ApiServer

ROOT = Path(__file__).resolve().parents[2]


# --- connection health ------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_terminated_database_connection_costs_a_reconnect_not_a_500(tmp_path):
    # given a server process that keeps its database connection between requests
    org = OrganisationFactory()
    _, key = services.api_key_create(organisation=org, name="ops", role=Role.OWNER)
    server = ApiServer(tmp_path / "gunicorn.log", workers=1, SANDUISAN_TEST_CONN_MAX_AGE="60")
    try:
        def me() -> int:
            request = urllib.request.Request(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {key}"})
            try:
                return urllib.request.urlopen(request, timeout=10).status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert me() == 200
        # when PostgreSQL drops every other connection to the database (as a restart does)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            assert cursor.fetchone()[0] >= 1  # the server's kept connection was among them
        # then the next request reconnects and answers
        assert me() == 200
    finally:
        server.stop()


# --- beat and rounds --------------------------------------------------------------------------------

def _queued_rounds(queue: str) -> list[dict]:
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    messages = [json.loads(raw) for raw in broker.lrange(queue, 0, -1)]
    return [m for m in messages if m["headers"]["task"] == "matching.run_round"]


@pytest.fixture
def empty_default_queue():
    queue = celery_app.conf.task_default_queue
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(queue)
    cache.delete_many([f"matching:round-pending:{b}" for b in ("*:*", "nvidia:*", "nvidia:guizhou", "*:guizhou",
                                                               TOKENS_BUCKET)])
    yield queue
    broker.delete(queue)


@pytest.mark.django_db
def test_beat_never_queues_a_second_pending_round_per_bucket_and_rounds_expire(empty_default_queue):
    # given supply in some buckets
    make_listing(NodeFactory())
    # when beat fires three times while no worker runs
    first = tasks.run_all_rounds()
    again = [tasks.run_all_rounds(), tasks.run_all_rounds()]
    # then each bucket has exactly one pending round, and each carries an expiry
    rounds = _queued_rounds(empty_default_queue)
    buckets = [m["headers"]["argsrepr"] for m in rounds]
    assert first and again == [[], []]
    assert len(buckets) == len(set(buckets)) == len(first)
    assert all(m["headers"]["expires"] for m in rounds)
    # and once a round starts (its pending mark is cleared), beat may queue the next one
    cache.delete(f"matching:round-pending:{first[0]}")
    assert tasks.run_all_rounds() == [first[0]]


# --- idempotency records ----------------------------------------------------------------------------

@pytest.mark.django_db
def test_idempotency_records_are_purged_after_their_ttl(buyer_client):
    # given two idempotent creates, one of them older than the TTL
    for key in ("old", "new"):
        response = buyer_client.post("/api/v1/orders", card_hours_body(), format="json", HTTP_IDEMPOTENCY_KEY=key)
        assert response.status_code == 201
    ttl = settings.SANDUISAN["IDEMPOTENCY_TTL_HOURS"]
    IdempotencyRecord.objects.filter(key="old").update(created_at=timezone.now() - timedelta(hours=ttl, minutes=1))
    # when the purge runs (twice: it is idempotent)
    assert services.idempotency_records_purge() == 1
    assert services.idempotency_records_purge() == 0
    # then only the fresh record is left, and the expired key is free for a new request
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]
    reused = buyer_client.post("/api/v1/orders", card_hours_body(cards=2), format="json", HTTP_IDEMPOTENCY_KEY="old")
    assert reused.status_code == 201 and "Idempotent-Replayed" not in reused


def test_the_purge_runs_on_a_schedule_and_beat_keeps_its_state_under_var():
    assert settings.CELERY_BEAT_SCHEDULE["idempotency-purge"]["task"] == "marketplace.idempotency_records_purge"
    assert Path(settings.CELERY_BEAT_SCHEDULE_FILENAME).parent == settings.VAR_DIR


# --- production settings ----------------------------------------------------------------------------

def _production(*args: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SANDUISAN_", "DJANGO_"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "config.settings.production", "SECRET_KEY": "p" * 20 + "q" * 20 + "r" * 20
                  + "0123456789abcdef", "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/unused",
                  "REDIS_URL": "redis://127.0.0.1:6379/15", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15", **env})
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_production_settings():
    result = _production("manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_proxy_https_header_is_trusted_only_when_configured():
    show = "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)"
    setup = "import django; django.setup(); "
    assert _production("-c", setup + show).stdout.strip() == "None"
    configured = _production("-c", setup + show, SANDUISAN_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO")
    assert configured.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')"


def test_seed_demo_refuses_production_settings():
    result = _production("manage.py", "seed_demo")
    assert result.returncode != 0 and "production" in result.stderr


# --- the first hour ---------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_api_root_is_an_index_of_resources_with_links():
    response = APIClient().get("/api/v1/")
    assert response.status_code == 200
    body = response.json()
    resources = body["resources"]
    assert {"orders", "listings", "nodes", "quotes", "wallet", "figures-buyer"} <= set(resources)
    assert resources["orders"] == "http://testserver/api/v1/orders"
    assert body["docs"] == "http://testserver/api/v1/docs"
    assert APIClient().get("/api/v1/schema").status_code == 200


# --- no existence oracle ----------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("path, param", [("/api/v1/allocations", "order"), ("/api/v1/listings", "node"),
                                         ("/api/v1/charges", "order"), ("/api/v1/charges", "allocation"),
                                         ("/api/v1/allocations", "order")])
def test_a_filter_by_another_organisations_id_answers_as_for_a_missing_id(client_for, path, param):
    # given another organisation's node, listing and order
    mine = client_for(is_supplier=True, is_buyer=True)
    theirs = client_for(is_supplier=True, is_buyer=True)
    node = NodeFactory(organisation=theirs.organisation)
    make_listing(node)
    order_id = theirs.post("/api/v1/orders", card_hours_body(), format="json").json()["id"]
    foreign = {"order": order_id, "node": node.pk, "allocation": order_id}[param]
    # when I filter by their id and by an id that does not exist
    by_foreign = mine.get(path, {param: foreign})
    by_missing = mine.get(path, {param: 10**12})
    # then the answers are identical
    assert by_foreign.status_code == by_missing.status_code == 200
    assert by_foreign.json() == by_missing.json() == {"count": 0, "next": None, "previous": None, "results": []}
