"""An organisation's own figures (reads only, scoped to the caller): a supplier's racked and lit
card-hours, utilisation, earnings and reliability; a buyer's spend, open orders and why they wait.

*Racked* card-hours are those listed for sale; *lit* are those delivered and billed (the market's
上架率 and 点亮率). Here, above billing and matching, because it reads both (failures, explain).
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, Sum

from billing.models import Account, Charge
from billing.selectors import wallet_balances
from marketplace.hours import hour_index
from marketplace.models import ListingHour, Node, Order, Organisation
from matching.models import NodeFailure
from matching.selectors import order_wait_reasons

ZERO = Decimal(0)
EXPLAINED_ORDERS = 50  # the newest open orders whose reasons are given; more are counted, not explained
SPEND_KINDS = (Charge.Kind.CARD_HOURS, Charge.Kind.INPUT_HIT, Charge.Kind.INPUT_MISS, Charge.Kind.OUTPUT)


def _hour_floor(moment: datetime) -> int:
    return hour_index(moment.replace(minute=0, second=0, microsecond=0))


def supplier_figures(*, organisation: Organisation, start: datetime, end: datetime) -> dict:
    """Over ``[start, end)``: card-hours racked (listed), sold and lit (delivered and billed), the
    two ratios, earnings (gross, commission, net, owed now), reliability, failures and nodes."""
    hours = ListingHour.objects.filter(listing__organisation=organisation, hour__gte=_hour_floor(start),
                                       hour__lt=_hour_floor(end))
    calendar = hours.aggregate(racked=Sum("cards_offered"), sold=Sum("cards_sold"))
    racked, sold = calendar["racked"] or 0, calendar["sold"] or 0
    earned = Charge.objects.filter(supplier=organisation, usage_to__gte=start, usage_to__lt=end)
    lit = earned.filter(kind=Charge.Kind.CARD_HOURS).aggregate(n=Sum("quantity"))["n"] or ZERO
    money = earned.aggregate(gross=Sum("amount"), commission=Sum("commission"))
    gross, commission = money["gross"] or ZERO, money["commission"] or ZERO
    balances = dict(Account.objects.filter(organisation=organisation, kind__in=(
        Account.Kind.SUPPLIER_PAYABLE, Account.Kind.SUPPLIER_RECEIVABLE)).values_list("kind", "balance"))
    owed = balances.get(Account.Kind.SUPPLIER_PAYABLE, ZERO)
    return {
        "period": {"start": start, "end": end},
        "card_hours": {"racked": racked, "sold": sold, "lit": lit,
                       "sold_rate": _ratio(Decimal(sold), racked), "lit_rate": _ratio(lit, racked)},
        "earnings": {"gross": gross, "commission": commission, "net": gross - commission, "owed_now": owed,
                     # service credits or reversals beyond what it was owed, repaid from its next earnings
                     "owes_now": -balances.get(Account.Kind.SUPPLIER_RECEIVABLE, ZERO)},
        "reliability": organisation.reliability,
        "failures": NodeFailure.objects.filter(node__organisation=organisation, created_at__gte=start,
                                               created_at__lt=end).count(),
        "nodes": dict(Node.objects.filter(organisation=organisation).values_list("status").annotate(n=Count("id"))),
    }


def buyer_figures(*, organisation: Organisation, start: datetime, end: datetime) -> dict:
    """Over ``[start, end)``: spend by usage kind, credits and refunds; the wallet now; open orders
    and, for the newest ``EXPLAINED_ORDERS`` of them, why each is still waiting (explain's codes)."""
    charges = Charge.objects.filter(buyer=organisation, usage_to__gte=start, usage_to__lt=end)
    by_kind = {kind: amount or ZERO for kind, amount in charges.values_list("kind").annotate(s=Sum("amount"))}
    spend = sum((by_kind.get(k, ZERO) for k in SPEND_KINDS), ZERO)
    credits = by_kind.get(Charge.Kind.SERVICE_CREDIT, ZERO)
    refunds = by_kind.get(Charge.Kind.REFUND, ZERO)
    open_orders = Order.objects.filter(organisation=organisation, status=Order.Status.OPEN).order_by("-pk")
    waiting = Counter(order_wait_reasons(organisation=organisation, order_ids=list(
        open_orders.values_list("pk", flat=True)[:EXPLAINED_ORDERS])).values())
    statuses = dict(Order.objects.filter(organisation=organisation).values_list("status").annotate(n=Count("id")))
    return {
        "period": {"start": start, "end": end},
        "spend": {"total": spend, "by_kind": {k: by_kind.get(k, ZERO) for k in SPEND_KINDS},
                  "service_credits": -credits, "refunds": -refunds, "net": spend + credits + refunds},
        "wallet": wallet_balances(organisation_id=organisation.pk),
        "orders": {"by_status": statuses, "open": statuses.get(Order.Status.OPEN, 0),
                   "waiting_reasons": dict(waiting), "explained": min(EXPLAINED_ORDERS, open_orders.count())},
    }


def _ratio(part: Decimal, whole: int) -> Decimal | None:
    return (Decimal(part) / whole).quantize(Decimal("0.0001")) if whole else None
