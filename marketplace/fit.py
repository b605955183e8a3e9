"""Model fit: how much accelerator memory a model needs and how many cards of a chip hold it.

Pure Python, no Django. The rule (documented in README):
- weights need ``params_billion x bytes_per_param`` GB (decimal GB, compared with the memory the
  chip's datasheet states; conservative, since a "64 GB" card really holds 64 GiB);
- unless the order asks for weights only, we add ``overhead`` (default 20%) on top of the
  weights for KV cache, activations and runtime buffers;
- the minimum cards for a chip is ``ceil(needed / memory_per_card)``.
DeepSeek-R1 (671B) at fp8, weights only, on 64 GB cards: ceil(671 / 64) = 11 cards;
with the 20% overhead: ceil(805.2 / 64) = 13 cards.
"""
from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

BYTES_PER_PARAM: dict[str, Decimal] = {
    "fp32": Decimal(4),
    "bf16": Decimal(2),
    "fp16": Decimal(2),
    "fp8": Decimal(1),
    "int8": Decimal(1),
    "int4": Decimal("0.5"),
}
DEFAULT_OVERHEAD = Decimal("0.20")
MAX_CARDS_PER_ORDER = 64


def memory_needed_gb(*, params_billion: Decimal, precision: str, overhead: Decimal = DEFAULT_OVERHEAD,
                     weights_only: bool = False) -> Decimal:
    if precision not in BYTES_PER_PARAM:
        raise ValueError(f"unknown precision {precision!r}")
    weights = Decimal(params_billion) * BYTES_PER_PARAM[precision]
    return weights if weights_only else weights * (Decimal(1) + Decimal(overhead))


def min_cards(*, needed_gb: Decimal, card_memory_gb: int | None) -> int | None:
    """Cards of one chip needed to hold ``needed_gb``; None when the chip's memory is unknown."""
    if not card_memory_gb:
        return None
    return int((Decimal(needed_gb) / Decimal(card_memory_gb)).to_integral_value(rounding=ROUND_CEILING))
