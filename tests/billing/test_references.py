"""References are unique within their owner: two organisations using the same reference (or event
id, or Idempotency-Key) each get their own result, never the other's."""
from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from billing import services, settlement
from billing.metering import UsageIn, usage_record_batch
from billing.models import Account, Charge, Transfer
from marketplace import services as market
from marketplace.models import Allocation, Order
from matching import services as matching

from tests.factories import NodeFactory, admin_user, make_listing
from tests.marketplace.helpers import assert_error, card_hours_body, tokens_body

from .helpers import assert_books_balance, balance, occurred_for, token_allocation, usage_event_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def finance():
    client = APIClient()
    client.force_authenticate(admin_user("fin", "billing.top_up_wallet", "billing.pay_out", "billing.refund_charge"))
    return client


def owed(organisation, amount: str) -> None:
    """Given: the supplier is owed ``amount`` (booked straight to its payable)."""
    external = services.account_get_or_create(organisation_id=None, kind=Account.Kind.EXTERNAL)
    payable = services.account_get_or_create(organisation_id=organisation.pk, kind=Account.Kind.SUPPLIER_PAYABLE)
    services.transfer_post(idempotency_id=f"test-earnings:{organisation.pk}", kind="test",
                           legs=[(external.pk, -Decimal(amount)), (payable.pk, Decimal(amount))])


def test_two_suppliers_paid_out_with_the_same_reference_are_each_paid(finance, client_for):
    a, d = (client_for(is_supplier=True, is_buyer=False).organisation for _ in range(2))
    owed(a, "100.00")
    owed(d, "250.00")
    # when A is paid with bank-1, then D with bank-1
    paid_a = finance.post(f"/api/v1/admin/organisations/{a.pk}/payouts", {"reference": "bank-1"}, format="json")
    paid_d = finance.post(f"/api/v1/admin/organisations/{d.pk}/payouts", {"reference": "bank-1"}, format="json")
    # then each got its own payout, not the other's
    assert paid_a.status_code == paid_d.status_code == 201
    assert paid_a.json()["id"] != paid_d.json()["id"]
    assert Decimal(paid_a.json()["amount"]) == 100 and Decimal(paid_d.json()["amount"]) == 250
    assert balance(a.pk, "supplier_payable") == balance(d.pk, "supplier_payable") == 0
    # and a retry is still the owner's own first result
    again = finance.post(f"/api/v1/admin/organisations/{d.pk}/payouts", {"reference": "bank-1"}, format="json")
    assert again.json() == paid_d.json()
    assert_books_balance()


def test_two_wallets_topped_up_with_the_same_reference_are_each_credited(finance, client_for):
    x, y = (client_for(is_supplier=False, is_buyer=True, funds=0).organisation for _ in range(2))
    for org, amount in ((x, "10.00"), (y, "20.00")):
        response = finance.post(f"/api/v1/admin/organisations/{org.pk}/top-ups",
                                {"amount": amount, "reference": "wire-1"}, format="json")
        assert response.status_code == 201
    assert balance(x.pk, "buyer_wallet") == 10 and balance(y.pk, "buyer_wallet") == 20
    # the same reference with another amount in the same wallet is a conflict, not a second credit
    assert_error(finance.post(f"/api/v1/admin/organisations/{x.pk}/top-ups", {"amount": "11.00", "reference": "wire-1"},
                              format="json"), 409)
    assert balance(x.pk, "buyer_wallet") == 10
    assert_books_balance()


def test_two_buyers_refunded_with_the_same_reference_each_get_their_refund(finance, supplier_client, client_for):
    buyers = [client_for(is_supplier=False, is_buyer=True) for _ in range(2)]
    allocations = [token_allocation(supplier_client.organisation, b) for b in buyers]
    usage_record_batch(organisation_id=supplier_client.organisation.pk, events=[
        UsageIn(f"e{n}", a.pk, occurred_for(a), 0, 1_000_000 * (n + 1), 0) for n, a in enumerate(allocations)])
    settlement.settle_pending_usage()
    charges = [Charge.objects.get(allocation=a, kind="input_miss_tokens") for a in allocations]  # 2 and 4 CNY
    before = [balance(b.organisation.pk, "buyer_wallet") for b in buyers]
    refunds = [finance.post(f"/api/v1/admin/charges/{c.pk}/refund", {"amount": amount, "reason": "r",
                                                                    "reference": "ticket-1"}, format="json")
               for c, amount in zip(charges, ("1", "3"))]
    assert [r.status_code for r in refunds] == [201, 201] and refunds[0].json()["id"] != refunds[1].json()["id"]
    after = [balance(b.organisation.pk, "buyer_wallet") for b in buyers]
    assert [a - b for a, b in zip(after, before)] == [1, 3]
    assert_books_balance()


def test_two_suppliers_reporting_the_same_event_id_each_store_their_event(client_for, buyer_client):
    suppliers = [client_for(is_supplier=True, is_buyer=False) for _ in range(2)]
    first = token_allocation(suppliers[0].organisation, buyer_client)
    # the second supplier's endpoint is cheaper, so the next token order goes to it
    make_listing(NodeFactory(organisation=suppliers[1].organisation), token_endpoint=market.TokenEndpoint(
        "DeepSeek-V3", Decimal("0.4"), Decimal("1.9"), Decimal("7.9"), tokens_per_minute=10**9))
    order = buyer_client.post("/api/v1/orders", tokens_body(), format="json").json()["id"]
    matching.round_run(bucket="tokens")
    allocations = [first, Allocation.objects.get(order_id=order)]
    assert [a.supplier_id for a in allocations] == [s.organisation.pk for s in suppliers]
    answers = [s.post("/api/v1/usage-events", usage_event_body(a, event_id="e-1", output_tokens=n * 1000),
                      format="json") for n, (s, a) in enumerate(zip(suppliers, allocations), start=1)]
    assert [r.status_code for r in answers] == [201, 201]
    assert [r.json()["amount"] for r in answers] != [answers[0].json()["amount"]] * 2  # each its own result
    replay = suppliers[1].post("/api/v1/usage-events", usage_event_body(allocations[1], event_id="e-1",
                                                                          output_tokens=2000), format="json")
    assert replay.status_code == 200 and replay.json() == {**answers[1].json(), "status": "replayed"}


def test_two_buyers_sending_the_same_idempotency_key_each_create_their_order(client_for):
    buyers = [client_for(is_supplier=False, is_buyer=True) for _ in range(2)]
    answers = [b.post("/api/v1/orders", card_hours_body(cards=n), format="json", HTTP_IDEMPOTENCY_KEY="order-1")
               for n, b in enumerate(buyers, start=1)]
    assert [r.status_code for r in answers] == [201, 201]
    assert answers[0].json()["id"] != answers[1].json()["id"]
    assert [Order.objects.get(pk=r.json()["id"]).organisation_id for r in answers] == [b.organisation.pk
                                                                                      for b in buyers]
    assert "Idempotent-Replayed" not in answers[1]


def test_ledger_ids_of_admin_money_operations_name_their_owner(finance, client_for):
    org = client_for(is_supplier=False, is_buyer=True, funds=0).organisation
    finance.post(f"/api/v1/admin/organisations/{org.pk}/top-ups", {"amount": "5", "reference": "w"}, format="json")
    assert Transfer.objects.filter(idempotency_id=f"top-up:org{org.pk}:w").exists()
