"""The set-based ledger (``billing.batch``) against ``wallet_top_up``: the same transfers, and the
same answer to a replayed or conflicting reference."""
from decimal import Decimal

import pytest

from billing import services as billing
from billing.batch import wallets_top_up
from billing.models import Transfer
from config.errors import Conflict

from tests.factories import OrganisationFactory

from .helpers import assert_books_balance, balance

pytestmark = pytest.mark.django_db


def test_a_replayed_top_up_posts_nothing_and_a_reused_reference_is_a_conflict_as_one_by_one():
    # given two buyers with no money, one topped up one by one
    first, second = OrganisationFactory(is_supplier=False, funds=0), OrganisationFactory(is_supplier=False, funds=0)
    billing.wallet_top_up(organisation_id=first.pk, amount=Decimal("100"), reference="r-1")
    # when the batch replays that top-up beside a fresh one (the fresh one listed twice)
    posted = wallets_top_up(top_ups=[(first.pk, Decimal("100"), "r-1"), (second.pk, Decimal("30"), "r-2"),
                                     (second.pk, Decimal("30"), "r-2")])
    # then only the fresh one is posted, once
    assert posted == 1
    assert balance(first.pk, "buyer_wallet") == 100 and balance(second.pk, "buyer_wallet") == 30
    # and a reference reused for another amount (or in one call for two amounts) is refused, as
    # ``wallet_top_up`` refuses it, with nothing posted
    with pytest.raises(Conflict) as one_by_one:
        billing.wallet_top_up(organisation_id=first.pk, amount=Decimal("999"), reference="r-1")
    with pytest.raises(Conflict) as batched:
        wallets_top_up(top_ups=[(second.pk, Decimal("5"), "r-3"), (first.pk, Decimal("999"), "r-1")])
    assert batched.value.code == one_by_one.value.code == "idempotency_conflict"
    with pytest.raises(Conflict):
        wallets_top_up(top_ups=[(second.pk, Decimal("5"), "r-4"), (second.pk, Decimal("6"), "r-4")])
    assert balance(first.pk, "buyer_wallet") == 100 and balance(second.pk, "buyer_wallet") == 30
    assert not Transfer.objects.filter(idempotency_id__in=["top-up:r-3", "top-up:r-4"]).exists()
    assert_books_balance()
