"""A hold's organisation is checked by triggers once per statement (migration 0012) instead of
by a foreign key once per row: it exists, and it cannot be deleted or changed under the hold."""
import pytest
from django.db import IntegrityError, connection, transaction

from billing.models import Hold
from tests.billing.helpers import card_hour_allocation
from tests.factories import OrganisationFactory

pytestmark = pytest.mark.django_db


def insert_holds(*, organisation_ids: list[int], reference: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO billing_hold (organisation_id, reference, allocation_id, amount, posted_amount,"
                       " status, expires_at, created_at, updated_at)"
                       " SELECT o, %s || ordinality, NULL, 1, 0, 'pending', now(), now(), now()"
                       " FROM unnest(%s::bigint[]) WITH ORDINALITY AS o", [reference, organisation_ids])


def test_a_holds_organisation_exists_and_stays(supplier_client, buyer_client):
    # given a matched allocation, whose round held its buyer's money, and another organisation
    allocation = card_hour_allocation(supplier_client.organisation, buyer_client)
    hold = Hold.objects.get(allocation=allocation)
    assert hold.organisation_id == buyer_client.organisation.pk
    stranger = OrganisationFactory(funds=0)

    # when one statement writes holds of an existing and of a missing organisation, then it is refused
    with pytest.raises(IntegrityError, match="existing organisation"), transaction.atomic():
        insert_holds(organisation_ids=[stranger.pk, 10**12], reference="x:missing:")
    # when the hold's organisation would change, then that is refused
    with pytest.raises(IntegrityError, match="keeps its organisation and allocation"), transaction.atomic():
        Hold.objects.filter(pk=hold.pk).update(organisation_id=stranger.pk)
    # when an organisation holding money is deleted behind the ORM's back, then that is refused
    with pytest.raises(IntegrityError, match="with holds cannot be deleted"), transaction.atomic(), \
            connection.cursor() as cursor:
        cursor.execute("DELETE FROM marketplace_organisation WHERE id = %s", [buyer_client.organisation.pk])

    # and holds of existing organisations are accepted; the round's hold is as it was
    insert_holds(organisation_ids=[stranger.pk, stranger.pk], reference="x:own:")
    assert Hold.objects.filter(organisation=stranger).count() == 2
    assert Hold.objects.get(pk=hold.pk).organisation_id == buyer_client.organisation.pk
