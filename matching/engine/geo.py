"""Where work may run: region policies evaluated on plain data. Pure Python and numpy."""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class RegionInfo:
    code: str
    lat: float
    lon: float
    ancestors: frozenset[str]  # its own code, its province's and its country's
    province: str | None  # the province code (itself if a province; None for a country)


@dataclass(frozen=True, slots=True)
class RegionRule:
    policy: str  # anywhere | regions | own_province | within_km
    allowed: frozenset[str] = frozenset()
    own_province: str | None = None
    center: tuple[float, float] | None = None
    radius_km: float | None = None


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def region_allows(rule: RegionRule, region: RegionInfo) -> bool:
    if rule.policy == "anywhere":
        return True
    if rule.policy == "regions":
        # A listed province admits its cities, a listed country its provinces and cities.
        return not rule.allowed.isdisjoint(region.ancestors)
    if rule.policy == "own_province":
        return rule.own_province is not None and rule.own_province in region.ancestors
    if rule.policy == "within_km":
        if rule.center is None or rule.radius_km is None:
            return False
        return great_circle_km(rule.center, (region.lat, region.lon)) <= rule.radius_km
    raise ValueError(f"unknown region policy {rule.policy!r}")


# A numpy distance this close to a radius is decided by ``great_circle_km`` itself, so that
# ``rules_allow`` answers exactly as ``region_allows`` (numpy's sin and cos may differ from
# math's in the last bits).
_EDGE_KM = 1e-6


def rules_allow(rules: Sequence[RegionRule], regions: Sequence[RegionInfo]) -> np.ndarray:
    """``allowed[i, j] = region_allows(rules[i], regions[j])`` for every pair, at once: a round
    evaluates thousands of rules (a centre and radius each) against every region."""
    allowed = np.zeros((len(rules), len(regions)), dtype=np.bool_)
    with_ancestor: dict[str, list[int]] = defaultdict(list)  # code -> regions within it
    for j, region in enumerate(regions):
        for code in region.ancestors:
            with_ancestor[code].append(j)
    within: list[int] = []
    for i, rule in enumerate(rules):
        if rule.policy == "anywhere":
            allowed[i] = True
        elif rule.policy == "regions":
            for code in rule.allowed:
                allowed[i, with_ancestor.get(code, [])] = True
        elif rule.policy == "own_province":
            if rule.own_province is not None:
                allowed[i, with_ancestor.get(rule.own_province, [])] = True
        elif rule.policy == "within_km":
            if rule.center is not None and rule.radius_km is not None:
                within.append(i)
        else:
            raise ValueError(f"unknown region policy {rule.policy!r}")
    if within and regions:
        center = np.radians(np.array([rules[i].center for i in within], dtype=np.float64))
        radius = np.array([rules[i].radius_km for i in within], dtype=np.float64)[:, None]
        at = np.radians(np.array([(r.lat, r.lon) for r in regions], dtype=np.float64))
        lat1, lon1, lat2, lon2 = center[:, :1], center[:, 1:], at[:, 0][None, :], at[:, 1][None, :]
        h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
        km = 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(h)))
        inside = km <= radius
        for a, j in zip(*np.nonzero(np.abs(km - radius) < _EDGE_KM)):
            rule = rules[within[a]]
            inside[a, j] = great_circle_km(rule.center, (regions[j].lat, regions[j].lon)) <= rule.radius_km
        allowed[within] = inside
    return allowed
