"""The allocation kernel: a greedy pass in price-time priority, compiled with numba.

Plain Python over numpy arrays; numba compiles it (``cache=True`` keeps the machine code between
processes). ``NUMBA_DISABLE_JIT=1`` runs the very same code as ordinary Python.

For each order, highest bid first (earlier arrival first among equal bids):
1. For every acceptable (chip, cards) option, walk that chip's listings cheapest first while the
   ask is within the bid. A listing is a candidate if it meets every hard constraint (region rule,
   interconnect, minimum rental, not excluded by an admin) and has ``cards`` free for ``duration``
   consecutive hours inside the window (earliest such start).
2. Among candidates whose ask is within ``band`` of the cheapest candidate, take the best fit: the
   least free capacity left over in the hours used, so whole nodes stay whole for large jobs.
3. Across options, the largest surplus ``(bid - ask) x cards x hours`` wins.
4. A same-fabric order that no single node can hold is placed across nodes of one fabric group,
   cheapest nodes first, all or nothing.
"""
from __future__ import annotations

import numpy as np
from numba import njit

NO_LISTING = -1


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
def _search_chip(o, chip, cards, bid, dur, e, lt, rule, ic_mask, best_surplus, chip_ptr, live_end, chip_list, l_ask,
                 l_region, l_ic, l_min_cards, l_min_hours, l_max, free, allowed, excl, band_ppm, max_band_candidates,
                 first_fit):
    """Walk one chip's listings cheapest first; best fit within the band. (listing, start, left, ask)."""
    n_list = free.shape[0]
    cand_l, cand_start, cand_left, cand_ask = NO_LISTING, -1, 0, 0
    band_limit = -1
    in_band = 0
    for idx in range(chip_ptr[chip], live_end[chip]):
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
    """Same result as ``_search_chip`` for a rule that admits few regions, visiting only the
    (chip, region) cells it admits: pass 1 finds the cheapest feasible ask, pass 2 the best fit
    within the band."""
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
def greedy_match(order_seq, o_bid, o_dur, o_e, o_lt, o_ic, o_place, o_rule, opt_ptr, opt_chip, opt_cards, allowed,
                 chip_ptr, chip_list, cell_ptr, cell_list, rr_ptr, rr_list, l_ask, l_region, l_ic, l_min_cards,
                 l_min_hours, free,
                 fab_ptr, fab_members, chip_fab_ptr, chip_fabs, band_ppm, max_band_candidates, first_fit, excl,
                 out_start, out_opt, part_order, part_listing, part_cards):
    """Allocate in place: ``free`` is decremented; returns the number of parts written.

    ``first_fit`` turns this into the naive baseline: listings are taken in the order given (not
    cheapest first) and the first feasible one wins.

    Outputs per order index: ``out_start`` (relative start hour, -1 if unmatched) and ``out_opt``
    (option index). Parts are appended to ``part_*`` in allocation order.
    """
    n_list = free.shape[0]
    n_chips = chip_ptr.shape[0] - 1
    n_regions = allowed.shape[1]
    live_end = chip_ptr[1:].copy()  # compacted end of each chip's list of listings still selling
    dead = np.zeros(n_chips, dtype=np.int64)
    l_max = np.empty(n_list, dtype=np.int64)
    for l in range(n_list):
        l_max[l] = _row_max(free[l])
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
        best_l = NO_LISTING
        best_opt = -1
        best_start = -1
        best_surplus = -1
        best_left = 0
        narrow = (rr_ptr[rule + 1] - rr_ptr[rule]) * 3 < n_regions
        for k in range(opt_ptr[o], opt_ptr[o + 1]):
            chip = opt_chip[k]
            cards = opt_cards[k]
            if narrow and not first_fit:
                cand_l, cand_start, cand_left, cand_ask = _search_cells(
                    o, chip, cards, bid, dur, e, lt, rule, ic_mask, best_surplus, cell_ptr, cell_list, rr_ptr, rr_list,
                    n_regions, l_ask, l_region, l_ic, l_min_cards, l_min_hours, l_max, free, allowed, excl, band_ppm,
                    max_band_candidates)
            else:
                cand_l, cand_start, cand_left, cand_ask = _search_chip(
                    o, chip, cards, bid, dur, e, lt, rule, ic_mask, best_surplus, chip_ptr, live_end, chip_list,
                    l_ask, l_region, l_ic, l_min_cards, l_min_hours, l_max, free, allowed, excl, band_ppm,
                    max_band_candidates, first_fit)
            if cand_l != NO_LISTING:
                surplus = (bid - cand_ask) * cards * dur
                if surplus > best_surplus or (surplus == best_surplus and cand_left < best_left):
                    best_l, best_opt, best_start, best_surplus, best_left = cand_l, k, cand_start, surplus, cand_left

        if best_l != NO_LISTING:
            cards = opt_cards[best_opt]
            for j in range(best_start, best_start + dur):
                free[best_l, j] -= cards
            l_max[best_l] = _row_max(free[best_l])
            out_start[o] = best_start
            out_opt[o] = best_opt
            part_order[n_parts] = o
            part_listing[n_parts] = best_l
            part_cards[n_parts] = cards
            n_parts += 1
            if l_max[best_l] == 0:
                chip = opt_chip[best_opt]
                dead[chip] += 1
                if dead[chip] >= 32 and dead[chip] * 4 >= live_end[chip] - chip_ptr[chip]:
                    w = chip_ptr[chip]
                    for r in range(chip_ptr[chip], live_end[chip]):
                        if l_max[chip_list[r]] > 0:
                            chip_list[w] = chip_list[r]
                            w += 1
                    live_end[chip] = w
                    dead[chip] = 0
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
                for j in range(best_start, best_start + dur):
                    free[m, j] -= best_parts_c[q]
                l_max[m] = _row_max(free[m])
                part_order[n_parts] = o
                part_listing[n_parts] = m
                part_cards[n_parts] = best_parts_c[q]
                n_parts += 1
    return n_parts
