"""schemathesis (pinned) against a real gunicorn process on the real PostgreSQL: every check, positive
and negative data, all phases, a fixed seed and a bounded number of examples, for a supplier, a
buyer and a platform admin. It must find nothing. False positives are configured away, each with
its reason, in tests/api/schemathesis.toml."""
import secrets
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from billing.services import wallet_top_up
from marketplace import services
from marketplace.models import Role

from tests.factories import NodeFactory, OrganisationFactory, make_listing

from .servers import ApiServer

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = 20261130
MAX_EXAMPLES = 4
# Each operation is fuzzed by the role that can use it, so the run stays within a few minutes; a
# role's calls to others' operations (403s) are covered by tests/marketplace/test_isolation.py.
OPERATIONS = {
    "supplier": ["--exclude-path-regex", "^/api/v1/(admin/|orders|quotes|figures/buyer|wallet)"],
    "buyer": ["--include-path-regex", "^/api/v1/(orders|quotes|figures/buyer|wallet)"],
    # The admin authenticates with a session cookie passed as a fixed header, which schemathesis's
    # ignored_auth check cannot take away, so it sees the still-valid cookie accepted and reports
    # "invalid authentication accepted": a false positive of this harness. The API-key runs above
    # keep the check (an invalid bearer token answers 401 even with a valid session cookie).
    "admin": ["--include-path-regex", "^/api/v1/admin/", "--exclude-checks", "ignored_auth"],
}

# Three runs of a few minutes each on a loaded 2-core machine, side by side.
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]


@pytest.fixture
def server(tmp_path):
    api = ApiServer(tmp_path / "gunicorn.log", workers=3)
    yield api
    api.stop()


def _market() -> dict[str, list[str]]:
    """A supplier with a node and a listing, a funded buyer with an order, a platform admin; the
    headers each role's run sends."""
    supplier = OrganisationFactory(is_supplier=True, is_buyer=False)
    buyer = OrganisationFactory(is_supplier=False, is_buyer=True)
    make_listing(NodeFactory(organisation=supplier), ask="9")
    wallet_top_up(organisation_id=buyer.pk, amount=Decimal("1000"), reference="schemathesis")
    _, supplier_key = services.api_key_create(organisation=supplier, name="fuzz", role=Role.OWNER)
    _, buyer_key = services.api_key_create(organisation=buyer, name="fuzz", role=Role.OWNER)
    get_user_model().objects.create_user(username="fuzz-admin", password="correct horse", is_staff=True)
    client = Client()
    assert client.login(username="fuzz-admin", password="correct horse")
    csrf = secrets.token_hex(16)  # a CSRF secret: the cookie and the header carry the same one
    return {
        "supplier": [f"Authorization: Bearer {supplier_key}"],
        "buyer": [f"Authorization: Bearer {buyer_key}"],
        "admin": [f"Cookie: sessionid={client.cookies['sessionid'].value}; csrftoken={csrf}", f"X-CSRFToken: {csrf}"],
    }


def test_schemathesis_finds_nothing_for_a_supplier_a_buyer_and_an_admin(server, tmp_path):
    # given a small market and one identity per role
    roles = _market()
    runs = {}
    for role, headers in roles.items():
        # when schemathesis runs every check against the live server, one run per role side by side
        command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
                   f"{server.url}/api/v1/schema", "--checks", "all", "--mode", "all", "--seed", str(SEED),
                   "--max-examples", str(MAX_EXAMPLES), "--no-shrink", *OPERATIONS[role],
                   # one worker: schemathesis 4.32's coverage phase is not thread-safe (hypothesis
                   # raises "AST constructor recursion depth mismatch" with two)
                   "--workers", "1"]
        for header in headers:
            command += ["--header", header]
        log = tmp_path / f"schemathesis-{role}.txt"
        # cwd: hypothesis keeps its example database in the working directory
        runs[role] = (subprocess.Popen(command, cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT), log)
    failures = {}
    for role, (process, log) in runs.items():
        try:
            process.wait(timeout=840)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.returncode != 0:
            failures[role] = log.read_text()[-6000:]
    # then it finds nothing for any role
    assert not failures, "\n\n".join(f"--- {role} ---\n{out}" for role, out in failures.items())
