"""A supplier's and a buyer's own figures through the API, computed by hand."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import settlement
from billing.metering import UsageIn, usage_record_batch
from lifecycle import services as lifecycle

from tests.marketplace.helpers import assert_error
from tests.matching.helpers import post_order

from .helpers import card_hour_allocation, minutes_into, token_allocation

pytestmark = pytest.mark.django_db


def test_supplier_sees_racked_lit_and_earnings_and_buyer_sees_spend_and_waiting(supplier_client, buyer_client,
                                                                                 client_for):
    supplier = supplier_client.organisation
    # given 2 cards x 2 hours sold at 12 (a 2-card node listed for those 2 hours: 4 racked card-hours),
    # run for 50 minutes, then stopped
    allocation = card_hour_allocation(supplier, buyer_client, cards=2, hours=2, bid="12", ask="12")
    lifecycle.allocation_start(organisation=supplier, allocation_id=allocation.pk, now=minutes_into(allocation, 0))
    for minute in range(5, 51, 5):
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk,
                                       now=minutes_into(allocation, minute))
    lifecycle.allocation_stop(organisation=supplier, allocation_id=allocation.pk, now=minutes_into(allocation, 50))
    # and a token order served by another supplier, 1M cache-miss input tokens = 2 CNY
    tokens = token_allocation(client_for(is_supplier=True, is_buyer=False).organisation, buyer_client)
    usage_record_batch(organisation_id=tokens.supplier_id,
                       events=[UsageIn("e", tokens.pk, timezone.now(), 0, 1_000_000, 0)])
    settlement.settle_pending_usage()
    # and one order the buyer cannot afford yet (nothing else is listed: it waits for supply)
    post_order(buyer_client, max_price_per_card_hour="12")
    period = {"start": (timezone.now() - timedelta(days=1)).isoformat(),
              "end": (minutes_into(allocation, 120)).isoformat()}

    # when each asks for its figures
    figures = supplier_client.get("/api/v1/figures/supplier", period).json()
    # then the supplier sees 4 racked card-hours, 2 sold (stopping in the first hour put the second back
    # on sale), 2 x 50/60 = 1.666667 lit (lit rate 0.4167), and earns 20 less 8% = 18.40
    assert figures["card_hours"]["racked"] == 4 and figures["card_hours"]["sold"] == 2
    assert Decimal(figures["card_hours"]["lit"]) == Decimal("1.666667")
    assert figures["card_hours"]["lit_rate"] == "0.4167"
    assert Decimal(figures["earnings"]["gross"]) == 20 and Decimal(figures["earnings"]["net"]) == Decimal("18.40")
    assert Decimal(figures["earnings"]["owed_now"]) == Decimal("18.40")
    assert figures["reliability"] == "1.000" and figures["nodes"] == {"active": 1}

    buyer = buyer_client.get("/api/v1/figures/buyer", period).json()
    assert Decimal(buyer["spend"]["total"]) == 22  # 20 + 2
    assert Decimal(buyer["spend"]["by_kind"]["input_miss_tokens"]) == 2
    assert buyer["orders"]["open"] == 1 and buyer["orders"]["waiting_reasons"] == {"capacity_taken": 1}
    assert buyer["orders"]["by_status"]["completed"] == 1

    # and each side is refused the other's view, and a bad period is a 400
    assert_error(buyer_client.get("/api/v1/figures/supplier"), 403)
    assert_error(supplier_client.get("/api/v1/figures/buyer"), 403)
    assert_error(buyer_client.get("/api/v1/figures/buyer", {"start": period["end"], "end": period["start"]}), 400,
                 field="start")
    assert_error(buyer_client.get("/api/v1/figures/buyer", {"start": "yesterday"}), 400, field="start")
