"""Matching benchmark. Prints each figure with its baseline from the same run; the last line is
one JSON object with every figure.

    .venv/bin/python -m bench.matching_bench            # the full run (several minutes)
    .venv/bin/python -m bench.matching_bench --quick    # small sizes, for a smoke test

Figures:
- engine_round_s: engine time per round at 100,000 open orders x 20,000 nodes (median of 3),
  beside the naive first-come first-fit baseline's time on the same market;
- welfare_vs_optimum_*: engine welfare over the optimum on 3,000 x 600 instances. The optimum is
  pinned between the MILP solution scipy.optimize.milp finds (lower) and the LP bound (upper);
  the ratio is taken against the upper bound, so it never overstates; the gap is printed;
- welfare_vs_lp: engine welfare over the LP relaxation bound at 30,000 x 6,000;
- baseline_welfare_vs_optimum_mean: the same ratio for the naive baseline;
- fill_rate: matched share of in-the-money orders (a feasible placement within the bid existed
  when the round opened), and utilisation of offered card-hours before and after the round;
- e2e_round_s: one round from PostgreSQL to committed allocations at 20,000 orders x 4,000
  nodes (load, engine, persist), in a database of its own (``sanduisan_bench``): the median of
  three, each on the market freshly written (``e2e_round_runs_s``: all three);
- rounds_speedup_2_workers: the same backlog (20,000 x 4,000), one round per vendor:hub bucket,
  matched by 1 and by 2 real Celery workers (``bench/rounds_workers.py``, database
  ``sanduisan_bench_workers``): time with 1 worker over time with 2.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from bench.market import generate_market
from bench.optimum import certified_optimum, lp_bound
from bench.rounds_workers import rounds_workers
from matching.engine.engine import run_engine


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def engine_round(n_orders: int, n_nodes: int) -> dict:
    supply, demand, meta = generate_market(seed=1, n_orders=n_orders, n_nodes=n_nodes)
    run_engine(supply, demand)  # compile / load the cached machine code
    times, result = [], None
    for _ in range(3):
        result, seconds = _timed(run_engine, supply, demand)
        times.append(seconds)
    baseline, baseline_s = _timed(run_engine, supply, demand, baseline=True)
    engine_s = statistics.median(times)

    # fill rate over in-the-money orders: a single-node placement within the bid existed at opening
    from matching.engine.engine import opening_best

    best = opening_best(supply, demand)
    itm = best >= 0
    matched = np.isin(demand.order_id, result.order_id)
    offered = int(meta.offered.sum())
    busy = offered - int(supply.free.sum())
    sold = int(((result.end_hour - result.start_hour) * result.cards).sum())
    base_sold = int(((baseline.end_hour - baseline.start_hour) * baseline.cards).sum())
    base_matched = np.isin(demand.order_id, baseline.order_id)
    out = {
        "engine_round_s": round(engine_s, 3), "baseline_round_s": round(baseline_s, 3),
        "engine_matches": result.count, "baseline_matches": baseline.count,
        "engine_welfare_cny": round(result.welfare / 1e6, 2), "baseline_welfare_cny": round(baseline.welfare / 1e6, 2),
        "fill_rate": round(float((matched & itm).sum() / max(1, itm.sum())), 4),
        "baseline_fill_rate": round(float((base_matched & itm).sum() / max(1, itm.sum())), 4),
        "utilisation_start": round(busy / offered, 4), "utilisation": round((busy + sold) / offered, 4),
        "baseline_utilisation": round((busy + base_sold) / offered, 4),
    }
    print(f"engine round {n_orders:,} orders x {n_nodes:,} nodes: {engine_s:.3f} s (median of 3; "
          f"first-fit baseline {baseline_s:.3f} s, ratio {engine_s / baseline_s:.2f})")
    print(f"  welfare {out['engine_welfare_cny']:,.0f} CNY vs baseline {out['baseline_welfare_cny']:,.0f} "
          f"(x{result.welfare / max(1, baseline.welfare):.2f}); fill rate of in-the-money orders "
          f"{out['fill_rate']:.1%} (baseline {out['baseline_fill_rate']:.1%}); utilisation of offered card-hours "
          f"{out['utilisation_start']:.1%} -> {out['utilisation']:.1%} (baseline -> {out['baseline_utilisation']:.1%})")
    return out


def welfare_vs_optimum(seeds: list[int], n_orders: int, n_nodes: int, milp_seconds: float) -> dict:
    ratios, optimistic, base_ratios, gaps = [], [], [], []
    for seed in seeds:
        supply, demand, _ = generate_market(seed=seed, n_orders=n_orders, n_nodes=n_nodes, single_node_only=True)
        engine = run_engine(supply, demand)
        baseline = run_engine(supply, demand, baseline=True)
        opt = certified_optimum(supply, demand, time_limit=milp_seconds)
        ratio = engine.welfare / opt["upper"]
        ratios.append(ratio)
        optimistic.append(engine.welfare / max(opt["lower"], engine.welfare))
        base_ratios.append(baseline.welfare / opt["upper"])
        gaps.append(opt["gap"])
        print(f"  instance seed {seed}: engine {ratio:.2%} of the optimum's upper bound "
              f"({optimistic[-1]:.2%} of the best MILP solution; optimum certified within {opt['gap']:.2%}), "
              f"baseline {base_ratios[-1]:.2%}")
    print(f"welfare vs optimum at {n_orders:,} x {n_nodes:,}: mean {np.mean(ratios):.2%}, worst {min(ratios):.2%} "
          f"(baseline mean {np.mean(base_ratios):.2%}; engine above baseline on "
          f"{sum(r > b for r, b in zip(ratios, base_ratios))}/{len(ratios)} instances)")
    return {"welfare_vs_optimum_mean": round(float(np.mean(ratios)), 4),
            "welfare_vs_optimum_min": round(float(min(ratios)), 4),
            "welfare_vs_milp_solution_mean": round(float(np.mean(optimistic)), 4),
            "optimum_certified_gap_max": round(float(max(gaps)), 4),
            "baseline_welfare_vs_optimum_mean": round(float(np.mean(base_ratios)), 4),
            "engine_beats_baseline_everywhere": all(r > b for r, b in zip(ratios, base_ratios))}


def welfare_vs_lp(n_orders: int, n_nodes: int, budget: float) -> dict:
    """Against the LP relaxation, by column generation within ``budget`` seconds. The LP optimum
    lies between the restricted master's value (lower) and the repaired dual bound (upper); the
    headline ratio uses the upper bound, so it never overstates."""
    supply, demand, _ = generate_market(seed=11, n_orders=n_orders, n_nodes=n_nodes, single_node_only=True)
    engine = run_engine(supply, demand)
    baseline = run_engine(supply, demand, baseline=True)
    lp = lp_bound(supply, demand, time_budget=budget)
    ratio = engine.welfare / lp["bound"]
    print(f"welfare vs LP bound at {n_orders:,} x {n_nodes:,}: {ratio:.2%} of the LP upper bound, "
          f"{engine.welfare / lp['rmp']:.2%} of the restricted master (the LP optimum lies between them; "
          f"{lp['gap']:.2%} apart after {lp['rounds']} rounds, {lp['seconds']:.0f} s); "
          f"baseline {baseline.welfare / lp['bound']:.2%}")
    return {"welfare_vs_lp": round(ratio, 4), "welfare_vs_lp_lower_estimate": round(engine.welfare / lp["rmp"], 4),
            "lp_gap": round(lp["gap"], 4), "baseline_welfare_vs_lp": round(baseline.welfare / lp["bound"], 4)}


def e2e_round(n_orders: int, n_nodes: int, repeat: int) -> dict:
    from bench.e2e import run_e2e

    return run_e2e(n_orders=n_orders, n_nodes=n_nodes, repeat=repeat)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not the figures")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the PostgreSQL end-to-end round")
    parser.add_argument("--milp-seconds", type=float, default=60.0, help="time limit per MILP solve")
    parser.add_argument("--lp-seconds", type=float, default=600.0, help="time budget for the 30k x 6k LP bound")
    args = parser.parse_args(argv)
    scale = 20 if args.quick else 1
    figures: dict = {}
    figures.update(engine_round(100_000 // scale, 20_000 // scale))
    figures.update(welfare_vs_optimum([2, 3, 4, 5, 6][: 2 if args.quick else 5], 3000 // (5 if args.quick else 1),
                                      600 // (5 if args.quick else 1), 10 if args.quick else args.milp_seconds))
    figures.update(welfare_vs_lp(30_000 // scale, 6_000 // scale, 30 if args.quick else args.lp_seconds))
    if not args.skip_e2e:
        figures.update(e2e_round(20_000 // scale, 4_000 // scale, 1 if args.quick else 3))
        figures.update(rounds_workers(n_orders=20_000 // scale, n_nodes=4_000 // scale))
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
