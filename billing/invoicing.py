"""Invoices (buyers), statements (suppliers), payouts and refunds.

An invoice or statement covers ``[period_start, period_end)`` and takes every charge not yet on
one whose usage ended by ``period_end``. A charge whose usage ended before ``period_start``
arrived late (after its own period was issued) and is listed as an adjustment. Issued documents
are final: PostgreSQL refuses to change them (migration 0006).

Rounding: the exact total is floored to the fen (``rating.to_fen``); on an invoice the remainder
goes back to the buyer's wallet from the platform's rounding account, on a payout it stays with
the platform. Statements only report; payouts move the supplier's money.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from config.errors import Conflict, NotFound, ValidationFailed
from marketplace.hours import hour_index
from marketplace.models import ListingHour, Organisation

from .models import Account, Charge, Dispute, Invoice, InvoiceLine, Transfer
from .rating import exact, to_fen
from .services import (account_get_or_create, accounts_lock, charge_accounts_lock, supplier_give_back_legs,
                       transfer_post)
from .settlement import sweep_item

KIND_LABEL = {Charge.Kind.CARD_HOURS: "card-hours", Charge.Kind.INPUT_HIT: "input tokens (cache hit)",
              Charge.Kind.INPUT_MISS: "input tokens (cache miss)", Charge.Kind.OUTPUT: "output tokens",
              Charge.Kind.SERVICE_CREDIT: "service credit", Charge.Kind.REFUND: "refund"}


def _lock_organisation_documents(organisation_id: int, kind: str) -> None:
    """Serialise issuing for one organisation and kind (an advisory lock, so no row lock order
    is involved); released at commit."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [zlib.crc32(f"billing:{kind}".encode()) & 0x7FFFFFFF,
                                                               organisation_id])


def invoice_issue(*, organisation_id: int, kind: str = Invoice.Kind.INVOICE, period_end: datetime | None = None,
                  now: datetime | None = None) -> Invoice:
    """Issue the next invoice (buyer) or statement (supplier) of an organisation, final at once.

    The period starts where the previous one of that kind ended (or at the organisation's
    creation) and ends at ``period_end`` (default: now). Idempotent for a period: asking again
    for the same ``period_end`` returns the document already issued."""
    now = now or timezone.now()
    period_end = period_end or now
    if kind not in Invoice.Kind.values:
        raise ValidationFailed.on("kind", f"One of {', '.join(Invoice.Kind.values)}.")
    if period_end > now:
        raise ValidationFailed.on("period_end", "Cannot invoice the future.")
    with transaction.atomic():
        if connection.vendor == "postgresql":
            _lock_organisation_documents(organisation_id, kind)
        organisation = Organisation.objects.filter(pk=organisation_id).first()
        if organisation is None:
            raise NotFound("No such organisation.")
        previous = Invoice.objects.filter(organisation_id=organisation_id, kind=kind).order_by("-period_end").first()
        if previous is not None and previous.period_end == period_end:
            return previous
        period_start = previous.period_end if previous else organisation.created_at
        if period_end <= period_start:
            raise ValidationFailed.on("period_end", f"Must be after the previous period's end, {period_start}.")
        if kind == Invoice.Kind.INVOICE:
            charges = Charge.objects.filter(buyer_id=organisation_id, invoice__isnull=True)
        else:
            charges = Charge.objects.filter(supplier_id=organisation_id, statement__isnull=True)
        charges = list(charges.filter(usage_to__lte=period_end).select_for_update().order_by("pk"))
        _key_share_orders([c.order_id for c in charges])
        # Usage that ended inside an already issued period arrived late: an adjustment.
        lines = _lines(charges, late_before=previous.period_end if previous else None)
        gross = sum((line.amount for line in lines), Decimal(0))
        fee = sum((line.commission for line in lines), Decimal(0))
        exact_total = gross if kind == Invoice.Kind.INVOICE else gross - fee
        total, rounding = to_fen(exact_total)
        sequence = Invoice.objects.filter(organisation_id=organisation_id, kind=kind).count() + 1
        prefix = "INV" if kind == Invoice.Kind.INVOICE else "STM"
        invoice = Invoice.objects.create(
            organisation_id=organisation_id, kind=kind, number=f"{prefix}-{organisation_id}-{sequence:05d}",
            period_start=period_start, period_end=period_end, subtotal=gross, commission=fee, total=total,
            rounding=rounding,
            figures={**(_statement_figures(organisation, period_start, period_end)
                        if kind == Invoice.Kind.STATEMENT else {}), **_dispute_figures(organisation_id, kind)})
        for line in lines:
            line.invoice = invoice
        InvoiceLine.objects.bulk_create(lines)
        field = "invoice" if kind == Invoice.Kind.INVOICE else "statement"
        Charge.objects.filter(pk__in=[c.pk for c in charges]).update(**{field: invoice})
        if kind == Invoice.Kind.INVOICE and rounding:
            platform = account_get_or_create(organisation_id=None, kind=Account.Kind.PLATFORM_ROUNDING)
            wallet = account_get_or_create(organisation_id=organisation_id, kind=Account.Kind.BUYER_WALLET)
            transfer_post(idempotency_id=f"invoice-rounding:{invoice.number}", kind="rounding",
                          legs=[(platform.pk, -rounding), (wallet.pk, rounding)],
                          memo=f"{invoice.number}: total floored to the fen")
        return invoice


def _lines(charges: list[Charge], *, late_before: datetime | None) -> list[InvoiceLine]:
    groups: dict[tuple, list[Charge]] = defaultdict(list)
    for charge in charges:
        late = late_before is not None and charge.usage_to <= late_before
        groups[(charge.order_id, charge.kind, late)].append(charge)
    lines = []
    for (order_id, kind, adjustment), group in sorted(groups.items(), key=lambda g: (g[0][0] or 0, g[0][1], g[0][2])):
        quantity = sum((c.quantity for c in group), Decimal(0))
        unit = "card-hours" if kind == Charge.Kind.CARD_HOURS else "tokens"
        what = f"order {order_id}: {KIND_LABEL[kind]}" if order_id else KIND_LABEL[kind]
        if kind not in (Charge.Kind.SERVICE_CREDIT, Charge.Kind.REFUND):
            what += f", {quantity.normalize():f} {unit}"
        if adjustment:
            what += " (late usage from an earlier period)"
        lines.append(InvoiceLine(order_id=order_id, kind=kind, adjustment=adjustment, quantity=quantity,
                                 amount=sum((c.amount for c in group), Decimal(0)),
                                 commission=sum((c.commission for c in group), Decimal(0)), description=what[:300]))
    return lines


def _statement_figures(organisation: Organisation, start: datetime, end: datetime) -> dict:
    """The supplier's two measures over the period: card-hours racked (listed for sale) and lit
    (sold and delivered), and their ratio; plus its reliability."""
    first, last = hour_index(start.replace(minute=0, second=0, microsecond=0)), hour_index(
        end.replace(minute=0, second=0, microsecond=0))
    hours = ListingHour.objects.filter(listing__organisation=organisation, hour__gte=first, hour__lt=last)
    listed = hours.aggregate(n=Sum("cards_offered"))["n"] or 0
    lit = Charge.objects.filter(supplier=organisation, kind=Charge.Kind.CARD_HOURS, usage_to__gt=start,
                                usage_to__lte=end).aggregate(n=Sum("quantity"))["n"] or Decimal(0)
    return {"listed_card_hours": listed, "delivered_card_hours": str(lit),
            "utilisation": str((lit / listed).quantize(Decimal("0.0001"))) if listed else None,
            "reliability": str(organisation.reliability)}


def _dispute_figures(organisation_id: int, kind: str) -> dict:
    """Open disputes when the document was issued: on an invoice, what the buyer contests; on a
    statement, the supplier's share withheld from its payouts until they are resolved."""
    if kind == Invoice.Kind.STATEMENT:
        return {"withheld_for_disputes": str(disputes_withheld(supplier_id=organisation_id))}
    disputed = Dispute.objects.filter(buyer_id=organisation_id, status__in=Dispute.WITHHOLDING).aggregate(
        s=Sum("amount"))["s"] or Decimal(0)
    return {"disputed": str(disputed)}


def _key_share_orders(order_ids, *, allocation_ids=()) -> None:
    """Take FOR KEY SHARE on the orders (then allocations) the rows about to be written refer to,
    in id order, before any ledger account is locked. Their foreign keys are checked at commit,
    and that check must not queue behind a settlement that holds the order and waits for an
    account this transaction holds."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM marketplace_order WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE",
                       [sorted({pk for pk in order_ids if pk})])
        cursor.execute("SELECT id FROM marketplace_allocation WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE",
                       [sorted({pk for pk in allocation_ids if pk})])


def invoices_issue_monthly(*, now: datetime | None = None) -> int:
    """Issue last month's invoices and statements (period end: the first of this month, UTC) for
    every organisation with charges not yet on one. Idempotent; returns how many it issued."""
    now = now or timezone.now()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    issued = 0
    work = [(pk, Invoice.Kind.INVOICE) for pk in Charge.objects.filter(
        invoice__isnull=True, usage_to__lte=month_start).values_list("buyer_id", flat=True).distinct()]
    work += [(pk, Invoice.Kind.STATEMENT) for pk in Charge.objects.filter(
        statement__isnull=True, supplier__isnull=False, usage_to__lte=month_start)
        .values_list("supplier_id", flat=True).distinct()]
    for organisation_id, kind in sorted(set(work)):
        previous = Invoice.objects.filter(organisation_id=organisation_id, kind=kind).order_by("-period_end").first()
        if previous is not None and previous.period_end >= month_start:
            continue  # issued on demand since the month began: these charges go on the next one
        with sweep_item("issue the monthly document of organisation", organisation_id):
            invoice_issue(organisation_id=organisation_id, kind=kind, period_end=month_start, now=now)
            issued += 1
    return issued


# --- payouts and refunds ------------------------------------------------------------------------

def payout_create(*, organisation_id: int, reference: str) -> Transfer:
    """Pay a supplier what it is owed less what open disputes withhold, floored to the fen; the
    sub-fen remainder goes to the platform's rounding account; the withheld part stays payable.
    Idempotent by ``reference`` (e.g. the bank transfer's id)."""
    with transaction.atomic():
        existing = Transfer.objects.filter(idempotency_id=f"payout:{reference}").first()
        if existing is not None:
            return existing
        payable = account_get_or_create(organisation_id=organisation_id, kind=Account.Kind.SUPPLIER_PAYABLE)
        external = account_get_or_create(organisation_id=None, kind=Account.Kind.EXTERNAL)
        rounding_account = account_get_or_create(organisation_id=None, kind=Account.Kind.PLATFORM_ROUNDING)
        owed = accounts_lock(account_ids=[payable.pk, external.pk, rounding_account.pk])[payable.pk].balance
        existing = Transfer.objects.filter(idempotency_id=f"payout:{reference}").first()
        if existing is not None:  # a concurrent retry got there first, while this one waited
            return existing
        # Read with the payable locked: opening a dispute locks it too, so none slips past.
        payable_now = owed - disputes_withheld(supplier_id=organisation_id)
        paid, remainder = to_fen(max(payable_now, Decimal(0)))
        if paid <= 0:
            raise Conflict("Nothing to pay out: less than one fen is owed beyond what open disputes withhold.",
                           code="nothing_to_pay")
        transfer, _ = transfer_post(idempotency_id=f"payout:{reference}", kind="payout", memo=reference[:300],
                                    legs=[(payable.pk, -(paid + remainder)), (external.pk, paid),
                                          (rounding_account.pk, remainder)])
        return transfer


def charge_refunded(*, charge_id: int) -> Decimal:
    """What has been refunded of a charge so far."""
    return -(Charge.objects.filter(kind=Charge.Kind.REFUND, memo__startswith=f"refund of charge {charge_id}:")
             .aggregate(s=Sum("amount"))["s"] or Decimal(0))


def disputes_withheld(*, supplier_id: int) -> Decimal:
    """The supplier's share of its charges under open disputes: kept from its payouts."""
    return Dispute.objects.filter(supplier_id=supplier_id, status__in=Dispute.WITHHOLDING).aggregate(
        s=Sum("withheld"))["s"] or Decimal(0)


def charge_refund(*, charge_id: int, amount: Decimal, reason: str, reference: str) -> Charge:
    """Give a buyer back part or all of a charge: the supplier returns its share and the platform
    its commission, in proportion. Idempotent by ``reference``. The supplier's share comes from
    its payable; what that no longer holds (it was paid out before the refund) the supplier owes:
    its receivable, repaid from its next earnings, as for a charge reversed after a failure. The
    buyer is never kept waiting on the supplier's balance."""
    amount = exact(Decimal(amount))
    if amount <= 0:
        raise ValidationFailed.on("amount", "Must be positive.")
    if not reason.strip():
        raise ValidationFailed.on("reason", "Say why the buyer is refunded.")
    with transaction.atomic():
        charge = Charge.objects.select_for_update().filter(pk=charge_id).first()
        if charge is None or charge.kind in (Charge.Kind.REFUND, Charge.Kind.SERVICE_CREDIT) or charge.amount <= 0:
            raise NotFound("No such refundable charge.")
        done = Charge.objects.filter(kind=Charge.Kind.REFUND, transfer__idempotency_id=f"refund:{reference}").first()
        if done is not None:
            if done.memo.startswith(f"refund of charge {charge.pk}:") and done.amount == -amount:
                return done  # a retried request
            raise Conflict("This refund reference was already used for another refund.",
                           fields={"reference": ["Already used."]}, code="idempotency_conflict")
        refunded = charge_refunded(charge_id=charge.pk)
        if amount > charge.amount - refunded:
            raise ValidationFailed.on("amount", f"At most {charge.amount - refunded} is left to refund.")
        fee = exact(amount * charge.commission / charge.amount)
        _key_share_orders([charge.order_id], allocation_ids=[charge.allocation_id])
        accounts = charge_accounts_lock(buyer_id=charge.buyer_id, supplier_id=charge.supplier_id)
        legs = [*supplier_give_back_legs(accounts=accounts, share=amount - fee),
                (accounts["commission"].pk, -fee), (accounts["wallet"].pk, amount)]
        transfer, _ = transfer_post(idempotency_id=f"refund:{reference}", kind="refund", memo=reason[:300],
                                    legs=legs)
        now = timezone.now()
        return Charge.objects.create(
            buyer_id=charge.buyer_id, supplier_id=charge.supplier_id, order_id=charge.order_id,
            allocation_id=charge.allocation_id, kind=Charge.Kind.REFUND, quantity=Decimal(0),
            unit_price=Decimal(0), amount=-amount, commission=-fee, usage_from=now, usage_to=now, transfer=transfer,
            memo=f"refund of charge {charge.pk}: {reason.strip()}"[:300])
