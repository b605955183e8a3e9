"""Ledger writes. ``transfer_post`` is the only way money moves.

Locks accounts in primary-key order (so concurrent transfers never deadlock); a transfer's
idempotency id is unique, so a replay returns the first transfer instead of posting twice.
"""
from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F

from config.errors import Conflict, ValidationFailed

from .models import Account, Entry, Transfer
from .rating import exact


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


def account_get_or_create(*, organisation_id: int | None, kind: str, currency: str = "CNY") -> Account:
    allow_negative = kind == Account.Kind.EXTERNAL
    account, _ = Account.objects.get_or_create(organisation_id=organisation_id, kind=kind, currency=currency,
                                               defaults={"allow_negative": allow_negative})
    return account


def transfer_post(*, idempotency_id: str, kind: str, legs: Sequence[tuple[int, Decimal]], memo: str = "",
                  currency: str = "CNY") -> tuple[Transfer, bool]:
    """Post ``legs`` (account id, signed amount) as one balanced transfer. Returns (transfer,
    created). The same idempotency id with the same legs returns the original; with different
    legs it is a Conflict. An account without overdraft that would go negative raises
    InsufficientFunds and nothing is posted."""
    legs = [(int(a), exact(Decimal(x))) for a, x in legs if Decimal(x) != 0]
    if not legs or sum(x for _, x in legs) != 0:
        raise ValidationFailed.on("legs", "A transfer needs entries that sum to zero.")
    existing = Transfer.objects.filter(idempotency_id=idempotency_id).first()
    if existing is not None:
        return _replay(existing, legs), False
    try:
        with transaction.atomic():
            accounts = {a.pk: a for a in Account.objects.select_for_update().filter(
                pk__in=sorted({a for a, _ in legs})).order_by("pk")}
            if len(accounts) != len({a for a, _ in legs}) or any(a.currency != currency for a in accounts.values()):
                raise ValidationFailed.on("legs", "Unknown account or currency mismatch.")
            delta: dict[int, Decimal] = {}
            for account_id, amount in legs:
                delta[account_id] = delta.get(account_id, Decimal(0)) + amount
            for account_id, change in delta.items():
                account = accounts[account_id]
                if not account.allow_negative and account.balance + change < 0:
                    raise InsufficientFunds(f"Account {account} has {account.balance}, needs {-change}.")
            transfer = Transfer.objects.create(idempotency_id=idempotency_id, kind=kind, currency=currency, memo=memo)
            Entry.objects.bulk_create([Entry(transfer=transfer, account_id=a, amount=x) for a, x in legs])
            for account_id, change in sorted(delta.items()):
                Account.objects.filter(pk=account_id).update(balance=F("balance") + change)
            return transfer, True
    except IntegrityError:
        existing = Transfer.objects.filter(idempotency_id=idempotency_id).first()
        if existing is None:
            raise
        return _replay(existing, legs), False


def _replay(transfer: Transfer, legs) -> Transfer:
    posted = sorted((e.account_id, e.amount) for e in transfer.entries.all())
    if posted != sorted(legs):
        raise Conflict("This idempotency id was already used for a different transfer.", code="idempotency_conflict")
    return transfer
