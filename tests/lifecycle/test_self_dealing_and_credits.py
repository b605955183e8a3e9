"""No self-dealing, and service credits paid by the failing supplier (issue 9, point 3).

An organisation never trades with itself, nor with one an admin marked as related: not in a
round (the engine skips the pair), not at persistence (checked again under locks), not when
capacity is reserved directly, not for tokens. A node failure's credit comes out of the failing
supplier's payable (a receivable when that is short), capped at what the buyer paid; the
platform's accounts never fund one."""
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from billing import invoicing, settlement
from audit.models import AuditEntry
from audit.services import AdminActor
from billing.models import Account, Charge
from config.errors import PermissionDenied, ValidationFailed
from lifecycle.admin_services import related_party_mark_by_admin
from lifecycle import services as lifecycle
from marketplace import services as market
from marketplace.models import Allocation, Order, RelatedParty
from matching import services as matching
from matching.engine.engine import run_engine
from matching.engine.types import EngineParams
from matching.models import ReviewPolicy
from matching.snapshot import load_snapshot

from tests.billing.helpers import assert_books_balance, balance, card_hour_allocation, minutes_into
from tests.factories import NodeFactory, OrganisationFactory, admin_user, make_listing
from tests.marketplace.helpers import tokens_body
from tests.matching.helpers import post_order

pytestmark = pytest.mark.django_db


def _listing_of(client, **kwargs):
    node = NodeFactory(organisation=client.organisation)
    return make_listing(node, ask="9", **kwargs)


def _admin_site_client() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser(username="ops", password="x"))
    return client


# --- no self-dealing ------------------------------------------------------------------------------

def test_a_round_never_matches_an_organisation_with_itself(client_for):
    # given an organisation that both sells and buys, its listing the only supply for its order
    trader = client_for(is_supplier=True, is_buyer=True)
    _listing_of(trader)
    own = post_order(trader)
    # when a round runs
    matching.round_run(bucket="*:*")
    # then its order is not matched to its own listing ...
    assert not Allocation.objects.filter(order=own).exists()
    assert Order.objects.get(pk=own.pk).status == "open"
    # ... while another buyer's identical order takes that listing in the next round
    stranger = client_for(is_supplier=False, is_buyer=True)
    other = post_order(stranger)
    matching.round_run(bucket="*:*")
    assert Allocation.objects.get(order=other).supplier_id == trader.organisation.pk
    assert not Allocation.objects.filter(order=own).exists()


def test_an_admin_marks_related_parties_in_the_admin_site_and_they_never_trade_either_way(client_for):
    seller = client_for(is_supplier=True, is_buyer=True)
    buyer = client_for(is_supplier=True, is_buyer=True)
    # given an admin marking the two as related, entering the pair in either order
    high, low = sorted([seller.organisation.pk, buyer.organisation.pk], reverse=True)
    response = _admin_site_client().post("/admin/marketplace/relatedparty/add/", {
        "organisation_a": high, "organisation_b": low, "reason": "same owner"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    party = RelatedParty.objects.get()
    assert (party.organisation_a_id, party.organisation_b_id) == (low, high) and party.created_by.username == "ops"
    # when each lists capacity and orders the other's, and a round runs
    _listing_of(seller)
    _listing_of(buyer, cards=8)
    one, two = post_order(buyer, cards=8), post_order(seller, cards=8)
    matching.round_run(bucket="*:*")
    # then neither order is matched to the other's listing (nor to its own)
    assert not Allocation.objects.filter(order__in=[one, two]).exists()
    # and an unrelated buyer still buys from either
    third = post_order(client_for(is_supplier=False, is_buyer=True))
    matching.round_run(bucket="*:*")
    assert Allocation.objects.filter(order=third).exists()


def test_the_admin_form_refuses_an_organisation_related_to_itself(client_for):
    org = client_for().organisation
    response = _admin_site_client().post("/admin/marketplace/relatedparty/add/", {
        "organisation_a": org.pk, "organisation_b": org.pk, "reason": "self"})
    assert response.status_code == 200 and "always related to itself" in response.content.decode()
    assert not RelatedParty.objects.exists()


def test_marking_and_unmarking_related_parties_is_audited_and_needs_the_permission(client_for):
    # given two organisations and a staff user without the related-party permissions
    a, b = client_for().organisation, client_for().organisation
    bare = Client()
    bare.force_login(admin_user("bare"))
    # when that user tries to mark them, nothing is stored
    response = bare.post("/admin/marketplace/relatedparty/add/", {
        "organisation_a": a.pk, "organisation_b": b.pk, "reason": "same owner"})
    assert response.status_code == 403 and not RelatedParty.objects.exists()
    with pytest.raises(PermissionDenied):
        related_party_mark_by_admin(actor=AdminActor(user_id=admin_user("bare2").pk), organisation_ids=(a.pk, b.pk),
                                    reason="same owner")
    assert not RelatedParty.objects.exists() and not AuditEntry.objects.exists()
    # when an admin holding the permissions marks them and later removes the mark in the admin site
    marker = Client()
    marker.force_login(admin_user("compliance", "marketplace.add_relatedparty", "marketplace.delete_relatedparty",
                                  "marketplace.view_relatedparty", "marketplace.change_relatedparty"))
    response = marker.post("/admin/marketplace/relatedparty/add/", {
        "organisation_a": a.pk, "organisation_b": b.pk, "reason": "same owner"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    party = RelatedParty.objects.get()
    response = marker.post(f"/admin/marketplace/relatedparty/{party.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not RelatedParty.objects.exists()
    # then both actions are in the audit log, by that admin, with the pair
    entries = list(AuditEntry.objects.order_by("pk").values_list("action", "actor_name", "details"))
    assert [(action, who) for action, who, _ in entries] == [("related_party.mark", "compliance"),
                                                            ("related_party.unmark", "compliance")]
    assert all(details["organisations"] == sorted([a.pk, b.pk]) for _, _, details in entries)


def test_persisting_a_round_checks_related_parties_again(client_for):
    # given a round's engine result computed before an admin marks the two sides as related
    seller, buyer = client_for(is_supplier=True, is_buyer=False), client_for(is_supplier=False, is_buyer=True)
    _listing_of(seller)
    order = post_order(buyer)
    snapshot = load_snapshot("*:*")
    result = run_engine(snapshot.supply, snapshot.demand)
    assert result.count == 1
    market.related_party_create(organisation_ids=(seller.organisation.pk, buyer.organisation.pk), reason="merger")
    # when that result is persisted
    outcome = matching.round_persist(round_id="stale", bucket="*:*", result=result, price_rule=result.price_rule)
    # then the match is dropped under locks and nothing is held
    assert outcome.matches == 0 and outcome.skipped_stale == 1
    assert not Allocation.objects.filter(order=order).exists()
    assert balance(buyer.organisation.pk, "buyer_held") == 0


def test_reserving_capacity_directly_refuses_self_dealing(client_for):
    trader = client_for(is_supplier=True, is_buyer=True)
    listing = _listing_of(trader)
    order = post_order(trader)
    first = listing.hours.order_by("hour").first().hour
    with pytest.raises(ValidationFailed, match="related parties"):
        lifecycle.slots_reserve(order_id=order.pk, claims=[market.SlotClaim(listing.pk, 4)], start_hour=first,
                                end_hour=first + 3, price_per_card_hour=Decimal("10"))
    assert not Allocation.objects.exists() and not listing.hours.filter(cards_sold__gt=0).exists()


def test_token_orders_never_go_to_an_own_or_related_endpoint(client_for):
    trader = client_for(is_supplier=True, is_buyer=True)
    cousin = client_for(is_supplier=True, is_buyer=True)
    market.related_party_create(organisation_ids=(trader.organisation.pk, cousin.organisation.pk), reason="family")
    endpoint = market.TokenEndpoint("DeepSeek-V3", Decimal("0.5"), Decimal("2"), Decimal("8"))
    _listing_of(trader, token_endpoint=endpoint)
    _listing_of(cousin, token_endpoint=endpoint)
    for client in (trader, cousin):
        assert client.post("/api/v1/orders", tokens_body(), format="json").status_code == 201
    matching.round_run(bucket="tokens")
    assert not Allocation.objects.filter(kind="tokens").exists()
    stranger = client_for(is_supplier=False, is_buyer=True)
    assert stranger.post("/api/v1/orders", tokens_body(), format="json").status_code == 201
    matching.round_run(bucket="tokens")
    assert Allocation.objects.get(kind="tokens").order.organisation_id == stranger.organisation.pk


def test_the_engine_skips_pairs_of_one_organisation_or_related_ones(client_for):
    # The engine is pure: the snapshot passes the buyers and the related pairs, the kernel skips them.
    seller, buyer = client_for(is_supplier=True, is_buyer=False), client_for(is_supplier=False, is_buyer=True)
    _listing_of(seller)
    post_order(buyer)
    snapshot = load_snapshot("*:*")
    assert run_engine(snapshot.supply, snapshot.demand).count == 1
    snapshot.demand.buyer = np.array([seller.organisation.pk], dtype=np.int64)  # as if it bought from itself
    assert run_engine(snapshot.supply, snapshot.demand).count == 0
    snapshot.demand.buyer = np.array([buyer.organisation.pk], dtype=np.int64)
    related = frozenset({(buyer.organisation.pk, seller.organisation.pk), (seller.organisation.pk, buyer.organisation.pk)})
    params = EngineParams(related_parties=related)
    assert run_engine(snapshot.supply, snapshot.demand, params).count == 0
    assert run_engine(snapshot.supply, snapshot.demand, params, baseline=True).count == 0


# --- service credits: paid by the failing supplier ----------------------------------------------

def _running_since_an_hour_ago(supplier_client, buyer_client) -> Allocation:
    """8 cards for 3 hours at 11.25 that started at the previous whole hour and ran since, metered
    minute by minute up to now; the failure is then reported in the allocation's second hour."""
    supplier = supplier_client.organisation
    now = timezone.now()
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    node = NodeFactory(organisation=supplier)
    listing = make_listing(node, start=start, hours=3, ask="10")
    order = post_order(buyer_client, start_in=-1, window_hours=3, cards=8, max_price_per_card_hour="12.5")
    first = listing.hours.order_by("hour").first().hour
    allocation = lifecycle.slots_reserve(order_id=order.pk, claims=[market.SlotClaim(listing.pk, 8)],
                                         start_hour=first, end_hour=first + 3, price_per_card_hour=Decimal("11.25"))
    lifecycle.allocation_start(organisation=supplier, allocation_id=allocation.pk, now=start)
    minute = start
    while minute < now:
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=allocation.pk, now=minute)
        minute += timedelta(minutes=1)
    return allocation


def test_a_credit_comes_out_of_the_failing_suppliers_payable_never_the_platforms(supplier_client, buyer_client,
                                                                                settings):
    settings.SANDUISAN = {**settings.SANDUISAN, "SERVICE_CREDIT_RATE": "0.25"}
    allocation = _running_since_an_hour_ago(supplier_client, buyer_client)
    supplier, buyer = supplier_client.organisation, buyer_client.organisation
    # when the supplier reports its node failed, in the allocation's second hour
    node_id = allocation.parts.get().node_id
    response = supplier_client.post(f"/api/v1/nodes/{node_id}/fail", {"reason": "ECC errors"}, format="json")
    assert response.status_code == 201, response.content
    # then the buyer paid the first hour (8 x 11.25 = 90) and is credited 25% of the 2 lost hours:
    # 0.25 x 8 x 2 x 11.25 = 45, within what it paid ...
    charges = Charge.objects.filter(allocation=allocation)
    assert sum(c.amount for c in charges.filter(kind="card_hours")) == Decimal("90")
    credit = charges.get(kind="service_credit")
    assert credit.amount == Decimal("-45") and credit.supplier_id == supplier.pk
    assert balance(buyer.pk, "buyer_wallet") == Decimal("1000000") - 90 + 45
    # ... paid by the supplier (90 less 8% commission, less the credit), not by the platform
    assert balance(supplier.pk, "supplier_payable") == Decimal("82.8") - 45
    assert balance(None, "platform_commission") == Decimal("7.2")
    assert not Account.objects.filter(kind="platform_credits").exclude(balance=0).exists()
    assert balance(supplier.pk, "supplier_receivable") == 0
    # the supplier's own figures show the credit against its earnings
    figures = supplier_client.get("/api/v1/figures/supplier").json()
    assert Decimal(figures["earnings"]["net"]) == Decimal("82.8") - 45
    assert_books_balance()


def test_a_supplier_already_paid_out_owes_the_credit_and_repays_it_from_its_next_earnings(
        supplier_client, buyer_client, client_for, settings):
    settings.SANDUISAN = {**settings.SANDUISAN, "SERVICE_CREDIT_RATE": "0.25"}
    allocation = _running_since_an_hour_ago(supplier_client, buyer_client)
    supplier = supplier_client.organisation
    ReviewPolicy.objects.create(enabled=False)  # its next match must not wait for a review
    # given the supplier was paid everything it was owed so far
    settlement.allocation_settle(allocation_id=allocation.pk)
    owed = balance(supplier.pk, "supplier_payable")
    assert owed > 0
    invoicing.payout_create(organisation_id=supplier.pk, reference="wire-1")
    # when its node fails: the hour being delivered is given back and the 45 credit is owed
    node_id = allocation.parts.get().node_id
    assert supplier_client.post(f"/api/v1/nodes/{node_id}/fail", {}, format="json").status_code == 201
    credit = Charge.objects.get(allocation=allocation, kind="service_credit")
    assert credit.amount == Decimal("-45")
    receivable = balance(supplier.pk, "supplier_receivable")
    assert receivable < 0 and balance(supplier.pk, "supplier_payable") == 0
    assert not Account.objects.filter(kind="platform_credits").exclude(balance=0).exists()
    # then its next earnings repay what it owes before anything is payable again (the buyer drops
    # the reopened order, so the next round sells the new capacity to another buyer)
    assert buyer_client.post(f"/api/v1/orders/{allocation.order_id}/cancel", {}, format="json").status_code == 200
    other = card_hour_allocation(supplier, client_for(is_supplier=False, is_buyer=True), cards=8, hours=3,
                                 bid="12.5", ask="10")
    lifecycle.allocation_start(organisation=supplier, allocation_id=other.pk, now=minutes_into(other, 0))
    for minute in range(1, 60):
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=other.pk, now=minutes_into(other, minute))
    lifecycle.allocation_stop(organisation=supplier, allocation_id=other.pk, now=minutes_into(other, 60))
    earned = Decimal("90") * Decimal("0.92")  # one hour of 8 cards at the uniform price 11.25, less 8%
    assert balance(supplier.pk, "supplier_receivable") == min(Decimal(0), receivable + earned)
    assert balance(supplier.pk, "supplier_payable") == max(Decimal(0), earned + receivable)
    assert_books_balance()


def test_a_credit_is_capped_at_what_the_buyer_paid(supplier_client, buyer_client, settings):
    # given a generous credit rate and an allocation failed before a whole hour was delivered
    settings.SANDUISAN = {**settings.SANDUISAN, "SERVICE_CREDIT_RATE": "0.9"}
    ReviewPolicy.objects.create(enabled=False)  # the second match must not wait for a review
    supplier = supplier_client.organisation
    allocation = card_hour_allocation(supplier, buyer_client, cards=8, hours=3, bid="12.5", ask="10")
    lifecycle.allocation_start(organisation=supplier, allocation_id=allocation.pk, now=minutes_into(allocation, 0))
    lifecycle.node_fail(node_id=allocation.parts.get().node_id, organisation=supplier,
                        now=minutes_into(allocation, 59))
    # then the buyer paid nothing for it, so it is credited nothing (no money made from a failure)
    assert not Charge.objects.filter(allocation=allocation, kind="service_credit").exists()
    assert balance(buyer_client.organisation.pk, "buyer_wallet") == Decimal("1000000")
    # and with one hour paid (90), a 90% credit of the 2 lost hours (162) is cut to 90
    assert buyer_client.post(f"/api/v1/orders/{allocation.order_id}/cancel", {}, format="json").status_code == 200
    second = card_hour_allocation(supplier, buyer_client, cards=8, hours=3, bid="12.5", ask="10")
    lifecycle.allocation_start(organisation=supplier, allocation_id=second.pk, now=minutes_into(second, 0))
    for minute in range(1, 61):
        lifecycle.allocation_heartbeat(organisation=supplier, allocation_id=second.pk, now=minutes_into(second, minute))
    lifecycle.node_fail(node_id=second.parts.get().node_id, organisation=supplier, now=minutes_into(second, 70))
    credit = Charge.objects.get(allocation=second, kind="service_credit")
    assert credit.amount == Decimal("-90") and "capped" in credit.memo
    assert_books_balance()
