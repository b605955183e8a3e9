"""Region policies and slot calendars, pure: no database."""
import pytest

from matching.engine.calendar import earliest_run
from matching.engine.geo import RegionInfo, RegionRule, great_circle_km, region_allows

SHENZHEN = RegionInfo("CN-GD-SZ", 22.54, 114.06, frozenset({"CN-GD-SZ", "CN-GD", "CN"}), "CN-GD")
GUANGDONG = RegionInfo("CN-GD", 23.13, 113.26, frozenset({"CN-GD", "CN"}), "CN-GD")
GUIAN = RegionInfo("CN-GZ-GA", 26.40, 106.40, frozenset({"CN-GZ-GA", "CN-GZ", "CN"}), "CN-GZ")
SINGAPORE = RegionInfo("SG", 1.35, 103.82, frozenset({"SG"}), None)


def test_great_circle_beijing_shanghai_is_about_1070_km():
    assert great_circle_km((39.90, 116.41), (31.23, 121.47)) == pytest.approx(1067, abs=10)


def test_listed_province_admits_its_cities_but_not_other_provinces():
    rule = RegionRule("regions", allowed=frozenset({"CN-GD"}))
    assert region_allows(rule, SHENZHEN)
    assert region_allows(rule, GUANGDONG)
    assert not region_allows(rule, GUIAN)


def test_listed_city_does_not_admit_its_province():
    rule = RegionRule("regions", allowed=frozenset({"CN-GD-SZ"}))
    assert region_allows(rule, SHENZHEN)
    assert not region_allows(rule, GUANGDONG)


def test_listed_country_admits_everything_inside_it_only():
    rule = RegionRule("regions", allowed=frozenset({"CN"}))
    assert region_allows(rule, GUIAN)
    assert not region_allows(rule, SINGAPORE)


def test_own_province():
    rule = RegionRule("own_province", own_province="CN-GD")
    assert region_allows(rule, SHENZHEN)
    assert not region_allows(rule, GUIAN)
    assert not region_allows(RegionRule("own_province", own_province=None), SHENZHEN)


def test_within_km_of_a_point():
    guangzhou = (23.13, 113.26)
    assert region_allows(RegionRule("within_km", center=guangzhou, radius_km=150), SHENZHEN)  # ~105 km
    assert not region_allows(RegionRule("within_km", center=guangzhou, radius_km=50), SHENZHEN)
    assert region_allows(RegionRule("anywhere"), SINGAPORE)


@pytest.mark.parametrize("free,duration,cards,expected", [
    ([8, 8, 8], 3, 8, 0),
    ([8, 2, 8, 8, 8], 3, 4, 2),
    ([8, 2, 8, 8], 3, 4, None),
    ([1, 1, 1], 1, 2, None),
    ([0, 0, 3], 1, 3, 2),
])
def test_earliest_run(free, duration, cards, expected):
    assert earliest_run(free, duration, cards) == expected
