"""The simulation on a small seeded market: the report's figures agree with the database, read
back along other paths (the ledger, the slot calendar), and the charts are written."""
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models import Sum

from billing.models import Account, Entry
from marketplace.models import Allocation, ListingHour, Order
from simulation.driver import SimConfig, simulate
from simulation.report import figures, write_report

from tests.billing.helpers import assert_books_balance

pytestmark = pytest.mark.django_db

SMALL = SimConfig(suppliers=3, nodes=8, buyers=10, days=1, orders_per_hour=4, token_orders_per_hour=1, failures=1,
                  seed=3)


def test_a_small_market_runs_through_the_pipeline_and_reports_what_the_database_holds(tmp_path):
    run = simulate(SMALL)
    data = figures(run)

    # the market traded: orders arrived every hour, rounds matched them, work ran and was billed
    assert data["orders"] > 40 and data["card_hours_sold"] > 0 and data["revenue"] > 0
    assert Allocation.objects.filter(status="completed", kind="card_hours").exists()
    # revenue and commission, read back from the ledger: what suppliers and the platform received
    payable = Entry.objects.filter(account__kind=Account.Kind.SUPPLIER_PAYABLE,
                                   transfer__kind__in=["settle", "settle_reversal"]).aggregate(s=Sum("amount"))["s"]
    commission = Account.objects.get(organisation=None, kind=Account.Kind.PLATFORM_COMMISSION).balance
    assert data["commission"] == commission
    assert data["revenue"] == payable + commission
    # service credits, read back from the wallets that received them
    credited = Entry.objects.filter(transfer__kind="service_credit", account__kind=Account.Kind.BUYER_WALLET)
    assert data["service_credits"] == (credited.aggregate(s=Sum("amount"))["s"] or Decimal(0))
    assert data["failures"] == 1
    # utilisation at the start, read back from the slot calendar
    first = ListingHour.objects.filter(hour=run.first_hour, listing__token_model__isnull=True).aggregate(
        o=Sum("cards_offered"), s=Sum("cards_sold"))
    assert data["utilisation_start"] == pytest.approx(first["s"] / first["o"])
    assert 0.15 < data["utilisation_start"] < 0.6  # the incumbents' ~30% background load
    assert 0 < data["fill_rate"] <= 1 and data["filled_in_the_money"] <= data["in_the_money_orders"]
    assert data["in_the_money_orders"] <= Order.objects.filter(kind="card_hours").count()
    assert 0 <= data["outside_province_share"] <= 1
    assert set(data["clearing_price_by_chip"]) and all(p > 0 for p in data["clearing_price_by_chip"].values())
    assert_books_balance()

    files = write_report(run, data, tmp_path)
    assert {f.name for f in files} == {"report.txt", "utilisation.png", "clearing_prices.png", "market.png"}
    assert all(f.stat().st_size > 1000 for f in files if f.suffix == ".png")
    assert f"{data['revenue']:,.2f}" in (tmp_path / "report.txt").read_text()


def test_simulate_documents_its_knobs(capsys):
    with pytest.raises(SystemExit):
        call_command("simulate", "--help")
    text = capsys.readouterr().out
    for knob in ("--suppliers", "--nodes", "--buyers", "--days", "--orders-per-hour", "--failures", "--seed", "--out"):
        assert knob in text
