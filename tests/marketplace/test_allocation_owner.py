"""An allocation's supplier is checked by triggers once per statement (migration 0013) instead
of by a foreign key once per row: it exists, it cannot be deleted or changed under the
allocation, and a delete racing a new allocation waits for it and then fails."""
import psycopg
import pytest
from django.db import IntegrityError, connection, transaction

from marketplace.models import Allocation, Organisation
from tests.billing.helpers import card_hour_allocation
from tests.factories import OrganisationFactory

COLUMNS = ("order_id, supplier_id, kind, status, start_hour, end_hour, cards, price_per_card_hour, price_rule,"
           " round_id, created_at, updated_at")


def insert_allocation(cursor, *, order_id: int, supplier_ids: list[int]) -> None:
    """Released (not live) allocation rows written in one statement, as a faulty writer would."""
    cursor.execute(f"INSERT INTO marketplace_allocation ({COLUMNS}) SELECT %s, s, 'card_hours', 'released',"
                   " 1, 2, 1, 1, '', '', now(), now() FROM unnest(%s::bigint[]) AS s", [order_id, supplier_ids])


def refused(statement, params=()) -> str:
    with pytest.raises(IntegrityError) as caught, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)
    return str(caught.value)


@pytest.mark.django_db
def test_a_supplier_must_exist_and_stays_as_long_as_its_allocations(supplier_client, buyer_client):
    # given a matched allocation and another organisation
    allocation = card_hour_allocation(supplier_client.organisation, buyer_client)
    elsewhere = OrganisationFactory(funds=0)

    # when one statement writes allocations of an existing and of a missing supplier, then it is refused
    with pytest.raises(IntegrityError, match="supplier must be an existing organisation"), transaction.atomic(), \
            connection.cursor() as cursor:
        insert_allocation(cursor, order_id=allocation.order_id, supplier_ids=[elsewhere.pk, 10**12])
    # when the supplier would change, or the supplier organisation be deleted or renumbered
    # behind the ORM's back, then each is refused, naming the rule
    assert "keeps its order and supplier" in refused(
        "UPDATE marketplace_allocation SET supplier_id = %s WHERE id = %s", [elsewhere.pk, allocation.pk])
    assert "supplied allocations cannot be deleted" in refused(
        "DELETE FROM marketplace_organisation WHERE id = %s", [supplier_client.organisation.pk])
    assert "keeps its id" in refused(
        "UPDATE marketplace_organisation SET id = %s WHERE id = %s", [10**12, supplier_client.organisation.pk])

    # and allocations of existing suppliers pass, as do updates that keep the supplier
    with connection.cursor() as cursor:
        insert_allocation(cursor, order_id=allocation.order_id, supplier_ids=[elsewhere.pk, elsewhere.pk])
    Allocation.objects.filter(pk=allocation.pk).update(status="released", supplier_id=supplier_client.organisation.pk)
    assert Allocation.objects.filter(supplier=elsewhere).count() == 2
    assert Allocation.objects.get(pk=allocation.pk).supplier_id == supplier_client.organisation.pk


@pytest.mark.django_db(transaction=True)
def test_a_delete_racing_a_new_allocation_waits_for_it_then_fails(supplier_client, buyer_client):
    # given an organisation referenced by nothing, and an allocation's order to hang a row on
    allocation = card_hour_allocation(supplier_client.organisation, buyer_client)
    lonely = OrganisationFactory(funds=0, is_buyer=False)
    dsn = connection.get_connection_params()
    with psycopg.connect(**dsn) as writer, psycopg.connect(**dsn) as deleter:
        # when one connection writes an allocation supplied by it and has not committed yet
        insert_allocation(writer.cursor(), order_id=allocation.order_id, supplier_ids=[lonely.pk])
        # then another cannot delete the organisation meanwhile: the trigger holds its key lock
        deleter.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            deleter.execute("DELETE FROM marketplace_organisation WHERE id = %s", [lonely.pk])
        deleter.rollback()
        # and once the allocation commits, the delete is refused rather than leaving it dangling
        writer.commit()
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="supplied allocations"):
            deleter.execute("DELETE FROM marketplace_organisation WHERE id = %s", [lonely.pk])


@pytest.mark.django_db(transaction=True)
def test_a_delete_whose_snapshot_could_miss_a_new_allocation_is_refused(supplier_client, buyer_client):
    # given a REPEATABLE READ transaction that took its snapshot before an allocation of a new
    # supplier committed (its snapshot will never see that allocation)
    allocation = card_hour_allocation(supplier_client.organisation, buyer_client)
    lonely = OrganisationFactory(funds=0, is_buyer=False)
    dsn = connection.get_connection_params()
    with psycopg.connect(**dsn) as deleter, psycopg.connect(**dsn, autocommit=True) as writer:
        deleter.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        deleter.execute("SELECT 1")
        insert_allocation(writer.cursor(), order_id=allocation.order_id, supplier_ids=[lonely.pk])
        # when it deletes the supplier, then that is refused: no check on its snapshot would be sound
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="READ COMMITTED only"):
            deleter.execute("DELETE FROM marketplace_organisation WHERE id = %s", [lonely.pk])
        deleter.rollback()
    # and the allocation still names an organisation that exists
    assert Allocation.objects.filter(supplier_id=lonely.pk).exists()
    assert Organisation.objects.filter(pk=lonely.pk).exists()
