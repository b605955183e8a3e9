"""The gateway and a fake upstream as real server processes (uvicorn), against the test
database and the machine's Redis. Tests using them are transactional: the gateway process sees
only committed rows."""
import urllib.request

import orjson
import pytest
from django.conf import settings
from django.db import connection

from gateway.buffer import FLUSH_LOCK, redis_sync
from gateway.servers import Flusher, Server
from tests.workers import wait_for


def gateway_env() -> dict:
    db = connection.settings_dict
    return {"DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "REDIS_URL": settings.REDIS_URL,
            # 3 s: a stalled endpoint (30 s) still fails over quickly, while a healthy one on a
            # loaded CI machine is never taken for stalled
            "SANDUISAN_GATEWAY_FIRST_BYTE_TIMEOUT": "3", "SANDUISAN_GATEWAY_CACHE_TTL": "1"}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    server = Server("gateway.fake_upstream:app", log=tmp_path_factory.mktemp("upstream") / "upstream.log")
    server.stats = lambda: orjson.loads(urllib.request.urlopen(server.url + "/_stats", timeout=5).read())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        env = gateway_env()
    logs = tmp_path_factory.mktemp("gateway")
    server = Server("gateway.asgi:application", log=logs / "gateway.log", env=env)
    flusher = Flusher(log=logs / "flusher.log", env=env)
    yield server
    server.stop()
    flusher.stop()


@pytest.fixture(autouse=True)
def clean_gateway_redis():
    """Budgets, counters and buffered events of earlier tests (their rows are gone) are cleared
    before each test. After it, the flush lock is taken (once a running flush let it go) and kept
    until the next test clears it: the database is truncated between transactional tests, and a
    flusher writing endpoint outcomes while TRUNCATE takes its locks table by table deadlocks it."""
    client = redis_sync()
    keys = list(client.scan_iter("gw:*", count=1000))
    if keys:
        client.delete(*keys)
    yield
    wait_for(lambda: client.set(FLUSH_LOCK, "test-teardown", nx=True, px=30_000), timeout=30,
             what="the gateway flusher to finish")
