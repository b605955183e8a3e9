"""Rating: what usage costs, in exact Decimal arithmetic. Pure Python, no Django.

Internal amounts carry 12 decimal places (``SCALE``). A token price has at most 6 decimals per
million tokens, so ``tokens x price / 1e6`` is exact at that scale. Per-minute card-hour usage
(``price x cards x minutes / 60``) is rounded half-even to the 12th decimal, an immaterial
1e-12 CNY. Rounding to the fen (0.01 CNY) happens only on invoices and payouts; what it drops or
adds goes to the platform's rounding account.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

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
    """(amount rounded half-even to the fen, the remainder that goes to the rounding account)."""
    rounded = Decimal(amount).quantize(FEN, rounding=ROUND_HALF_EVEN)
    return rounded, exact(Decimal(amount) - rounded)
