"""Two-phase holds and wallets on the real PostgreSQL."""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone
from rest_framework.test import APIClient

from billing import services
from billing.models import Account, Entry, Hold
from billing.tasks import holds_expire

from tests.factories import OrganisationFactory, admin_user
from tests.marketplace.helpers import assert_error

pytestmark = pytest.mark.django_db


def _balance(org_id, kind):
    return Account.objects.get(organisation_id=org_id, kind=kind).balance


def _books_balance():
    assert Entry.objects.aggregate(s=Sum("amount"))["s"] == 0
    for account in Account.objects.all():
        assert account.balance == (account.entries.aggregate(s=Sum("amount"))["s"] or 0)


def test_hold_then_post_less_releases_the_rest_and_pays_commission():
    buyer, supplier = OrganisationFactory(funds=0), OrganisationFactory(funds=0)
    services.wallet_top_up(organisation_id=buyer.pk, amount=Decimal("500"), reference="bank-1")
    # an 8-card x 3-hour allocation at 14.50 holds its maximum: 348 CNY
    hold = services.hold_place(organisation_id=buyer.pk, amount=Decimal("348"), reference="order:1",
                               expires_at=timezone.now() + timedelta(hours=4))
    assert _balance(buyer.pk, "buyer_wallet") == Decimal("152") and _balance(buyer.pk, "buyer_held") == 348
    # it ran 2.5 hours: 290 CNY used; 8% commission = 23.20
    services.hold_post(hold_id=hold.pk, amount=Decimal("290"), supplier_id=supplier.pk, commission_rate=Decimal("0.08"))
    services.hold_post(hold_id=hold.pk, amount=Decimal("290"), supplier_id=supplier.pk, commission_rate=Decimal("0.08"))
    assert _balance(supplier.pk, "supplier_payable") == Decimal("266.80")
    assert Account.objects.get(organisation=None, kind="platform_commission").balance == Decimal("23.20")
    assert _balance(buyer.pk, "buyer_wallet") == Decimal("210") and _balance(buyer.pk, "buyer_held") == 0
    with pytest.raises(services.Conflict):
        services.hold_void(hold_id=hold.pk)
    _books_balance()


def test_short_funds_hold_nothing_and_holds_expire_on_their_own():
    buyer = OrganisationFactory(funds=0)
    services.wallet_top_up(organisation_id=buyer.pk, amount=Decimal("100"), reference="bank-2")
    with pytest.raises(services.InsufficientFunds):
        services.hold_place(organisation_id=buyer.pk, amount=Decimal("100.01"), reference="order:2",
                            expires_at=timezone.now())
    assert not Hold.objects.exists() and _balance(buyer.pk, "buyer_wallet") == 100
    stale = services.hold_place(organisation_id=buyer.pk, amount=Decimal("60"), reference="order:3",
                                expires_at=timezone.now() - timedelta(minutes=1))
    fresh = services.hold_place(organisation_id=buyer.pk, amount=Decimal("30"), reference="order:4",
                                expires_at=timezone.now() + timedelta(hours=1))
    assert holds_expire.run() == 1 and holds_expire.run() == 0
    assert Hold.objects.get(pk=stale.pk).status == "voided" and Hold.objects.get(pk=fresh.pk).status == "pending"
    assert _balance(buyer.pk, "buyer_wallet") == 70 and _balance(buyer.pk, "buyer_held") == 30
    _books_balance()


def test_wallet_api_and_admin_top_up(client_for):
    buyer_client = client_for(is_supplier=False, is_buyer=True, funds=0)
    admin = APIClient()
    admin.force_authenticate(admin_user("ops", "billing.top_up_wallet"))
    org = buyer_client.organisation
    assert buyer_client.get("/api/v1/wallet").json() == {"currency": "CNY", "available": "0", "held": "0"}
    url = f"/api/v1/admin/organisations/{org.pk}/top-ups"
    assert admin.post(url, {"amount": "1000.00", "reference": "wire-77"}, format="json").status_code == 201
    assert admin.post(url, {"amount": "1000.00", "reference": "wire-77"}, format="json").status_code == 201
    assert Decimal(buyer_client.get("/api/v1/wallet").json()["available"]) == Decimal("1000")  # credited once
    assert_error(admin.post(url, {"amount": "-5", "reference": "x"}, format="json"), 400, field="amount")
    assert_error(admin.post("/api/v1/admin/organisations/999999/top-ups", {"amount": "5", "reference": "y"},
                            format="json"), 404)
    assert buyer_client.post(url, {"amount": "5", "reference": "z"}, format="json").status_code == 403
