"""Property tests on the pure engine: random small markets, every hard constraint checked."""
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.market import generate_market
from bench.optimum import milp_optimum
from matching.engine import engine as engine_module
from matching.engine.engine import run_engine
from matching.engine.pricing import PRICE_RULES
from matching.engine.types import (ANY_INTERCONNECT, MICRO, SAME_FABRIC, SINGLE_NODE, DemandBook, EngineParams,
                                   SupplyBook)

N_CHIPS, N_REGIONS = 3, 4
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def markets(draw, *, inflexible_single_card: bool = False):
    horizon = draw(st.integers(1, 8))
    n_list = draw(st.integers(1, 8))
    n_orders = draw(st.integers(1, 14))
    cards = [draw(st.integers(1, 8)) for _ in range(n_list)]
    fabric = [draw(st.sampled_from([-1, -1, 0, 1])) for _ in range(n_list)]
    chip = [draw(st.integers(0, N_CHIPS - 1)) for _ in range(n_list)]
    supplier = list(range(n_list))
    for i in range(n_list):  # a fabric group is one supplier and one chip
        if fabric[i] >= 0:
            chip[i] = fabric[i] % N_CHIPS
            supplier[i] = 1000 + fabric[i]
    free = np.array([[draw(st.integers(0, cards[i])) for _ in range(horizon)] for i in range(n_list)], dtype=np.int16)
    supply = SupplyBook(
        h0=100, listing_id=np.arange(1, n_list + 1, dtype=np.int64), node_id=np.arange(1, n_list + 1, dtype=np.int64),
        supplier=np.array(supplier, dtype=np.int64), chip=np.array(chip, dtype=np.int32),
        region=np.array([draw(st.integers(0, N_REGIONS - 1)) for _ in range(n_list)], dtype=np.int32),
        interconnect=np.array([draw(st.integers(0, 3)) for _ in range(n_list)], dtype=np.int8),
        fabric=np.array(fabric, dtype=np.int32),
        ask=np.array([draw(st.integers(1, 20)) * MICRO // 2 for _ in range(n_list)], dtype=np.int64),
        min_cards=np.array([1 if inflexible_single_card else draw(st.integers(1, 2)) for _ in range(n_list)],
                           dtype=np.int16),
        min_hours=np.array([1 if inflexible_single_card else draw(st.integers(1, 2)) for _ in range(n_list)],
                           dtype=np.int16),
        free=free,
    )
    n_rules = draw(st.integers(1, 3))
    allowed = np.array([[draw(st.booleans()) for _ in range(N_REGIONS)] for _ in range(n_rules)], dtype=np.bool_)
    allowed[0, :] = True  # rule 0 is "anywhere"
    opt_ptr, opt_chip, opt_cards = [0], [], []
    bids, durations, earliest, latest, ic, placement, rule = [], [], [], [], [], [], []
    for _ in range(n_orders):
        if inflexible_single_card:
            chips, c, dur, e = [draw(st.integers(0, N_CHIPS - 1))], 1, 1, draw(st.integers(0, horizon - 1))
            lt, r, mask, place = e + 1, 0, ANY_INTERCONNECT, SINGLE_NODE
        else:
            chips = sorted(draw(st.sets(st.integers(0, N_CHIPS - 1), min_size=1, max_size=N_CHIPS)))
            c = draw(st.integers(1, 10))
            dur = draw(st.integers(1, min(3, horizon)))
            e = draw(st.integers(0, horizon - dur))
            lt = draw(st.integers(e + dur, horizon))
            r = draw(st.integers(0, n_rules - 1))
            mask = draw(st.sampled_from([ANY_INTERCONNECT, 1, 2, 4, 8, 12]))
            place = draw(st.sampled_from([SINGLE_NODE, SAME_FABRIC]))
        for chip_id in chips:
            opt_chip.append(chip_id)
            opt_cards.append(c)
        opt_ptr.append(len(opt_chip))
        bids.append(draw(st.integers(1, 24)) * MICRO // 2)
        durations.append(dur)
        earliest.append(e)
        latest.append(lt)
        ic.append(mask)
        placement.append(place)
        rule.append(r)
    demand = DemandBook(
        order_id=np.arange(1, n_orders + 1, dtype=np.int64) * 10,
        arrival=np.array(draw(st.permutations(list(range(n_orders)))), dtype=np.int64),
        bid=np.array(bids, dtype=np.int64), duration=np.array(durations, dtype=np.int16),
        earliest=np.array(earliest, dtype=np.int32), latest_end=np.array(latest, dtype=np.int32),
        interconnects=np.array(ic, dtype=np.int8), placement=np.array(placement, dtype=np.int8),
        rule=np.array(rule, dtype=np.int32), opt_ptr=np.array(opt_ptr, dtype=np.int64),
        opt_chip=np.array(opt_chip, dtype=np.int32), opt_cards=np.array(opt_cards, dtype=np.int16), allowed=allowed)
    excluded = frozenset(draw(st.sets(st.tuples(st.sampled_from(demand.order_id.tolist()),
                                                st.sampled_from(supply.listing_id.tolist())), max_size=3)))
    return supply, demand, excluded


def _check_hard_constraints(supply: SupplyBook, demand: DemandBook, excluded, result) -> None:
    listing = {int(l): i for i, l in enumerate(supply.listing_id)}
    order = {int(o): i for i, o in enumerate(demand.order_id)}
    used = defaultdict(int)
    seen_orders = set()
    for m in result.matches:
        o = order[m.order_id]
        assert m.order_id not in seen_orders, "an order matched twice"
        seen_orders.add(m.order_id)
        # prices: individually rational for everyone
        assert m.ask <= m.price <= m.bid == demand.bid[o]
        assert all(supply.ask[listing[l]] <= m.price for l, _ in m.parts)
        # time: inside the window, exactly the duration
        assert m.end_hour - m.start_hour == demand.duration[o]
        assert demand.earliest[o] <= m.start_hour - supply.h0 and m.end_hour - supply.h0 <= demand.latest_end[o]
        # chip and all-or-nothing: one chip, exactly that option's cards
        chips = {int(supply.chip[listing[l]]) for l, _ in m.parts}
        assert len(chips) == 1
        options = {int(demand.opt_chip[k]): int(demand.opt_cards[k])
                   for k in range(demand.opt_ptr[o], demand.opt_ptr[o + 1])}
        assert options[chips.pop()] == m.cards == sum(c for _, c in m.parts)
        # placement: one node, or several of one fabric group for a same-fabric order
        if len(m.parts) > 1:
            assert demand.placement[o] == SAME_FABRIC
            groups = {int(supply.fabric[listing[l]]) for l, _ in m.parts}
            assert len(groups) == 1 and groups.pop() >= 0
        for l, c in m.parts:
            i = listing[l]
            assert demand.allowed[demand.rule[o], supply.region[i]], "region policy violated"
            assert (int(demand.interconnects[o]) >> int(supply.interconnect[i])) & 1, "interconnect violated"
            assert c >= supply.min_cards[i] and m.end_hour - m.start_hour >= supply.min_hours[i]
            assert (m.order_id, l) not in excluded
            for h in range(m.start_hour, m.end_hour):
                used[(i, h - supply.h0)] += c
    for (i, h), cards in used.items():
        assert cards <= supply.free[i, h], "capacity exceeded"


@PROPERTY_SETTINGS
@given(markets(), st.sampled_from(sorted(PRICE_RULES)))
def test_engine_never_breaks_a_hard_constraint(market, rule):
    supply, demand, excluded = market
    result = run_engine(supply, demand, EngineParams(excluded_pairs=excluded, price_rule=rule))
    _check_hard_constraints(supply, demand, excluded, result)
    assert result.price_rule == rule or result.count == 0


@PROPERTY_SETTINGS
@given(markets())
def test_engine_is_deterministic(market):
    supply, demand, excluded = market
    a = run_engine(supply, demand, EngineParams(excluded_pairs=excluded))
    b = run_engine(supply, demand, EngineParams(excluded_pairs=excluded))
    assert [(m.order_id, m.start_hour, m.parts, m.price) for m in a.matches] == \
        [(m.order_id, m.start_hour, m.parts, m.price) for m in b.matches]


@PROPERTY_SETTINGS
@given(markets())
def test_baseline_respects_the_same_constraints(market):
    supply, demand, excluded = market
    _check_hard_constraints(supply, demand, excluded,
                            run_engine(supply, demand, EngineParams(excluded_pairs=excluded), baseline=True))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markets(inflexible_single_card=True))
def test_single_card_inflexible_markets_reach_the_exact_optimum(market):
    supply, demand, _ = market
    result = run_engine(supply, demand)
    optimum = milp_optimum(supply, demand, time_limit=30)["welfare"]
    assert result.welfare == pytest.approx(optimum, abs=1)


def test_large_jobs_still_find_whole_nodes():
    # given two 8-card nodes at the same price and, in arrival order, a 1-card job then an 8-card job
    free = np.full((2, 4), 8, dtype=np.int16)
    free[1, :] = 7  # the second node already runs one card
    supply = SupplyBook(h0=0, listing_id=np.array([1, 2]), node_id=np.array([1, 2]), supplier=np.array([1, 2]),
                        chip=np.array([0, 0], dtype=np.int32), region=np.array([0, 0], dtype=np.int32),
                        interconnect=np.array([3, 3], dtype=np.int8), fabric=np.array([-1, -1], dtype=np.int32),
                        ask=np.array([10 * MICRO, 10 * MICRO]), min_cards=np.array([1, 1], dtype=np.int16),
                        min_hours=np.array([1, 1], dtype=np.int16), free=free)
    demand = DemandBook(order_id=np.array([1, 2]), arrival=np.array([0, 1]), bid=np.array([12 * MICRO, 12 * MICRO]),
                        duration=np.array([4, 4], dtype=np.int16), earliest=np.array([0, 0], dtype=np.int32),
                        latest_end=np.array([4, 4], dtype=np.int32), interconnects=np.array([15, 15], dtype=np.int8),
                        placement=np.array([0, 0], dtype=np.int8), rule=np.array([0, 0], dtype=np.int32),
                        opt_ptr=np.array([0, 1, 2]), opt_chip=np.array([0, 0], dtype=np.int32),
                        opt_cards=np.array([1, 8], dtype=np.int16), allowed=np.ones((1, 1), dtype=np.bool_))
    # when matched, then the small job goes to the part-used node (best fit) and both jobs fit
    placed = {m.order_id: m.parts for m in run_engine(supply, demand).matches}
    assert placed == {1: [(2, 1)], 2: [(1, 8)]}
    # whereas first fit would have broken the whole node and left the 8-card job out
    naive = {m.order_id: m.parts for m in run_engine(supply, demand, baseline=True).matches}
    assert naive == {1: [(1, 1)]}


def test_uniform_price_is_one_price_per_bucket_clipped_to_each_match():
    from matching.engine.pricing import uniform_clipped
    from matching.engine.types import EngineResult

    r = EngineResult(order_id=np.arange(3), start_hour=np.zeros(3, np.int64), end_hour=np.ones(3, np.int64),
                     cards=np.ones(3, np.int64), bid=np.array([14, 12, 20]) * MICRO,
                     ask=np.array([10, 11, 19]) * MICRO, surplus=np.zeros(3, np.int64),
                     price=np.zeros(3, np.int64), bucket=np.zeros(3, np.int64))
    # midpoints 12, 11.5, 19.5 -> median 12; the third match is clipped up to its ask, 19
    assert (uniform_clipped(r) // (MICRO // 10)).tolist() == [120, 120, 190]


def test_a_real_book_reaches_the_kernels_as_contiguous_arrays(monkeypatch):
    # given a market with many region rules (np.nonzero of its region matrix gives strided views),
    # and the kernels watched as the engine calls them
    supply, demand, _ = generate_market(seed=3, n_orders=400, n_nodes=120)
    assert demand.allowed.shape[0] > 1
    layouts: dict[str, set[bool]] = {}

    def watched(name):
        kernel_function = getattr(engine_module, name)

        def call(*args):
            layouts.setdefault(name, set()).update(a.flags.c_contiguous for a in args if isinstance(a, np.ndarray))
            return kernel_function(*args)
        return call

    for name in ("greedy_match", "probe_regret"):
        monkeypatch.setattr(engine_module, name, watched(name))

    # when the engine matches it
    assert run_engine(supply, demand).count > 0

    # then every array either kernel got was C-contiguous: the layout engine_warm compiles and a
    # worker loads when it starts, so no round compiles a strided specialisation (seconds) itself
    assert layouts == {"greedy_match": {True}, "probe_regret": {True}}
