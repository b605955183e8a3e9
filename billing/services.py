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


# --- wallets and holds ----------------------------------------------------------------------

def wallet_top_up(*, organisation_id: int, amount: Decimal, reference: str) -> Transfer:
    """Credit a buyer's wallet from outside (admin credit today; a payment provider's confirmed
    payment later, through this same function). Idempotent by ``reference``."""
    amount = exact(Decimal(amount))
    if amount <= 0:
        raise ValidationFailed.on("amount", "Must be positive.")
    external = account_get_or_create(organisation_id=None, kind=Account.Kind.EXTERNAL)
    wallet = account_get_or_create(organisation_id=organisation_id, kind=Account.Kind.BUYER_WALLET)
    transfer, _ = transfer_post(idempotency_id=f"top-up:{reference}", kind="top_up",
                                legs=[(external.pk, -amount), (wallet.pk, amount)], memo=reference[:300])
    return transfer


def hold_place(*, organisation_id: int, amount: Decimal, reference: str, expires_at) -> "Hold":
    """Move ``amount`` from wallet to held. Idempotent by ``reference``; InsufficientFunds (409)
    when the available balance is short, and then nothing is held."""
    from .models import Hold

    amount = exact(Decimal(amount))
    if amount <= 0:
        raise ValidationFailed.on("amount", "Must be positive.")
    existing = Hold.objects.filter(reference=reference).first()
    if existing is not None:
        return existing
    wallet = account_get_or_create(organisation_id=organisation_id, kind=Account.Kind.BUYER_WALLET)
    held = account_get_or_create(organisation_id=organisation_id, kind=Account.Kind.BUYER_HELD)
    with transaction.atomic():
        transfer_post(idempotency_id=f"hold:{reference}", kind="hold", legs=[(wallet.pk, -amount), (held.pk, amount)])
        hold, _ = Hold.objects.get_or_create(reference=reference, defaults={
            "organisation_id": organisation_id, "amount": amount, "expires_at": expires_at})
        return hold


def hold_post(*, hold_id: int, amount: Decimal, supplier_id: int, commission_rate: Decimal) -> "Hold":
    """Settle a pending hold: ``amount`` (at most the hold) goes to the supplier less the
    platform's commission; the rest returns to the buyer's wallet. Locks the hold, then accounts."""
    from .models import Hold
    from .rating import commission

    amount = exact(Decimal(amount))
    with transaction.atomic():
        hold = Hold.objects.select_for_update().get(pk=hold_id)
        if hold.status == Hold.Status.POSTED and hold.posted_amount == amount:
            return hold  # a retried settlement
        if hold.status != Hold.Status.PENDING:
            raise Conflict(f"The hold is {hold.status}.", code="hold_not_pending")
        if not Decimal(0) <= amount <= hold.amount:
            raise ValidationFailed.on("amount", f"Must be between 0 and the held {hold.amount}.")
        held = account_get_or_create(organisation_id=hold.organisation_id, kind=Account.Kind.BUYER_HELD)
        wallet = account_get_or_create(organisation_id=hold.organisation_id, kind=Account.Kind.BUYER_WALLET)
        payable = account_get_or_create(organisation_id=supplier_id, kind=Account.Kind.SUPPLIER_PAYABLE)
        platform = account_get_or_create(organisation_id=None, kind=Account.Kind.PLATFORM_COMMISSION)
        fee = commission(amount=amount, rate=commission_rate)
        transfer_post(idempotency_id=f"hold-post:{hold.reference}", kind="settle", legs=[
            (held.pk, -hold.amount), (payable.pk, amount - fee), (platform.pk, fee), (wallet.pk, hold.amount - amount)])
        hold.status, hold.posted_amount = Hold.Status.POSTED, amount
        hold.save(update_fields=["status", "posted_amount", "updated_at"])
        return hold


def hold_void(*, hold_id: int) -> "Hold":
    """Release a pending hold in full. Voiding a voided hold is a no-op."""
    from .models import Hold

    with transaction.atomic():
        hold = Hold.objects.select_for_update().get(pk=hold_id)
        if hold.status == Hold.Status.VOIDED:
            return hold
        if hold.status != Hold.Status.PENDING:
            raise Conflict(f"The hold is {hold.status}.", code="hold_not_pending")
        held = account_get_or_create(organisation_id=hold.organisation_id, kind=Account.Kind.BUYER_HELD)
        wallet = account_get_or_create(organisation_id=hold.organisation_id, kind=Account.Kind.BUYER_WALLET)
        transfer_post(idempotency_id=f"hold-void:{hold.reference}", kind="release",
                      legs=[(held.pk, -hold.amount), (wallet.pk, hold.amount)])
        hold.status = Hold.Status.VOIDED
        hold.save(update_fields=["status", "updated_at"])
        return hold


def holds_expire(*, now=None) -> int:
    """Void every pending hold past its expiry. Idempotent; returns how many it voided."""
    from django.utils import timezone

    from .models import Hold

    now = now or timezone.now()
    voided = 0
    for pk in Hold.objects.filter(status=Hold.Status.PENDING, expires_at__lte=now).order_by("pk").values_list(
            "pk", flat=True):
        try:
            hold_void(hold_id=pk)
            voided += 1
        except Conflict:
            continue  # settled meanwhile
    return voided
