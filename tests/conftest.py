import pytest
from rest_framework.test import APIClient

from marketplace import services
from marketplace.catalogue import load_catalogues
from marketplace.models import AIModel, ChipType, Region, Role

from .factories import OrganisationFactory

pytest_plugins = ["tests.workers"]  # fixtures: real Celery workers (``queue``, ``workers``)


@pytest.fixture(autouse=True)
def catalogues(request):
    """Catalogues come from a data migration, but transactional tests truncate every table, so
    make sure they are there for each test that touches the database."""
    if not (set(request.fixturenames) & {"db", "transactional_db"} or request.node.get_closest_marker("django_db")):
        return
    request.getfixturevalue("_django_db_helper")
    if not Region.objects.exists():
        load_catalogues(Region=Region, ChipType=ChipType, AIModel=AIModel)


class KeyedClient(APIClient):
    """An API client that sends one organisation's API key."""

    def __init__(self, organisation, key: str):
        super().__init__()
        self.organisation = organisation
        self.key = key
        self.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")


@pytest.fixture
def client_for(db):
    def make(organisation=None, role=Role.OWNER, **org_kwargs):
        organisation = organisation or OrganisationFactory(**org_kwargs)
        _, key = services.api_key_create(organisation=organisation, name="test", role=role)
        return KeyedClient(organisation, key)

    return make


@pytest.fixture
def supplier_client(client_for):
    return client_for(is_supplier=True, is_buyer=False)


@pytest.fixture
def buyer_client(client_for):
    return client_for(is_supplier=False, is_buyer=True)
