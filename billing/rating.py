"""Rating: what usage costs, in exact Decimal arithmetic. Pure Python, no Django.

Internal amounts carry 12 decimal places (``SCALE``). A token price has at most 6 decimals per
million tokens, so ``tokens x price / 1e6`` is exact at that scale. Per-minute card-hour usage
(``price x cards x minutes / 60``) is rounded half-even to the 12th decimal, an immaterial
1e-12 CNY. Rounding to the fen (0.01 CNY) happens only on invoices and payouts; what it drops or
adds goes to the platform's rounding account.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

SCALE = Decimal("0.000000000001")
FEN = Decimal("0.01")
MILLION = Decimal(1_000_000)


def exact(amount: Decimal) -> Decimal:
    return Decimal(amount).quantize(SCALE, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True)
class TokenPrices:
    input_hit_per_m: Decimal
    input_miss_per_m: Decimal
    output_per_m: Decimal


@dataclass(frozen=True)
class TokenCharge:
    input_hit: Decimal
    input_miss: Decimal
    output: Decimal

    @property
    def total(self) -> Decimal:
        return self.input_hit + self.input_miss + self.output


def rate_tokens(*, prices: TokenPrices, input_hit: int, input_miss: int, output: int) -> TokenCharge:
    if min(input_hit, input_miss, output) < 0:
        raise ValueError("token counts cannot be negative")
    return TokenCharge(input_hit=exact(input_hit * prices.input_hit_per_m / MILLION),
                       input_miss=exact(input_miss * prices.input_miss_per_m / MILLION),
                       output=exact(output * prices.output_per_m / MILLION))


def rate_card_minutes(*, price_per_card_hour: Decimal, cards: int, minutes: int) -> Decimal:
    if cards < 0 or minutes < 0:
        raise ValueError("cards and minutes cannot be negative")
    return exact(Decimal(price_per_card_hour) * cards * minutes / 60)


def commission(*, amount: Decimal, rate: Decimal) -> Decimal:
    """The platform's share of a charge, at the internal scale."""
    return exact(amount * rate)


def to_fen(amount: Decimal) -> tuple[Decimal, Decimal]:
    """(amount rounded down to the fen, the remainder, always >= 0, for the rounding account).

    The one rounding rule for invoices and payouts: floor to the fen. An invoice never bills
    more than the exact charges (the buyer gets the remainder back) and a payout never pays
    more than is owed (the remainder stays with the platform), so no rounding step can ever
    overdraw an account."""
    rounded = Decimal(amount).quantize(FEN, rounding=ROUND_FLOOR)
    return rounded, exact(Decimal(amount) - rounded)


def max_cost_card_hours(*, max_price_per_card_hour: Decimal, cards: int, hours: int) -> Decimal:
    """What a card-hour allocation can cost at most: the buyer's limit for every card-hour."""
    return exact(Decimal(max_price_per_card_hour) * cards * hours)


def max_cost_tokens(*, max_prices: TokenPrices, expected_input: int, expected_output: int,
                    cache_hit_ratio: Decimal) -> Decimal:
    """What a token order is expected to cost at most: its expected tokens at its price limits
    (input split by the expected cache-hit ratio)."""
    hit = exact(Decimal(expected_input) * Decimal(cache_hit_ratio))
    miss = Decimal(expected_input) - hit
    return exact((hit * max_prices.input_hit_per_m + miss * max_prices.input_miss_per_m
                  + Decimal(expected_output) * max_prices.output_per_m) / MILLION)
