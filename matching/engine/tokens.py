"""Token orders: each goes to an endpoint serving its model, cheapest expected cost first,
within its region policy and all three of its price limits. Pure Python."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from .geo import RegionInfo, RegionRule, region_allows

MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class TokenEndpointOffer:
    listing_id: int
    model_id: int
    region: RegionInfo
    input_hit: Decimal  # CNY per million tokens
    input_miss: Decimal
    output: Decimal
    supplier: int | None = None  # the selling organisation (None: not checked)


@dataclass(frozen=True)
class TokenOrderSpec:
    order_id: int
    model_id: int
    rule: RegionRule
    input_tokens: int
    output_tokens: int
    cache_hit_ratio: Decimal
    max_input_hit: Decimal
    max_input_miss: Decimal
    max_output: Decimal
    buyer: int | None = None  # the ordering organisation (None: not checked)


def expected_cost(order: TokenOrderSpec, offer: TokenEndpointOffer) -> Decimal:
    hit = Decimal(order.input_tokens) * order.cache_hit_ratio
    miss = Decimal(order.input_tokens) - hit
    return (hit * offer.input_hit + miss * offer.input_miss + Decimal(order.output_tokens) * offer.output) / MILLION


def _barred(buyer: int | None, supplier: int | None, related: frozenset[tuple[int, int]]) -> bool:
    if buyer is None or supplier is None:
        return False
    return buyer == supplier or (buyer, supplier) in related


def match_tokens(orders: list[TokenOrderSpec], offers: list[TokenEndpointOffer],
                 related_parties: frozenset[tuple[int, int]] = frozenset()) -> list[tuple[int, int]]:
    """(order_id, listing_id) pairs; deterministic (ties go to the lower listing id). An order
    never goes to an endpoint of its own organisation, nor of one in ``related_parties`` (pairs
    of organisations, both directions)."""
    by_model: dict[int, list[TokenEndpointOffer]] = {}
    for offer in offers:
        by_model.setdefault(offer.model_id, []).append(offer)
    pairs = []
    for order in sorted(orders, key=lambda o: o.order_id):
        fits = [f for f in by_model.get(order.model_id, [])
                if f.input_hit <= order.max_input_hit and f.input_miss <= order.max_input_miss
                and f.output <= order.max_output and region_allows(order.rule, f.region)
                and not _barred(order.buyer, f.supplier, related_parties)]
        if fits:
            best = min(fits, key=lambda f: (expected_cost(order, f), f.listing_id))
            pairs.append((order.order_id, best.listing_id))
    return pairs
