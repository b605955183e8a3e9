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


def expected_cost(order: TokenOrderSpec, offer: TokenEndpointOffer) -> Decimal:
    hit = Decimal(order.input_tokens) * order.cache_hit_ratio
    miss = Decimal(order.input_tokens) - hit
    return (hit * offer.input_hit + miss * offer.input_miss + Decimal(order.output_tokens) * offer.output) / MILLION


def match_tokens(orders: list[TokenOrderSpec], offers: list[TokenEndpointOffer]) -> list[tuple[int, int]]:
    """(order_id, listing_id) pairs; deterministic (ties go to the lower listing id)."""
    by_model: dict[int, list[TokenEndpointOffer]] = {}
    for offer in offers:
        by_model.setdefault(offer.model_id, []).append(offer)
    pairs = []
    for order in sorted(orders, key=lambda o: o.order_id):
        fits = [f for f in by_model.get(order.model_id, [])
                if f.input_hit <= order.max_input_hit and f.input_miss <= order.max_input_miss
                and f.output <= order.max_output and region_allows(order.rule, f.region)]
        if fits:
            best = min(fits, key=lambda f: (expected_cost(order, f), f.listing_id))
            pairs.append((order.order_id, best.listing_id))
    return pairs
