"""Ledger writes. ``transfer_post`` is the only way money moves.

One lock order for money, everywhere (settlement, holds, node failures, credits, refunds,
payouts, invoices, disputes): first every non-ledger row the path needs (node -> listing ->
order -> allocation -> listing-hours -> meter -> hold), then **every ledger account it will touch,
at once, in primary-key order, through** ``accounts_lock`` (or ``accounts_for(lock=True)``, which
calls it). A transaction that has locked accounts may later lock only accounts of that same set
(``transfer_post`` re-locks its legs through the same helper): asking for another one raises
``LockOrderViolation`` instead of risking a deadlock. A transfer's idempotency id is unique, so a
replay returns the first transfer instead of posting twice.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from config.errors import Conflict, ValidationFailed
from config.sql import decimal_array, int_array
from marketplace.hours import hour_start

from .models import Account, Entry, Hold, Transfer
from .rating import TokenPrices, commission, exact, max_cost_card_hours, max_cost_tokens

BUYER_KINDS = (Account.Kind.BUYER_WALLET, Account.Kind.BUYER_HELD)
# Money enters through EXTERNAL, sub-fen remainders flow both ways through PLATFORM_ROUNDING, and
# what a supplier owes back beyond its payable (a service credit, a reversal after a payout) is its
# SUPPLIER_RECEIVABLE (never above zero): these may go below zero; every other account may not.
# PLATFORM_CREDITS is no longer posted to: the platform never funds a service credit.
NEGATIVE_BY_NATURE = (Account.Kind.EXTERNAL, Account.Kind.PLATFORM_CREDITS, Account.Kind.PLATFORM_ROUNDING,
                      Account.Kind.SUPPLIER_RECEIVABLE)


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


class LockOrderViolation(RuntimeError):
    """A programming error: a transaction that had locked ledger accounts asked for another one.
    Find every account the path touches first and lock them together."""


def account_get_or_create(*, organisation_id: int | None, kind: str, currency: str = "CNY") -> Account:
    allow_negative = kind in NEGATIVE_BY_NATURE
    account, _ = Account.objects.get_or_create(organisation_id=organisation_id, kind=kind, currency=currency,
                                               defaults={"allow_negative": allow_negative})
    return account


def _money_transaction():
    """The atomic block a money path runs in: this connection's outermost one that a test case
    did not open (Django's TestCase wraps each test in blocks of its own)."""
    for block in connection.atomic_blocks:
        if not block._from_testcase:
            return block
    return None


def accounts_lock(*, account_ids) -> dict[int, Account]:
    """The one way a money path locks ledger accounts: FOR UPDATE, in primary-key order, all the
    accounts it will touch at once, after every non-ledger lock. Returns them with their locked
    balances. Call inside atomic. The first call in a transaction fixes its set; a later call (a
    ``transfer_post`` among them) may re-lock accounts of that set at no cost, and raises
    ``LockOrderViolation`` for any other, since locking it then could deadlock against a path
    that holds it and waits for one of ours."""
    ids = sorted(set(account_ids))
    scope = _money_transaction()
    if scope is not None:
        locked = getattr(connection, "sanduisan_ledger_locks", None)
        if locked is not None and locked[0] is scope:
            if not locked[1].issuperset(ids):
                raise LockOrderViolation(f"accounts {sorted(set(ids) - locked[1])} locked after {sorted(locked[1])}")
        else:
            connection.sanduisan_ledger_locks = (scope, frozenset(ids))
    return {a.pk: a for a in Account.objects.select_for_update().filter(pk__in=ids).order_by("pk")}


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
            accounts = accounts_lock(account_ids=[a for a, _ in legs])
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
            _balances_add(delta)
            return transfer, True
    except IntegrityError:
        existing = Transfer.objects.filter(idempotency_id=idempotency_id).first()
        if existing is None:
            raise
        return _replay(existing, legs), False


def _balances_add(delta: dict[int, Decimal]) -> None:
    """Apply balance changes to locked accounts: one statement on PostgreSQL."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("UPDATE billing_account a SET balance = a.balance + t.d"
                           " FROM unnest(%s::bigint[], %s::numeric[]) AS t(id, d) WHERE a.id = t.id",
                           [list(delta), list(delta.values())])
        return
    for account_id, change in sorted(delta.items()):
        Account.objects.filter(pk=account_id).update(balance=F("balance") + change)


def accounts_for(*, wanted: Sequence[tuple[int | None, str]], lock: bool = False) -> dict[tuple, Account]:
    """The accounts ``(organisation id or None, kind)``, created where missing, in one round trip
    when they all exist. With ``lock``, locked FOR UPDATE in primary-key order (call inside atomic)."""
    condition = Q()
    for organisation_id, kind in wanted:
        condition |= Q(organisation_id=organisation_id, kind=kind, currency="CNY")
    found = {(a.organisation_id, a.kind): a for a in Account.objects.filter(condition)}
    if len(found) < len(set(wanted)):
        for organisation_id, kind in wanted:
            if (organisation_id, kind) not in found:
                found[(organisation_id, kind)] = account_get_or_create(organisation_id=organisation_id, kind=kind)
    if lock:
        locked = accounts_lock(account_ids=[a.pk for a in found.values()])
        found = {key: locked[a.pk] for key, a in found.items()}
    return found


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


def hold_place(*, organisation_id: int, amount: Decimal, reference: str, expires_at,
               allocation_id: int | None = None) -> Hold:
    """Move ``amount`` from wallet to held. Idempotent by ``reference``; InsufficientFunds (409)
    when the available balance is short, and then nothing is held."""
    amount = exact(Decimal(amount))
    if amount <= 0:
        raise ValidationFailed.on("amount", "Must be positive.")
    existing = Hold.objects.filter(reference=reference).first()
    if existing is not None:
        return existing
    wallet = account_get_or_create(organisation_id=organisation_id, kind=Account.Kind.BUYER_WALLET)
    held = account_get_or_create(organisation_id=organisation_id, kind=Account.Kind.BUYER_HELD)
    with transaction.atomic():
        try:
            transfer_post(idempotency_id=f"hold:{reference}", kind="hold",
                          legs=[(wallet.pk, -amount), (held.pk, amount)])
        except InsufficientFunds:
            available = Account.objects.get(pk=wallet.pk).balance
            raise InsufficientFunds(f"Holding {amount} CNY needs that much available; the wallet has {available}.",
                                    extra={"needed": str(amount), "available": str(available)})
        hold, _ = Hold.objects.get_or_create(reference=reference, defaults={
            "organisation_id": organisation_id, "amount": amount, "expires_at": expires_at,
            "allocation_id": allocation_id})
        return hold


def allocation_max_cost(*, order, cards: int, hours: int) -> Decimal:
    """What an allocation of ``order`` can cost at most, which its hold reserves: the order's
    price limit for every card-hour, or its expected tokens at its per-token limits."""
    if order.kind == "tokens":
        expected = max_cost_tokens(
            max_prices=TokenPrices(order.max_price_input_hit_per_m, order.max_price_input_miss_per_m,
                                   order.max_price_output_per_m),
            expected_input=order.expected_input_tokens or 0, expected_output=order.expected_output_tokens or 0,
            cache_hit_ratio=order.expected_cache_hit_ratio or Decimal(0))
        # Never hold more than the buyer may ever be charged for the allocation.
        return expected if order.max_spend is None else min(expected, exact(order.max_spend))
    return max_cost_card_hours(max_price_per_card_hour=order.max_price_per_card_hour, cards=cards, hours=hours)


def allocation_hold_expiry(*, end_hour: int) -> datetime:
    """A safety net only: settlement closes an allocation's hold when it ends."""
    return hour_start(end_hour) + timedelta(hours=settings.SANDUISAN["HOLD_GRACE_HOURS"])


def allocation_hold_place(*, allocation, order) -> Hold | None:
    """Hold the allocation's maximum cost on the buyer's wallet. Call inside the atomic block
    that creates the allocation: InsufficientFunds (409, with the amounts) rolls it all back."""
    amount = allocation_max_cost(order=order, cards=allocation.cards, hours=allocation.end_hour - allocation.start_hour)
    if amount <= 0:
        return None
    return hold_place(organisation_id=order.organisation_id, amount=amount, reference=f"allocation:{allocation.pk}",
                      expires_at=allocation_hold_expiry(end_hour=allocation.end_hour), allocation_id=allocation.pk)


@dataclass(frozen=True)
class MatchHold:
    """The hold a new allocation needs: its buyer's maximum cost."""
    organisation_id: int
    allocation_id: int
    amount: Decimal
    expires_at: datetime


def buyer_funds_lock(*, organisation_ids) -> dict[int, Decimal]:
    """Lock the buyers' wallet and held accounts (creating missing ones) in primary-key order and
    return each buyer's available balance. Call inside atomic, after every non-ledger lock, then
    place the holds with ``match_holds_place`` in the same transaction."""
    ids = sorted(set(organisation_ids))
    existing = set(Account.objects.filter(organisation_id__in=ids, currency="CNY", kind__in=BUYER_KINDS)
                   .values_list("organisation_id", "kind"))
    Account.objects.bulk_create([Account(organisation_id=o, kind=k) for o in ids for k in BUYER_KINDS
                                 if (o, k) not in existing], ignore_conflicts=True)
    locked = accounts_lock(account_ids=Account.objects.filter(organisation_id__in=ids, currency="CNY",
                                                              kind__in=BUYER_KINDS).values_list("pk", flat=True))
    return {a.organisation_id: a.balance for a in locked.values() if a.kind == Account.Kind.BUYER_WALLET}


def match_holds_place(*, holds: Sequence[MatchHold], batch_reference: str) -> None:
    """Place many allocation holds in a few set-based statements (a round may create tens of
    thousands): one ledger transfer per buyer for the batch (``hold:<batch_reference>:<buyer>``,
    wallet to held), and one Hold row per allocation. Call inside the atomic block that called
    ``buyer_funds_lock`` for these buyers, having checked each buyer's funds against that result;
    the no-overdraft CHECK is the backstop."""
    if not holds:
        return
    # Everything computed before the first query: a caller in pipeline mode (a round) has its
    # writes still running meanwhile.
    per_buyer: dict[int, Decimal] = defaultdict(Decimal)
    for hold in holds:
        per_buyer[hold.organisation_id] += exact(hold.amount)
    buyers = sorted(per_buyer)
    now = timezone.now()
    # Array literals (``config.sql``): tens of thousands of holds adapted value by value would
    # cost more than the statements. Expiries repeat (one per end hour), so each is formatted once.
    expiry: dict[datetime, str] = {}
    for hold in holds:
        if hold.expires_at not in expiry:
            expiry[hold.expires_at] = hold.expires_at.isoformat()
    hold_columns = [int_array([h.organisation_id for h in holds]), int_array([h.allocation_id for h in holds]),
                    decimal_array([exact(h.amount) for h in holds]),
                    "{" + ",".join(f'"{expiry[h.expires_at]}"' for h in holds) + "}"]
    accounts = {(o, k): pk for pk, o, k in Account.objects.filter(
        organisation_id__in=buyers, currency="CNY", kind__in=BUYER_KINDS).values_list("pk", "organisation_id", "kind")}
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_transfer (idempotency_id, kind, currency, memo, created_at)"
            " SELECT %s || t.b, 'hold', 'CNY', %s, %s FROM unnest(%s::bigint[]) AS t(b) RETURNING id, idempotency_id",
            [f"hold:{batch_reference}:", f"holds of {batch_reference}"[:300], now, int_array(buyers)])
        transfer_of = {key: pk for pk, key in cursor.fetchall()}
        entry_transfer, entry_account, entry_amount = [], [], []
        for buyer in buyers:
            transfer_id = transfer_of[f"hold:{batch_reference}:{buyer}"]
            entry_transfer += [transfer_id, transfer_id]
            entry_account += [accounts[(buyer, Account.Kind.BUYER_WALLET)], accounts[(buyer, Account.Kind.BUYER_HELD)]]
            entry_amount += [-per_buyer[buyer], per_buyer[buyer]]
        cursor.execute("INSERT INTO billing_entry (transfer_id, account_id, amount)"
                       " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::numeric[])",
                       [int_array(entry_transfer), int_array(entry_account), decimal_array(entry_amount)])
        cursor.execute("UPDATE billing_account a SET balance = a.balance + t.d FROM unnest(%s::bigint[], %s::numeric[])"
                       " AS t(id, d) WHERE a.id = t.id", [int_array(entry_account), decimal_array(entry_amount)])
        cursor.execute(
            "INSERT INTO billing_hold (organisation_id, reference, allocation_id, amount, posted_amount, status,"
            " expires_at, created_at, updated_at) SELECT t.o, 'allocation:' || t.a, t.a, t.m, 0, 'pending', t.e, %s,"
            " %s FROM unnest(%s::bigint[], %s::bigint[], %s::numeric[], %s::timestamptz[]) AS t(o, a, m, e)",
            [now, now, *hold_columns])


def charge_accounts(*, buyer_id: int, supplier_id: int) -> dict[str, tuple[int | None, str]]:
    """The accounts a charge (or its reversal) may move money between, by name."""
    return {"wallet": (buyer_id, Account.Kind.BUYER_WALLET), "held": (buyer_id, Account.Kind.BUYER_HELD),
            "payable": (supplier_id, Account.Kind.SUPPLIER_PAYABLE),
            "receivable": (supplier_id, Account.Kind.SUPPLIER_RECEIVABLE),
            "commission": (None, Account.Kind.PLATFORM_COMMISSION)}


def charge_accounts_lock(*, buyer_id: int, supplier_id: int) -> dict[str, Account]:
    """The accounts a charge moves money between (``charge_accounts``), created where missing and
    locked in primary-key order. Call inside atomic, after every non-ledger lock."""
    names = charge_accounts(buyer_id=buyer_id, supplier_id=supplier_id)
    accounts = accounts_for(wanted=list(names.values()), lock=True)
    return {name: accounts[key] for name, key in names.items()}


def supplier_give_back_legs(*, accounts: dict[str, Account], share: Decimal) -> list[tuple[int, Decimal]]:
    """The supplier's legs for giving ``share`` back (a refund, a charge reversed): from its
    payable while that holds it, the rest into its receivable, repaid from its next earnings.
    ``accounts`` as ``charge_accounts_lock`` returns them, locked."""
    from_payable = min(share, max(Decimal(0), accounts["payable"].balance))
    return [(accounts["payable"].pk, -from_payable), (accounts["receivable"].pk, -(share - from_payable))]


def hold_capture_locked(*, hold: Hold | None, accounts: dict[str, Account], amount: Decimal, fee: Decimal,
                        idempotency_id: str, memo: str = "") -> Transfer:
    """One charge as one transfer: ``amount`` from the pending hold first, the rest from the
    buyer's available balance, to the supplier less ``fee`` to the platform. What the supplier
    owes (its receivable) is repaid from its share first. Call inside atomic with the hold locked
    and ``accounts`` from ``charge_accounts_lock`` (their balances as locked)."""
    on_hold = Decimal(0)
    if hold is not None and hold.status == Hold.Status.PENDING:
        on_hold = min(amount, hold.amount - hold.posted_amount)
    repay = min(amount - fee, max(Decimal(0), -accounts["receivable"].balance))
    transfer, _ = transfer_post(idempotency_id=idempotency_id, kind="settle", memo=memo, legs=[
        (accounts["held"].pk, -on_hold), (accounts["wallet"].pk, -(amount - on_hold)),
        (accounts["payable"].pk, amount - fee - repay), (accounts["receivable"].pk, repay),
        (accounts["commission"].pk, fee)])
    if on_hold:
        hold.posted_amount += on_hold
        hold.save(update_fields=["posted_amount", "updated_at"])
    return transfer


def hold_release_locked(*, hold: Hold) -> Hold:
    """Return what is left on a pending hold to the buyer's wallet and close it: ``posted`` if
    anything was captured, else ``voided``. Call inside atomic with the hold locked; a closed hold
    is returned unchanged."""
    if hold.status != Hold.Status.PENDING:
        return hold
    rest = hold.amount - hold.posted_amount
    if rest:
        accounts = accounts_for(wanted=[(hold.organisation_id, kind) for kind in BUYER_KINDS])
        held = accounts[(hold.organisation_id, Account.Kind.BUYER_HELD)]
        wallet = accounts[(hold.organisation_id, Account.Kind.BUYER_WALLET)]
        transfer_post(idempotency_id=f"hold-release:{hold.reference}", kind="release",
                      legs=[(held.pk, -rest), (wallet.pk, rest)])
    hold.status = Hold.Status.POSTED if hold.posted_amount else Hold.Status.VOIDED
    hold.save(update_fields=["status", "updated_at"])
    return hold


def hold_post(*, hold_id: int, amount: Decimal, supplier_id: int, commission_rate: Decimal) -> Hold:
    """Settle a pending hold in one step: ``amount`` (at most the hold) goes to the supplier less
    the platform's commission; the rest returns to the buyer's wallet. Locks the hold, then accounts."""
    amount = exact(Decimal(amount))
    with transaction.atomic():
        hold = Hold.objects.select_for_update().get(pk=hold_id)
        if hold.status == Hold.Status.POSTED and hold.posted_amount == amount:
            return hold  # a retried settlement
        if hold.status != Hold.Status.PENDING:
            raise Conflict(f"The hold is {hold.status}.", code="hold_not_pending")
        if not Decimal(0) <= amount <= hold.amount - hold.posted_amount:
            raise ValidationFailed.on("amount", f"Must be between 0 and the held {hold.amount - hold.posted_amount}.")
        accounts = charge_accounts_lock(buyer_id=hold.organisation_id, supplier_id=supplier_id)
        if amount:
            hold_capture_locked(hold=hold, accounts=accounts, amount=amount,
                                fee=commission(amount=amount, rate=commission_rate),
                                idempotency_id=f"hold-post:{hold.reference}")
        if hold.posted_amount == 0:
            # Posting nothing is still a settlement: close the hold as posted, not voided.
            hold_release_locked(hold=hold)
            hold.status = Hold.Status.POSTED
            hold.save(update_fields=["status", "updated_at"])
            return hold
        return hold_release_locked(hold=hold)


def hold_void(*, hold_id: int) -> Hold:
    """Release a pending hold in full. Voiding a voided hold is a no-op; a hold that has captured
    anything cannot be voided (release it instead)."""
    with transaction.atomic():
        hold = Hold.objects.select_for_update().get(pk=hold_id)
        if hold.status == Hold.Status.VOIDED:
            return hold
        if hold.status != Hold.Status.PENDING or hold.posted_amount:
            raise Conflict(f"The hold is {hold.status}.", code="hold_not_pending")
        return hold_release_locked(hold=hold)
