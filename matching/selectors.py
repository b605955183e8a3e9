"""Matching reads: why an order is not matched yet, and review queues. Scoped to the caller."""
from __future__ import annotations

import dataclasses
from decimal import Decimal

from django.db.models import QuerySet

from billing.selectors import wallet_balances
from billing.services import allocation_max_cost
from config.api.jsonable import jsonable
from config.errors import ApplicationError
from marketplace.demand import RegionPolicySpec, demand_from_order
from marketplace.models import Allocation, ChipType, Listing, Node, Order, Organisation
from marketplace.selectors import (CardHourMarket, card_hour_market_load, order_get, order_list, quote_card_hours,
                                   quote_card_hours_cheapest, quote_window)

from .models import MatchReview, MatchRound

NO_PRICE_LIMIT = Decimal("100000")


def review_list(*, status: str | None = None) -> QuerySet[MatchReview]:
    """Platform admins only (the API checks)."""
    reviews = MatchReview.objects.select_related("allocation", "allocation__order", "allocation__supplier",
                                                 "decided_by")
    return reviews.filter(status=status) if status else reviews


def round_list() -> QuerySet[MatchRound]:
    return MatchRound.objects.all()


def order_explain(*, organisation: Organisation, order_id: int, with_alternatives: bool = True) -> dict:
    """Why an open order is not matched yet, and the nearest alternatives that would match.

    Reasons, in the order they are checked: ``waiting_for_review``; ``insufficient_funds`` (the
    wallet cannot hold the order's maximum cost); ``no_chip_fits`` (nothing of an
    acceptable chip is on sale); ``no_supply_in_allowed_regions``; ``interconnect_unavailable``;
    ``capacity_taken`` (it would fit in the window if the sold slots were free) or
    ``no_capacity_in_window``; ``price_gap`` (best feasible ask X against the bid Y); otherwise
    ``matchable`` (it is in the money and the next round should match it).

    ``with_alternatives=False`` gives the reasons only (and a top-up for missing funds), without
    searching for alternatives or the best offer, for callers that only count reasons.
    """
    order = order_get(organisation=organisation, order_id=order_id)
    pending = order.allocations.filter(status=Allocation.Status.PENDING_REVIEW).select_related("review").first()
    return _explain(order, organisation, pending=pending, with_alternatives=with_alternatives,
                    available=wallet_balances(organisation_id=order.organisation_id)["available"])


def order_wait_reasons(*, organisation: Organisation, order_ids: list[int]) -> dict[int, str]:
    """The first reason code ``order_explain`` gives for each of these orders of the caller's
    (ids of other organisations' orders are left out), read set-based: the orders, their pending
    reviews, the wallet and the market's supply once for all of them, not once per order."""
    orders = list(order_list(organisation=organisation).filter(pk__in=order_ids))
    pending = {a.order_id: a for a in Allocation.objects.filter(
        order__in=orders, status=Allocation.Status.PENDING_REVIEW).select_related("review").order_by("-pk")}
    available = wallet_balances(organisation_id=organisation.pk)["available"]
    waiting = [o for o in orders if o.status == Order.Status.OPEN and o.kind == Order.Kind.CARD_HOURS]
    windows = [(*quote_window(earliest_start=o.earliest_start, latest_end=o.latest_end), o.duration_hours or 1)
               for o in waiting]
    windows = [(first, last, hours) for first, last, hours in windows if first < last]
    # one read for every order: only as coarse as the shortest order allows (of the listings alone
    # when the sold hours of the orders' windows are too many to read at once: each quote then
    # reads those it needs)
    market = card_hour_market_load(first=min(w[0] for w in windows), last=max(w[1] for w in windows),
                                   min_duration=min(w[2] for w in windows), sold=None) if windows else None
    out = {}
    for order in orders:
        reasons = _explain(order, organisation, pending=pending.get(order.pk), available=available, market=market,
                           with_alternatives=False)["reasons"]
        out[order.pk] = reasons[0]["code"] if reasons else "unknown"
    return out


def _explain(order: Order, organisation: Organisation, *, pending: Allocation | None, available: Decimal,
             with_alternatives: bool, market: CardHourMarket | None = None) -> dict:
    """``order_explain`` of an order already read (with its chip options and regions prefetched),
    given its pending allocation if any, the wallet's available balance and, optionally, the
    market's supply already read for its window (else it is read once here for all its quotes)."""
    out = {"order": order.pk, "status": order.status, "reasons": [], "alternatives": []}
    if order.status != Order.Status.OPEN:
        out["reasons"].append({"code": "not_open", "message": f"The order is {order.status}."})
        return out
    if pending is not None:
        out["reasons"].append({"code": "waiting_for_review",
                               "message": "A match was found and is waiting for a platform admin's review.",
                               "flags": getattr(getattr(pending, "review", None), "reasons", [])})
        return out
    short = _funds_short(order, available)
    if short is not None:
        out["reasons"].append(short)
        out["alternatives"].append({"kind": "top_up", "amount": short["shortfall"]})
        return out
    if order.kind == Order.Kind.TOKENS:
        return _explain_tokens(order, out)

    try:
        demand = demand_from_order(order)
        first, last = quote_window(earliest_start=order.earliest_start, latest_end=order.latest_end)
        if market is None or not market.covers(first, last, demand.duration_hours):
            # every quote below reads this one snapshot of the supply (all chips and regions), all
            # of them for the order's duration (its sold hours too unless the window holds too many
            # to read at once: each quote then reads those it needs)
            market = card_hour_market_load(first=first, last=last, min_duration=demand.duration_hours,
                                           sold=None) if first < last else None
        unlimited = dataclasses.replace(demand, max_price_per_card_hour=NO_PRICE_LIMIT)
        if with_alternatives:
            quote = quote_card_hours(organisation=organisation, market=market, demand=unlimited)
            best_price = quote["best_price"]
        else:  # the price alone decides the reason
            quote, best_price = None, quote_card_hours_cheapest(organisation=organisation, market=market,
                                                                demand=unlimited)
    except ApplicationError as exc:
        out["reasons"].append({"code": "window_closed", "message": exc.message})
        return out

    bid = order.max_price_per_card_hour
    if best_price is None:
        chips = [o.chip_id for o in order.chip_options.all()]
        on_sale = Listing.objects.filter(status=Listing.Status.ACTIVE, token_model__isnull=True,
                                         node__status=Node.Status.ACTIVE, end__gt=order.earliest_start)
        if not on_sale.filter(node__chip_id__in=chips).exists():
            out["reasons"].append({"code": "no_chip_fits", "message": "No acceptable chip is on sale in your window."})
        elif not _any_in_regions(order, organisation, demand, market):
            out["reasons"].append({"code": "no_supply_in_allowed_regions",
                                   "message": "Acceptable chips are on sale, but not where your order may run."})
        elif order.interconnects and not on_sale.filter(node__chip_id__in=chips,
                                                       node__interconnect__in=order.interconnects).exists():
            out["reasons"].append({"code": "interconnect_unavailable",
                                   "message": f"No acceptable node has {' or '.join(order.interconnects)}."})
        else:
            out["reasons"].append({"code": "capacity_taken",
                                   "message": "Nodes that fit are sold out for long enough runs in your window."})
    elif best_price > bid:
        out["reasons"].append({"code": "price_gap", "best_feasible_ask": str(best_price), "bid": str(bid),
                               "message": f"The best feasible ask is {best_price} against your bid {bid}."})
        if quote is not None:
            out["alternatives"].append({"kind": "price", "max_price_per_card_hour": str(best_price),
                                        "offer": jsonable(quote["best_offer"])})
    else:
        out["reasons"].append({"code": "matchable", "message": "Feasible offers are within your price; the next "
                                                                "matching round should match it."})
        return out
    if with_alternatives:
        out["alternatives"].extend(_alternatives(order, organisation, demand, bid, market))
    return out


def _funds_short(order: Order, available: Decimal) -> dict | None:
    """``insufficient_funds`` when the wallet cannot hold the order's maximum cost (with its
    largest chip option, for card-hours), else None."""
    cards = max((o.cards for o in order.chip_options.all()), default=order.cards or 0)
    needed = allocation_max_cost(order=order, cards=cards, hours=order.duration_hours or 0)
    if available >= needed:
        return None
    return {"code": "insufficient_funds", "needed": str(needed), "available": str(available),
            "shortfall": str(needed - available),
            "message": f"A match holds the order's maximum cost, {needed} CNY; your wallet has {available} CNY "
                       f"available."}


def _any_in_regions(order, organisation, demand, market: CardHourMarket | None) -> bool:
    relaxed = dataclasses.replace(demand, max_price_per_card_hour=NO_PRICE_LIMIT, interconnects=[])
    return order.region_policy == "anywhere" or \
        quote_card_hours_cheapest(organisation=organisation, demand=relaxed, market=market) is not None


def _alternatives(order: Order, organisation: Organisation, demand, bid: Decimal,
                  market: CardHourMarket | None) -> list[dict]:
    out = []
    if order.region_policy != "anywhere":
        wider = quote_card_hours(organisation=organisation, market=market, demand=dataclasses.replace(
            demand, region=RegionPolicySpec(), max_price_per_card_hour=NO_PRICE_LIMIT))
        if wider["best_offer"]:
            out.append({"kind": "wider_region", "region": {"policy": "anywhere"}, "offer": jsonable(wider["best_offer"])})
    options = list(order.chip_options.all())
    memory = min((o.chip.memory_gb or 0) for o in options) if options else 0
    if memory:
        others = [c.code for c in ChipType.objects.filter(memory_gb__gte=memory)
                  .exclude(pk__in=[o.chip_id for o in options])]
        if others:
            other = quote_card_hours(organisation=organisation, market=market, demand=dataclasses.replace(
                demand, chips=others, min_memory_gb=None, model=None, cards=min(o.cards for o in options),
                max_price_per_card_hour=NO_PRICE_LIMIT))
            if other["best_offer"]:
                out.append({"kind": "other_chip", "chips": others, "offer": jsonable(other["best_offer"])})
    if demand.interconnects:
        any_ic = quote_card_hours(organisation=organisation, market=market, demand=dataclasses.replace(
            demand, interconnects=[], max_price_per_card_hour=NO_PRICE_LIMIT))
        if any_ic["best_offer"]:
            out.append({"kind": "any_interconnect", "offer": jsonable(any_ic["best_offer"])})
    return out


def _explain_tokens(order: Order, out: dict) -> dict:
    endpoints = Listing.objects.filter(status=Listing.Status.ACTIVE, token_model=order.token_model,
                                       node__status=Node.Status.ACTIVE)
    if not endpoints.exists():
        out["reasons"].append({"code": "no_endpoint_for_model",
                               "message": f"No endpoint serves {order.token_model.name} right now."})
    else:
        cheapest = endpoints.order_by("price_output_per_m").first()
        out["reasons"].append({"code": "price_or_region",
                               "message": "Endpoints serve the model, but none within all your price limits and "
                                          "region policy.",
                               "cheapest_output_per_m": str(cheapest.price_output_per_m)})
    return out
