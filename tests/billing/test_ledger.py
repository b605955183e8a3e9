"""The ledger on the real PostgreSQL: balanced in the database, no overdraft, idempotent, race-safe."""
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum

from billing import services
from billing.models import Account, Entry, Transfer

from tests.concurrency import race
from tests.factories import OrganisationFactory


def _accounts():
    org = OrganisationFactory(funds=0)
    external = services.account_get_or_create(organisation_id=None, kind=Account.Kind.EXTERNAL)
    wallet = services.account_get_or_create(organisation_id=org.pk, kind=Account.Kind.BUYER_WALLET)
    held = services.account_get_or_create(organisation_id=org.pk, kind=Account.Kind.BUYER_HELD)
    return external, wallet, held


def _assert_books_balance():
    assert Entry.objects.aggregate(s=Sum("amount"))["s"] in (None, 0)
    for account in Account.objects.all():
        total = account.entries.aggregate(s=Sum("amount"))["s"] or 0
        assert account.balance == total, account
        assert account.allow_negative or account.balance >= 0


@pytest.mark.django_db
def test_top_up_then_hold_and_replay():
    external, wallet, held = _accounts()
    services.transfer_post(idempotency_id="topup-1", kind="top_up", legs=[(external.pk, -100), (wallet.pk, 100)])
    transfer, created = services.transfer_post(idempotency_id="hold-1", kind="hold",
                                               legs=[(wallet.pk, Decimal("-34.5")), (held.pk, Decimal("34.5"))])
    again, created_again = services.transfer_post(idempotency_id="hold-1", kind="hold",
                                                  legs=[(wallet.pk, Decimal("-34.5")), (held.pk, Decimal("34.5"))])
    assert created and not created_again and again.pk == transfer.pk
    wallet.refresh_from_db()
    assert wallet.balance == Decimal("65.5")
    with pytest.raises(services.Conflict):
        services.transfer_post(idempotency_id="hold-1", kind="hold", legs=[(wallet.pk, -1), (held.pk, 1)])
    _assert_books_balance()


@pytest.mark.django_db
def test_overdraft_and_unbalanced_requests_are_refused():
    external, wallet, held = _accounts()
    with pytest.raises(services.InsufficientFunds):
        services.transfer_post(idempotency_id="h", kind="hold", legs=[(wallet.pk, -1), (held.pk, 1)])
    with pytest.raises(services.ValidationFailed):
        services.transfer_post(idempotency_id="u", kind="x", legs=[(wallet.pk, 1), (held.pk, 2)])
    assert not Transfer.objects.exists()


@pytest.mark.django_db
def test_the_database_itself_refuses_an_unbalanced_transfer_and_an_overdraft():
    external, wallet, held = _accounts()
    transfer = Transfer.objects.create(idempotency_id="raw", kind="raw")
    with pytest.raises(IntegrityError, match="does not balance"), transaction.atomic():
        Entry.objects.create(transfer=transfer, account=wallet, amount=Decimal("5"))
        with connection.cursor() as cursor:  # run the deferred check now instead of at commit
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    with pytest.raises(IntegrityError), transaction.atomic():
        Account.objects.filter(pk=wallet.pk).update(balance=Decimal("-1"))


@pytest.mark.django_db(transaction=True)
def test_racing_spends_and_duplicate_deliveries_never_overdraw_or_double_post():
    external, wallet, held = _accounts()
    services.transfer_post(idempotency_id="topup", kind="top_up", legs=[(external.pk, -50), (wallet.pk, 50)])
    # 8 distinct holds of 10 (only 5 fit) and 8 deliveries of one duplicated event, all at once
    outcomes = race([lambda key=(f"hold-{i}" if i < 8 else "event-dup"): services.transfer_post(
        idempotency_id=key, kind="hold", legs=[(wallet.pk, -10), (held.pk, 10)]) for i in range(16)])
    assert all(isinstance(o, (tuple, services.InsufficientFunds)) for o in outcomes), outcomes
    results = [o[1] if isinstance(o, tuple) else "insufficient" for o in outcomes]
    wallet.refresh_from_db()
    posted = Transfer.objects.filter(kind="hold").count()
    assert posted == 5 and wallet.balance == 0  # exactly what the money allowed
    assert Transfer.objects.filter(idempotency_id="event-dup").count() <= 1
    assert results.count(True) == 5
    _assert_books_balance()


@pytest.mark.django_db
def test_a_transaction_that_locked_accounts_may_not_lock_another_later():
    # given a money transaction that locked the wallet and held accounts together
    external, wallet, held = _accounts()
    services.transfer_post(idempotency_id="topup", kind="top_up", legs=[(external.pk, -50), (wallet.pk, 50)])
    with transaction.atomic():
        services.accounts_lock(account_ids=[held.pk, wallet.pk])
        # when it moves money between them, that is fine (they are re-locked at no cost) ...
        services.transfer_post(idempotency_id="hold", kind="hold", legs=[(wallet.pk, -10), (held.pk, 10)])
        # ... but touching an account it did not lock up front is refused before any lock is taken
        with pytest.raises(services.LockOrderViolation, match=rf"\[{external.pk}\] locked after"):
            services.transfer_post(idempotency_id="late", kind="top_up", legs=[(external.pk, -5), (wallet.pk, 5)])
    # then only the transfers of the one lock set were posted; the next transaction starts afresh
    assert sorted(Transfer.objects.values_list("idempotency_id", flat=True)) == ["hold", "topup"]
    services.transfer_post(idempotency_id="later", kind="top_up", legs=[(external.pk, -5), (wallet.pk, 5)])
