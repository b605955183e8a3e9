"""Matching rounds against the real PostgreSQL: persistence, idempotency, stale snapshots, races."""
from decimal import Decimal

import pytest
from django.db import IntegrityError

from marketplace import services as market
from billing.models import Hold
from marketplace.models import Allocation, AllocationPart, ChipType, ListingHour, Order, Region
from matching import services
from matching.engine.engine import run_engine
from matching.models import MatchRound
from matching.snapshot import buckets_with_supply, load_snapshot
from lifecycle import services as lifecycle

from tests.concurrency import race
from tests.factories import NodeFactory, OrganisationFactory, make_listing

from .helpers import assert_calendar_consistent, assert_prices_rational, post_order


@pytest.mark.django_db
def test_a_round_matches_in_the_money_orders_at_fair_prices(buyer_client):
    # given two nodes asking 9 and 11, and orders bidding 12.5, 10 and 8 for 4 cards x 3 hours
    cheap = make_listing(NodeFactory(), ask="9")
    make_listing(NodeFactory(), ask="11")
    high = post_order(buyer_client, max_price_per_card_hour="12.5")
    mid = post_order(buyer_client, max_price_per_card_hour="10")
    low = post_order(buyer_client, max_price_per_card_hour="8")
    # when a round runs over the whole market
    outcome = services.round_run(bucket="*:*")
    # then the two in-the-money orders are matched and the one below every ask is not
    assert outcome.status == "committed" and outcome.matches == 2
    statuses = dict(Order.objects.values_list("pk", "status"))
    assert statuses == {high.pk: "matched", mid.pk: "matched", low.pk: "open"}
    # the 10-bid can only afford the 9 node; the cheap node has room for both (8 cards)
    assert {p.listing_id for a in Allocation.objects.all() for p in a.parts.all()} == {cheap.pk}
    assert_calendar_consistent()
    assert_prices_rational()
    assert all(a.price_rule == "uniform_clipped" for a in Allocation.objects.all())
    round_ = MatchRound.objects.get(round_id=outcome.round_id)
    assert round_.matches == 2 and round_.orders_considered == 3 and round_.welfare > 0


@pytest.mark.django_db
def test_a_round_is_idempotent_by_round_id(buyer_client):
    make_listing(NodeFactory(), ask="9")
    post_order(buyer_client)
    first = services.round_run(bucket="*:*", round_id="r-1")
    post_order(buyer_client)  # new demand arrives; a replay of r-1 must still do nothing
    again = services.round_run(bucket="*:*", round_id="r-1")
    assert first.matches == 1 and again.replayed and again.matches == 1
    assert Allocation.objects.count() == 1 and MatchRound.objects.count() == 1


@pytest.mark.django_db
def test_persist_rechecks_a_stale_snapshot(buyer_client):
    # given a round computed on a snapshot ...
    listing = make_listing(NodeFactory(card_count=4), cards=4, ask="9")
    order = post_order(buyer_client)
    snapshot = load_snapshot("*:*")
    result = run_engine(snapshot.supply, snapshot.demand)
    assert result.count == 1
    # ... while a direct sale takes the same cards before the round commits
    rival = post_order(buyer_client)
    start = int(result.start_hour[0])
    lifecycle.slots_reserve(order_id=rival.pk, claims=[market.SlotClaim(listing.pk, 4)], start_hour=start,
                            end_hour=start + 3, price_per_card_hour=Decimal("10"))
    # when the round persists, then its match is dropped, not oversold, and the order stays open
    outcome = services.round_persist(round_id="stale", bucket="*:*", result=result, price_rule="uniform_clipped")
    assert outcome.matches == 0 and outcome.skipped_stale == 1
    assert Order.objects.get(pk=order.pk).status == "open"
    assert_calendar_consistent()


@pytest.mark.django_db
def test_a_write_refused_inside_the_pipelined_persist_rolls_the_whole_round_back(buyer_client):
    # given a round's result whose price the database refuses (allocation_price_positive), so the
    # allocation insert fails inside the pipelined writes, after which more writes were queued
    make_listing(NodeFactory(), ask="9")
    order = post_order(buyer_client)
    snapshot = load_snapshot("*:*")
    result = run_engine(snapshot.supply, snapshot.demand)
    assert result.count == 1
    result.price[:] = 0

    # when it is persisted, then the refusal comes out as Django's IntegrityError ...
    with pytest.raises(IntegrityError, match="allocation_price_positive"):
        services.round_persist(round_id="refused", bucket="*:*", result=result, price_rule="uniform_clipped")

    # ... and nothing of the round is left: no allocation, part, hold, sold slot or round, the order open
    assert not Allocation.objects.exists() and not AllocationPart.objects.exists() and not Hold.objects.exists()
    assert not ListingHour.objects.filter(cards_sold__gt=0).exists()
    assert not MatchRound.objects.filter(round_id="refused").exists()
    assert Order.objects.get(pk=order.pk).status == "open"
    # and the connection still works: the same round, priced, commits
    result.price[:] = result.bid
    assert services.round_persist(round_id="refused", bucket="*:*", result=result,
                                  price_rule="uniform_clipped").matches == 1
    assert_calendar_consistent()


@pytest.mark.django_db
def test_persist_takes_matches_in_order_when_they_no_longer_all_fit(client_for):
    # given two 4-card orders of two buyers that can only run in the same 3 hours, both matched
    # on the snapshot to one 8-card node ...
    listing = make_listing(NodeFactory(card_count=8), cards=8, ask="9")
    first_buyer, second_buyer, rival_buyer = (client_for(is_buyer=True) for _ in range(3))
    post_order(first_buyer, window_hours=3)
    post_order(second_buyer, window_hours=3)
    snapshot = load_snapshot("*:*")
    result = run_engine(snapshot.supply, snapshot.demand)
    assert result.count == 2 and len(set(result.start_hour.tolist())) == 1
    # ... while a direct sale takes half the node in those hours before the round commits
    rival = post_order(rival_buyer, window_hours=3)
    start = int(result.start_hour[0])
    lifecycle.slots_reserve(order_id=rival.pk, claims=[market.SlotClaim(listing.pk, 4)], start_hour=start,
                            end_hour=start + 3, price_per_card_hour=Decimal("10"))
    # when the round persists, then the first match in result order still fits and is committed,
    # the second no longer does and its order stays open; nothing is oversold
    outcome = services.round_persist(round_id="half", bucket="*:*", result=result, price_rule="uniform_clipped")
    assert outcome.matches == 1 and outcome.skipped_stale == 1
    kept, dropped = int(result.order_id[0]), int(result.order_id[1])
    assert Order.objects.get(pk=kept).status == "matched" and Order.objects.get(pk=dropped).status == "open"
    assert Allocation.objects.filter(round_id="half").get().order_id == kept
    assert_calendar_consistent()


@pytest.mark.django_db
def test_persist_drops_a_match_its_buyer_can_no_longer_hold(client_for):
    # given a buyer whose wallet covers the hold of one of its two orders (4 cards x 3 hours x
    # 12.50 = 150 CNY each), and two nodes so both are matched
    make_listing(NodeFactory(), ask="9")
    make_listing(NodeFactory(), ask="9")
    buyer = client_for(is_buyer=True, funds=Decimal("200"))
    orders = [post_order(buyer), post_order(buyer)]
    # when a round runs
    outcome = services.round_run(bucket="*:*")
    # then the first match in result order holds 150 CNY, the other is dropped with the reason
    assert outcome.matches == 1 and outcome.skipped_stale == 1
    matched = Allocation.objects.get(round_id=outcome.round_id).order_id
    other = Order.objects.get(pk=({o.pk for o in orders} - {matched}).pop())
    assert other.status == "open"
    assert other.status_reason.startswith("insufficient funds: the match needs a hold of 150")
    assert "the wallet has 50" in other.status_reason
    assert_calendar_consistent()


@pytest.mark.django_db
def test_buckets_partition_supply_by_vendor_and_hub(buyer_client):
    ascend = ChipType.objects.get(code="huawei-ascend-910b")
    make_listing(NodeFactory())  # NVIDIA in Gui'an (guizhou hub)
    make_listing(NodeFactory(chip=ascend, region=Region.objects.get(code="CN-SH"), interconnect="roce"))
    assert buckets_with_supply() == ["huawei:yangtze-delta", "nvidia:guizhou"]
    post_order(buyer_client, chips=["huawei-ascend-910b", "nvidia-h800-sxm"])
    snapshot = load_snapshot("huawei:*")
    assert snapshot.supply.size == 1 and snapshot.demand.size == 1
    assert set(snapshot.demand.opt_chip.tolist()) == {ascend.pk}  # other vendors' options are not in this bucket


@pytest.mark.django_db
def test_rejected_pairings_are_never_proposed_again(buyer_client):
    from matching.models import MatchReview, RejectedPairing

    listing = make_listing(NodeFactory(), ask="9")
    other = make_listing(NodeFactory(), ask="10")
    order = post_order(buyer_client)
    services.round_run(bucket="*:*")
    first = Allocation.objects.get(order=order)
    assert first.parts.get().listing_id == listing.pk
    # an admin refuses that pair (the review path itself is tested through the API)
    review = MatchReview.objects.create(allocation=first, status="rejected", decided_at=first.created_at)
    RejectedPairing.objects.create(order=order, listing=listing, review=review)
    market.slots_release(allocation_id=first.pk)
    Order.objects.filter(pk=order.pk).update(status="open")
    services.round_run(bucket="*:*")
    second = Allocation.objects.exclude(pk=first.pk).get(order=order)
    assert second.parts.get().listing_id == other.pk


@pytest.mark.django_db(transaction=True)
def test_concurrent_rounds_on_overlapping_buckets_never_sell_a_slot_twice():
    # given a tight market: 6 nodes, 40 orders wanting 2-8 cards over overlapping hours
    from marketplace.demand import CardHoursDemand, RegionPolicySpec
    from tests.factories import next_hour
    from datetime import timedelta

    supplier = OrganisationFactory()
    for i in range(6):
        make_listing(NodeFactory(organisation=supplier, fabric_id="ib-a" if i < 3 else ""), ask=str(8 + i))
    buyer = OrganisationFactory()
    start = next_hour(1)
    for i in range(40):
        market.order_create_card_hours(organisation=buyer, demand=CardHoursDemand(
            duration_hours=2 + i % 3, earliest_start=start + timedelta(hours=i % 4),
            latest_end=start + timedelta(hours=10), max_price_per_card_hour=Decimal(10 + i % 5),
            chips=["nvidia-h800-sxm"], cards=[2, 4, 8, 12][i % 4],
            placement="same_fabric" if i % 4 == 3 else "single_node", region=RegionPolicySpec()))
    buckets = ["*:*", "nvidia:*", "nvidia:guizhou", "*:guizhou", "*:*", "nvidia:*"]
    # when six rounds over overlapping buckets run at once on separate connections
    outcomes = race([lambda b=b: services.round_run(bucket=b) for b in buckets])
    errors = [o for o in outcomes if isinstance(o, Exception)]
    # then nothing failed, every sale is accounted for exactly once, and prices are fair
    assert not errors, errors
    assert MatchRound.objects.count() == len(buckets)
    assert Allocation.objects.filter(status="confirmed").count() == Order.objects.filter(status="matched").count() > 0
    assert_calendar_consistent()
    assert_prices_rational()
    sold = sum(ListingHour.objects.values_list("cards_sold", flat=True))
    assert sold == sum(a.cards * (a.end_hour - a.start_hour) for a in Allocation.objects.filter(status="confirmed"))


@pytest.mark.django_db
def test_token_orders_go_to_the_cheapest_endpoint_within_limits(buyer_client):
    from tests.marketplace.helpers import tokens_body

    node = NodeFactory()
    endpoint = market.TokenEndpoint("DeepSeek-V3", Decimal("0.5"), Decimal("2"), Decimal("8"))
    make_listing(node, token_endpoint=endpoint)
    cheap = make_listing(NodeFactory(), token_endpoint=market.TokenEndpoint("DeepSeek-V3", Decimal("0.1"),
                                                                            Decimal("1"), Decimal("2")))
    dear = make_listing(NodeFactory(), token_endpoint=market.TokenEndpoint("DeepSeek-V3", Decimal("0.1"),
                                                                           Decimal("1"), Decimal("9")))
    order = Order.objects.get(pk=buyer_client.post("/api/v1/orders", tokens_body(), format="json").json()["id"])
    outcome = services.round_run(bucket="tokens")
    assert outcome.matches == 1
    allocation = Allocation.objects.get(order=order)
    assert allocation.kind == "tokens" and allocation.parts.get().listing_id == cheap.pk != dear.pk
    assert allocation.price_output_per_m == Decimal("2") and allocation.price_rule == "posted"
    assert not ListingHour.objects.filter(cards_sold__gt=0).exists()  # token sales do not consume card-hours


@pytest.mark.django_db
def test_long_bucket_names_fit_in_round_ids(buyer_client):
    # a Moore Threads node at the Inner Mongolia hub: the longest vendor:hub, plus a Celery task id
    mtt = ChipType.objects.get(code="moore-threads-mtt-s4000")
    make_listing(NodeFactory(chip=mtt, region=Region.objects.get(code="CN-NM-HLG"), interconnect="roce"), ask="2")
    post_order(buyer_client, chips=["moore-threads-mtt-s4000"], max_price_per_card_hour="3")
    assert "moore-threads:inner-mongolia" in buckets_with_supply()
    round_id = "moore-threads:inner-mongolia:" + "0b1f3c6e-8d2a-4c57-9e11-6f2d0a9b7c44"
    outcome = services.round_run(bucket="moore-threads:inner-mongolia", round_id=round_id)
    assert outcome.matches == 1 and Allocation.objects.get().round_id == round_id
