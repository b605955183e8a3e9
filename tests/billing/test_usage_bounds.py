"""Usage bounded by the agreement: a token order's max_spend, the allocation's live period and the
endpoint's declared capacity. Refused events are answered per event and never charged."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import settlement
from billing.models import Charge, TokenUsageTotal, UsageEvent
from marketplace.hours import hour_start
from marketplace.models import Allocation, Listing, Order
from matching import services as matching

from tests.concurrency import race
from tests.factories import NodeFactory
from tests.marketplace.helpers import assert_error, listing_body, tokens_body

from .helpers import assert_books_balance, balance, token_allocation, usage_event_body

pytestmark = pytest.mark.django_db

NOW = lambda: timezone.now().replace(microsecond=0)  # noqa: E731


def event(allocation, event_id, *, hit=0, miss=0, out=0, at=None) -> dict:
    return usage_event_body(allocation, event_id, input_hit_tokens=hit, input_miss_tokens=miss, output_tokens=out,
                            occurred_at=(at or NOW()).isoformat())


def test_a_token_order_takes_max_spend_and_refuses_a_bad_one(buyer_client):
    placed = buyer_client.post("/api/v1/orders", tokens_body(max_spend="40.50"), format="json")
    assert placed.status_code == 201 and Decimal(placed.json()["max_spend"]) == Decimal("40.5")
    default = buyer_client.post("/api/v1/orders", {**tokens_body(), "max_spend": None}, format="json")
    assert default.status_code == 201 and default.json()["max_spend"] is None  # its hold
    for bad in ("-1", "0", "abc", "1e12", "0.0000001"):
        assert_error(buyer_client.post("/api/v1/orders", tokens_body(max_spend=bad), format="json"), 400,
                     field="max_spend")
    assert Order.objects.count() == 2


def test_a_token_listing_declares_its_capacity(supplier_client):
    node = NodeFactory(organisation=supplier_client.organisation)
    endpoint = {"model": "DeepSeek-V3", "price_input_hit_per_m": "0.5", "price_input_miss_per_m": "2",
                "price_output_per_m": "8"}
    assert_error(supplier_client.post("/api/v1/listings", listing_body(node.pk, token_endpoint=endpoint),
                                      format="json"), 400, field="token_endpoint.tokens_per_minute")
    assert_error(supplier_client.post("/api/v1/listings", listing_body(
        node.pk, token_endpoint={**endpoint, "tokens_per_minute": 0}), format="json"), 400,
        field="token_endpoint.tokens_per_minute")
    listed = supplier_client.post("/api/v1/listings", listing_body(
        node.pk, token_endpoint={**endpoint, "tokens_per_minute": 250_000}), format="json")
    assert listed.status_code == 201 and listed.json()["token_endpoint"]["tokens_per_minute"] == 250_000
    assert Listing.objects.get().tokens_per_minute == 250_000


def test_the_issue_9_over_report_is_refused_and_the_wallet_keeps_its_money(supplier_client, buyer_client):
    # given a buyer expecting 1,000 output tokens (a hold of 0.008 CNY) and no max_spend
    allocation = token_allocation(supplier_client.organisation, buyer_client, expected_input_tokens=0,
                                  expected_output_tokens=1000, max_spend=None)
    buyer = buyer_client.organisation.pk
    wallet = balance(buyer, "buyer_wallet")
    meter = buyer_client.get(f"/api/v1/allocations/{allocation.pk}/meter").json()
    assert Decimal(meter["budget"]["max_spend"]) == Decimal("0.008") and meter["budget"]["out_of_budget"] is False
    # when the supplier reports 115,625,000 output tokens, then it is refused as over budget, per event too
    greedy = supplier_client.post("/api/v1/usage-events", event(allocation, "greedy", out=115_625_000), format="json")
    assert_error(greedy, 409, code="over_budget", field="allocation")
    batch = supplier_client.post("/api/v1/usage-events/batch", {"events": [
        event(allocation, "ok", out=500), event(allocation, "greedy", out=115_625_000), event(allocation, "ok-2", out=500),
        event(allocation, "one-more", out=1)]}, format="json").json()
    assert [(r["status"], r.get("code")) for r in batch["results"]] == [
        ("created", None), ("rejected", "over_budget"), ("created", None), ("rejected", "over_budget")]
    # and the allocation says it is out of budget, to the buyer and to the supplier
    for client in (buyer_client, supplier_client):
        budget = client.get(f"/api/v1/allocations/{allocation.pk}/meter").json()["budget"]
        assert budget["out_of_budget"] is True and Decimal(budget["accepted_amount"]) == Decimal("0.008")
        assert budget["accepted_tokens"] == 1000 and budget["refused_over_budget"] == 3
    # and settling charges the buyer exactly the hold, nothing from its wallet
    settlement.settle_pending_usage()
    settlement.allocation_settle(allocation_id=allocation.pk, final=True)
    assert sum(Charge.objects.filter(buyer_id=buyer).values_list("amount", flat=True)) == Decimal("0.008")
    assert balance(buyer, "buyer_wallet") == wallet and balance(buyer, "buyer_held") == 0
    assert set(UsageEvent.objects.values_list("event_id", flat=True)) == {"ok", "ok-2"}
    assert_books_balance()


def test_max_spend_above_the_hold_lets_usage_beyond_it_come_from_the_wallet(supplier_client, buyer_client):
    allocation = token_allocation(supplier_client.organisation, buyer_client, max_spend="40")  # hold 32.25
    buyer = buyer_client.organisation.pk
    wallet = balance(buyer, "buyer_wallet")
    # 35.5 CNY accepted (3.25 beyond the hold), then 4.6 more would pass 40
    assert supplier_client.post("/api/v1/usage-events", usage_event_body(allocation, "big"),
                                format="json").status_code == 201
    assert_error(supplier_client.post("/api/v1/usage-events", event(allocation, "more", out=575_000),
                                      format="json"), 409, code="over_budget")
    assert supplier_client.post("/api/v1/usage-events", event(allocation, "last", out=562_500),
                                format="json").status_code == 201  # exactly 40.00
    settlement.allocation_settle(allocation_id=allocation.pk, final=True)
    assert sum(Charge.objects.filter(buyer_id=buyer).values_list("amount", flat=True)) == Decimal("40")
    assert balance(buyer, "buyer_wallet") == wallet - Decimal("40") + Decimal("32.25")
    assert_books_balance()


def test_usage_outside_the_live_period_is_refused(supplier_client, buyer_client):
    allocation = token_allocation(supplier_client.organisation, buyer_client)
    start = hour_start(allocation.start_hour)
    before = supplier_client.post("/api/v1/usage-events", event(allocation, "early", out=10,
                                                                   at=start - timedelta(minutes=6)), format="json")
    assert_error(before, 400, code="out_of_period", field="occurred_at")
    # the allocation ended two hours ago: its last minute's usage arrives past the hour of late grace
    Allocation.objects.filter(pk=allocation.pk).update(start_hour=allocation.start_hour - 5,
                                                      end_hour=allocation.start_hour - 2, status="completed")
    end = hour_start(allocation.start_hour - 2)
    late = supplier_client.post("/api/v1/usage-events/batch", {"events": [
        event(allocation, "late", out=10, at=end - timedelta(minutes=1))]}, format="json").json()
    assert late["results"][0]["status"] == "rejected" and late["results"][0]["code"] == "out_of_period"
    # within the grace it is taken
    Allocation.objects.filter(pk=allocation.pk).update(end_hour=allocation.start_hour)
    on_time = supplier_client.post("/api/v1/usage-events", event(allocation, "late", out=10,
                                                                    at=start - timedelta(minutes=1)), format="json")
    assert on_time.status_code == 201
    assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["late"]


def test_an_event_in_the_clock_skew_before_the_start_counts_as_the_first_minute(supplier_client, buyer_client):
    # given an endpoint serving 1,000 tokens a minute, and a supplier whose clock runs behind
    allocation = token_allocation(supplier_client.organisation, buyer_client, tokens_per_minute=1000)
    start = hour_start(allocation.start_hour)
    # when it reports a first minute's tokens stamped 30 s before the allocation's start
    early = supplier_client.post("/api/v1/usage-events", event(allocation, "early", out=1000,
                                                                  at=start - timedelta(seconds=30)), format="json")
    # then the live period's clock skew takes it, and the capacity check counts it in the first minute
    assert early.status_code == 201, early.content
    # but not more than that minute could serve
    more = supplier_client.post("/api/v1/usage-events", event(allocation, "more", out=1,
                                                                 at=start - timedelta(seconds=20)), format="json")
    assert_error(more, 400, code="implausible")


def test_more_than_the_endpoint_could_serve_is_implausible(supplier_client, buyer_client):
    allocation = token_allocation(supplier_client.organisation, buyer_client, tokens_per_minute=1000)
    # at most 61 minutes have started since the hour the allocation began: 61,000 tokens
    honest = supplier_client.post("/api/v1/usage-events", event(allocation, "honest", out=900), format="json")
    assert honest.status_code == 201
    inflated = supplier_client.post("/api/v1/usage-events", event(allocation, "inflated", hit=100_000),
                                    format="json")
    assert_error(inflated, 400, code="implausible")
    assert TokenUsageTotal.objects.get(allocation=allocation).refused_implausible == 1
    assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["honest"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_never_pass_max_spend(supplier_client, buyer_client):
    allocation = token_allocation(supplier_client.organisation, buyer_client, max_spend="1")
    client = supplier_client.__class__
    # eight batches of ten events of 0.04 CNY each: 3.20 offered, 1.00 agreed
    bodies = [{"events": [event(allocation, f"r{r}-{i}", out=5000) for i in range(10)]} for r in range(8)]
    answers = race([lambda body=body: client(supplier_client.organisation, supplier_client.key).post(
        "/api/v1/usage-events/batch", body, format="json") for body in bodies])
    assert all(a.status_code == 200 for a in answers), answers
    created = sum(a.json()["counts"]["created"] for a in answers)
    assert created == 25 and UsageEvent.objects.count() == 25
    assert TokenUsageTotal.objects.get(allocation=allocation).amount == Decimal("1")
    settlement.allocation_settle(allocation_id=allocation.pk, final=True)
    assert sum(Charge.objects.values_list("amount", flat=True)) == Decimal("1")
    assert_books_balance()


def test_a_replay_is_answered_even_after_the_budget_is_spent(supplier_client, buyer_client):
    allocation = token_allocation(supplier_client.organisation, buyer_client, max_spend="0.04")
    body = event(allocation, "a", out=5000)
    first = supplier_client.post("/api/v1/usage-events", body, format="json")
    assert first.status_code == 201
    assert_error(supplier_client.post("/api/v1/usage-events", event(allocation, "b", out=1), format="json"), 409,
                 code="over_budget")
    replay = supplier_client.post("/api/v1/usage-events", body, format="json")
    assert replay.status_code == 200 and replay.json()["amount"] == first.json()["amount"]


def test_matching_holds_no_more_than_max_spend(supplier_client, buyer_client):
    allocation = token_allocation(supplier_client.organisation, buyer_client, max_spend="10")  # expected 32.25
    assert allocation.hold.amount == Decimal("10")
    matching.round_run(bucket="tokens")  # nothing more to match
    assert balance(buyer_client.organisation.pk, "buyer_held") == Decimal("10")


def test_a_batch_is_judged_in_order_for_repeated_ids(supplier_client, buyer_client):
    """An id refused early in a batch and accepted later is created; a refused delivery of an id
    created earlier in the batch (or before it) is answered as that id's replay or conflict."""
    allocation = token_allocation(supplier_client.organisation, buyer_client)
    early = hour_start(allocation.start_hour) - timedelta(hours=1)
    good = event(allocation, "x", out=10)
    answer = supplier_client.post("/api/v1/usage-events/batch", {"events": [
        event(allocation, "x", out=10, at=early), good, event(allocation, "x", out=11, at=early), good]},
        format="json").json()
    assert [(r["status"], r.get("code")) for r in answer["results"]] == [
        ("rejected", "out_of_period"), ("created", None), ("conflict", "idempotency_conflict"), ("replayed", None)]
    again = supplier_client.post("/api/v1/usage-events/batch", {"events": [
        event(allocation, "x", out=10, at=early)]}, format="json").json()
    assert again["results"][0]["status"] == "conflict"  # stored before: a conflict, not a refusal
    assert UsageEvent.objects.count() == 1
