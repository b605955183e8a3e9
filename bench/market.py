"""A seeded market, as ../shared/MARKET.md describes it, straight into engine arrays.

Supply: nodes spread over the provinces, more of them (and cheaper) at the western 东数西算 hubs;
mostly 8-card machines of mixed chips (NVIDIA H800/H20/A800/4090 and domestic Ascend and friends);
IB, RoCE, NVLink or PCIe; some IB/RoCE nodes joined in fabrics; about 30% of their hours already
busy. Asks around a reference price per chip (DeepSeek's 2 USD per H800-hour is about 14.5 CNY).
Demand: a realistic mix of 1, 2, 4, 8 and 16-card jobs of a few hours, windows with some slack,
flexible chips and regions, bids around the reference price.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matching.engine.geo import RegionInfo, RegionRule, region_allows
from matching.engine.types import (ANY_INTERCONNECT, INTERCONNECTS, MICRO, SAME_FABRIC, SINGLE_NODE, DemandBook,
                                   SupplyBook)

FIXTURES = Path(__file__).resolve().parent.parent / "marketplace" / "fixtures"

# chip code -> (reference CNY per card-hour, share of supply, memory GB, consumer card)
CHIPS: dict[str, tuple[float, float, int, bool]] = {
    "nvidia-h800-sxm": (14.5, 0.14, 80, False),
    "nvidia-h100-sxm": (16.0, 0.06, 80, False),
    "nvidia-h20": (6.0, 0.14, 96, False),
    "nvidia-h200-sxm": (21.0, 0.03, 141, False),
    "nvidia-a800-sxm": (8.0, 0.08, 80, False),
    "nvidia-a100-sxm-80gb": (8.5, 0.06, 80, False),
    "nvidia-l20": (3.5, 0.04, 48, False),
    "nvidia-l40s": (5.0, 0.03, 48, False),
    "nvidia-rtx-4090": (2.0, 0.13, 24, True),
    "nvidia-rtx-4090-48gb": (3.0, 0.05, 48, True),
    "huawei-ascend-910b": (6.0, 0.14, 64, False),
    "moore-threads-mtt-s4000": (2.5, 0.03, 48, False),
    "hygon-dcu-k100-ai": (4.0, 0.03, 64, False),
    "cambricon-mlu370-x8": (2.0, 0.02, 48, False),
    "biren-br104": (2.0, 0.02, 32, False),
}
WEST_HUBS = {"guizhou", "inner-mongolia", "ningxia", "gansu"}


@dataclass
class MarketMeta:
    chips: list[str]
    regions: list[RegionInfo]
    region_hubs: list[str]
    region_codes: list[str]
    cards: np.ndarray  # node card counts
    offered: np.ndarray  # [L, H] cards listed per hour (free + already busy)
    rules: list[RegionRule]
    buyer_region: np.ndarray  # index into regions, per order


def load_regions() -> tuple[list[RegionInfo], list[str]]:
    with open(FIXTURES / "regions.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["code"].startswith("CN-")]
    by_code = {r["code"]: r for r in rows}
    infos, hubs = [], []
    for r in rows:
        ancestors = {r["code"], "CN"}
        province = r["code"] if r["kind"] == "province" else r["parent"]
        ancestors.add(province)
        infos.append(RegionInfo(r["code"], float(r["lat"]), float(r["lon"]), frozenset(ancestors), province))
        hubs.append(r["hub"] or by_code.get(r["parent"], {}).get("hub", "") or "")
    return infos, hubs


def generate_market(*, seed: int, n_orders: int, n_nodes: int, horizon: int = 48, max_slack: int = 12,
                    busy_share: float = 0.30, single_node_only: bool = False) -> tuple[SupplyBook, DemandBook, MarketMeta]:
    rng = np.random.default_rng(seed)
    regions, hubs = load_regions()
    chips = list(CHIPS)
    ref = np.array([CHIPS[c][0] for c in chips])
    share = np.array([CHIPS[c][1] for c in chips])
    share /= share.sum()
    memory = np.array([CHIPS[c][2] for c in chips])
    consumer = np.array([CHIPS[c][3] for c in chips])

    # --- supply: one listing per node ---
    region_weight = np.array([3.0 if hubs[i] in WEST_HUBS else (1.5 if hubs[i] else 0.6) for i in range(len(regions))])
    region_weight /= region_weight.sum()
    chip = rng.choice(len(chips), size=n_nodes, p=share).astype(np.int32)
    region = rng.choice(len(regions), size=n_nodes, p=region_weight).astype(np.int32)
    cards = rng.choice([8, 4, 2, 16], size=n_nodes, p=[0.78, 0.14, 0.04, 0.04]).astype(np.int16)
    ic_names = np.where(consumer[chip], rng.choice([0, 2], size=n_nodes, p=[0.8, 0.2]),
                        rng.choice([1, 2, 3, 0], size=n_nodes, p=[0.15, 0.35, 0.4, 0.1]))
    interconnect = ic_names.astype(np.int8)
    supplier = rng.integers(0, max(1, n_nodes // 5), size=n_nodes)
    fabric = np.full(n_nodes, -1, dtype=np.int32)
    fabric_capable = np.flatnonzero(np.isin(interconnect, [2, 3]))
    rng.shuffle(fabric_capable)
    group_id, i = 0, 0
    joined = fabric_capable[: int(fabric_capable.size * 0.4)]
    while i < joined.size:
        size = int(rng.integers(2, 9))
        members = joined[i:i + size]
        lead = members[0]
        # a fabric lives in one site: one supplier, one region, one chip, one interconnect
        supplier[members], region[members], chip[members] = supplier[lead], region[lead], chip[lead]
        interconnect[members] = interconnect[lead]
        fabric[members] = group_id
        group_id += 1
        i += size
    # cheap power in the west: asks there run about 12% lower
    west_discount = np.array([0.88 if hubs[r] in WEST_HUBS else 1.0 for r in region])
    ask = np.round(ref[chip] * west_discount * rng.lognormal(0.0, 0.15, n_nodes), 2)
    ask = np.maximum(ask, 0.5)
    free = np.repeat(cards[:, None], horizon, axis=1).astype(np.int16)
    busy = rng.random((n_nodes, horizon)) < busy_share
    free[busy] = (free[busy] * rng.random(int(busy.sum())) * 0.5).astype(np.int16)
    # listing windows: most nodes list the whole horizon, some start later or end earlier
    start = np.where(rng.random(n_nodes) < 0.2, rng.integers(0, horizon // 2, n_nodes), 0)
    end = np.where(rng.random(n_nodes) < 0.2, rng.integers(horizon // 2, horizon + 1, n_nodes), horizon)
    cols = np.arange(horizon)
    outside = (cols[None, :] < start[:, None]) | (cols[None, :] >= end[:, None])
    free[outside] = 0
    offered = np.where(outside, 0, cards[:, None]).astype(np.int16)

    supply = SupplyBook(
        h0=0, listing_id=np.arange(1, n_nodes + 1, dtype=np.int64), node_id=np.arange(1, n_nodes + 1, dtype=np.int64),
        supplier=supplier.astype(np.int64), chip=chip, region=region, interconnect=interconnect, fabric=fabric,
        ask=np.round(ask * MICRO).astype(np.int64), min_cards=np.ones(n_nodes, dtype=np.int16),
        min_hours=np.ones(n_nodes, dtype=np.int16), free=free,
        price_bucket=(chip.astype(np.int64) * 100 + np.array([sorted(set(hubs)).index(hubs[r]) for r in region])),
    )

    # --- demand ---
    o_cards = rng.choice([1, 2, 4, 8, 16], size=n_orders, p=[0.38, 0.25, 0.2, 0.14, 0.03]).astype(np.int16)
    placement = np.where(o_cards > 8, SAME_FABRIC, np.where(rng.random(n_orders) < 0.1, SAME_FABRIC, SINGLE_NODE))
    if single_node_only:  # for exact comparisons: every order fits on one node
        o_cards = np.minimum(o_cards, 8)
        placement[:] = SINGLE_NODE
    duration = np.minimum(rng.geometric(0.3, n_orders), 12).astype(np.int16)
    earliest = rng.integers(0, max(1, horizon - 12), n_orders).astype(np.int32)
    slack = rng.integers(0, max_slack + 1, n_orders)
    latest_end = np.minimum(earliest + duration + slack, horizon).astype(np.int32)
    buyer_region = rng.choice(len(regions), size=n_orders,
                              p=np.array([0.4 if hubs[i] in WEST_HUBS else 1.5 for i in range(len(regions))])
                              / np.array([0.4 if hubs[i] in WEST_HUBS else 1.5 for i in range(len(regions))]).sum())

    opt_ptr = [0]
    opt_chip: list[int] = []
    opt_cards: list[int] = []
    bids = np.empty(n_orders)
    rule_index: dict[RegionRule, int] = {}
    rules: list[RegionRule] = []
    o_rule = np.empty(n_orders, dtype=np.int32)
    ic_mask = np.full(n_orders, ANY_INTERCONNECT, dtype=np.int8)
    for o in range(n_orders):
        main = int(rng.choice(len(chips), p=share))
        kind = rng.random()
        if kind < 0.5:
            accepted = [main]
        elif kind < 0.8:
            similar = [c for c in range(len(chips)) if abs(ref[c] - ref[main]) <= 0.35 * ref[main] and c != main]
            extra = rng.choice(similar, size=min(len(similar), int(rng.integers(1, 3))), replace=False) if similar else []
            accepted = [main, *map(int, extra)]
        else:
            accepted = [c for c in range(len(chips)) if memory[c] >= memory[main]]
        accepted = sorted(set(accepted))
        opt_chip.extend(accepted)
        opt_cards.extend([int(o_cards[o])] * len(accepted))
        opt_ptr.append(len(opt_chip))
        bids[o] = ref[main] * rng.uniform(0.8, 1.5)
        home = regions[buyer_region[o]]
        r = rng.random()
        if r < 0.4:
            rule = RegionRule("anywhere")
        elif r < 0.6:
            rule = RegionRule("own_province", own_province=home.province)
        elif r < 0.85:
            picks = rng.choice(len(regions), size=int(rng.integers(1, 4)), replace=False)
            rule = RegionRule("regions", allowed=frozenset({home.province} | {regions[p].province for p in picks}))
        else:
            rule = RegionRule("within_km", center=(home.lat, home.lon), radius_km=float(rng.choice([300, 800, 1500])))
        if rule not in rule_index:
            rule_index[rule] = len(rules)
            rules.append(rule)
        o_rule[o] = rule_index[rule]
        if o_cards[o] >= 8 and rng.random() < 0.3:
            ic_mask[o] = 1 << INTERCONNECTS.index("infiniband")
    allowed = np.array([[region_allows(rule, reg) for reg in regions] for rule in rules], dtype=np.bool_)

    demand = DemandBook(
        order_id=np.arange(1, n_orders + 1, dtype=np.int64), arrival=rng.permutation(n_orders).astype(np.int64),
        bid=np.round(np.round(bids, 2) * MICRO).astype(np.int64), duration=duration, earliest=earliest,
        latest_end=latest_end, interconnects=ic_mask, placement=placement.astype(np.int8), rule=o_rule,
        opt_ptr=np.array(opt_ptr, dtype=np.int64), opt_chip=np.array(opt_chip, dtype=np.int32),
        opt_cards=np.array(opt_cards, dtype=np.int16), allowed=allowed,
    )
    return supply, demand, MarketMeta(chips=chips, regions=regions, region_hubs=hubs,
                                      region_codes=[r.code for r in regions], cards=cards, offered=offered,
                                      rules=rules, buyer_region=buyer_region)
