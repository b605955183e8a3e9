"""Rating is exact Decimal arithmetic, pure."""
from decimal import Decimal

import pytest

from billing.rating import (TokenPrices, commission, max_cost_card_hours, max_cost_tokens, rate_card_minutes,
                            rate_tokens, to_fen)

DEEPSEEK = TokenPrices(Decimal("0.5"), Decimal("2"), Decimal("8"))  # CNY per million: hit / miss / output


def test_deepseek_price_list_worked_by_hand():
    # 3M input on cache hit, 7M on miss, 2.5M output: 1.5 + 14 + 20 = 35.5 CNY exactly
    charge = rate_tokens(prices=DEEPSEEK, input_hit=3_000_000, input_miss=7_000_000, output=2_500_000)
    assert (charge.input_hit, charge.input_miss, charge.output, charge.total) == (
        Decimal("1.5"), Decimal("14"), Decimal("20"), Decimal("35.5"))


def test_a_single_token_is_not_rounded_away():
    charge = rate_tokens(prices=DEEPSEEK, input_hit=1, input_miss=1, output=1)
    assert charge.total == Decimal("0.0000105")  # 5e-7 + 2e-6 + 8e-6


def test_card_hours_by_the_minute():
    # 8 cards x 3 hours at 14.50 = 348 CNY; 90 minutes of 1 card = 21.75
    assert rate_card_minutes(price_per_card_hour=Decimal("14.50"), cards=8, minutes=180) == Decimal("348")
    assert rate_card_minutes(price_per_card_hour=Decimal("14.50"), cards=1, minutes=90) == Decimal("21.75")
    # a price that does not divide by 60 is kept to 12 decimals, half-even
    assert rate_card_minutes(price_per_card_hour=Decimal("1"), cards=1, minutes=1) == Decimal("0.016666666667")


def test_fen_rounding_returns_the_remainder():
    assert to_fen(Decimal("35.505")) == (Decimal("35.50"), Decimal("0.005"))  # floor, not half-even
    assert to_fen(Decimal("35.519999")) == (Decimal("35.51"), Decimal("0.009999"))
    assert to_fen(Decimal("0.0000105")) == (Decimal("0.00"), Decimal("0.0000105"))
    # a net credit rounds away from the buyer's favour never: floor keeps the remainder >= 0
    assert to_fen(Decimal("-1.234")) == (Decimal("-1.24"), Decimal("0.006"))


def test_maximum_costs_that_holds_reserve():
    assert max_cost_card_hours(max_price_per_card_hour=Decimal("12.5"), cards=8, hours=3) == Decimal("300")
    # 10M input at 25% cache hits and 2M output, at 0.5 / 2 / 8 per million: 1.25 + 15 + 16
    assert max_cost_tokens(max_prices=DEEPSEEK, expected_input=10_000_000, expected_output=2_000_000,
                           cache_hit_ratio=Decimal("0.25")) == Decimal("32.25")
    assert commission(amount=Decimal("348"), rate=Decimal("0.08")) == Decimal("27.84")


def test_negative_usage_is_refused():
    with pytest.raises(ValueError):
        rate_tokens(prices=DEEPSEEK, input_hit=-1, input_miss=0, output=0)
