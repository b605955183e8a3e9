"""Region policies and slot calendars, pure: no database."""
import random

import pytest

from matching.engine.calendar import earliest_run
from matching.engine.geo import RegionInfo, RegionRule, great_circle_km, region_allows, rules_allow

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


def test_rules_allow_answers_every_pair_as_region_allows():
    # given many random rules of every policy, including radii that fall exactly on a region's distance
    rng = random.Random(7)
    regions = [SHENZHEN, GUANGDONG, GUIAN, SINGAPORE]
    codes = sorted({code for r in regions for code in r.ancestors}) + ["US"]
    rules = [RegionRule("anywhere"), RegionRule("own_province", own_province=None),
             RegionRule("within_km", center=None, radius_km=10),
             RegionRule("within_km", center=(23.13, 113.26), radius_km=great_circle_km((23.13, 113.26), (22.54, 114.06)))]
    for _ in range(300):
        policy = rng.choice(["regions", "own_province", "within_km"])
        if policy == "regions":
            rules.append(RegionRule(policy, allowed=frozenset(rng.sample(codes, rng.randint(0, 3)))))
        elif policy == "own_province":
            rules.append(RegionRule(policy, own_province=rng.choice(codes)))
        else:
            rules.append(RegionRule(policy, center=(rng.uniform(-10, 50), rng.uniform(90, 130)),
                                    radius_km=rng.choice([rng.uniform(0, 3000), rng.randint(0, 3000)])))

    # when they are evaluated at once
    allowed = rules_allow(rules, regions)

    # then every pair is what the one-by-one evaluation says, and every policy said yes somewhere
    assert allowed.tolist() == [[region_allows(rule, region) for region in regions] for rule in rules]
    assert allowed[3, 0]  # exactly on the radius is inside
    assert {rules[i].policy for i in range(len(rules)) if allowed[i].any()} == {
        "anywhere", "regions", "own_province", "within_km"}


@pytest.mark.parametrize("free,duration,cards,expected", [
    ([8, 8, 8], 3, 8, 0),
    ([8, 2, 8, 8, 8], 3, 4, 2),
    ([8, 2, 8, 8], 3, 4, None),
    ([1, 1, 1], 1, 2, None),
    ([0, 0, 3], 1, 3, 2),
])
def test_earliest_run(free, duration, cards, expected):
    assert earliest_run(free, duration, cards) == expected
