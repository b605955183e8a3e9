import pytest

from .helpers import token_allocation as make_token_allocation


@pytest.fixture
def token_allocation(supplier_client, buyer_client):
    """A token allocation of the ``buyer_client`` on an endpoint of the ``supplier_client``."""
    return make_token_allocation(supplier_client.organisation, buyer_client)
