"""The model-fit rule, pure: no database."""
from decimal import Decimal

import pytest

from marketplace.fit import DEFAULT_OVERHEAD, memory_needed_gb, min_cards


def test_deepseek_r1_fp8_weights_only_needs_11_cards_of_64_gb():
    # given DeepSeek-R1 (671B) at fp8, weights only
    needed = memory_needed_gb(params_billion=Decimal("671"), precision="fp8", weights_only=True)
    # when it must fit on 64 GB cards
    cards = min_cards(needed_gb=needed, card_memory_gb=64)
    # then 671 GB of weights need 11 cards
    assert needed == Decimal("671")
    assert cards == 11


def test_overhead_adds_twenty_percent_for_kv_cache_by_default():
    needed = memory_needed_gb(params_billion=Decimal("671"), precision="fp8")
    assert DEFAULT_OVERHEAD == Decimal("0.20")
    assert needed == Decimal("805.2")
    assert min_cards(needed_gb=needed, card_memory_gb=64) == 13
    assert min_cards(needed_gb=needed, card_memory_gb=80) == 11


@pytest.mark.parametrize("precision,weights_gb", [("fp32", 280), ("bf16", 140), ("fp16", 140), ("fp8", 70),
                                                   ("int8", 70), ("int4", 35)])
def test_bytes_per_parameter_by_precision(precision, weights_gb):
    assert memory_needed_gb(params_billion=Decimal(70), precision=precision, weights_only=True) == weights_gb


def test_overhead_is_configurable_and_exact():
    needed = memory_needed_gb(params_billion=Decimal(70), precision="bf16", overhead=Decimal("0.5"))
    assert needed == Decimal("210.0")
    # a 70B model in bf16 with 50% overhead on 48 GB cards (e.g. the modified RTX 4090 48GB)
    assert min_cards(needed_gb=needed, card_memory_gb=48) == 5


def test_exact_fit_needs_no_extra_card():
    assert min_cards(needed_gb=Decimal(128), card_memory_gb=64) == 2
    assert min_cards(needed_gb=Decimal("128.01"), card_memory_gb=64) == 3


def test_unknown_memory_or_precision():
    assert min_cards(needed_gb=Decimal(10), card_memory_gb=None) is None
    with pytest.raises(ValueError):
        memory_needed_gb(params_billion=Decimal(7), precision="fp64")
