"""The allocation kernel, compiled with numba.

Plain Python over numpy arrays; numba compiles it (``cache=True`` keeps the machine code between
processes), and ``NUMBA_DISABLE_JIT=1`` runs the very same code as ordinary Python.

Two passes over the orders of a round:

``probe_regret`` (no allocation) finds, for every order, its best and second-best single-node
surplus over distinct listings at the opening state, and for every (order, chip option) where the
walk along that chip's ask-sorted listings may start: feasibility only shrinks during a round, so a
listing infeasible at opening stays infeasible, and an option with nothing feasible stays dead.

``greedy_match`` then takes orders in the priority the caller chose (regret first; see engine.py)
and, for each:
1. for every live (chip, cards) option, walks that chip's listings cheapest first while the ask is
   within the bid; a listing is a candidate if it meets every hard constraint (region rule,
   interconnect, minimum rental, not excluded by an admin) and has ``cards`` free for ``duration``
   consecutive hours inside the window (its earliest such start). Orders whose region rule admits
   few regions visit only the admitted (chip, region) cells;
2. among candidates whose ask is within ``band`` of the cheapest, takes the best fit: the least
   free capacity left over in the hours used, so whole nodes stay whole for large jobs;
3. across options, the largest surplus ``(bid - ask) x cards x hours`` wins;
4. a same-fabric order that no single node can hold is placed across nodes of one fabric group,
   cheapest nodes first, all or nothing.
"""
from __future__ import annotations

import numpy as np
from numba import njit

NO_LISTING = -1
DEAD = -1  # opt_first value: this option has no feasible listing this round


@njit(cache=True)
def _earliest_run(row, e, lt, dur, cards):
    """(start, leftover) of the first ``dur``-hour run in [e, lt) with ``cards`` free, else (-1, 0)."""
    streak = 0
    for j in range(e, lt):
        if row[j] >= cards:
            streak += 1
            if streak >= dur:
                start = j - dur + 1
                left = 0
                for k in range(start, start + dur):
                    left += row[k] - cards
                return start, left
        else:
            streak = 0
    return -1, 0


@njit(cache=True)
def _row_max(row):
    best = 0
    for v in row:
        if v > best:
            best = v
    return best


@njit(cache=True)
def _excluded(excl, key):
    if excl.shape[0] == 0:
        return False
    i = np.searchsorted(excl, key)
    return i < excl.shape[0] and excl[i] == key


@njit(cache=True)
def _eligible(l, o, rule, ic_mask, cards, dur, allowed, l_region, l_ic, l_min_cards, l_min_hours, excl, n_list):
    if not allowed[rule, l_region[l]]:
        return False
    if (ic_mask >> l_ic[l]) & 1 == 0:
        return False
    if cards < l_min_cards[l] or dur < l_min_hours[l]:
        return False
    if _excluded(excl, o * n_list + l):
        return False
    return True


@njit(cache=True)
def _is_narrow(rule, rr_ptr, n_regions):
    return (rr_ptr[rule + 1] - rr_ptr[rule]) * 3 < n_regions


@njit(cache=True)
def probe_regret(o_bid, o_dur, o_e, o_lt, o_ic, o_rule, opt_ptr, opt_chip, opt_cards, allowed, chip_ptr, chip_list,
                 cell_ptr, cell_list, rr_ptr, rr_list, l_ask, l_region, l_ic, l_min_cards, l_min_hours, free, excl,
                 out_best, out_second, opt_first):
    """Per order: best and second-best surplus over distinct listings at opening (-1 if none).
    Per option: where the main pass starts walking the chip list, or DEAD."""
    n_list = free.shape[0]
    n_regions = allowed.shape[1]
    for o in range(o_bid.shape[0]):
        bid = o_bid[o]
        dur = o_dur[o]
        rule = o_rule[o]
        best = -1
        second = -1
        best_l = -1
        narrow = _is_narrow(rule, rr_ptr, n_regions)
        for k in range(opt_ptr[o], opt_ptr[o + 1]):
            opt_first[k] = DEAD
            if o_lt[o] - o_e[o] < dur:
                continue
            chip = opt_chip[k]
            cards = opt_cards[k]
            if narrow:
                n_cells = rr_ptr[rule + 1] - rr_ptr[rule]
            else:
                n_cells = 1
            for ci in range(n_cells):
                if narrow:
                    cell = chip * n_regions + rr_list[rr_ptr[rule] + ci]
                    lo, hi = cell_ptr[cell], cell_ptr[cell + 1]
                else:
                    lo, hi = chip_ptr[chip], chip_ptr[chip + 1]
                found = 0
                for idx in range(lo, hi):
                    l = cell_list[idx] if narrow else chip_list[idx]
                    ask = l_ask[l]
                    if ask > bid:
                        break
                    surplus = (bid - ask) * cards * dur
                    if surplus <= second and opt_first[k] != DEAD:
                        break  # asks only rise: nothing later improves the top two, and the option is alive
                    if not _eligible(l, o, rule, o_ic[o], cards, dur, allowed, l_region, l_ic, l_min_cards,
                                     l_min_hours, excl, n_list):
                        continue
                    start, left = _earliest_run(free[l], o_e[o], o_lt[o], dur, cards)
                    if start < 0:
                        continue
                    if opt_first[k] == DEAD:
                        opt_first[k] = idx if not narrow else 0
                    if surplus > best:
                        if l != best_l:
                            second = best
                        best = surplus
                        best_l = l
                    elif surplus > second and l != best_l:
                        second = surplus
                    found += 1
                    if found >= 2:
                        break
        out_best[o] = best
        out_second[o] = second


@njit(cache=True)
def _search_chip(o, chip, cards, bid, dur, e, lt, rule, ic_mask, best_surplus, first, chip_ptr, chip_list, l_ask,
                 l_region, l_ic, l_min_cards, l_min_hours, l_max, free, allowed, excl, band_ppm, max_band_candidates,
                 first_fit):
    """Walk one chip's listings from ``first``, cheapest first; best fit within the band.
    Returns (listing, start, leftover, ask)."""
    n_list = free.shape[0]
    cand_l, cand_start, cand_left, cand_ask = NO_LISTING, -1, 0, 0
    band_limit = -1
    in_band = 0
    for idx in range(first, chip_ptr[chip + 1]):
        l = chip_list[idx]
        ask = l_ask[l]
        if first_fit:
            if ask > bid:
                continue
        elif ask > bid or (band_limit >= 0 and ask > band_limit):
            break
        elif best_surplus >= 0 and (bid - ask) * cards * dur < best_surplus:
            break  # asks only rise along the list: no later listing can beat the best option
        if l_max[l] < cards:
            continue
        if not _eligible(l, o, rule, ic_mask, cards, dur, allowed, l_region, l_ic, l_min_cards, l_min_hours, excl,
                         n_list):
            continue
        start, left = _earliest_run(free[l], e, lt, dur, cards)
        if start < 0:
            continue
        if cand_l == NO_LISTING:
            band_limit = ask + (ask * band_ppm) // 1000000
            cand_l, cand_start, cand_left, cand_ask = l, start, left, ask
        elif left < cand_left:
            cand_l, cand_start, cand_left, cand_ask = l, start, left, ask
        in_band += 1
        if first_fit or cand_left == 0 or in_band >= max_band_candidates:
            break
    return cand_l, cand_start, cand_left, cand_ask


@njit(cache=True)
def _search_cells(o, chip, cards, bid, dur, e, lt, rule, ic_mask, best_surplus, cell_ptr, cell_list, rr_ptr, rr_list,
                  n_regions, l_ask, l_region, l_ic, l_min_cards, l_min_hours, l_max, free, allowed, excl, band_ppm,
                  max_band_candidates):
    """``_search_chip`` for a rule that admits few regions, visiting only its (chip, region) cells:
    pass 1 finds the cheapest feasible ask, pass 2 the best fit within the band."""
    n_list = free.shape[0]
    cheapest = bid + 1
    cand_l, cand_start, cand_left, cand_ask = NO_LISTING, -1, 0, 0
    for ri in range(rr_ptr[rule], rr_ptr[rule + 1]):
        cell = chip * n_regions + rr_list[ri]
        for idx in range(cell_ptr[cell], cell_ptr[cell + 1]):
            l = cell_list[idx]
            ask = l_ask[l]
            if ask >= cheapest or (best_surplus >= 0 and (bid - ask) * cards * dur < best_surplus):
                break
            if l_max[l] < cards:
                continue
            if not _eligible(l, o, rule, ic_mask, cards, dur, allowed, l_region, l_ic, l_min_cards, l_min_hours,
                             excl, n_list):
                continue
            start, left = _earliest_run(free[l], e, lt, dur, cards)
            if start >= 0:
                cheapest = ask
                cand_l, cand_start, cand_left, cand_ask = l, start, left, ask
                break
    if cand_l == NO_LISTING or cand_left == 0:
        return cand_l, cand_start, cand_left, cand_ask
    band_limit = cheapest + (cheapest * band_ppm) // 1000000
    in_band = 1
    for ri in range(rr_ptr[rule], rr_ptr[rule + 1]):
        cell = chip * n_regions + rr_list[ri]
        for idx in range(cell_ptr[cell], cell_ptr[cell + 1]):
            l = cell_list[idx]
            ask = l_ask[l]
            if ask > band_limit:
                break
            if l == cand_l or l_max[l] < cards:
                continue
            if not _eligible(l, o, rule, ic_mask, cards, dur, allowed, l_region, l_ic, l_min_cards, l_min_hours,
                             excl, n_list):
                continue
            start, left = _earliest_run(free[l], e, lt, dur, cards)
            if start < 0:
                continue
            if left < cand_left or (left == cand_left and (ask < cand_ask or (ask == cand_ask and l < cand_l))):
                cand_l, cand_start, cand_left, cand_ask = l, start, left, ask
            in_band += 1
            if cand_left == 0 or in_band >= max_band_candidates:
                return cand_l, cand_start, cand_left, cand_ask
    return cand_l, cand_start, cand_left, cand_ask


@njit(cache=True)
def _first_free_init(free, chip_ptr, n_thresholds):
    """``ff[chip, h, t]``: first listing (in chip order) with at least ``t`` cards free at hour
    ``h``; the chip's end if none. Listings are laid out by chip, cheapest first."""
    n_chips = chip_ptr.shape[0] - 1
    horizon = free.shape[1]
    ff = np.empty((n_chips, horizon, n_thresholds + 1), dtype=np.int64)
    for chip in range(n_chips):
        lo, end = chip_ptr[chip], chip_ptr[chip + 1]
        for h in range(horizon):
            p = lo
            ff[chip, h, 0] = lo
            for t in range(1, n_thresholds + 1):
                while p < end and free[p, h] < t:
                    p += 1
                ff[chip, h, t] = p
    return ff


@njit(cache=True)
def _start_bound(ff, chip, cards, e, lt, dur, end):
    """No listing before this position can hold ``cards`` for ``dur`` hours inside [e, lt):
    every run needs ``cards`` free at each of its hours, so a listing must come at or after the
    pointer of every hour of some run."""
    if cards >= ff.shape[2]:
        return end
    best = end
    for s in range(e, lt - dur + 1):
        worst = 0
        for h in range(s, s + dur):
            v = ff[chip, h, cards]
            if v > worst:
                worst = v
                if worst >= best:
                    break
        if worst < best:
            best = worst
    return best


@njit(cache=True)
def _take(l, chip, start, dur, cards, free, l_max, ff, chip_end):
    """Sell ``cards`` on listing ``l`` for ``dur`` hours from ``start``; keep the pointers right."""
    n_t = ff.shape[2] - 1
    for h in range(start, start + dur):
        before = free[l, h]
        after = before - cards
        free[l, h] = after
        for t in range(after + 1, min(before, n_t) + 1):
            if ff[chip, h, t] == l:
                p = l + 1
                while p < chip_end and free[p, h] < t:
                    p += 1
                ff[chip, h, t] = p
    l_max[l] = _row_max(free[l])


@njit(cache=True)
def greedy_match(order_seq, o_bid, o_dur, o_e, o_lt, o_ic, o_place, o_rule, opt_ptr, opt_chip, opt_cards, opt_first,
                 allowed, chip_ptr, chip_list, cell_ptr, cell_list, rr_ptr, rr_list, l_ask, l_region, l_ic,
                 l_min_cards, l_min_hours, l_chip, free, fab_ptr, fab_members, chip_fab_ptr, chip_fabs, band_ppm,
                 max_band_candidates, first_fit, excl, out_start, out_opt, part_order, part_listing, part_cards):
    """Allocate in place (``free`` is decremented); returns the number of parts written.

    ``first_fit`` makes this the naive baseline: listings in the order given, first feasible wins,
    no probe (every ``opt_first`` is the start of its chip's list). Parts are appended to
    ``part_*`` in allocation order, an order's parts together.
    """
    n_list = free.shape[0]
    n_regions = allowed.shape[1]
    l_max = np.empty(n_list, dtype=np.int64)
    top = 0
    for l in range(n_list):
        l_max[l] = _row_max(free[l])
        top = max(top, l_max[l])
    ff = _first_free_init(free, chip_ptr, top)
    n_parts = 0
    best_parts_l = np.empty(64, dtype=np.int64)
    best_parts_c = np.empty(64, dtype=np.int64)
    cur_parts_l = np.empty(64, dtype=np.int64)
    cur_parts_c = np.empty(64, dtype=np.int64)

    for o in order_seq:
        bid = o_bid[o]
        dur = o_dur[o]
        e = o_e[o]
        lt = o_lt[o]
        rule = o_rule[o]
        ic_mask = o_ic[o]
        if lt - e < dur:
            continue
        narrow = (not first_fit) and _is_narrow(rule, rr_ptr, n_regions)
        best_l = NO_LISTING
        best_opt = -1
        best_start = -1
        best_surplus = -1
        best_left = 0
        for k in range(opt_ptr[o], opt_ptr[o + 1]):
            if opt_first[k] == DEAD:
                continue
            chip = opt_chip[k]
            cards = opt_cards[k]
            if narrow:
                cand_l, cand_start, cand_left, cand_ask = _search_cells(
                    o, chip, cards, bid, dur, e, lt, rule, ic_mask, best_surplus, cell_ptr, cell_list, rr_ptr, rr_list,
                    n_regions, l_ask, l_region, l_ic, l_min_cards, l_min_hours, l_max, free, allowed, excl, band_ppm,
                    max_band_candidates)
            else:
                first = max(opt_first[k], _start_bound(ff, chip, cards, e, lt, dur, chip_ptr[chip + 1]))
                cand_l, cand_start, cand_left, cand_ask = _search_chip(
                    o, chip, cards, bid, dur, e, lt, rule, ic_mask, best_surplus, first, chip_ptr, chip_list,
                    l_ask, l_region, l_ic, l_min_cards, l_min_hours, l_max, free, allowed, excl, band_ppm,
                    max_band_candidates, first_fit)
            if cand_l != NO_LISTING:
                surplus = (bid - cand_ask) * cards * dur
                if surplus > best_surplus or (surplus == best_surplus and cand_left < best_left):
                    best_l, best_opt, best_start, best_surplus, best_left = cand_l, k, cand_start, surplus, cand_left

        if best_l != NO_LISTING:
            _take(best_l, l_chip[best_l], best_start, dur, opt_cards[best_opt], free, l_max, ff,
                  chip_ptr[l_chip[best_l] + 1])
            out_start[o] = best_start
            out_opt[o] = best_opt
            part_order[n_parts] = o
            part_listing[n_parts] = best_l
            part_cards[n_parts] = opt_cards[best_opt]
            n_parts += 1
            continue

        if o_place[o] != 1:
            continue
        # Same fabric: cheapest-first fill of one fabric group, earliest feasible start per group.
        best_n = 0
        best_surplus = -1
        for k in range(opt_ptr[o], opt_ptr[o + 1]):
            chip = opt_chip[k]
            need = opt_cards[k]
            for gi in range(chip_fab_ptr[chip], chip_fab_ptr[chip + 1]):
                g = chip_fabs[gi]
                for start in range(e, lt - dur + 1):
                    remaining = need
                    n = 0
                    surplus = 0
                    for mi in range(fab_ptr[g], fab_ptr[g + 1]):
                        m = fab_members[mi]
                        if l_ask[m] > bid:
                            if first_fit:
                                continue
                            break
                        if n >= 64 or l_max[m] == 0:
                            continue
                        if not _eligible(m, o, rule, ic_mask, 1, dur, allowed, l_region, l_ic, l_min_cards,
                                         l_min_hours, excl, n_list):
                            continue
                        window_free = free[m, start]
                        for j in range(start + 1, start + dur):
                            if free[m, j] < window_free:
                                window_free = free[m, j]
                        take = min(window_free, remaining)
                        if take <= 0 or take < l_min_cards[m]:
                            continue
                        cur_parts_l[n] = m
                        cur_parts_c[n] = take
                        n += 1
                        remaining -= take
                        surplus += (bid - l_ask[m]) * take * dur
                        if remaining == 0:
                            break
                    if remaining == 0:
                        if surplus > best_surplus:
                            best_surplus = surplus
                            best_n = n
                            best_start = start
                            best_opt = k
                            for q in range(n):
                                best_parts_l[q] = cur_parts_l[q]
                                best_parts_c[q] = cur_parts_c[q]
                        break  # earliest feasible start of this group
        if best_n > 0 and n_parts + best_n <= part_order.shape[0]:
            out_start[o] = best_start
            out_opt[o] = best_opt
            for q in range(best_n):
                m = best_parts_l[q]
                _take(m, l_chip[m], best_start, dur, best_parts_c[q], free, l_max, ff, chip_ptr[l_chip[m] + 1])
                part_order[n_parts] = o
                part_listing[n_parts] = best_parts_l[q]
                part_cards[n_parts] = best_parts_c[q]
                n_parts += 1
    return n_parts
