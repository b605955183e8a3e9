"""Set-based card-hour lifecycle: start, close and settle many allocations in a fixed number of
statements.

The per-allocation services (``lifecycle.services``, ``billing.settlement``) take a transaction
and a dozen statements each (about 25 ms); a market that starts and ends hundreds of allocations
an hour spends its time there. These functions do the same work for a whole set and leave the
same state behind: the same ledger transfers (same idempotency ids, same legs), charges, meter and
hold states and statuses. Anything off the common path (a no-show, a token allocation, a reversal
after a failure, usage beyond the hold, a missing hold) is left to the per-allocation service,
which they call after their own transaction commits.

Lock order as everywhere: orders, then allocations, meters and holds (each by id), then every
ledger account involved at once, in primary-key order, through ``billing.services.accounts_lock``
(so the transaction's set of ledger locks is recorded). A charge repays what the supplier owes
(its receivable) from its share first, as ``hold_capture_locked`` does, charge by charge in
allocation order.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing.batch import TransferSpec, accounts_lock_many, transfers_post_many
from billing.models import Account, Charge, Hold, UsageEvent
from billing.rating import TokenPrices, commission, rate_card_minutes, rate_tokens
from billing.services import BUYER_KINDS
from billing.settlement import ENDED, SIX, allocation_settle, commission_rate, heartbeat_grace, sweep_item
from marketplace.hours import current_hour_index, hour_start
from marketplace.models import Allocation

from .services import allocation_stop


@dataclass
class _Row:
    """One allocation with its meter and hold, as locked."""
    pk: int
    order_id: int
    buyer_id: int
    supplier_id: int
    start_hour: int
    end_hour: int
    cards: int
    price: Decimal
    started_at: datetime
    last_heartbeat_at: datetime | None
    stopped_at: datetime | None
    accumulated: int
    billed_minutes: int
    billed_amount: Decimal
    hold_id: int | None = None
    hold_reference: str = ""
    hold_amount: Decimal = Decimal(0)
    hold_posted: Decimal = Decimal(0)
    hold_pending: bool = False


def _receivable_repay(owed: dict[int, Decimal], account_id: int, share: Decimal) -> Decimal:
    """What of a supplier's ``share`` repays its receivable first, as ``hold_capture_locked`` does
    one charge at a time: ``owed`` maps receivable account ids to their running balance (never
    above zero) and is brought forward, so the charges of one batch repay in allocation order."""
    repay = min(share, max(Decimal(0), -owed[account_id]))
    owed[account_id] += repay
    return repay


# --- starting -----------------------------------------------------------------------------------

def allocations_start(*, allocation_ids: Sequence[int], now: datetime | None = None) -> list[int]:
    """Start many confirmed card-hour allocations at once, as their suppliers would one by one
    with ``allocation_start`` (billing runs from ``now``, or the first hour if early). Allocations
    that cannot start now (another status, outside their hours) are left alone. Returns the ids
    started. Locks orders, then allocations, then meters."""
    now = now or timezone.now()
    grace = heartbeat_grace()
    real_now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT order_id FROM marketplace_allocation WHERE id = ANY(%s) AND kind = 'card_hours'"
                       " AND status = 'confirmed'", [list(allocation_ids)])
        order_ids = sorted({r[0] for r in cursor.fetchall()})
        if not order_ids:
            return []
        cursor.execute("SELECT id FROM marketplace_order WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [order_ids])
        cursor.execute("SELECT id, order_id, start_hour, end_hour FROM marketplace_allocation WHERE id = ANY(%s)"
                       " AND kind = 'card_hours' AND status = 'confirmed' ORDER BY id FOR UPDATE",
                       [list(allocation_ids)])
        started, starts, orders = [], [], set()
        for pk, order_id, start_hour, end_hour in cursor.fetchall():
            start, end = hour_start(start_hour), hour_start(end_hour)
            if start - grace <= now < end:
                started.append(pk)
                starts.append(max(now, start))
                orders.add(order_id)
        if not started:
            return []
        cursor.execute(
            "INSERT INTO billing_allocationmeter AS m (allocation_id, started_at, last_heartbeat_at,"
            " accumulated_seconds, billed_minutes, billed_amount, updated_at)"
            " SELECT t.a, t.s, t.s, 0, 0, 0, %s FROM unnest(%s::bigint[], %s::timestamptz[]) AS t(a, s)"
            " ON CONFLICT (allocation_id) DO UPDATE SET started_at = EXCLUDED.started_at,"
            " last_heartbeat_at = EXCLUDED.started_at, updated_at = EXCLUDED.updated_at",
            [real_now, started, starts])
        cursor.execute("UPDATE marketplace_allocation SET status = 'running', updated_at = %s WHERE id = ANY(%s)",
                       [real_now, started])
        cursor.execute("UPDATE marketplace_order SET status = 'running', updated_at = %s WHERE id = ANY(%s)",
                       [real_now, sorted(orders)])
    return started


# --- closing and settling ------------------------------------------------------------------------

def allocations_close_due_batched(*, now: datetime | None = None) -> int:
    """``settlement.allocations_close_due``, set-based: every running card-hour allocation whose
    hours have run out is stopped at its end, completed and settled, and its hold closed, in one
    transaction; the rest (no-shows, token allocations, anything unusual) go through
    ``allocation_stop`` one by one. Idempotent. Returns how many closed."""
    now = now or timezone.now()
    hour = current_hour_index(now)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.id, a.kind = 'card_hours' AND a.status = 'running' AND m.started_at IS NOT NULL"
            " AND m.stopped_at IS NULL FROM marketplace_allocation a"
            " LEFT JOIN billing_allocationmeter m ON m.allocation_id = a.id"
            " WHERE a.status IN ('confirmed', 'running') AND a.end_hour <= %s ORDER BY a.id", [hour])
        due = cursor.fetchall()
    batch = [pk for pk, easy in due if easy]
    rest = [pk for pk, easy in due if not easy]
    closed = 0
    try:
        closed = _close_batch(batch, now, rest) if batch else 0
    except IntegrityError:  # a transfer id already used (a clock that went back): one by one instead
        rest = sorted(set(rest) | set(batch))
    for pk in sorted(rest):
        with sweep_item("close allocation", pk):
            allocation_stop(organisation=None, allocation_id=pk, now=now)
            closed += 1
    return closed


def _close_batch(batch: list[int], now: datetime, rest: list[int]) -> int:
    """Close ``batch`` in one transaction; what cannot close here is appended to ``rest``."""
    closed = 0
    if batch:
        with transaction.atomic():
            rows = _lock_rows(batch, running_only=True)
            for row in rows:
                _meter_stop(row, now)
            done, left = _settle_rows(rows, now=now, final=True)
            real_now = timezone.now()
            with connection.cursor() as cursor:
                _meters_save(cursor, [r for r in rows if r.pk in done], real_now, stopped=True)
                cursor.execute("UPDATE marketplace_allocation SET status = 'completed', updated_at = %s"
                               " WHERE id = ANY(%s)", [real_now, sorted(done)])
                cursor.execute(
                    "UPDATE marketplace_order o SET status = 'completed', updated_at = %s WHERE o.id = ANY(%s)"
                    " AND NOT EXISTS (SELECT 1 FROM marketplace_allocation a WHERE a.order_id = o.id"
                    " AND a.status = ANY(%s))",
                    [real_now, sorted({r.order_id for r in rows if r.pk in done}), list(Allocation.ACTIVE)])
            closed += len(done)
            rest.extend(left)
    return closed


def settle_due_batched(*, now: datetime | None = None) -> int:
    """``settlement.settle_due``, with running card-hour allocations settled set-based (what they
    metered so far is charged from their holds in one transaction); token usage and ended
    allocations with open holds go through ``allocation_settle`` one by one. Returns how many
    allocations it settled."""
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT a.id FROM marketplace_allocation a JOIN billing_allocationmeter m"
                       " ON m.allocation_id = a.id WHERE a.status = 'running' AND a.kind = 'card_hours'"
                       " AND m.started_at IS NOT NULL ORDER BY a.id")
        running = [r[0] for r in cursor.fetchall()]
    left: list[int] = []
    if running:
        try:
            with transaction.atomic():
                rows = _lock_rows(running, running_only=True)
                done, left = _settle_rows(rows, now=now, final=False)
                with connection.cursor() as cursor:
                    _meters_save(cursor, [r for r in rows if r.pk in done], timezone.now(), stopped=False)
        except IntegrityError:  # a transfer id already used (a clock that went back): one by one instead
            left = list(running)
    for pk in left:
        with sweep_item("settle allocation", pk):
            allocation_settle(allocation_id=pk, now=now)
    # Token usage set-based; what that leaves, and ended allocations whose hold is open, one by one.
    tokens = set(UsageEvent.objects.filter(settled=False).values_list("allocation_id", flat=True).distinct())
    try:
        rest = set(token_usage_settle(allocation_ids=sorted(tokens)))
    except IntegrityError:  # a transfer id already used: one by one instead
        rest = set(tokens)
    ids = rest | set(Hold.objects.filter(status=Hold.Status.PENDING, allocation__status__in=ENDED)
                     .values_list("allocation_id", flat=True))
    for pk in sorted(ids - set(left)):
        with sweep_item("settle allocation", pk):
            allocation_settle(allocation_id=pk, now=now)
    return len(running) + len(tokens | ids)


def _orders_lock(cursor, allocation_ids: Sequence[int]) -> dict[int, int]:
    """Lock the allocations' orders (first, as every writer does); returns order id -> buyer id."""
    cursor.execute("SELECT DISTINCT order_id FROM marketplace_allocation WHERE id = ANY(%s)", [list(allocation_ids)])
    order_ids = sorted(r[0] for r in cursor.fetchall())
    cursor.execute("SELECT id, organisation_id FROM marketplace_order WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                   [order_ids])
    return dict(cursor.fetchall())


def _lock_rows(allocation_ids: list[int], *, running_only: bool) -> list[_Row]:
    """Lock the allocations' orders, the allocations, their meters and holds (that order)."""
    with connection.cursor() as cursor:
        buyer = _orders_lock(cursor, allocation_ids)
        cursor.execute(
            "SELECT id, order_id, supplier_id, start_hour, end_hour, cards, price_per_card_hour, status"
            " FROM marketplace_allocation WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [allocation_ids])
        allocations = [r for r in cursor.fetchall() if r[7] == Allocation.Status.RUNNING or not running_only]
        ids = [r[0] for r in allocations]
        cursor.execute(
            "SELECT allocation_id, started_at, last_heartbeat_at, stopped_at, accumulated_seconds, billed_minutes,"
            " billed_amount FROM billing_allocationmeter WHERE allocation_id = ANY(%s) ORDER BY id FOR UPDATE", [ids])
        meters = {r[0]: r[1:] for r in cursor.fetchall()}
        cursor.execute("SELECT allocation_id, id, reference, amount, posted_amount, status FROM billing_hold"
                       " WHERE allocation_id = ANY(%s) ORDER BY id FOR UPDATE", [ids])
        holds = {r[0]: r[1:] for r in cursor.fetchall()}
    rows = []
    for pk, order_id, supplier_id, start_hour, end_hour, cards, price, _ in allocations:
        meter = meters.get(pk)
        if meter is None or meter[0] is None:
            continue
        row = _Row(pk, order_id, buyer[order_id], supplier_id, start_hour, end_hour, cards, price, *meter)
        if pk in holds:
            row.hold_id, row.hold_reference, row.hold_amount, row.hold_posted, status = holds[pk]
            row.hold_pending = status == Hold.Status.PENDING
        rows.append(row)
    return rows


def _meter_stop(row: _Row, now: datetime) -> None:
    """``settlement._meter_advance`` then the stop, on a running allocation's meter."""
    service_end = hour_start(row.end_hour)
    mark = row.last_heartbeat_at or row.started_at
    end = min(now, service_end, mark + heartbeat_grace())
    row.accumulated += max(0, int((end - mark).total_seconds()))
    row.last_heartbeat_at = max(mark, min(now, service_end))
    row.stopped_at = max(row.started_at, min(now, service_end))


def _metered_seconds(row: _Row, now: datetime) -> int:
    """``settlement.metered_seconds`` for a running allocation (no failure cut its window)."""
    service_end = hour_start(row.end_hour)
    seconds = row.accumulated
    if row.stopped_at is None:
        mark = row.last_heartbeat_at or row.started_at
        seconds += max(0, int((min(now, mark + heartbeat_grace(), service_end) - mark).total_seconds()))
    return max(0, min(seconds, int((service_end - row.started_at).total_seconds())))


def _settle_rows(rows: list[_Row], *, now: datetime, final: bool) -> tuple[set[int], list[int]]:
    """Charge each row's metered minutes from its hold, as ``allocation_settle`` would, and with
    ``final`` close the holds. Returns (ids settled here, ids left for the per-allocation path:
    a reversal, a charge beyond the hold, a hold that is missing or closed)."""
    rate = commission_rate()
    done: set[int] = set()
    left: list[int] = []
    charges = []
    wanted = {(None, Account.Kind.PLATFORM_COMMISSION)}
    for row in rows:
        minutes = _metered_seconds(row, now) // 60
        if minutes < row.billed_minutes or row.hold_id is None or not row.hold_pending:
            left.append(row.pk)
            continue
        total = rate_card_minutes(price_per_card_hour=row.price, cards=row.cards, minutes=minutes)
        amount = total - row.billed_amount
        if amount > row.hold_amount - row.hold_posted:
            left.append(row.pk)
            continue
        done.add(row.pk)
        wanted |= {(row.buyer_id, k) for k in BUYER_KINDS} | _supplier_keys(row.supplier_id)
        if minutes > row.billed_minutes:
            charges.append((row, minutes, total, amount, commission(amount=amount, rate=rate)))
    if not done:
        return done, left
    accounts = accounts_lock_many(wanted=list(wanted))
    balances = {pk: (balance, allow) for pk, balance, allow in accounts.values()}
    fee_account = accounts[(None, Account.Kind.PLATFORM_COMMISSION)][0]
    owed = {pk: balance for pk, (balance, _) in balances.items()}
    specs, releases = [], []
    for row, minutes, total, amount, fee in charges:
        receivable = accounts[(row.supplier_id, Account.Kind.SUPPLIER_RECEIVABLE)][0]
        repay = _receivable_repay(owed, receivable, amount - fee)
        specs.append(TransferSpec(
            f"settle:allocation:{row.pk}:minutes:{minutes}", "settle",
            [(accounts[(row.buyer_id, Account.Kind.BUYER_HELD)][0], -amount),
             (accounts[(row.supplier_id, Account.Kind.SUPPLIER_PAYABLE)][0], amount - fee - repay),
             (receivable, repay), (fee_account, fee)],
            f"allocation {row.pk}: {minutes} minutes x {row.cards} cards"))
        row.hold_posted += amount
    if final:
        for row in rows:
            if row.pk in done:
                rest = row.hold_amount - row.hold_posted
                if rest:
                    releases.append(TransferSpec(f"hold-release:{row.hold_reference}", "release", [
                        (accounts[(row.buyer_id, Account.Kind.BUYER_HELD)][0], -rest),
                        (accounts[(row.buyer_id, Account.Kind.BUYER_WALLET)][0], rest)]))
    ids = transfers_post_many(transfers=specs + releases, balances=balances)
    real_now = timezone.now()
    with connection.cursor() as cursor:
        if charges:
            cursor.execute(
                "INSERT INTO billing_charge (buyer_id, supplier_id, order_id, allocation_id, kind, quantity,"
                " unit_price, amount, commission, usage_from, usage_to, transfer_id, memo, created_at)"
                " SELECT t.b, t.s, t.o, t.a, 'card_hours', t.q, t.p, t.m, t.f, t.uf, t.ut, t.t, '', %s"
                " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::numeric[], %s::numeric[],"
                " %s::numeric[], %s::numeric[], %s::timestamptz[], %s::timestamptz[], %s::bigint[])"
                " AS t(b, s, o, a, q, p, m, f, uf, ut, t)",
                [real_now, [c[0].buyer_id for c in charges], [c[0].supplier_id for c in charges],
                 [c[0].order_id for c in charges], [c[0].pk for c in charges],
                 [(Decimal(c[0].cards * (c[1] - c[0].billed_minutes)) / 60).quantize(SIX) for c in charges],
                 [c[0].price for c in charges], [c[3] for c in charges], [c[4] for c in charges],
                 [c[0].started_at + timedelta(minutes=c[0].billed_minutes) for c in charges],
                 [c[0].started_at + timedelta(minutes=c[1]) for c in charges],
                 [ids[s.idempotency_id] for s in specs]])
            for row, minutes, total, _, _ in charges:
                row.billed_minutes, row.billed_amount = minutes, total
        held = [r for r in rows if r.pk in done]
        cursor.execute(
            "UPDATE billing_hold h SET posted_amount = t.p, status = t.s, updated_at = %s"
            " FROM unnest(%s::bigint[], %s::numeric[], %s::text[]) AS t(id, p, s) WHERE h.id = t.id",
            [real_now, [r.hold_id for r in held], [r.hold_posted for r in held],
             [(Hold.Status.POSTED if r.hold_posted else Hold.Status.VOIDED) if final else Hold.Status.PENDING
              for r in held]])
    return done, left


def _supplier_keys(supplier_id: int) -> set[tuple[int, str]]:
    """A supplier's accounts a charge touches: its payable, and its receivable repaid first."""
    return {(supplier_id, Account.Kind.SUPPLIER_PAYABLE), (supplier_id, Account.Kind.SUPPLIER_RECEIVABLE)}


def _meters_save(cursor, rows: list[_Row], real_now: datetime, *, stopped: bool) -> None:
    if not rows:
        return
    cursor.execute(
        "UPDATE billing_allocationmeter m SET accumulated_seconds = t.acc, last_heartbeat_at = t.hb,"
        " stopped_at = CASE WHEN %s THEN t.st ELSE m.stopped_at END, billed_minutes = t.bm, billed_amount = t.ba,"
        " updated_at = %s FROM unnest(%s::bigint[], %s::int[], %s::timestamptz[], %s::timestamptz[], %s::int[],"
        " %s::numeric[]) AS t(a, acc, hb, st, bm, ba) WHERE m.allocation_id = t.a",
        [stopped, real_now, [r.pk for r in rows], [r.accumulated for r in rows], [r.last_heartbeat_at for r in rows],
         [r.stopped_at for r in rows], [r.billed_minutes for r in rows], [r.billed_amount for r in rows]])


def token_usage_settle(*, allocation_ids: Sequence[int]) -> list[int]:
    """``allocation_settle`` for token allocations' unsettled usage, set-based: each allocation's
    events charged as one transfer (``settle:allocation:<id>:events-to:<last event>``, from the
    hold first, then the wallet) with one charge per usage kind, in one transaction. Holds are not
    closed here. Returns the ids left for the per-allocation service: usage the buyer's funds do
    not cover, events with no tokens, or anything else off the common path."""
    if not allocation_ids:
        return []
    rate = commission_rate()
    with transaction.atomic(), connection.cursor() as cursor:
        buyer = _orders_lock(cursor, allocation_ids)
        cursor.execute(
            "SELECT id, order_id, supplier_id, price_input_hit_per_m, price_input_miss_per_m, price_output_per_m"
            " FROM marketplace_allocation WHERE id = ANY(%s) AND kind = 'tokens' ORDER BY id FOR UPDATE",
            [list(allocation_ids)])
        allocations = {r[0]: r for r in cursor.fetchall()}
        cursor.execute("SELECT allocation_id, id, amount, posted_amount, status FROM billing_hold"
                       " WHERE allocation_id = ANY(%s) ORDER BY id FOR UPDATE", [list(allocations)])
        holds = {r[0]: r[1:] for r in cursor.fetchall()}
        cursor.execute(
            "SELECT allocation_id, count(*), max(id), sum(input_hit_tokens), sum(input_miss_tokens),"
            " sum(output_tokens), sum(amount), min(occurred_at), max(occurred_at) FROM billing_usageevent"
            " WHERE allocation_id = ANY(%s) AND NOT settled GROUP BY allocation_id", [list(allocations)])
        usage = {r[0]: r[1:] for r in cursor.fetchall()}
        wanted = {(None, Account.Kind.PLATFORM_COMMISSION)}
        for pk, (_, order_id, supplier_id, *_prices) in allocations.items():
            wanted |= {(buyer[order_id], k) for k in BUYER_KINDS} | _supplier_keys(supplier_id)
        accounts = accounts_lock_many(wanted=list(wanted))
        balances = {pk: (balance, allow) for pk, balance, allow in accounts.values()}
        owed = {pk: balance for pk, (balance, _) in balances.items()}
        fee_account = accounts[(None, Account.Kind.PLATFORM_COMMISSION)][0]
        left = [pk for pk in allocation_ids if pk not in allocations]
        specs, charges, settled, hold_posted = [], [], [], []
        for pk in sorted(usage):
            _, order_id, supplier_id, hit_price, miss_price, out_price = allocations[pk]
            n, last, hit, miss, out, amount, first, latest = usage[pk]
            b = buyer[order_id]
            prices = TokenPrices(hit_price, miss_price, out_price)
            charge = rate_tokens(prices=prices, input_hit=hit, input_miss=miss, output=out)
            hold = holds.get(pk)
            on_hold = min(amount, hold[1] - hold[2]) if hold and hold[3] == Hold.Status.PENDING else Decimal(0)
            wallet = accounts[(b, Account.Kind.BUYER_WALLET)][0]
            if charge.total != amount or amount <= 0 or amount - on_hold > balances[wallet][0]:
                left.append(pk)
                continue
            parts = [(Charge.Kind.INPUT_HIT, hit, hit_price, charge.input_hit),
                     (Charge.Kind.INPUT_MISS, miss, miss_price, charge.input_miss),
                     (Charge.Kind.OUTPUT, out, out_price, charge.output)]
            fees = {kind: commission(amount=value, rate=rate) for kind, _, _, value in parts}
            fee = sum(fees.values())
            key = f"settle:allocation:{pk}:events-to:{last}"
            receivable = accounts[(supplier_id, Account.Kind.SUPPLIER_RECEIVABLE)][0]
            repay = _receivable_repay(owed, receivable, amount - fee)
            specs.append(TransferSpec(key, "settle", [
                (accounts[(b, Account.Kind.BUYER_HELD)][0], -on_hold), (wallet, -(amount - on_hold)),
                (accounts[(supplier_id, Account.Kind.SUPPLIER_PAYABLE)][0], amount - fee - repay),
                (receivable, repay), (fee_account, fee)],
                f"allocation {pk}: {n} usage events"))
            balances[wallet] = (balances[wallet][0] - (amount - on_hold), balances[wallet][1])
            charges += [(b, supplier_id, order_id, pk, kind, Decimal(tokens), price, value, fees[kind], first, latest,
                         key) for kind, tokens, price, value in parts if value]
            settled.append((pk, last, key))
            if on_hold:
                hold_posted.append((hold[0], on_hold))
        # the wallets' debits above were checked against the locked balances; restore them for the post
        balances = {pk: (balance, allow) for pk, balance, allow in accounts.values()}
        ids = transfers_post_many(transfers=specs, balances=balances)
        real_now = timezone.now()
        if charges:
            cursor.execute(
                "INSERT INTO billing_charge (buyer_id, supplier_id, order_id, allocation_id, kind, quantity,"
                " unit_price, amount, commission, usage_from, usage_to, transfer_id, memo, created_at)"
                " SELECT t.b, t.s, t.o, t.a, t.k, t.q, t.p, t.m, t.f, t.uf, t.ut, t.t, '', %s"
                " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[], %s::numeric[],"
                " %s::numeric[], %s::numeric[], %s::numeric[], %s::timestamptz[], %s::timestamptz[], %s::bigint[])"
                " AS t(b, s, o, a, k, q, p, m, f, uf, ut, t)",
                [real_now, *[list(column) for column in zip(*charges)][:11], [ids[c[11]] for c in charges]])
        if settled:
            cursor.execute(
                "UPDATE billing_usageevent e SET settled = true, settled_transfer_id = t.tr"
                " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS t(a, last, tr)"
                " WHERE e.allocation_id = t.a AND NOT e.settled AND e.id <= t.last",
                [[s[0] for s in settled], [s[1] for s in settled], [ids[s[2]] for s in settled]])
        if hold_posted:
            cursor.execute("UPDATE billing_hold h SET posted_amount = h.posted_amount + t.p, updated_at = %s"
                           " FROM unnest(%s::bigint[], %s::numeric[]) AS t(id, p) WHERE h.id = t.id",
                           [real_now, [h[0] for h in hold_posted], [h[1] for h in hold_posted]])
    return left
