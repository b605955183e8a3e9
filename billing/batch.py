"""The ledger, set-based: many accounts locked, many transfers posted, many wallets topped up in
a fixed number of statements, with exactly the rows ``transfer_post`` and ``wallet_top_up`` write
one by one (same idempotency ids, same legs). Used where hundreds of allocations settle at once
(``lifecycle.batch``) and where a simulated market opens two thousand wallets.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from config.errors import Conflict

from .models import Account
from .rating import exact
from .services import NEGATIVE_BY_NATURE, InsufficientFunds, account_get_or_create, accounts_lock


@dataclass
class TransferSpec:
    idempotency_id: str
    kind: str
    legs: list[tuple[int, Decimal]]  # (account id, signed amount), summing to zero
    memo: str = ""


# --- the ledger, set-based ----------------------------------------------------------------------

AccountKey = tuple[int | None, str]  # (organisation id or None for the platform, kind)


def accounts_lock_many(*, wanted: Sequence[AccountKey]) -> dict[AccountKey, tuple[int, Decimal, bool]]:
    """The accounts ``(organisation id or None, kind)``, created where missing, locked FOR UPDATE
    in primary-key order through ``accounts_lock`` (the transaction's whole set of ledger locks), as
    ``{key: (id, balance, allow_negative)}``. Call inside atomic, after every non-ledger lock."""
    keys = set(wanted)
    platform = {kind for organisation_id, kind in keys if organisation_id is None}
    orgs = [o for o, _ in keys if o is not None]
    kinds = [k for o, k in keys if o is not None]
    for kind in sorted(platform):
        account_get_or_create(organisation_id=None, kind=kind)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_account (organisation_id, kind, currency, allow_negative, balance)"
            " SELECT t.o, t.k, 'CNY', t.k = ANY(%s), 0 FROM unnest(%s::bigint[], %s::text[]) AS t(o, k)"
            " ON CONFLICT DO NOTHING", [list(NEGATIVE_BY_NATURE), orgs, kinds])
        cursor.execute(
            "SELECT a.id FROM billing_account a JOIN unnest(%s::bigint[], %s::text[]) AS t(o, k)"
            " ON a.organisation_id = t.o AND a.kind = t.k WHERE a.currency = 'CNY'"
            " UNION ALL SELECT id FROM billing_account WHERE organisation_id IS NULL AND kind = ANY(%s)"
            " AND currency = 'CNY'", [orgs, kinds, sorted(platform)])
        ids = [r[0] for r in cursor.fetchall()]
    # Through the one helper, so this transaction's set of ledger locks is recorded like any other
    # money path's: a later lock outside it raises LockOrderViolation instead of risking a deadlock.
    locked = accounts_lock(account_ids=ids)
    return {(a.organisation_id, a.kind): (a.pk, a.balance, a.allow_negative) for a in locked.values()}


def transfers_post_many(*, transfers: Sequence[TransferSpec],
                        balances: dict[int, tuple[Decimal, bool]]) -> dict[str, int]:
    """Post many balanced transfers in four statements: the set-based twin of ``transfer_post``
    for callers that hold every account's lock (``accounts_lock_many``). ``balances`` maps each
    account id to (balance, allow_negative) as locked; an account without overdraft that would go
    below zero raises InsufficientFunds and the caller's transaction rolls back (the CHECK is the
    backstop, the balanced-entries trigger checks every transfer at commit). A reused idempotency
    id is an IntegrityError. Returns {idempotency id: transfer id}."""
    if not transfers:
        return {}
    delta: dict[int, Decimal] = defaultdict(Decimal)
    for spec in transfers:
        legs = [(a, exact(x)) for a, x in spec.legs if x != 0]
        if not legs or sum(x for _, x in legs) != 0:
            raise ValueError(f"transfer {spec.idempotency_id} does not balance")
        spec.legs = legs
        for account_id, amount in legs:
            delta[account_id] += amount
    for account_id, change in delta.items():
        balance, allow_negative = balances[account_id]
        if not allow_negative and balance + change < 0:
            raise InsufficientFunds(f"Account {account_id} has {balance}, needs {-change}.")
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_transfer (idempotency_id, kind, currency, memo, created_at)"
            " SELECT t.i, t.k, 'CNY', t.m, %s FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(i, k, m)"
            " RETURNING id, idempotency_id",
            [now, [t.idempotency_id for t in transfers], [t.kind for t in transfers],
             [t.memo[:300] for t in transfers]])
        ids = {key: pk for pk, key in cursor.fetchall()}
        e_transfer, e_account, e_amount = [], [], []
        for spec in transfers:
            for account_id, amount in spec.legs:
                e_transfer.append(ids[spec.idempotency_id])
                e_account.append(account_id)
                e_amount.append(amount)
        cursor.execute("INSERT INTO billing_entry (transfer_id, account_id, amount)"
                       " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::numeric[])",
                       [e_transfer, e_account, e_amount])
        cursor.execute("UPDATE billing_account a SET balance = a.balance + t.d"
                       " FROM unnest(%s::bigint[], %s::numeric[]) AS t(id, d) WHERE a.id = t.id",
                       [list(delta), list(delta.values())])
    for account_id, change in delta.items():
        balance, allow_negative = balances[account_id]
        balances[account_id] = (balance + change, allow_negative)
    return ids


def wallets_top_up(*, top_ups: Sequence[tuple[int, Decimal, str]]) -> int:
    """``wallet_top_up`` for many (organisation id, amount, reference) at once, in one transaction:
    the same transfers (``top-up:<reference>``, external to wallet). Returns how many were posted;
    references already used for the same wallet and amount are skipped (a replay), never posted
    twice; one used for another wallet or amount is a Conflict (``idempotency_conflict``), as with
    ``wallet_top_up``."""
    if not top_ups:
        return 0
    for _, amount, _ in top_ups:
        if exact(Decimal(amount)) <= 0:
            raise ValueError("a top-up must be positive")
    wanted: dict[str, tuple[int, Decimal]] = {}
    for organisation_id, amount, reference in top_ups:
        if wanted.setdefault(reference, (organisation_id, exact(Decimal(amount)))) != (organisation_id,
                                                                                       exact(Decimal(amount))):
            raise Conflict(f"Top-up {reference} is asked twice with different amounts.", code="idempotency_conflict")
    with transaction.atomic():
        with connection.cursor() as cursor:
            # A replay posts nothing, as with ``wallet_top_up``; but a reference already used for
            # another wallet or amount is a Conflict there, so it is one here too.
            cursor.execute("SELECT t.idempotency_id, a.organisation_id, e.amount FROM billing_transfer t"
                           " JOIN billing_entry e ON e.transfer_id = t.id JOIN billing_account a ON a.id = e.account_id"
                           " WHERE t.idempotency_id = ANY(%s) AND a.kind = %s",
                           [[f"top-up:{r}" for r in wanted], Account.Kind.BUYER_WALLET])
            seen = {key.removeprefix("top-up:"): (o, amount) for key, o, amount in cursor.fetchall()}
        for reference, posted in seen.items():
            if posted != wanted[reference]:
                raise Conflict("This idempotency id was already used for a different transfer.",
                               code="idempotency_conflict")
        fresh = [(o, amount, r) for r, (o, amount) in wanted.items() if r not in seen]
        accounts = accounts_lock_many(wanted=[(None, Account.Kind.EXTERNAL)]
                                      + [(o, Account.Kind.BUYER_WALLET) for o, _, _ in fresh])
        external = accounts[(None, Account.Kind.EXTERNAL)][0]
        transfers_post_many(transfers=[
            TransferSpec(f"top-up:{reference}", "top_up",
                         [(external, -Decimal(amount)), (accounts[(o, Account.Kind.BUYER_WALLET)][0], Decimal(amount))],
                         reference) for o, amount, reference in fresh],
            balances={pk: (balance, allow) for pk, balance, allow in accounts.values()})
    return len(fresh)
