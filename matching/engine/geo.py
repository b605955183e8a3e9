"""Where work may run: region policies evaluated on plain data. Pure Python."""
from __future__ import annotations

import math
from dataclasses import dataclass

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
