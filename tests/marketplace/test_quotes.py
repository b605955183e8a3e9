"""Quotes show the market without creating anything."""
import dataclasses
import random
from datetime import timedelta
from decimal import Decimal

import pytest

from marketplace import services
from marketplace.models import ChipType, ListingHour, Order, Region
from marketplace.hours import hour_start
from marketplace.demand import CardHoursDemand, RegionPolicySpec
from marketplace.selectors import (FIRST_CHUNK_HOURS, LATTICE_MIN_HOURS, card_hour_market_load, earliest_runs,
                                   quote_card_hours, quote_card_hours_cheapest, window_mins)
from matching.engine.calendar import earliest_run

from tests.factories import NodeFactory, OrganisationFactory, make_listing, next_hour

from .helpers import assert_error, card_hours_body, iso, tokens_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def market():
    gz, sh = Region.objects.get(code="CN-GZ-GA"), Region.objects.get(code="CN-SH")
    ascend = ChipType.objects.get(code="huawei-ascend-910b")
    make_listing(NodeFactory(region=gz), ask="9.00")
    make_listing(NodeFactory(region=gz), ask="11.00")
    make_listing(NodeFactory(region=sh), ask="14.00")
    make_listing(NodeFactory(region=sh, chip=ascend, interconnect="roce"), ask="6.00")
    busy = make_listing(NodeFactory(region=gz), ask="5.00")
    # the cheapest node is fully sold for the whole day
    from marketplace.models import ListingHour
    ListingHour.objects.filter(listing=busy).update(cards_sold=8)


def test_quote_counts_offers_best_price_and_depth(buyer_client, market):
    body = card_hours_body(chips=["nvidia-h800-sxm", "huawei-ascend-910b"], max_price_per_card_hour="12")
    response = buyer_client.post("/api/v1/quotes", body, format="json")
    assert response.status_code == 200, response.content
    quote = response.json()
    assert quote["offers"] == 4  # the sold-out node is not an offer
    assert quote["feasible_offers"] == 3  # 14.00 is above the 12.00 limit
    assert Decimal(quote["best_price"]) == Decimal("6")
    assert quote["best_offer"]["chip"] == "huawei-ascend-910b"
    assert Decimal(quote["best_offer"]["estimated_cost"]) == Decimal("6") * 4 * 3
    depth = {(d["chip"], d["region"]): d for d in quote["depth"]}
    assert set(depth) == {("nvidia-h800-sxm", "CN-GZ-GA"), ("nvidia-h800-sxm", "CN-SH"), ("huawei-ascend-910b", "CN-SH")}
    assert [Decimal(l["price"]) for l in depth[("nvidia-h800-sxm", "CN-GZ-GA")]["levels"]] == [9, 11]
    assert depth[("nvidia-h800-sxm", "CN-GZ-GA")]["levels"][0]["card_hours"] == 12
    assert not Order.objects.exists()


def test_quote_starts_after_a_sold_hour_and_within_a_listing_ending_mid_window(buyer_client):
    # given a node listed for 24 hours with 6 of its 8 cards sold in its third hour,
    # and a dearer node listed for its first 4 hours only
    busy = make_listing(NodeFactory(), ask="9")
    first = busy.hours.order_by("hour").first().hour
    ListingHour.objects.filter(listing=busy, hour=first + 2).update(cards_sold=6)
    make_listing(NodeFactory(), ask="10", hours=4)
    # when 4 cards are quoted for 3 hours: the busy node's first free run starts after the sold hour
    quote = buyer_client.post("/api/v1/quotes", card_hours_body(), format="json").json()
    assert quote["offers"] == 2 and Decimal(quote["best_price"]) == 9
    assert quote["best_offer"]["start"] == iso(hour_start(first + 3))
    # and 2 cards fit through the sold hour, from the first hour
    quote = buyer_client.post("/api/v1/quotes", card_hours_body(cards=2), format="json").json()
    assert quote["best_offer"]["start"] == iso(hour_start(first))
    # and 5 hours fit only the 24-hour node, after its sold hour
    quote = buyer_client.post("/api/v1/quotes", card_hours_body(duration_hours=5), format="json").json()
    assert quote["offers"] == 1 and quote["best_offer"]["start"] == iso(hour_start(first + 3))


@pytest.mark.parametrize("cards,interconnects,region", [
    (4, [], RegionPolicySpec()), (8, [], RegionPolicySpec()), (4, ["roce"], RegionPolicySpec()),
    (4, [], RegionPolicySpec(policy="regions", regions=["CN-SH"])), (16, [], RegionPolicySpec()),
])
def test_cheapest_first_search_finds_the_quotes_best_price(buyer_client, market, cards, interconnects, region):
    # given the market with a sold-out cheapest node, and a demand
    demand = CardHoursDemand(duration_hours=3, earliest_start=next_hour(1), latest_end=next_hour(25),
                             max_price_per_card_hour=Decimal("12"), chips=["nvidia-h800-sxm", "huawei-ascend-910b"],
                             cards=cards, interconnects=interconnects, region=region)
    # when the cheapest ask is searched for, and the market quoted
    cheapest = quote_card_hours_cheapest(organisation=buyer_client.organisation, demand=demand)
    quote = quote_card_hours(organisation=buyer_client.organisation, demand=demand)
    # then it is the quote's best price (above the limit too), never the sold-out node's 5.00
    assert cheapest == quote["best_price"]
    assert cheapest != Decimal("5")


def test_quote_respects_region_and_interconnect(buyer_client, market):
    body = card_hours_body(chips=["nvidia-h800-sxm", "huawei-ascend-910b"], region={"policy": "own_province"})
    quote = buyer_client.post("/api/v1/quotes", body, format="json").json()
    assert {d["region"] for d in quote["depth"]} == {"CN-SH"}  # the buyer's home province is Shanghai
    body = card_hours_body(chips=["nvidia-h800-sxm", "huawei-ascend-910b"], interconnects=["roce"])
    quote = buyer_client.post("/api/v1/quotes", body, format="json").json()
    assert quote["offers"] == 1 and quote["best_offer"]["chip"] == "huawei-ascend-910b"
    body = card_hours_body(region={"policy": "within_km", "lat": 26.65, "lon": 106.63, "radius_km": 100})
    quote = buyer_client.post("/api/v1/quotes", body, format="json").json()
    assert {d["region"] for d in quote["depth"]} == {"CN-GZ-GA"}


def test_quote_for_a_fabric_spans_nodes(buyer_client):
    supplier = OrganisationFactory()
    make_listing(NodeFactory(organisation=supplier, fabric_id="ib-1"), ask="10")
    make_listing(NodeFactory(organisation=supplier, fabric_id="ib-1"), ask="12")
    body = card_hours_body(cards=12, placement="same_fabric")
    quote = buyer_client.post("/api/v1/quotes", body, format="json").json()
    assert quote["offers"] == 1
    assert quote["best_offer"]["nodes"] == 2 and Decimal(quote["best_offer"]["ask_per_card_hour"]) == 12
    single = buyer_client.post("/api/v1/quotes", card_hours_body(cards=12), format="json").json()
    assert single["offers"] == 0


def test_token_quote(buyer_client):
    node = NodeFactory()
    make_listing(node, token_endpoint=services.TokenEndpoint("DeepSeek-V3", Decimal("0.5"), Decimal("2"), Decimal("8")))
    make_listing(NodeFactory(), token_endpoint=services.TokenEndpoint("DeepSeek-V3", Decimal("0.1"), Decimal("1"),
                                                                      Decimal("2")))
    make_listing(NodeFactory(), token_endpoint=services.TokenEndpoint("DeepSeek-R1", Decimal("0.1"), Decimal("1"),
                                                                      Decimal("2")))
    quote = buyer_client.post("/api/v1/quotes", tokens_body(), format="json").json()
    assert quote["offers"] == 2 and quote["feasible_offers"] == 2
    # 10M input at 25% hit: 2.5M x 0.1 + 7.5M x 1 + 2M output x 2, per million = 11.75 CNY
    assert Decimal(quote["best_offer"]["estimated_cost"]) == Decimal("11.75")
    assert {k: Decimal(v) for k, v in quote["best_price"].items()} == {
        "input_hit_per_m": Decimal("0.1"), "input_miss_per_m": 1, "output_per_m": 2}


def test_token_listings_are_not_sold_as_card_hours(buyer_client):
    make_listing(NodeFactory(), token_endpoint=services.TokenEndpoint("DeepSeek-V3", Decimal("0.5"), Decimal("2"),
                                                                      Decimal("8")))
    assert buyer_client.post("/api/v1/quotes", card_hours_body(), format="json").json()["offers"] == 0


def test_quote_validates_like_an_order(buyer_client):
    assert_error(buyer_client.post("/api/v1/quotes", card_hours_body(chips=["nope"]), format="json"), 400,
                 field="chips")



def test_earliest_runs_from_sold_runs_agree_with_the_python_scan():
    """The search for a node's first free run (quotes, explain), which reads only the listings'
    bounds and their sold hours, gives exactly what the engine's linear scan of every calendar row
    gives, on calendars with partly sold hours, listings starting late and ending early."""
    # given five listings with random sales, two of them not spanning the whole window
    rng = random.Random(11)
    listings = [make_listing(NodeFactory(), hours=48) for _ in range(3)]
    listings.append(make_listing(NodeFactory(), hours=20))  # ends mid-window
    listings.append(make_listing(NodeFactory(), hours=30, start=next_hour(12)))  # starts mid-window
    for listing in listings:
        for row in ListingHour.objects.filter(listing=listing):
            row.cards_sold = rng.choice([0, 0, 0, 2, 5, 8])
            row.save(update_fields=["cards_sold"])
    first = min(listing.hours.order_by("hour").first().hour for listing in listings)
    for duration in (1, 2, 3, 5, 8, 13):
        for need in (1, 3, 6, 8):
            for lo, hi in ((first, first + 48), (first + 7, first + 30)):
                # when both search the same window
                found = earliest_runs(needs={l.pk: need for l in listings}, first=lo, last=hi, duration=duration)
                # then they agree listing by listing
                for listing in listings:
                    series = _free_series(listing, lo, hi)
                    start = earliest_run(series, duration, need)
                    assert found.get(listing.pk) == (None if start is None else lo + start), (duration, need, lo)


def _sell_blocks(rng: random.Random, listing, blocks: int, longest: int) -> None:
    """Sell ``blocks`` random blocks of 1 to ``longest`` hours of the listing, each of 1 to 8 cards
    (later blocks overwrite earlier ones where they cross)."""
    hours = list(listing.hours.order_by("hour").values_list("hour", flat=True))
    for _ in range(blocks):
        at = rng.choice(hours)
        ListingHour.objects.filter(listing=listing, hour__gte=at, hour__lt=at + rng.randint(1, longest)).update(
            cards_sold=rng.choice([1, 3, 5, 8, 8]))


@pytest.mark.parametrize("seed", range(3))
def test_earliest_long_runs_read_around_points_agree_with_the_python_scan(seed):
    """For runs of a day or more, the search reads only the sold hours around a lattice of points
    (long free runs) and calls every other hour sold out: it still gives exactly what the engine's
    linear scan of every calendar row gives."""
    # given six 160-hour listings (one ending early, one starting late) with a few sold blocks each,
    # some fully sold, so that some long free runs survive and others are cut
    rng = random.Random(seed)
    listings = [make_listing(NodeFactory(), hours=160) for _ in range(4)]
    listings.append(make_listing(NodeFactory(), hours=90))
    listings.append(make_listing(NodeFactory(), hours=120, start=next_hour(30)))
    for listing in listings:
        _sell_blocks(rng, listing, blocks=rng.randint(1, 6), longest=30)
    first = min(listing.hours.order_by("hour").first().hour for listing in listings)
    for duration in (LATTICE_MIN_HOURS, 25, 31, 40, 55, 77):
        for lo, hi in ((first, first + 160), (first + 9, first + 140)):
            # (the coarse read is the one taken)
            assert card_hour_market_load(first=lo, last=hi, min_duration=duration).min_duration == duration
            for need in (1, 3, 6, 8):
                # when both search the same window
                found = earliest_runs(needs={l.pk: need for l in listings}, first=lo, last=hi, duration=duration)
                # then they agree listing by listing
                for listing in listings:
                    start = earliest_run(_free_series(listing, lo, hi), duration, need)
                    assert found.get(listing.pk) == (None if start is None else lo + start), (duration, need, lo)


@pytest.mark.parametrize("seed", range(4))
def test_long_same_fabric_quote_read_around_points_agrees_with_the_per_hour_fill(buyer_client, seed):
    """Same-fabric quotes of a day or more read the sold hours around a lattice of points only:
    the best offer, the offers and the cheapest-first price are still those of the per-hour fill."""
    # given one fabric of five nodes with sold blocks, one ending early and one starting late
    rng = random.Random(100 + seed)
    supplier = OrganisationFactory()
    members = [make_listing(NodeFactory(organisation=supplier, fabric_id="ib-7"), hours=150, ask="10"),
               make_listing(NodeFactory(organisation=supplier, fabric_id="ib-7"), hours=150, ask="11"),
               make_listing(NodeFactory(organisation=supplier, fabric_id="ib-7"), hours=150, ask="10.50"),
               make_listing(NodeFactory(organisation=supplier, fabric_id="ib-7"), hours=70, ask="9"),
               make_listing(NodeFactory(organisation=supplier, fabric_id="ib-7"), hours=110, ask="12",
                            start=next_hour(30), min_cards=4)]
    for listing in members:
        _sell_blocks(rng, listing, blocks=rng.randint(1, 5), longest=25)
    lo = members[0].hours.order_by("hour").first().hour
    for cards, duration in ((8, 24), (12, 30), (16, 26), (20, 48), (24, 40), (9, 60), (32, 24), (40, 36)):
        # when the market is quoted for a same-fabric run over the whole window
        body = card_hours_body(cards=cards, duration_hours=duration, placement="same_fabric", window_hours=148,
                               max_price_per_card_hour="100")
        quote = buyer_client.post("/api/v1/quotes", body, format="json").json()
        # then it offers what the per-hour fill finds, at the same start, nodes and ask
        demand = _assert_fabric_quote_is_the_fill(buyer_client, quote, members, cards, duration, lo, 148)
        # and single-node quotes start where each node's first long free run does
        single = quote_card_hours(organisation=buyer_client.organisation,
                                  demand=dataclasses.replace(demand, cards=min(cards, 8), placement="single_node"))
        starts = [earliest_run(_free_series(m, lo, lo + 148), duration, min(cards, 8)) for m in members]
        offered = [(m.ask_per_card_hour, lo + s) for m, s in zip(members, starts)
                   if s is not None and min(cards, 8) >= m.min_cards]
        assert single["offers"] == len(offered), (cards, duration)
        if offered:
            best = min(offered)
            assert (single["best_price"], single["best_offer"]["start"]) == (best[0], hour_start(best[1]))


def _free_series(listing, lo: int, hi: int) -> list[int]:
    """Free cards of every hour in ``[lo, hi)`` from every calendar row (0 where there is none)."""
    rows = dict((h, o - s) for h, o, s in ListingHour.objects.filter(listing=listing).values_list(
        "hour", "cards_offered", "cards_sold"))
    return [rows.get(h, 0) for h in range(lo, hi)]


@pytest.mark.parametrize("width", [1, 2, 3, 7, 20, 21])
def test_window_minimum_over_pieces_is_the_minimum_of_every_window(width):
    # given a random series of 21 hours cut into runs of equal values
    rng = random.Random(width)
    values = [rng.choice([0, 3, 3, 8, 8, 8]) for _ in range(21)]
    pieces, at = [], 0
    for h in range(1, 22):
        if h == 21 or values[h] != values[at]:
            pieces.append((100 + at, 100 + h, values[at]))
            at = h
    starts = sorted(rng.sample(range(21 - width + 1), k=min(5, 21 - width + 1)))
    # when the window minimums are read off the pieces
    mins = window_mins(pieces, [100 + s for s in starts], width)
    # then each is the minimum of the hours in its window
    assert mins == [min(values[s:s + width]) for s in starts]


def _reference_fabric_start(members, need: int, duration: int, lo: int, hi: int):
    """The per-hour fill the same-fabric quote made before it read sold runs: cheapest first,
    every start in turn."""
    members = sorted(members, key=lambda l: (l.ask_per_card_hour, l.pk))
    series = [_free_series(m, lo, hi) for m in members]
    for start in range(hi - lo - duration + 1):
        remaining, used, ask = need, 0, Decimal(0)
        for member, free in zip(members, series):
            take = min(min(free[start:start + duration]), remaining)
            if take >= max(1, member.min_cards):
                remaining, used, ask = remaining - take, used + 1, max(ask, member.ask_per_card_hour)
            if remaining == 0:
                return lo + start, used, ask
    return None

def _assert_fabric_quote_is_the_fill(buyer_client, quote: dict, members, cards: int, duration: int, lo: int,
                                     window: int) -> CardHoursDemand:
    """The same-fabric ``quote`` over ``window`` hours from ``lo`` offers what the per-hour fill
    finds (start, nodes, ask), and the cheapest-first search its best price. Returns the demand."""
    expected = _reference_fabric_start(members, cards, duration, lo, lo + window)
    demand = CardHoursDemand(duration_hours=duration, earliest_start=next_hour(1),
                             latest_end=next_hour(1) + timedelta(hours=window), max_price_per_card_hour=Decimal("100"),
                             chips=["nvidia-h800-sxm"], cards=cards, placement="same_fabric")
    cheapest = quote_card_hours_cheapest(organisation=buyer_client.organisation, demand=demand)
    assert cheapest == (None if quote["best_price"] is None else Decimal(quote["best_price"]))
    if expected is None:
        assert quote["offers"] == 0, (cards, duration)
    else:
        start, used, ask = expected
        offer = quote["best_offer"]
        assert (offer["start"], offer["nodes"], Decimal(offer["ask_per_card_hour"])) == (
            iso(hour_start(start)), used, ask), (cards, duration)
    return demand



@pytest.mark.parametrize("seed", range(6))
def test_same_fabric_quote_agrees_with_the_per_hour_fill(buyer_client, seed):
    """A fabric with busy members, a member ending mid-window and one starting late: the quote's
    best offer is the one the per-hour fill finds."""
    # given one fabric of four nodes with random sales in blocks
    rng = random.Random(seed)
    supplier = OrganisationFactory()
    members = [make_listing(NodeFactory(organisation=supplier, fabric_id="ib-9"), hours=40, ask="10"),
               make_listing(NodeFactory(organisation=supplier, fabric_id="ib-9"), hours=40, ask="11"),
               make_listing(NodeFactory(organisation=supplier, fabric_id="ib-9"), hours=18, ask="9"),
               make_listing(NodeFactory(organisation=supplier, fabric_id="ib-9"), hours=30, ask="12",
                            start=next_hour(9), min_cards=4)]
    for listing in members:
        hours = list(listing.hours.order_by("hour").values_list("hour", flat=True))
        for _ in range(5):
            at = rng.choice(hours)
            ListingHour.objects.filter(listing=listing, hour__gte=at, hour__lt=at + rng.randint(1, 6)).update(
                cards_sold=rng.choice([2, 5, 8]))
    lo = members[0].hours.order_by("hour").first().hour
    for cards, duration in ((12, 3), (16, 6), (20, 2), (24, 4), (9, 10), (32, 3), (32, 12)):
        # when the market is quoted for a same-fabric run over the whole window
        body = card_hours_body(cards=cards, duration_hours=duration, placement="same_fabric", window_hours=42,
                               max_price_per_card_hour="100")
        quote = buyer_client.post("/api/v1/quotes", body, format="json").json()
        # then it offers what the per-hour fill finds, at the same start, nodes and ask, and the
        # cheapest-first search finds the same price
        _assert_fabric_quote_is_the_fill(buyer_client, quote, members, cards, duration, lo, 42)


@pytest.mark.parametrize("seed", range(2))
def test_short_quote_over_a_long_window_searched_in_chunks_agrees_with_the_linear_scan(buyer_client, seed):
    """A short demand over a long window reads the window in chunks of growing length (the first
    FIRST_CHUNK_HOURS hours and the duration, then doubling), each listing leaving the search at
    its first fit: the offers, their starts, the best offer, the depth, the cheapest ask and the
    same-fabric fill are still those of the linear scan of every calendar row of the whole window."""
    # given one supplier's fabric of 600-hour listings whose first 3-hour run of 4 free cards is:
    # in a later chunk (sold out before); on a free run crossing the first chunk's end; after a
    # partly sold run crossing it; at the window's very end; nowhere (6 of 8 cards sold
    # throughout); in the first chunk; and three with random sold blocks
    rng = random.Random(300 + seed)
    duration, window = 3, 600
    chunk_end = FIRST_CHUNK_HOURS + duration  # the first chunk's end, relative to the window's start
    supplier = OrganisationFactory()

    def listing(ask: str, *sales: tuple[int, int, int]):
        made = make_listing(NodeFactory(organisation=supplier, fabric_id="ib-5"), hours=window, ask=ask)
        lo = made.hours.order_by("hour").first().hour
        for sold_from, sold_to, cards in sales:
            ListingHour.objects.filter(listing=made, hour__gte=lo + sold_from, hour__lt=lo + sold_to).update(
                cards_sold=cards)
        return made

    listings = [listing("9", (0, 200, 8)),
                listing("8", (0, chunk_end - 2, 8), (chunk_end + 1, window, 8)),
                listing("8.50", (0, chunk_end - 6, 8), (chunk_end - 6, chunk_end + 9, 5), (chunk_end + 12, window, 7)),
                listing("7", (0, window - duration, 8)),
                listing("6", (0, window, 6)),
                listing("12", (5, 9, 8))]
    for ask in ("10", "11", "10.50"):
        listings.append(listing(ask))
        _sell_blocks(rng, listings[-1], blocks=60, longest=30)
    lo = listings[0].hours.order_by("hour").first().hour
    for cards in (2, 4, 8):
        # when the market is quoted for 3 hours over the whole 600-hour window
        body = card_hours_body(cards=cards, duration_hours=duration, window_hours=window,
                               max_price_per_card_hour="100")
        quote = buyer_client.post("/api/v1/quotes", body, format="json").json()
        # then every listing with a run anywhere in the window is an offer, at the scan's first start
        starts = [earliest_run(_free_series(l, lo, lo + window), duration, cards) for l in listings]
        offered = [(l.ask_per_card_hour, lo + s) for l, s in zip(listings, starts) if s is not None]
        assert quote["offers"] == len(offered) == quote["feasible_offers"], cards
        best = min(offered)
        assert (Decimal(quote["best_price"]), quote["best_offer"]["start"]) == (best[0], iso(hour_start(best[1])))
        levels = {Decimal(level["price"]): level["card_hours"] for d in quote["depth"] for level in d["levels"]}
        assert levels == {ask: cards * duration for ask, _ in offered}
        found = earliest_runs(needs={l.pk: cards for l in listings}, first=lo, last=lo + window, duration=duration)
        assert found == {l.pk: lo + s for l, s in zip(listings, starts) if s is not None}
        demand = CardHoursDemand(duration_hours=duration, earliest_start=next_hour(1),
                                 latest_end=next_hour(1) + timedelta(hours=window),
                                 max_price_per_card_hour=Decimal("100"), chips=["nvidia-h800-sxm"], cards=cards)
        assert quote_card_hours_cheapest(organisation=buyer_client.organisation, demand=demand) == best[0]
    # and when 4 cards are quoted, the sold-out-before, crossing and very-end listings are offered late
    four = [earliest_run(_free_series(l, lo, lo + window), duration, 4) for l in listings[:5]]
    assert four == [200, chunk_end - 2, chunk_end + 9, window - duration, None]
    for cards in (20, 40, 64):
        # when the fabric is quoted for a same-fabric run of 3 hours over the whole window
        body = card_hours_body(cards=cards, duration_hours=duration, placement="same_fabric", window_hours=window,
                               max_price_per_card_hour="100")
        quote = buyer_client.post("/api/v1/quotes", body, format="json").json()
        # then it offers what the per-hour fill finds, at the same start, nodes and ask
        expected = _reference_fabric_start(listings, cards, duration, lo, lo + window)
        if expected is None:
            assert quote["offers"] == 0, cards
        else:
            start, used, ask = expected
            offer = quote["best_offer"]
            assert (offer["start"], offer["nodes"], Decimal(offer["ask_per_card_hour"])) == (
                iso(hour_start(start)), used, ask), cards
