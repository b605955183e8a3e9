"""The worked example of the README's money model, every figure computed by hand.

A buyer rents 8 cards for 3 hours and runs DeepSeek-V3 tokens on another supplier's endpoint;
both are settled, invoiced, stated and paid out.
"""
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import invoicing, settlement
from billing.models import Charge, Hold, Invoice
from billing.metering import UsageIn, usage_record_batch
from marketplace.models import Order
from lifecycle import services as lifecycle

from tests.factories import OrganisationFactory

from .helpers import (assert_books_balance, balance, card_hour_allocation, minutes_into, platform_balance,
                      token_allocation)

pytestmark = pytest.mark.django_db


def test_card_hours_and_tokens_from_match_to_payout(client_for, settings):
    settings.SANDUISAN = {**settings.SANDUISAN, "COMMISSION_RATE": "0.08"}
    gpu_owner = OrganisationFactory(is_supplier=True, is_buyer=False)
    token_host = OrganisationFactory(is_supplier=True, is_buyer=False)
    buyer_client = client_for(is_supplier=False, is_buyer=True, funds=1000)
    buyer = buyer_client.organisation

    # Given 8 cards x 3 hours bought at a bid of 12.50 against an ask of 10.00: the uniform price
    # is the midpoint, (12.50 + 10.00) / 2 = 11.25 per card-hour; the hold is the bid's maximum,
    # 12.50 x 8 x 3 = 300.
    gpus = card_hour_allocation(gpu_owner, buyer_client, cards=8, hours=3, bid="12.5", ask="10")
    assert gpus.price_per_card_hour == Decimal("11.25")
    assert Hold.objects.get(allocation=gpus).amount == Decimal("300")
    # and a token order expecting 10M input (25% cache hits) and 2M output at limits 0.5 / 2 / 8:
    # hold = 2.5M x 0.5 + 7.5M x 2 + 2M x 8, per million = 1.25 + 15 + 16 = 32.25.
    tokens = token_allocation(token_host, buyer_client, max_spend="40")  # above the hold: usage beyond it is agreed
    assert Hold.objects.get(allocation=tokens).amount == Decimal("32.25")
    assert balance(buyer.pk, "buyer_wallet") == Decimal("667.75")  # 1000 - 300 - 32.25
    assert balance(buyer.pk, "buyer_held") == Decimal("332.25")

    # When the supplier runs the job for the whole 3 hours, with a heartbeat every 5 minutes ...
    lifecycle.allocation_start(organisation=gpu_owner, allocation_id=gpus.pk, now=minutes_into(gpus, 0))
    for minute in range(5, 180, 5):
        lifecycle.allocation_heartbeat(organisation=gpu_owner, allocation_id=gpus.pk, now=minutes_into(gpus, minute))
        if minute == 60:  # a settlement sweep mid-way charges the first hour: 8 x 11.25 = 90
            assert settlement.allocation_settle(allocation_id=gpus.pk, now=minutes_into(gpus, 60)).charged == 90
    lifecycle.allocation_stop(organisation=gpu_owner, allocation_id=gpus.pk, now=minutes_into(gpus, 180))
    # ... and the endpoint reports 3M input on cache hit, 7M on cache miss and 2.5M output, plus a
    # small late event of 1,234 output tokens: 1.5 + 14 + 20 + 0.009872 = 35.509872.
    now = timezone.now()
    usage_record_batch(organisation_id=token_host.pk, now=now, events=[
        UsageIn("big", tokens.pk, now, 3_000_000, 7_000_000, 2_500_000),
        UsageIn("small", tokens.pk, now, 0, 0, 1_234)])
    assert settlement.allocation_settle(allocation_id=tokens.pk, now=now).charged == Decimal("35.509872")

    # Then the card-hour job cost 8 x 3 x 11.25 = 270 and its hold closed, 30 back to the wallet;
    # the token usage exceeded its 32.25 hold by 3.259872, which came from the wallet.
    assert Hold.objects.get(allocation=gpus).status == "posted"
    assert Hold.objects.get(allocation=gpus).posted_amount == Decimal("270")
    assert Hold.objects.get(allocation=tokens).posted_amount == Decimal("32.25")
    assert Order.objects.get(pk=gpus.order_id).status == "completed"
    # wallet: 667.75 + 30 (released) - 3.259872 (token overage) = 694.490128
    assert balance(buyer.pk, "buyer_wallet") == Decimal("694.490128")
    assert balance(buyer.pk, "buyer_held") == Decimal("32.25") - Decimal("32.25")
    # commission 8%: 270 x 0.08 = 21.60 and 35.509872 x 0.08 = 2.84078976
    assert balance(gpu_owner.pk, "supplier_payable") == Decimal("248.40")
    assert balance(token_host.pk, "supplier_payable") == Decimal("32.66908224")
    assert platform_balance("platform_commission") == Decimal("24.44078976")

    # When the buyer's invoice is issued: lines per order and usage kind, exact subtotal
    # 270 + 35.509872 = 305.509872, total floored to the fen 305.50, remainder 0.009872 back.
    after = minutes_into(gpus, 200)
    invoice = invoicing.invoice_issue(organisation_id=buyer.pk, now=after)
    lines = {(line.order_id, line.kind): line for line in invoice.lines.all()}
    assert lines[(gpus.order_id, "card_hours")].quantity == Decimal("24")
    assert lines[(gpus.order_id, "card_hours")].amount == Decimal("270")
    assert lines[(tokens.order_id, "input_hit_tokens")].amount == Decimal("1.5")
    assert lines[(tokens.order_id, "input_miss_tokens")].amount == Decimal("14")
    assert lines[(tokens.order_id, "output_tokens")].quantity == Decimal("2501234")
    assert lines[(tokens.order_id, "output_tokens")].amount == Decimal("20.009872")
    assert invoice.subtotal == Decimal("305.509872")
    assert invoice.total == Decimal("305.50") and invoice.rounding == Decimal("0.009872")
    assert balance(buyer.pk, "buyer_wallet") == Decimal("694.50")  # 694.490128 + 0.009872
    assert platform_balance("platform_rounding") == Decimal("-0.009872")

    # And the GPU owner's statement: 270 gross, 21.60 commission, 248.40 net, 24 card-hours
    # delivered of 24 listed (utilisation 1); its payout is 248.40 exactly.
    statement = invoicing.invoice_issue(organisation_id=gpu_owner.pk, kind=Invoice.Kind.STATEMENT, now=after)
    assert (statement.subtotal, statement.commission, statement.total) == (Decimal("270"), Decimal("21.6"),
                                                                           Decimal("248.40"))
    assert statement.figures["listed_card_hours"] == 24 and statement.figures["utilisation"] == "1.0000"
    # The token host's net 32.66908224 pays out 32.66, the 0.00908224 stays with the platform.
    invoicing.payout_create(organisation_id=token_host.pk, reference="wire-1")
    assert balance(token_host.pk, "supplier_payable") == 0
    assert platform_balance("platform_rounding") == Decimal("-0.009872") + Decimal("0.00908224")
    assert Charge.objects.filter(invoice=invoice).count() == 5  # 2 card-hour steps + 3 token kinds
    assert_books_balance()
