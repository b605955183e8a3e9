"""API keys and member logins."""
import pytest
from django.test import Client

from marketplace import services
from marketplace.authentication import hash_key
from marketplace.models import ApiKey

from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db


def test_key_is_shown_once_and_stored_hashed(client_for):
    owner = client_for(is_buyer=True)
    response = owner.post("/api/v1/api-keys", {"name": "ci", "role": "viewer"}, format="json")
    assert response.status_code == 201
    plaintext = response.json()["key"]
    key = ApiKey.objects.get(pk=response.json()["id"])
    assert plaintext.startswith(f"sds_{key.prefix}_")
    assert key.hashed_secret == hash_key(plaintext) and plaintext not in key.hashed_secret
    listed = owner.get("/api/v1/api-keys").json()["results"]
    assert all("key" not in row for row in listed)
    assert {row["prefix"] for row in listed} >= {key.prefix}


def test_only_owners_manage_keys(client_for):
    operator = client_for(role="operator", is_buyer=True)
    assert operator.post("/api/v1/api-keys", {"name": "x"}, format="json").status_code == 403


def test_tampered_key_is_refused(client_for):
    client = client_for(is_buyer=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {client.key[:-2]}zz")
    assert client.get("/api/v1/me").status_code == 401


def test_member_session_login_acts_for_its_organisation():
    org = OrganisationFactory(is_buyer=True)
    services.member_create(organisation=org, username="alice", password="s3cret-pass", role="operator")
    client = Client()
    assert client.login(username="alice", password="s3cret-pass")
    me = client.get("/api/v1/me").json()
    assert me["organisation"] == org.slug and me["role"] == "operator" and me["is_buyer"]


def test_x_api_key_header_works_too(db):
    org = OrganisationFactory()
    _, key = services.api_key_create(organisation=org, name="k")
    assert Client().get("/api/v1/me", HTTP_X_API_KEY=key).json()["organisation"] == org.slug


def test_schema_and_docs_are_served(client_for):
    client = client_for()
    assert client.get("/api/v1/schema").status_code == 200
    assert client.get("/api/v1/docs").status_code == 200
