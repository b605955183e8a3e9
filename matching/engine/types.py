"""The engine's inputs and outputs: plain dataclasses over numpy arrays. No Django.

Prices are integers in micro-CNY (1e-6 CNY): every marketplace price has at most 6 decimals, so
this is exact, and integer arithmetic keeps the kernel fast and deterministic.
Hours are relative to the snapshot's first sellable hour ``h0``: column ``j`` of ``free`` is
absolute hour ``h0 + j``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

MICRO = 1_000_000
INTERCONNECTS = ("pcie", "nvlink", "roce", "infiniband")
ANY_INTERCONNECT = (1 << len(INTERCONNECTS)) - 1
SINGLE_NODE, SAME_FABRIC = 0, 1


def to_micro(price: Decimal) -> int:
    micro = Decimal(price) * MICRO
    if micro != micro.to_integral_value():
        raise ValueError(f"price {price} has more than 6 decimals")
    return int(micro)


def from_micro(micro: int) -> Decimal:
    return (Decimal(int(micro)) / MICRO).quantize(Decimal("0.000001"))


def interconnect_mask(names: list[str] | tuple[str, ...]) -> int:
    if not names:
        return ANY_INTERCONNECT
    mask = 0
    for name in names:
        mask |= 1 << INTERCONNECTS.index(name)
    return mask


@dataclass
class SupplyBook:
    """Card-hour listings for sale. One row per listing; ``free[i, j]`` is free cards at hour j."""

    h0: int
    listing_id: np.ndarray  # int64 [L]
    node_id: np.ndarray  # int64 [L]
    supplier: np.ndarray  # int64 [L]
    chip: np.ndarray  # int32 [L], index into the chip table
    region: np.ndarray  # int32 [L], index into the region table
    interconnect: np.ndarray  # int8 [L], index into INTERCONNECTS
    fabric: np.ndarray  # int32 [L], fabric group (one supplier, one fabric id, one chip), -1 if none
    ask: np.ndarray  # int64 [L], micro-CNY per card-hour
    min_cards: np.ndarray  # int16 [L]
    min_hours: np.ndarray  # int16 [L]
    free: np.ndarray  # int16 [L, H]
    # Listings in one price bucket share a uniform price per round (default: chip x hub).
    price_bucket: np.ndarray | None = None  # int64 [L]; None means by chip

    @property
    def size(self) -> int:
        return int(self.listing_id.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.free.shape[1])


@dataclass
class DemandBook:
    """Open card-hour orders. Options are CSR: order i accepts ``opt_chip[opt_ptr[i]:opt_ptr[i+1]]``
    with the matching ``opt_cards``. ``rule`` indexes the rows of ``allowed`` (rule x region)."""

    order_id: np.ndarray  # int64 [O]
    arrival: np.ndarray  # int64 [O], earlier first among equal bids
    bid: np.ndarray  # int64 [O], micro-CNY per card-hour
    duration: np.ndarray  # int16 [O]
    earliest: np.ndarray  # int32 [O], relative hour
    latest_end: np.ndarray  # int32 [O], relative hour (exclusive)
    interconnects: np.ndarray  # int8 [O], bit mask over INTERCONNECTS
    placement: np.ndarray  # int8 [O], SINGLE_NODE or SAME_FABRIC
    rule: np.ndarray  # int32 [O]
    opt_ptr: np.ndarray  # int64 [O+1]
    opt_chip: np.ndarray  # int32 [K]
    opt_cards: np.ndarray  # int16 [K]
    allowed: np.ndarray  # bool [R_rules, R_regions]
    bucket: np.ndarray | None = None  # int32 [O], for bucket-level pricing; 0 if None
    # The ordering organisation: never matched to its own listings (SupplyBook.supplier) nor to
    # those of an organisation related to it (EngineParams.related_parties). None: not checked.
    buyer: np.ndarray | None = None  # int64 [O]

    @property
    def size(self) -> int:
        return int(self.order_id.shape[0])


@dataclass
class EngineParams:
    # Best fit among near-cheapest: candidates whose ask is within this fraction of the cheapest
    # feasible ask compete on fit (leftover free cards), so large jobs still find whole nodes.
    fit_band: float = 0.01
    # Rejected (order_id, listing_id) pairs: an admin said no, so the engine never proposes them again.
    excluded_pairs: frozenset[tuple[int, int]] = frozenset()
    # (organisation, organisation) pairs an admin marked as related, in both directions: an
    # order of one is never matched to a listing of the other (with DemandBook.buyer).
    related_parties: frozenset[tuple[int, int]] = frozenset()
    price_rule: str = "uniform_clipped"


@dataclass
class Match:
    order_id: int
    start_hour: int  # absolute hour index
    end_hour: int
    cards: int
    parts: list[tuple[int, int]]  # (listing_id, cards)
    bid: int  # micro
    ask: int  # micro: the highest ask among the parts
    surplus: int  # micro-CNY: sum over parts of (bid - ask_part) x cards x hours
    price: int = 0  # micro, set by the price rule
    price_rule: str = ""


def _no_ints() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class EngineResult:
    """Matches as arrays (fast to persist), with ``matches`` building Match objects on demand.

    Match ``i`` covers parts ``part_ptr[i]:part_ptr[i+1]``.
    """

    order_id: np.ndarray = field(default_factory=_no_ints)
    start_hour: np.ndarray = field(default_factory=_no_ints)
    end_hour: np.ndarray = field(default_factory=_no_ints)
    cards: np.ndarray = field(default_factory=_no_ints)
    bid: np.ndarray = field(default_factory=_no_ints)
    ask: np.ndarray = field(default_factory=_no_ints)
    surplus: np.ndarray = field(default_factory=_no_ints)
    price: np.ndarray = field(default_factory=_no_ints)
    bucket: np.ndarray = field(default_factory=_no_ints)
    part_ptr: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    part_listing_id: np.ndarray = field(default_factory=_no_ints)
    part_cards: np.ndarray = field(default_factory=_no_ints)
    price_rule: str = ""

    @property
    def count(self) -> int:
        return int(self.order_id.shape[0])

    @property
    def welfare(self) -> int:
        """Total surplus in micro-CNY."""
        return int(self.surplus.sum())

    @property
    def matches(self) -> list[Match]:
        out = []
        for i in range(self.count):
            lo, hi = int(self.part_ptr[i]), int(self.part_ptr[i + 1])
            out.append(Match(
                order_id=int(self.order_id[i]), start_hour=int(self.start_hour[i]), end_hour=int(self.end_hour[i]),
                cards=int(self.cards[i]),
                parts=[(int(l), int(c)) for l, c in zip(self.part_listing_id[lo:hi], self.part_cards[lo:hi])],
                bid=int(self.bid[i]), ask=int(self.ask[i]), surplus=int(self.surplus[i]), price=int(self.price[i]),
                price_rule=self.price_rule))
        return out

    def by_order(self) -> dict[int, Match]:
        return {m.order_id: m for m in self.matches}
