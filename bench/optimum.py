"""Exact references for the engine's welfare: the MILP optimum and the LP relaxation bound.

A column is one way to serve one order: (order, option, listing, start hour). Its profit is
``(bid - ask) x cards x hours`` in micro-CNY. Rows: each order is served at most once; each
listing-hour's free cards are not exceeded. Single-node placements only, so the instances these
are used on have no multi-node orders.

- ``milp_optimum``: every column, integer, solved exactly by HiGHS (scipy.optimize.milp).
- ``lp_optimum``: every column, the LP relaxation, solved exactly by HiGHS (scipy.optimize.linprog).
- ``lp_bound``: the LP relaxation by column generation. Any restricted master's duals ``(lam, mu)``
  become feasible for the full dual once each ``mu_o`` is raised to the order's best reduced
  profit; that dual objective is a valid upper bound on the full LP, and equals it at convergence.
  Each round re-solves a master that grows by tens of thousands of columns: fine for benches of a
  few thousand orders, too slow for the simulated market's 20,000 (one round takes minutes).
- ``lp_dual_bound``: the same LP's dual minimised directly over the capacity prices, every column
  priced exactly on each evaluation (no master at all); it reaches the simulated market's LP
  optimum within a fraction of a percent in seconds, with a feasible primal to certify the gap.
"""
from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp, minimize

from matching.engine.types import DemandBook, SupplyBook


@njit(cache=True)
def _listing_fits(o, l, cards, dur, o_bid, o_ic, o_rule, allowed, l_region, l_ic, l_ask, l_min_cards,
                  l_min_hours):
    """Whether listing ``l`` may serve order ``o`` with ``cards`` cards for ``dur`` hours, whatever
    the calendar: 1 yes, 0 no, -1 its ask is above the bid (listings come cheapest first within a
    chip, so no later one can either)."""
    if l_ask[l] > o_bid[o]:
        return -1
    if not allowed[o_rule[o], l_region[l]] or (o_ic[o] >> l_ic[l]) & 1 == 0:
        return 0
    if cards < l_min_cards[l] or dur < l_min_hours[l]:
        return 0
    return 1


@njit(cache=True)
def _columns(count_only, o_bid, o_dur, o_e, o_lt, o_ic, o_rule, opt_ptr, opt_chip, opt_cards, allowed, l_chip, l_region,
             l_ic, l_ask, l_min_cards, l_min_hours, free, chip_ptr, chip_list, lam, out_o, out_l, out_s, out_c, out_p):
    """Enumerate columns (or, with ``lam`` given, only each order's best by reduced profit).
    Returns the count written."""
    n = 0
    pricing = lam.shape[0] > 0
    for o in range(o_bid.shape[0]):
        dur = o_dur[o]
        best_val = 0.0
        best = (-1, -1, -1, 0, 0)
        for k in range(opt_ptr[o], opt_ptr[o + 1]):
            chip = opt_chip[k]
            cards = opt_cards[k]
            for idx in range(chip_ptr[chip], chip_ptr[chip + 1]):
                l = chip_list[idx]
                fit = _listing_fits(o, l, cards, dur, o_bid, o_ic, o_rule, allowed, l_region, l_ic, l_ask,
                                    l_min_cards, l_min_hours)
                if fit < 0:
                    break
                if fit == 0:
                    continue
                profit = (o_bid[o] - l_ask[l]) * cards * dur
                for s in range(o_e[o], o_lt[o] - dur + 1):
                    ok = True
                    for h in range(s, s + dur):
                        if free[l, h] < cards:
                            ok = False
                            break
                    if not ok:
                        continue
                    if pricing:
                        cost = 0.0
                        for h in range(s, s + dur):
                            cost += lam[l, h]
                        val = profit - cards * cost
                        if val > best_val:
                            best_val = val
                            best = (o, l, s, cards, profit)
                    else:
                        if not count_only:
                            out_o[n], out_l[n], out_s[n], out_c[n], out_p[n] = o, l, s, cards, profit
                        n += 1
        if pricing and best[0] >= 0:
            out_o[n], out_l[n], out_s[n], out_c[n], out_p[n] = best
            n += 1
    return n


def _prepare(supply: SupplyBook, demand: DemandBook):
    order = np.lexsort((supply.listing_id, supply.ask, supply.chip))
    n_chips = int(max(supply.chip.max(), demand.opt_chip.max())) + 1
    chip_ptr = np.searchsorted(supply.chip[order], np.arange(n_chips + 1)).astype(np.int64)
    return (demand.bid, demand.duration.astype(np.int64), demand.earliest.astype(np.int64),
            demand.latest_end.astype(np.int64), demand.interconnects.astype(np.int64), demand.rule.astype(np.int64),
            demand.opt_ptr, demand.opt_chip.astype(np.int64), demand.opt_cards.astype(np.int64), demand.allowed,
            supply.chip.astype(np.int64), supply.region.astype(np.int64), supply.interconnect.astype(np.int64),
            supply.ask, supply.min_cards.astype(np.int64), supply.min_hours.astype(np.int64),
            supply.free.astype(np.int64), chip_ptr, order.astype(np.int64))


def _empty(n):
    return (np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64),
            np.empty(n, np.int64))


def all_columns(supply: SupplyBook, demand: DemandBook):
    args = _prepare(supply, demand)
    no_lam = np.zeros((0, 0))
    n = _columns(True, *args, no_lam, *_empty(0))
    cols = _empty(n)
    _columns(False, *args, no_lam, *cols)
    return cols


def _matrix(supply, demand, cols):
    o, l, s, c, p = cols
    horizon = supply.free.shape[1]
    dur = demand.duration.astype(np.int64)[o]
    n_cols = o.size
    # order rows
    rows = [o]
    data = [np.ones(n_cols)]
    colidx = [np.arange(n_cols)]
    # capacity rows, one per listing-hour: row id = O + l * H + h
    total = int(dur.sum())
    rep = np.repeat(np.arange(n_cols), dur)
    offset = np.arange(total) - np.repeat(np.cumsum(dur) - dur, dur)
    hours = s[rep] + offset
    rows.append(demand.size + l[rep] * horizon + hours)
    data.append(c[rep].astype(float))
    colidx.append(rep)
    rows = np.concatenate(rows)
    used_rows, compact = np.unique(rows, return_inverse=True)
    a = sparse.csr_matrix((np.concatenate(data), (compact, np.concatenate(colidx))), shape=(used_rows.size, n_cols))
    upper = np.ones(used_rows.size)
    cap = used_rows >= demand.size
    flat = used_rows[cap] - demand.size
    upper[cap] = supply.free.reshape(-1)[flat]
    return a, upper, used_rows


def milp_optimum(supply: SupplyBook, demand: DemandBook, time_limit: float = 300.0) -> dict:
    t0 = time.perf_counter()
    cols = all_columns(supply, demand)
    if cols[0].size == 0:  # nobody can be served: the optimum is to match nothing
        return {"welfare": 0.0, "bound": 0.0, "columns": 0, "seconds": time.perf_counter() - t0, "status": "empty"}
    a, upper, _ = _matrix(supply, demand, cols)
    profit = cols[4].astype(float)
    res = milp(-profit, constraints=LinearConstraint(a, -np.inf, upper), integrality=np.ones(profit.size),
               bounds=Bounds(0, 1), options={"time_limit": time_limit, "mip_rel_gap": 1e-6})
    if res.x is None:
        raise RuntimeError(f"MILP failed: {res.message}")
    return {"welfare": float(-res.fun), "bound": float(-getattr(res, "mip_dual_bound", res.fun)),
            "columns": int(profit.size), "seconds": time.perf_counter() - t0, "status": res.message}


def lp_optimum(supply: SupplyBook, demand: DemandBook) -> float:
    """The LP relaxation's optimum (micro-CNY) over every column, solved by HiGHS: exact, for
    instances small enough to enumerate (the reference the bounds below are tested against)."""
    cols = all_columns(supply, demand)
    if cols[0].size == 0:
        return 0.0
    a, upper, _ = _matrix(supply, demand, cols)
    res = linprog(-cols[4].astype(float), A_ub=a, b_ub=upper, bounds=(0, 1), method="highs")
    if res.status != 0:
        raise RuntimeError(f"LP failed: {res.message}")
    return float(-res.fun)


def lp_bound(supply: SupplyBook, demand: DemandBook, seed_cols=None, max_rounds: int = 60,
             tolerance: float = 1e-4, time_budget: float = 600.0, verbose: bool = False) -> dict:
    """Column generation for the LP relaxation on one warm-started HiGHS model: each round adds the
    improving columns and re-solves from the previous basis. Returns the best valid upper bound."""
    import highspy

    t0 = time.perf_counter()
    args = _prepare(supply, demand)
    horizon = supply.free.shape[1]
    free_flat = supply.free.reshape(-1).astype(float)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.addRows(demand.size, np.full(demand.size, -highspy.kHighsInf), np.ones(demand.size), 0,
              np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))
    cap_row: dict[int, int] = {}  # listing-hour -> row, created as columns first touch them
    pool = []

    def add_columns(cols) -> None:
        o, l, st, c, p = cols
        if o.size == 0:
            return
        dur = demand.duration.astype(np.int64)[o]
        cells = np.repeat(l * horizon, dur) + np.repeat(st, dur) + (
            np.arange(int(dur.sum())) - np.repeat(np.cumsum(dur) - dur, dur))
        new_cells = [int(x) for x in np.unique(cells) if int(x) not in cap_row]
        if new_cells:
            for x in new_cells:
                cap_row[x] = demand.size + len(cap_row)
            h.addRows(len(new_cells), np.full(len(new_cells), -highspy.kHighsInf), free_flat[new_cells], 0,
                      np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))
        rows = np.fromiter((cap_row[int(x)] for x in cells), dtype=np.int32, count=cells.size)
        starts = np.r_[0, np.cumsum(dur + 1)[:-1]].astype(np.int32)
        index = np.empty(int((dur + 1).sum()), dtype=np.int32)
        value = np.empty(index.size)
        index[starts] = o
        value[starts] = 1.0
        mask = np.ones(index.size, dtype=bool)
        mask[starts] = False
        index[mask] = rows
        value[mask] = np.repeat(c, dur).astype(float)
        h.addCols(o.size, -p.astype(float), np.zeros(o.size), np.ones(o.size), index.size, starts, index, value)
        pool.append(cols)

    lam = np.zeros((supply.size, horizon))
    first = _empty(demand.size)
    n = _columns(False, *args, lam, *first)
    add_columns(tuple(x[:n] for x in first))
    if seed_cols is not None:
        add_columns(seed_cols)
    best_bound, rmp_value, rounds = np.inf, 0.0, 0
    while rounds < max_rounds and time.perf_counter() - t0 < time_budget:
        rounds += 1
        h.run()
        rmp_value = -h.getInfo().objective_function_value
        duals = -np.asarray(h.getSolution().row_dual)  # >= 0 for the <= rows of a maximisation
        mu = duals[:demand.size].copy()
        lam = np.zeros(supply.size * horizon)
        if cap_row:
            cells = np.fromiter(cap_row.keys(), dtype=np.int64, count=len(cap_row))
            lam[cells] = duals[np.fromiter(cap_row.values(), dtype=np.int64, count=len(cap_row))]
        lam = np.maximum(lam, 0).reshape(supply.size, horizon)
        mu = np.maximum(mu, 0)
        new = _empty(demand.size)
        n = _columns(False, *args, lam, *new)
        new = tuple(x[:n] for x in new)
        cost = np.array([lam[l, s:s + demand.duration[o]].sum() for o, l, s in zip(new[0], new[1], new[2])])
        best_reduced = np.zeros(demand.size)
        if n:
            best_reduced[new[0]] = new[4] - new[3] * cost
        # (lam, max(mu, best reduced profit)) is feasible for the full dual: a valid upper bound.
        bound = float((lam * supply.free).sum() + np.maximum(mu, best_reduced).sum())
        best_bound = min(best_bound, bound)
        if verbose:
            print(f"    LP round {rounds}: {sum(c[0].size for c in pool)} columns, RMP {rmp_value / 1e6:,.1f}, "
                  f"bound {best_bound / 1e6:,.1f}, {time.perf_counter() - t0:.0f} s", flush=True)
        improving = best_reduced > mu + 1e-6 * np.maximum(1.0, mu)
        if best_bound - rmp_value <= tolerance * best_bound or not improving.any():
            break
        keep = improving[new[0]]
        add_columns(tuple(x[keep] for x in new))
    columns = tuple(np.concatenate([c[i] for c in pool]) for i in range(5))
    return {"bound": best_bound, "rmp": rmp_value, "rounds": rounds, "seconds": time.perf_counter() - t0,
            "gap": (best_bound - rmp_value) / best_bound if best_bound else 0.0, "columns": columns}


def certified_optimum(supply: SupplyBook, demand: DemandBook, seed_cols=None, time_limit: float = 120.0) -> dict:
    """The optimum, pinned between two certified values:

    - ``upper``: the LP relaxation bound (column generation), which no integer solution exceeds;
    - ``lower``: the exact MILP optimum over the columns column generation produced, solved by
      scipy.optimize.milp (HiGHS); a feasible integer solution of the full problem.
    ``gap`` = (upper - lower) / upper: how far from proven optimality the pair is.
    """
    t0 = time.perf_counter()
    lp = lp_bound(supply, demand, seed_cols=seed_cols)
    cols = lp["columns"]
    if cols[0].size == 0:
        return {"upper": 0.0, "lower": 0.0, "gap": 0.0, "seconds": time.perf_counter() - t0, "columns": 0}
    a, upper, _ = _matrix(supply, demand, cols)
    profit = cols[4].astype(float)
    res = milp(-profit, constraints=LinearConstraint(a, -np.inf, upper), integrality=np.ones(profit.size),
               bounds=Bounds(0, 1), options={"time_limit": time_limit, "mip_rel_gap": 1e-6})
    lower = float(-res.fun) if res.x is not None else 0.0
    return {"upper": lp["bound"], "lower": lower, "gap": (lp["bound"] - lower) / lp["bound"] if lp["bound"] else 0.0,
            "seconds": time.perf_counter() - t0, "columns": int(profit.size), "status": res.message}


# --- the LP bound by smoothing its dual --------------------------------------------------------
#
# The LP: maximise sum_c p_c x_c over columns c = (order o, listing l, start s, cards k), with
# sum_{c of o} x_c <= 1 per order, sum_{c using (l, h)} k_c x_c <= free[l, h] per listing-hour and
# x >= 0. For ANY prices lam >= 0 on the listing-hours, weak duality gives
#
#     LP <= D(lam) = sum_{l,h} lam[l,h] free[l,h] + sum_o max(0, max_{c of o} p_c - k_c sum_{h in c} lam[l_c,h])
#
# (for feasible x: sum p x <= sum p x + sum lam (free - A x) = sum lam free + sum_o sum_{c of o}
# x_c (p_c - k_c lam(c)) <= the right-hand side, as each order's x sum to at most 1). Every
# evaluation prices every column exactly (prefix sums of lam make a window's cost O(1)), so D(lam)
# is a valid upper bound on the LP, hence on the offline optimum, whichever lam the search found;
# and min D = LP (strong duality). The search minimises a smoothed D: each order's max replaced by
# tau log(1 + sum_c exp(reduced_c / tau)), which is convex and differentiable in lam (its gradient
# is free minus the card usage of the softmax weights, which are a fractional primal), by L-BFGS-B
# with tau shrinking in stages. The smoothing only steers the search: the bound reported is the
# least exact D seen. A feasible primal certifies the gap: the last softmax weights, each scaled
# down by the worst overbooking of the listing-hours it uses (LP-feasible), and a greedy integer
# plan taking columns by weight (feasible offline, so at most the offline optimum).


@njit(cache=True)
def _walk(o, o_bid, o_dur, o_e, o_lt, o_ic, o_rule, opt_ptr, opt_chip, opt_cards, allowed, l_region, l_ic, l_ask,
          l_min_cards, l_min_hours, free, chip_ptr, chip_list, P, buf_v, buf_l, buf_s, buf_c):
    """Every column of order ``o`` into the buffers (reduced profit in CNY at prefix-summed prices
    ``P``, listing, start, cards); returns (count, best reduced profit or 0)."""
    H = free.shape[1]
    dur = o_dur[o]
    e, lt = o_e[o], o_lt[o]
    n = 0
    m = 0.0
    for k in range(opt_ptr[o], opt_ptr[o + 1]):
        chip = opt_chip[k]
        cards = opt_cards[k]
        for idx in range(chip_ptr[chip], chip_ptr[chip + 1]):
            l = chip_list[idx]
            fit = _listing_fits(o, l, cards, dur, o_bid, o_ic, o_rule, allowed, l_region, l_ic, l_ask, l_min_cards,
                                l_min_hours)
            if fit < 0:
                break
            if fit == 0:
                continue
            profit = (o_bid[o] - l_ask[l]) * cards * dur * 1e-6
            short = 0  # hours of the window [s, s + dur) with fewer than ``cards`` free, slid along
            for h in range(e, min(e + dur, H)):
                if free[l, h] < cards:
                    short += 1
            for s in range(e, lt - dur + 1):
                if s > e:
                    if free[l, s - 1] < cards:
                        short -= 1
                    if free[l, s + dur - 1] < cards:
                        short += 1
                if short:
                    continue
                v = profit - cards * (P[l, s + dur] - P[l, s])
                buf_v[n], buf_l[n], buf_s[n], buf_c[n] = v, l, s, cards
                n += 1
                if v > m:
                    m = v
    return n, m


@njit(cache=True)
def _softmax(tau, n, m, buf_v):
    """Turns the ``n`` reduced profits in ``buf_v`` into unnormalised softmax weights (relative to
    the best, 0 below e^-36, which changes nothing in double precision) and returns their
    normaliser, 'not served' (reduced profit 0) included."""
    total = np.exp(-m / tau)
    cut = m - 36.0 * tau
    for i in range(n):
        if buf_v[i] > cut:
            buf_v[i] = np.exp((buf_v[i] - m) / tau)
            total += buf_v[i]
        else:
            buf_v[i] = 0.0
    return total


@njit(cache=True, parallel=True)
def _evaluate(tau, o_bid, o_dur, o_e, o_lt, o_ic, o_rule, opt_ptr, opt_chip, opt_cards, allowed, l_chip, l_region, l_ic,
              l_ask, l_min_cards, l_min_hours, free, chip_ptr, chip_list, P, chunks, usage, buf_v, buf_l, buf_s, buf_c,
              best, smooth):
    """Per order: its best reduced profit (``best``) and smoothed max (``smooth``); ``usage[t]``
    gets thread t's softmax card usage as difference arrays over hours."""
    for ch in prange(chunks.shape[0] - 1):
        t = numba.get_thread_id()
        bv, bl, bs, bc, diff = buf_v[t], buf_l[t], buf_s[t], buf_c[t], usage[t]
        for o in range(chunks[ch], chunks[ch + 1]):
            n, m = _walk(o, o_bid, o_dur, o_e, o_lt, o_ic, o_rule, opt_ptr, opt_chip, opt_cards, allowed, l_region, l_ic,
                         l_ask, l_min_cards, l_min_hours, free, chip_ptr, chip_list, P, bv, bl, bs, bc)
            total = _softmax(tau, n, m, bv)
            best[o] = m
            smooth[o] = m + tau * np.log(total)
            for i in range(n):
                if bv[i] > 0.0:
                    w = bv[i] / total * bc[i]
                    diff[bl[i], bs[i]] += w
                    diff[bl[i], bs[i] + o_dur[o]] -= w


@njit(cache=True)
def _plan(sequence, o_bid, o_dur, o_e, o_lt, o_ic, o_rule, opt_ptr, opt_chip, opt_cards, allowed, l_chip, l_region,
          l_ic, l_ask, l_min_cards, l_min_hours, free, chip_ptr, chip_list, P, buf_v, buf_l, buf_s, buf_c, out_l, out_s,
          out_c, floor):
    """A feasible integer plan guided by the prices behind ``P``: orders in ``sequence``, each
    placed on the column with the best reduced profit above ``floor`` among those the cards left
    still fit (the first, i.e. earliest start, among equals). ``out_l[o] = -1`` when an order is
    not placed."""
    left = free.copy()
    for o in sequence:
        out_l[o] = -1
        n, m = _walk(o, o_bid, o_dur, o_e, o_lt, o_ic, o_rule, opt_ptr, opt_chip, opt_cards, allowed, l_region, l_ic,
                     l_ask, l_min_cards, l_min_hours, free, chip_ptr, chip_list, P, buf_v, buf_l, buf_s, buf_c)
        dur = o_dur[o]
        chosen, value = -1, floor
        for i in range(n):
            if buf_v[i] <= value:
                continue
            fits = True
            for h in range(buf_s[i], buf_s[i] + dur):
                if left[buf_l[i], h] < buf_c[i]:
                    fits = False
                    break
            if fits:
                chosen, value = i, buf_v[i]
        if chosen >= 0:
            l, s, c = buf_l[chosen], buf_s[chosen], buf_c[chosen]
            for h in range(s, s + dur):
                left[l, h] -= c
            out_l[o], out_s[o], out_c[o] = l, s, c


def greedy_plan(supply: SupplyBook, demand: DemandBook, *, sequence: np.ndarray, lam: np.ndarray | None = None,
                floor: float = -np.inf) -> dict:
    """Orders taken in ``sequence`` (order indices), each placed on the column with the best
    surplus net of the prices ``lam`` (CNY per card-hour, listing x hour; none: the cheapest
    listing that fits) among those still fitting, if that exceeds ``floor`` (CNY; 0 makes the
    prices reserve prices). Returns ``value`` (micro-CNY, checked feasible), ``orders`` placed and
    ``columns`` (order, listing, start, cards, profit)."""
    args = _prepare(supply, demand)
    n_listings, horizon = supply.free.shape
    prefix = np.zeros((n_listings, horizon + 1))
    if lam is not None:
        np.cumsum(lam, axis=1, out=prefix[:, 1:])
    width = _widest(supply, demand)
    bufs = (np.empty(width), np.empty(width, np.int64), np.empty(width, np.int64), np.empty(width, np.int64))
    placed = tuple(np.full(demand.size, -1, np.int64) for _ in range(3))
    _plan(np.asarray(sequence, dtype=np.int64), *args[:19], prefix, *bufs, *placed, float(floor))
    o = np.flatnonzero(placed[0] >= 0)
    duration = demand.duration.astype(np.int64)
    cols = (o, placed[0][o], placed[1][o], placed[2][o],
            (demand.bid[o] - supply.ask[placed[0][o]]) * placed[2][o] * duration[o])
    value = _feasible_value(cols, duration, supply.free.astype(float), demand.size)
    return {"value": value, "orders": int(o.size), "columns": cols}


def _widest(supply: SupplyBook, demand: DemandBook) -> int:
    """The most columns one order can have: its chips' listings times its possible starts."""
    duration = demand.duration.astype(np.int64)
    starts = np.maximum(0, demand.latest_end.astype(np.int64) - demand.earliest - duration + 1)
    listings_of = np.bincount(supply.chip, minlength=int(demand.opt_chip.max()) + 1)[demand.opt_chip]
    return int((np.add.reduceat(listings_of, demand.opt_ptr[:-1]) * starts).max()) + 1


def _cells(cols, duration, horizon):
    """Each column's listing-hour cells, flattened, with the column each belongs to."""
    o, l, s = cols[0], cols[1], cols[2]
    dur = duration[o]
    owner = np.repeat(np.arange(o.size), dur)
    offset = np.arange(int(dur.sum())) - np.repeat(np.cumsum(dur) - dur, dur)
    return (l[owner] * horizon + s[owner] + offset), owner


def _feasible_value(cols, duration, free, n_orders) -> float:
    """The profit of a set of integer columns if it is a feasible plan (each order at most once,
    no listing-hour overbooked), else 0."""
    if cols[0].size == 0 or np.bincount(cols[0], minlength=n_orders).max() > 1:
        return 0.0
    cells, owner = _cells(cols, duration, free.shape[1])
    booked = np.zeros(free.size)
    np.add.at(booked, cells, cols[3][owner])
    return float(cols[4].sum()) if (booked <= free.reshape(-1)).all() else 0.0


def lp_dual_bound(supply: SupplyBook, demand: DemandBook, *, seed_cols=None, time_budget: float = 30.0,
                  stages: tuple[tuple[float, int], ...] = ((1 / 32, 30), (1 / 128, 30), (1 / 640, 40), (1 / 3200, 40)),
                  tolerance: float = 0.02, verbose: bool = False) -> dict:
    """An upper bound on the LP relaxation's optimum (micro-CNY), with feasible values beneath it.

    ``stages``: (tau as a share of an order's mean best profit at zero prices, L-BFGS-B
    iterations); on the simulated market (23,000 orders, 960 listings, 72 hours) an evaluation
    takes 0.2 to 0.5 s, and after the first three stages the bound is within about 0.3% of where
    much longer searches settle.
    Returns, in micro-CNY, ``bound`` (the least D(lam) evaluated: a valid upper bound on the LP,
    hence on every offline plan, see above), ``plan`` (the best feasible integer plan the prices
    guided the greedy to), ``seeded`` (the seed columns' profit if they form a feasible plan, else
    0) and ``lower`` (the better of the two: the offline optimum is at least this); ``gap`` =
    (bound - lower) / bound, which covers both the search's distance from the LP optimum and the
    LP's distance from the integer optimum (1 to 2% on the simulated market), ``converged``
    (gap within ``tolerance``: the bound then overstates the offline optimum by at most that
    share), ``evaluations``, ``seconds`` and ``lam`` (the prices behind the bound, CNY per
    card-hour). ``time_budget`` stops the search; the plans after it take a second or two.
    """
    t0 = time.perf_counter()
    if demand.size == 0 or supply.size == 0:
        return {"bound": 0.0, "lower": 0.0, "plan": 0.0, "seeded": 0.0, "gap": 0.0, "converged": True,
                "evaluations": 0, "search_seconds": 0.0, "seconds": 0.0, "lam": np.zeros(supply.free.shape)}
    args = _prepare(supply, demand)
    n_orders, (n_listings, horizon) = demand.size, supply.free.shape
    duration = demand.duration.astype(np.int64)
    free = supply.free.astype(float)
    live = (free > 0).reshape(-1)  # prices on listing-hours with nothing free change nothing
    threads = numba.get_num_threads()
    width = _widest(supply, demand)
    bufs = (np.empty((threads, width)), np.empty((threads, width), np.int64), np.empty((threads, width), np.int64),
            np.empty((threads, width), np.int64))
    chunks = np.linspace(0, n_orders, min(n_orders, 64 * threads) + 1).astype(np.int64)
    best_o, smooth_o = np.zeros(n_orders), np.zeros(n_orders)
    state = {"bound": np.inf, "lam": None, "x": None, "evaluations": 0}

    def prices(x):
        lam = np.zeros(n_listings * horizon)
        lam[live] = x
        lam = lam.reshape(n_listings, horizon)
        prefix = np.zeros((n_listings, horizon + 1))
        np.cumsum(lam, axis=1, out=prefix[:, 1:])
        return lam, prefix

    def smoothed(x, tau):
        lam, prefix = prices(x)
        usage = np.zeros((threads, n_listings, horizon + 1))
        _evaluate(tau, *args[:19], prefix, chunks, usage, *bufs, best_o, smooth_o)
        base = float((lam * free).sum())
        exact = base + float(best_o.sum())
        state["evaluations"] += 1
        if exact < state["bound"]:
            state["bound"], state["lam"], state["x"] = exact, lam, x.copy()
        gradient = free - np.cumsum(usage.sum(axis=0), axis=1)[:, :horizon]
        return base + float(smooth_o.sum()), gradient.reshape(-1)[live]

    def out_of_time(_):
        if time.perf_counter() - t0 > time_budget:
            raise StopIteration

    x = np.zeros(int(live.sum()))
    smoothed(x, 1.0)  # zero prices: the bound with no capacity limits, and the scale of an order's profit
    unpriced = best_o.copy()
    scale = max(float(unpriced.mean()), 1e-6)
    tau = scale
    for share, iterations in stages:
        if time.perf_counter() - t0 > time_budget or not x.size:
            break
        tau = share * scale
        x = minimize(smoothed, x, args=(tau,), jac=True, method="L-BFGS-B", bounds=[(0, None)] * x.size,
                     callback=out_of_time, options={"maxiter": iterations, "maxfun": 2 * iterations, "maxcor": 20}).x
        if verbose:
            print(f"    tau {tau:.3g}: {state['evaluations']} evaluations, bound {state['bound']:,.1f} CNY, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    searched = time.perf_counter() - t0

    # certification: feasible integer plans. Orders go in decreasing reduced profit at the best prices
    # found (then decreasing profit), each onto the fitting column best at a share of those prices
    # (the share matters little; the best of a few is kept). Each plan is checked, not assumed.
    lam, prefix = prices(state["x"])
    _evaluate(tau, *args[:19], prefix, chunks, np.zeros((threads, n_listings, horizon + 1)), *bufs, best_o, smooth_o)
    sequence = np.lexsort((-unpriced, -best_o))
    plan = max(greedy_plan(supply, demand, sequence=sequence, lam=lam * share)["value"] for share in (0.0, 0.5, 0.75, 1.0))
    seeded = _feasible_value(seed_cols, duration, free, n_orders) if seed_cols is not None and len(seed_cols[0]) else 0.0
    bound = state["bound"] * 1e6 * (1 + 1e-9)  # micro-CNY; a hair above for floating-point sums
    lower = min(bound, max(plan, seeded))
    gap = (bound - lower) / bound if bound > 0 else 0.0
    return {"bound": bound, "lower": lower, "plan": plan, "seeded": seeded, "gap": gap,
            "converged": gap <= tolerance, "evaluations": state["evaluations"], "search_seconds": searched,
            "seconds": time.perf_counter() - t0, "lam": state["lam"]}
