from decimal import Decimal

from django.db.models import Q, QuerySet
from django.utils import timezone

from config.errors import NotFound
from marketplace.models import Allocation, Organisation

from .models import Account, AllocationMeter, Charge, Hold, Invoice, TokenUsageTotal
from .settlement import metered_seconds


def wallet_balances(*, organisation_id: int) -> dict[str, Decimal]:
    """Available and held balances of one organisation's wallet (zero before any money moved)."""
    balances = dict(Account.objects.filter(organisation_id=organisation_id, currency="CNY",
                                           kind__in=[Account.Kind.BUYER_WALLET, Account.Kind.BUYER_HELD])
                    .values_list("kind", "balance"))
    return {"currency": "CNY", "available": balances.get(Account.Kind.BUYER_WALLET, Decimal(0)),
            "held": balances.get(Account.Kind.BUYER_HELD, Decimal(0))}


def invoice_list(*, organisation: Organisation) -> QuerySet[Invoice]:
    """The organisation's own invoices (as a buyer) and statements (as a supplier)."""
    return Invoice.objects.filter(organisation=organisation).order_by("-id")


def invoice_get(*, organisation: Organisation, invoice_id: int) -> Invoice:
    invoice = invoice_list(organisation=organisation).prefetch_related("lines").filter(pk=invoice_id).first()
    if invoice is None:
        raise NotFound("No such invoice.")
    return invoice


def allocation_meter_get(*, organisation: Organisation, allocation_id: int) -> tuple[Allocation, AllocationMeter]:
    """An allocation's meter, seen by its supplier or its buyer; others get NotFound."""
    allocation = (Allocation.objects.filter(Q(order__organisation=organisation) | Q(supplier=organisation))
                  .filter(pk=allocation_id).first())
    if allocation is None:
        raise NotFound("No such allocation.")
    return allocation, AllocationMeter.objects.filter(allocation=allocation).first() or AllocationMeter(
        allocation=allocation)


def meter_figures(*, allocation: Allocation, meter: AllocationMeter, now=None) -> dict:
    """What the meter shows: minutes used so far and what settlement has charged."""
    return {"allocation": allocation.pk, "status": allocation.status, "started_at": meter.started_at,
            "last_heartbeat_at": meter.last_heartbeat_at, "stopped_at": meter.stopped_at,
            "metered_minutes": metered_seconds(meter=meter, allocation=allocation, now=now or timezone.now()) // 60,
            "billed_minutes": meter.billed_minutes, "billed_amount": meter.billed_amount,
            "budget": token_budget(allocation=allocation) if allocation.kind == "tokens" else None}


def token_budget(*, allocation: Allocation) -> dict:
    """A token allocation against what its buyer agreed to: ``max_spend`` (the order's, else its
    hold), what accepted usage costs so far, what is left, and whether it is out of budget (usage
    was refused for it, or nothing is left)."""
    max_spend = allocation.order.max_spend
    if max_spend is None:
        max_spend = Hold.objects.filter(allocation=allocation).values_list("amount", flat=True).first() or Decimal(0)
    total = TokenUsageTotal.objects.filter(allocation=allocation).first() or TokenUsageTotal(allocation=allocation)
    remaining = max(Decimal(0), max_spend - total.amount)
    return {"max_spend": max_spend, "accepted_amount": total.amount, "accepted_tokens": total.tokens,
            "remaining": remaining, "out_of_budget": total.refused_over_budget > 0 or remaining == 0,
            "refused_over_budget": total.refused_over_budget, "refused_implausible": total.refused_implausible}


def charge_list(*, organisation: Organisation) -> QuerySet[Charge]:
    """Charges the organisation paid as a buyer or earned as a supplier."""
    return Charge.objects.filter(Q(buyer=organisation) | Q(supplier=organisation)).order_by("-id")
