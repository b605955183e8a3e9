"""Exact references for the engine's welfare: the MILP optimum and the LP relaxation bound.

A column is one way to serve one order: (order, option, listing, start hour). Its profit is
``(bid - ask) x cards x hours`` in micro-CNY. Rows: each order is served at most once; each
listing-hour's free cards are not exceeded. Single-node placements only, so the instances these
are used on have no multi-node orders.

- ``milp_optimum``: every column, integer, solved exactly by HiGHS (scipy.optimize.milp).
- ``lp_bound``: the LP relaxation by column generation. Any restricted master's duals ``(lam, mu)``
  become feasible for the full dual once each ``mu_o`` is raised to the order's best reduced
  profit; that dual objective is a valid upper bound on the full LP, and equals it at convergence.
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from matching.engine.types import DemandBook, SupplyBook


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
                if l_ask[l] > o_bid[o]:
                    break
                if not allowed[o_rule[o], l_region[l]] or (o_ic[o] >> l_ic[l]) & 1 == 0:
                    continue
                if cards < l_min_cards[l] or dur < l_min_hours[l]:
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
