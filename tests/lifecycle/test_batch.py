"""The set-based lifecycle (``lifecycle.batch``) against the one-by-one services it mirrors.

Each scenario runs twice side by side: one allocation through the per-allocation service
(``allocation_settle``, ``allocation_stop``), a twin (same price, cards and times, another
supplier and buyer in the same state) through the batch path; the two leave the same ledger
behind, account kind by account kind: the same transfers and legs, the same charges, the same
holds. Both suppliers owe money (a receivable, as after a credit paid once their payable had been
paid out), which a charge repays before anything becomes payable again."""
from collections import Counter
from itertools import count
from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import Max

from billing import settlement
from billing.batch import accounts_lock_many
from billing.models import Account, Charge, Hold, Transfer, UsageEvent
from billing.services import LockOrderViolation, account_get_or_create, accounts_lock, transfer_post
from lifecycle import batch, services as lifecycle
from marketplace.models import Allocation, Listing

from tests.billing.helpers import (assert_books_balance, balance, card_hour_allocation, minutes_into,
                                   token_allocation, usage_event_body)

pytestmark = pytest.mark.django_db

OWED = Decimal("50")
_DEBTS = count()


def _supplier_owes(supplier_id: int, amount: Decimal) -> None:
    """Given state: the supplier owes ``amount`` (its receivable), as after a credit it paid
    when its payable had already been paid out."""
    receivable = account_get_or_create(organisation_id=supplier_id, kind=Account.Kind.SUPPLIER_RECEIVABLE)
    external = account_get_or_create(organisation_id=None, kind=Account.Kind.EXTERNAL)
    transfer_post(idempotency_id=f"test-owes:{supplier_id}:{next(_DEBTS)}", kind="test",
                  legs=[(receivable.pk, -amount), (external.pk, amount)])


def _ledger_of(allocation: Allocation) -> dict:
    """Everything the allocation left in the ledger, with account ids replaced by (party, kind)
    and the allocation's (and its last usage event's) own id taken out of transfer ids, so that twins
    compare equal."""
    allocation = Allocation.objects.select_related("order").get(pk=allocation.pk)
    parties = {allocation.order.organisation_id: "buyer", allocation.supplier_id: "supplier", None: "platform"}
    transfers = Transfer.objects.filter(idempotency_id__contains=f"allocation:{allocation.pk}:").prefetch_related(
        "entries__account")
    last_event = UsageEvent.objects.filter(allocation=allocation).aggregate(m=Max("id"))["m"]
    legs = Counter()
    for transfer in transfers:
        key = transfer.idempotency_id.replace(f"allocation:{allocation.pk}:", "allocation:*:")
        if last_event is not None:
            key = key.replace(f"events-to:{last_event}", "events-to:<last event>")
        for entry in transfer.entries.all():
            legs[(key, transfer.kind, parties[entry.account.organisation_id], entry.account.kind)] += entry.amount
    charges = sorted((c.kind, c.quantity, c.unit_price, c.amount, c.commission, c.usage_from, c.usage_to)
                     for c in Charge.objects.filter(allocation=allocation))
    hold = Hold.objects.get(allocation=allocation)
    accounts = {(name, kind): balance(org, kind) for org, name in parties.items() if org is not None
                for kind in ("buyer_wallet", "buyer_held", "supplier_payable", "supplier_receivable")}
    return {"legs": dict(legs), "charges": charges, "hold": (hold.amount, hold.posted_amount, hold.status),
            "accounts": accounts, "status": allocation.status}


def _twins(client_for, **kwargs) -> tuple[Allocation, Allocation]:
    """Two identical card-hour allocations of two suppliers that each owe ``OWED``."""
    twins = []
    for _ in range(2):
        supplier = client_for(is_supplier=True, is_buyer=False).organisation
        twins.append(card_hour_allocation(supplier, client_for(is_supplier=False, is_buyer=True), **kwargs))
        _supplier_owes(supplier.pk, OWED)
    assert twins[0].price_per_card_hour == twins[1].price_per_card_hour
    return twins[0], twins[1]


def _heartbeats(allocation: Allocation, *, until: int, start: int = 5) -> None:
    supplier = allocation.supplier
    for minute in range(start, until + 1, 5):
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk,
                                       now=minutes_into(allocation, minute))


def test_card_hours_settled_and_closed_in_batch_repay_the_receivable_exactly_as_one_by_one(client_for):
    # given two twin 1-hour allocations (8 cards at 11.25) whose suppliers each owe 50
    single, batched = _twins(client_for, cards=8, hours=1, bid="12.5", ask="10")
    # when both start together (set-based) and run, the sweep settles at minute 30 (the one by
    # itself first, then the batch sweep for the twin) and their hours run out at minute 60
    assert sorted(batch.allocations_start(allocation_ids=[single.pk, batched.pk],
                                          now=minutes_into(single, 0))) == sorted([single.pk, batched.pk])
    for allocation in (single, batched):
        _heartbeats(allocation, until=30)
    settlement.allocation_settle(allocation_id=single.pk, now=minutes_into(single, 30))
    batch.settle_due_batched(now=minutes_into(batched, 30))
    for allocation in (single, batched):
        _heartbeats(allocation, start=35, until=60)
    lifecycle.allocation_stop(organisation=None, allocation_id=single.pk, now=minutes_into(single, 60))
    assert batch.allocations_close_due_batched(now=minutes_into(batched, 60)) == 1
    # then the batch left exactly the ledger the per-allocation services left ...
    one, other = _ledger_of(single), _ledger_of(batched)
    assert one == other
    # ... in which the supplier's share (90 less 8%) repaid the 50 it owed before any became payable
    assert other["status"] == "completed" and other["hold"][1:] == (Decimal("90"), "posted")
    assert other["accounts"][("supplier", "supplier_receivable")] == 0
    assert other["accounts"][("supplier", "supplier_payable")] == Decimal("82.8") - OWED
    assert any(kind == "supplier_receivable" for (_, _, _, kind) in other["legs"])
    assert_books_balance()


def test_a_receivable_larger_than_the_share_takes_all_of_it_in_batch(client_for):
    # given a twin pair whose suppliers owe more than one hour earns
    single, batched = _twins(client_for, cards=8, hours=1, bid="12.5", ask="10")
    for allocation in (single, batched):
        _supplier_owes(allocation.supplier_id, Decimal("100"))  # 150 owed in all
    batch.allocations_start(allocation_ids=[single.pk, batched.pk], now=minutes_into(single, 0))
    for allocation in (single, batched):
        _heartbeats(allocation, until=60)
    # when the one closes by itself and the other in the batch
    lifecycle.allocation_stop(organisation=None, allocation_id=single.pk, now=minutes_into(single, 60))
    batch.allocations_close_due_batched(now=minutes_into(batched, 60))
    # then the whole share (82.8) repays the debt; nothing is payable
    one, other = _ledger_of(single), _ledger_of(batched)
    assert one == other
    assert other["accounts"][("supplier", "supplier_receivable")] == Decimal("82.8") - 150
    assert other["accounts"][("supplier", "supplier_payable")] == 0
    assert_books_balance()


def test_token_usage_settled_in_batch_repays_the_receivable_exactly_as_one_by_one(client_for):
    # given two twin token allocations whose suppliers each owe 50, with the same usage events
    twins = []
    for _ in range(2):
        supplier = client_for(is_supplier=True, is_buyer=False)
        allocation = token_allocation(supplier.organisation, client_for(is_supplier=False, is_buyer=True))
        assert allocation.supplier_id == supplier.organisation.pk
        # its endpoint sells no more, so the twin's round matches the twin's supplier
        Listing.objects.filter(organisation=supplier.organisation).update(status=Listing.Status.WITHDRAWN)
        _supplier_owes(supplier.organisation.pk, OWED)
        for n in range(3):
            response = supplier.post("/api/v1/usage-events", usage_event_body(allocation, f"e-{n}"), format="json")
            assert response.status_code in (200, 201), response.content
        twins.append(allocation)
    single, batched = twins
    # when the one is settled by itself and the sweep settles the other set-based
    settlement.allocation_settle(allocation_id=single.pk)
    assert batch.token_usage_settle(allocation_ids=[batched.pk]) == []
    # then both leave the same ledger, the receivable repaid first
    one, other = _ledger_of(single), _ledger_of(batched)
    assert one == other
    share = sum(c[3] - c[4] for c in other["charges"])
    assert share > 0
    assert other["accounts"][("supplier", "supplier_receivable")] == min(Decimal(0), share - OWED)
    assert other["accounts"][("supplier", "supplier_payable")] == max(Decimal(0), share - OWED)
    assert_books_balance()


def test_the_batch_lock_of_accounts_is_the_transactions_whole_set(client_for):
    # given two accounts, the batch helper having locked only the first in this transaction
    buyer = client_for(is_supplier=False, is_buyer=True).organisation
    other = account_get_or_create(organisation_id=buyer.pk, kind=Account.Kind.BUYER_HELD)
    with transaction.atomic():
        accounts_lock_many(wanted=[(buyer.pk, Account.Kind.BUYER_WALLET)])
        # when the same transaction then locks an account outside that set
        # then that is refused, as after any other money path's lock (no deadlock risked)
        with pytest.raises(LockOrderViolation):
            accounts_lock(account_ids=[other.pk])


def test_two_charges_of_one_supplier_in_one_batch_repay_its_debt_once(client_for):
    # given a supplier owing 50 with two running 1-hour allocations (8 cards at 11.25 each)
    supplier = client_for(is_supplier=True, is_buyer=False).organisation
    first = card_hour_allocation(supplier, client_for(is_supplier=False, is_buyer=True), cards=8, hours=1,
                                 bid="12.5", ask="10")
    second = card_hour_allocation(supplier, client_for(is_supplier=False, is_buyer=True), cards=8, hours=1,
                                  bid="12.5", ask="10")
    _supplier_owes(supplier.pk, OWED)
    batch.allocations_start(allocation_ids=[first.pk, second.pk], now=minutes_into(first, 0))
    for allocation in (first, second):
        _heartbeats(allocation, until=60)
    # when both close in the same batch
    assert batch.allocations_close_due_batched(now=minutes_into(first, 60)) == 2
    # then the first charge (in allocation order) repays the 50, the second is all payable
    assert balance(supplier.pk, "supplier_receivable") == 0
    assert balance(supplier.pk, "supplier_payable") == 2 * Decimal("82.8") - OWED
    repaid = [_ledger_of(a)["legs"].get(("settle:allocation:*:minutes:60", "settle", "supplier",
                                          "supplier_receivable"), 0) for a in sorted((first, second),
                                                                                   key=lambda a: a.pk)]
    assert repaid == [OWED, 0]
    # ... both in the batch itself (one statement, one timestamp), not left to the one-by-one
    # fallback (where a receivable pushed above zero would have been caught by its CHECK)
    stamps = set(Transfer.objects.filter(idempotency_id__in=[f"settle:allocation:{a.pk}:minutes:60"
                                                              for a in (first, second)])
                 .values_list("created_at", flat=True))
    assert len(stamps) == 1
    assert_books_balance()
