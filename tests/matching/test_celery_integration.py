"""Real Celery workers against the real PostgreSQL and Redis: overlapping rounds never sell a slot
twice, and a round killed mid-way leaves nothing behind and commits exactly once when redelivered."""
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection

from marketplace import services as market
from marketplace.demand import CardHoursDemand, RegionPolicySpec
from marketplace.models import Allocation, ListingHour, Order
from matching.models import MatchRound
from matching.tasks import run_round

from tests.factories import NodeFactory, OrganisationFactory, make_listing, next_hour
from tests.workers import wait_for

from .helpers import assert_calendar_consistent, assert_prices_rational

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _market(n_orders: int = 48):
    supplier = OrganisationFactory()
    for i in range(8):
        make_listing(NodeFactory(organisation=supplier, fabric_id="ib-1" if i < 4 else ""), ask=str(8 + i % 4))
    buyer = OrganisationFactory()
    start = next_hour(1)
    for i in range(n_orders):
        market.order_create_card_hours(organisation=buyer, demand=CardHoursDemand(
            duration_hours=2 + i % 4, earliest_start=start + timedelta(hours=i % 5),
            latest_end=start + timedelta(hours=12), max_price_per_card_hour=Decimal(9 + i % 6),
            chips=["nvidia-h800-sxm"], cards=[1, 2, 4, 8, 12][i % 5],
            placement="same_fabric" if i % 5 == 4 else "single_node", region=RegionPolicySpec()))


def test_two_workers_on_overlapping_buckets_never_sell_a_slot_twice(workers, queue):
    # given a contested market and two real workers on one queue
    _market()
    a, b = workers("alpha"), workers("beta")
    # when a burst of rounds over overlapping buckets arrives
    buckets = ["*:*", "nvidia:*", "nvidia:guizhou", "*:guizhou"] * 4
    for bucket in buckets:
        run_round.apply_async(args=[bucket], queue=queue)
    wait_for(lambda: MatchRound.objects.count() == len(buckets), what="all rounds")
    # then both workers did work, and every slot was sold at most once
    assert a.succeeded() > 0 and b.succeeded() > 0, (a.log.read_text()[-2000:], b.log.read_text()[-2000:])
    assert Allocation.objects.filter(status="confirmed").count() == Order.objects.filter(status="matched").count() > 0
    assert_calendar_consistent()
    assert_prices_rational()


def test_a_round_killed_mid_commit_leaves_nothing_and_commits_once_when_redelivered(workers, queue):
    # given a market and a worker whose round will pause inside its transaction
    _market(24)
    doomed = workers("doomed", SANDUISAN_PERSIST_PAUSE_SECONDS="60")
    task_id = f"crash-{uuid.uuid4().hex[:8]}"
    run_round.apply_async(args=["*:*"], queue=queue, task_id=task_id)

    def paused_in_transaction() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                           "WHERE c.relname = 'marketplace_listinghour' AND l.mode = 'RowShareLock' "
                           "AND l.pid <> pg_backend_pid()")
            return cursor.fetchone()[0] > 0

    wait_for(paused_in_transaction, what="the round to hold its locks")
    # when the worker dies mid-way (no chance to clean up)
    doomed.kill()
    wait_for(lambda: not paused_in_transaction(), what="PostgreSQL to roll the dead transaction back")
    # then nothing of the round is left behind
    assert not MatchRound.objects.exists() and not Allocation.objects.exists()
    assert not ListingHour.objects.filter(cards_sold__gt=0).exists()
    assert Order.objects.filter(status="open").count() == 24

    # when a healthy worker comes up, the unacknowledged task is redelivered and commits
    healthy = workers("healthy")
    round_id = f"*:*:{task_id}"
    wait_for(lambda: MatchRound.objects.filter(round_id=round_id).exists(), timeout=90, what="the redelivered round")
    matched = Allocation.objects.count()
    assert matched > 0
    # and sending the very same task again changes nothing
    run_round.apply_async(args=["*:*"], queue=queue, task_id=task_id)
    wait_for(lambda: healthy.succeeded() >= 2, what="the duplicate to be processed")
    assert MatchRound.objects.filter(round_id=round_id).count() == 1
    assert Allocation.objects.count() == matched
    assert_calendar_consistent()


def test_an_order_posted_through_the_api_is_matched_by_a_worker_soon_after(workers, queue, buyer_client, settings):
    from config.celery import app
    from tests.matching.helpers import post_order

    # given automatic matching on, one node for sale and a real worker
    settings.SANDUISAN = {**settings.SANDUISAN, "AUTO_MATCH": True, "ROUND_DEBOUNCE_SECONDS": 1}
    previous_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    try:
        make_listing(NodeFactory(), ask="9")
        workers("auto", SANDUISAN_AUTO_MATCH="1")
        # when a buyer posts three orders in a burst
        orders = [post_order(buyer_client) for _ in range(3)]
        # then a debounced round matches them without anyone asking
        wait_for(lambda: Order.objects.filter(pk__in=[o.pk for o in orders], status="matched").count() == 3,
                 what="automatic matching")
    finally:
        app.conf.task_default_queue = previous_queue
    # (two run side by side on the 8-card node, the third later in its window) and the burst led to
    # a single round for its bucket
    assert MatchRound.objects.filter(bucket="nvidia:guizhou").count() == 1
    assert_calendar_consistent()
