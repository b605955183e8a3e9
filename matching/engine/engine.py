"""The engine's entry point: snapshot arrays in, priced matches out. Deterministic: the same
snapshot always gives the same matches (stable sorts, integer arithmetic, no randomness)."""
from __future__ import annotations

import numpy as np

from .kernel import DEAD, greedy_match, probe_regret
from .pricing import apply_price_rule
from .types import ANY_INTERCONNECT, SAME_FABRIC, DemandBook, EngineParams, EngineResult, SupplyBook

MAX_BAND_CANDIDATES = 16


def _index(keys: np.ndarray, n: int) -> np.ndarray:
    """CSR pointer for sorted ``keys`` in [0, n)."""
    return np.searchsorted(keys, np.arange(n + 1), side="left").astype(np.int64)


def _i64(array: np.ndarray) -> np.ndarray:
    """int64 and C-contiguous: the kernels are compiled for contiguous arrays (``engine_warm``
    loads exactly those), and a strided view (``np.nonzero`` of a 2-D array) would make numba
    compile another specialisation, seconds, inside a round."""
    return np.ascontiguousarray(array, dtype=np.int64)


def run_engine(supply: SupplyBook, demand: DemandBook, params: EngineParams | None = None, *,
               baseline: bool = False) -> EngineResult:
    """Match ``demand`` against ``supply``. ``baseline=True`` runs the naive first-come first-fit
    reference (arrival order, listings in id order, first feasible wins) for comparison."""
    params = params or EngineParams()
    n_list, n_orders = supply.size, demand.size
    if n_list == 0 or n_orders == 0:
        return EngineResult()
    # Renumber listings in (chip, ask, id) order: walking a chip's listings cheapest first then
    # reads every per-listing array sequentially, which is what makes the walk fast.
    layout = np.lexsort((supply.listing_id, supply.chip)) if baseline else \
        np.lexsort((supply.listing_id, supply.ask, supply.chip))
    supply = _permute(supply, layout)
    ix = _Indexes(supply, demand, baseline=baseline)

    excl = _exclusions(supply, demand, params)

    free = supply.free.astype(np.int32, copy=True)
    o = {name: _i64(getattr(demand, name)) for name in
         ("duration", "earliest", "latest_end", "interconnects", "placement", "rule", "opt_ptr", "opt_chip",
          "opt_cards")}
    l_region, l_ic = _i64(supply.region), _i64(supply.interconnect)
    l_min_cards, l_min_hours = _i64(supply.min_cards), _i64(supply.min_hours)

    if baseline:
        order_seq = np.lexsort((demand.order_id, demand.arrival))
        opt_first = ix.chip_ptr[o["opt_chip"]]
    else:
        best, second, opt_first = _probe(supply, demand, ix, free, excl)
        order_seq = _priority(demand, best, second)

    fabric_orders = demand.placement == SAME_FABRIC
    max_cards = np.maximum.reduceat(demand.opt_cards, demand.opt_ptr[:-1]) if demand.opt_cards.size else 0
    capacity = n_orders + int(np.sum(np.where(fabric_orders, max_cards, 0)))
    out_start = np.full(n_orders, -1, dtype=np.int64)
    out_opt = np.full(n_orders, -1, dtype=np.int64)
    part_order = np.empty(capacity, dtype=np.int64)
    part_listing = np.empty(capacity, dtype=np.int64)
    part_cards = np.empty(capacity, dtype=np.int64)

    n_parts = greedy_match(
        _i64(order_seq), demand.bid, o["duration"], o["earliest"], o["latest_end"], o["interconnects"],
        o["placement"], o["rule"], o["opt_ptr"], o["opt_chip"], o["opt_cards"], opt_first, demand.allowed,
        ix.chip_ptr, ix.chip_list, ix.cell_ptr, ix.cell_list, ix.rr_ptr, ix.rr_list, supply.ask, l_region, l_ic,
        l_min_cards, l_min_hours, _i64(supply.chip), free, ix.fab_ptr, ix.fab_sorted, ix.chip_fab_ptr, ix.chip_fabs,
        int(round(params.fit_band * 1_000_000)), MAX_BAND_CANDIDATES,
        baseline, excl, out_start, out_opt, part_order, part_listing, part_cards)

    return _result(supply, demand, params, out_start, part_order[:n_parts], part_listing[:n_parts],
                   part_cards[:n_parts])


def engine_warm() -> None:
    """Load the compiled kernels into this process by matching a one-order book. numba keeps the
    machine code on disk (``cache=True``), but loading it costs a process about half a second on
    its first match; a worker calls this when it starts so that no round pays for it."""
    supply = SupplyBook(
        h0=0, listing_id=np.array([1], dtype=np.int64), node_id=np.array([1], dtype=np.int64),
        supplier=np.array([1], dtype=np.int64), chip=np.array([0], dtype=np.int32),
        region=np.array([0], dtype=np.int32), interconnect=np.array([0], dtype=np.int8),
        fabric=np.array([-1], dtype=np.int32), ask=np.array([1_000_000], dtype=np.int64),
        min_cards=np.array([1], dtype=np.int16), min_hours=np.array([1], dtype=np.int16),
        free=np.full((1, 4), 8, dtype=np.int16), price_bucket=np.array([0], dtype=np.int64))
    demand = DemandBook(
        order_id=np.array([1], dtype=np.int64), arrival=np.array([1], dtype=np.int64),
        bid=np.array([2_000_000], dtype=np.int64), duration=np.array([2], dtype=np.int32),
        earliest=np.array([0], dtype=np.int32), latest_end=np.array([4], dtype=np.int32),
        interconnects=np.array([ANY_INTERCONNECT], dtype=np.int8), placement=np.array([0], dtype=np.int8),
        rule=np.array([0], dtype=np.int32), opt_ptr=np.array([0, 1], dtype=np.int64),
        opt_chip=np.array([0], dtype=np.int32), opt_cards=np.array([4], dtype=np.int16),
        allowed=np.ones((1, 1), dtype=np.bool_), buyer=np.array([2], dtype=np.int64))
    if run_engine(supply, demand).count != 1:
        raise RuntimeError("the warm-up book did not match")


def _exclusions(supply: SupplyBook, demand: DemandBook, params: EngineParams) -> np.ndarray:
    """The (order, listing) pairs the kernel skips, as sorted keys ``order * n_list + listing``
    (indexes into the laid-out books): pairs an admin rejected, and every listing of the buyer's
    own organisation or of one related to it (no self-dealing)."""
    n_list = supply.size
    keys = []
    if params.excluded_pairs:
        o_index = {int(o): i for i, o in enumerate(demand.order_id)}
        l_index = {int(l): i for i, l in enumerate(supply.listing_id)}
        keys.append(np.array([o_index[o] * n_list + l_index[l] for o, l in params.excluded_pairs
                              if o in o_index and l in l_index], dtype=np.int64))
    if demand.buyer is not None:
        related: dict[int, list[int]] = {}
        for one, other in params.related_parties:
            related.setdefault(int(one), []).append(int(other))
        by_supplier = np.argsort(supply.supplier, kind="stable")
        sellers, first = np.unique(supply.supplier[by_supplier], return_index=True)
        bounds = np.append(first, n_list)
        listings_of = {int(s): by_supplier[bounds[k]:bounds[k + 1]].astype(np.int64) for k, s in enumerate(sellers)}
        # Only an order whose buyer also sells here, or has a related party, can be barred.
        barred = np.flatnonzero(np.isin(demand.buyer, np.array(list(listings_of) + list(related), dtype=np.int64)))
        for i in barred.tolist():
            buyer = int(demand.buyer[i])
            for org in (buyer, *related.get(buyer, ())):
                if org in listings_of:
                    keys.append(i * n_list + listings_of[org])
    if not keys:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(keys)).astype(np.int64)


def opening_best(supply: SupplyBook, demand: DemandBook) -> np.ndarray:
    """Each order's best single-node surplus at opening (micro-CNY), or -1 if it has none: an
    order with a value >= 0 is in the money."""
    supply = _permute(supply, np.lexsort((supply.listing_id, supply.ask, supply.chip)))
    ix = _Indexes(supply, demand, baseline=False)
    best, _, _ = _probe(supply, demand, ix, supply.free.astype(np.int32), np.zeros(0, dtype=np.int64))
    return best


def _permute(supply: SupplyBook, layout: np.ndarray) -> SupplyBook:
    fields = {name: getattr(supply, name)[layout] for name in (
        "listing_id", "node_id", "supplier", "chip", "region", "interconnect", "fabric", "ask", "min_cards",
        "min_hours", "free")}
    bucket = supply.price_bucket[layout] if supply.price_bucket is not None else None
    return SupplyBook(h0=supply.h0, price_bucket=bucket, **fields)


class _Indexes:
    """Listings by chip (cheapest first; the baseline takes them in id order), by (chip, region)
    cell, the regions each rule admits, and fabric groups (cheapest member first) by chip."""

    def __init__(self, supply: SupplyBook, demand: DemandBook, *, baseline: bool) -> None:
        n_list = supply.size
        n_chips = int(max(supply.chip.max(), demand.opt_chip.max() if demand.opt_chip.size else 0)) + 1
        n_regions = demand.allowed.shape[1]
        sort_keys = (supply.listing_id, supply.chip) if baseline else (supply.listing_id, supply.ask, supply.chip)
        self.chip_list = _i64(np.lexsort(sort_keys))
        if not np.array_equal(self.chip_list, np.arange(n_list)):  # the kernel's pointers rely on this layout
            raise RuntimeError("supply is not laid out in chip-list order")
        self.chip_ptr = _index(supply.chip[self.chip_list], n_chips)
        cell_key = _i64(supply.chip) * n_regions + supply.region
        self.cell_list = _i64(np.lexsort((supply.listing_id, supply.ask, cell_key)))
        self.cell_ptr = _index(cell_key[self.cell_list], n_chips * n_regions)
        rr_rule, rr_region = np.nonzero(demand.allowed)
        self.rr_ptr = _index(rr_rule, demand.allowed.shape[0])
        self.rr_list = _i64(rr_region)
        in_fabric = np.flatnonzero(supply.fabric >= 0)
        self.fab_sorted = _i64(in_fabric[np.lexsort((supply.listing_id[in_fabric], supply.ask[in_fabric],
                                                     supply.fabric[in_fabric]))])
        _, fab_starts = np.unique(supply.fabric[self.fab_sorted], return_index=True)
        self.fab_ptr = _i64(np.append(fab_starts, self.fab_sorted.size))
        fab_chip = supply.chip[self.fab_sorted[fab_starts]] if self.fab_sorted.size else np.zeros(0, dtype=np.int32)
        self.chip_fabs = _i64(np.argsort(fab_chip, kind="stable"))
        self.chip_fab_ptr = _index(fab_chip[self.chip_fabs], n_chips)


def _probe(supply: SupplyBook, demand: DemandBook, ix: _Indexes, free: np.ndarray, excl: np.ndarray):
    best = np.empty(demand.size, dtype=np.int64)
    second = np.empty(demand.size, dtype=np.int64)
    opt_first = np.empty(demand.opt_chip.size, dtype=np.int64)
    probe_regret(demand.bid, _i64(demand.duration), _i64(demand.earliest), _i64(demand.latest_end),
                 _i64(demand.interconnects), _i64(demand.rule), _i64(demand.opt_ptr), _i64(demand.opt_chip),
                 _i64(demand.opt_cards), demand.allowed, ix.chip_ptr, ix.chip_list, ix.cell_ptr, ix.cell_list,
                 ix.rr_ptr, ix.rr_list, supply.ask, _i64(supply.region), _i64(supply.interconnect),
                 _i64(supply.min_cards), _i64(supply.min_hours), free, excl, best, second, opt_first)
    return best, second, opt_first


def _priority(demand: DemandBook, best: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Processing order. Orders that only a multi-node fabric placement can serve go first (they
    need the most contiguous capacity), then by regret (what an order loses if its best listing
    goes elsewhere), then bid, then arrival: price-time priority among equals. Orders with no
    feasible listing at all are left out: capacity only shrinks during a round."""
    fabric_only = (best < 0) & (demand.placement == SAME_FABRIC)
    regret = np.where(second >= 0, best - second, best)
    candidates = np.flatnonzero((best >= 0) | fabric_only)
    seq = np.lexsort((demand.order_id[candidates], demand.arrival[candidates], -demand.bid[candidates],
                      -regret[candidates], ~fabric_only[candidates]))
    return candidates[seq]


def _result(supply, demand, params, out_start, part_order, part_listing, part_cards) -> EngineResult:
    if part_order.size == 0:
        return EngineResult()
    # The kernel writes an order's parts together, so each match is a contiguous run of parts.
    starts = np.flatnonzero(np.r_[True, part_order[1:] != part_order[:-1]])
    orders = part_order[starts]
    duration = _i64(demand.duration[orders])
    part_ask = supply.ask[part_listing]
    start_hour = out_start[orders] + supply.h0
    price_bucket = supply.price_bucket if supply.price_bucket is not None else supply.chip
    result = EngineResult(
        order_id=demand.order_id[orders], start_hour=start_hour, end_hour=start_hour + duration,
        cards=np.add.reduceat(part_cards, starts), bid=demand.bid[orders], ask=np.maximum.reduceat(part_ask, starts),
        surplus=np.add.reduceat((demand.bid[part_order] - part_ask) * part_cards, starts) * duration,
        price=np.zeros(starts.size, dtype=np.int64), bucket=_i64(price_bucket[part_listing[starts]]),
        part_ptr=_i64(np.r_[starts, part_order.size]), part_listing_id=supply.listing_id[part_listing],
        part_cards=part_cards.copy(),
    )
    apply_price_rule(params.price_rule, result)
    return result
