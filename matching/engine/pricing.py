"""Price rules: separate from allocation, pluggable, and named on every match.

Default ``uniform_clipped``: one price per bucket per round (the bucket is the listing's chip and
东数西算 hub), the card-hour-weighted median of the matches' midpoints ``(bid + ask) / 2``; each
match then pays that price clipped into ``[ask, bid]``, so no buyer pays above its bid and no
supplier receives below its ask. For a multi-node match ``ask`` is its highest part's ask, so every
part's supplier receives at least its own ask. Integer micro-CNY; midpoints round down to the micro.

Other rules: ``midpoint`` (each match splits its own surplus) and ``pay_as_ask``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .types import EngineResult


def uniform_clipped(r: EngineResult) -> np.ndarray:
    mids = (r.bid + r.ask) // 2
    weights = r.cards * (r.end_hour - r.start_hour)
    order = np.lexsort((mids, r.bucket))
    buckets, mids_sorted = r.bucket[order], mids[order]
    cumulative = np.cumsum(weights[order])
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
    ends = np.r_[starts[1:], order.size]
    before = np.r_[0, cumulative][starts]
    half = before + (cumulative[ends - 1] - before + 1) // 2
    medians = mids_sorted[np.searchsorted(cumulative, half)]
    price = np.empty_like(mids)
    price[order] = np.repeat(medians, ends - starts)
    return np.clip(price, r.ask, r.bid)


def midpoint(r: EngineResult) -> np.ndarray:
    return (r.bid + r.ask) // 2


def pay_as_ask(r: EngineResult) -> np.ndarray:
    return r.ask.copy()


PRICE_RULES: dict[str, Callable[[EngineResult], np.ndarray]] = {
    "uniform_clipped": uniform_clipped,
    "midpoint": midpoint,
    "pay_as_ask": pay_as_ask,
}


def apply_price_rule(name: str, result: EngineResult) -> None:
    if name not in PRICE_RULES:
        raise ValueError(f"unknown price rule {name!r}; known: {', '.join(PRICE_RULES)}")
    price = PRICE_RULES[name](result) if result.count else np.zeros(0, dtype=np.int64)
    if np.any(price < result.ask) or np.any(price > result.bid):
        raise RuntimeError(f"price rule {name} broke individual rationality")
    result.price = price.astype(np.int64)
    result.price_rule = name
