"""The simulation on a small seeded market: the report's figures agree with the database, read
back along other paths (the ledger, the slot calendar, the orders and allocations), the charts are
written, and the hindsight bound holds against an exact solve of the same tiny market."""
import json
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models import Sum

from bench.optimum import lp_optimum, milp_optimum
from billing.models import Account, Charge, Entry, Hold, UsageEvent
from marketplace.models import Allocation, ListingHour, Order
from simulation.driver import SimConfig, simulate
from simulation.hindsight import hindsight_books, market_buyers
from simulation.report import figures, headline, write_report

from tests.billing.helpers import assert_books_balance

pytestmark = pytest.mark.django_db

SMALL = SimConfig(suppliers=3, nodes=8, buyers=10, days=1, orders_per_hour=4, token_orders_per_hour=1, failures=1,
                  token_endpoint_share=0.9, seed=3)
# No failures: every online match is then a feasible offline solution, so the market's welfare
# can never exceed the exact optimum.
TINY = SimConfig(suppliers=2, nodes=4, buyers=6, days=1, orders_per_hour=2, token_orders_per_hour=0, failures=0,
                 seed=5)


def test_a_small_market_runs_through_the_pipeline_and_reports_what_the_database_holds(tmp_path):
    run = simulate(SMALL)
    data = figures(run, hindsight_seconds=10)

    # the market traded: orders arrived every hour, rounds matched them, work ran and was billed
    assert data["orders"] > 40 and data["card_hours_sold"] > 0 and data["revenue"] > 0
    assert Allocation.objects.filter(status="completed", kind="card_hours").exists()
    # revenue and commission, read back from the ledger: what suppliers and the platform received
    payable = Entry.objects.filter(account__kind=Account.Kind.SUPPLIER_PAYABLE,
                                   transfer__kind__in=["settle", "settle_reversal"]).aggregate(s=Sum("amount"))["s"]
    commission = Account.objects.get(organisation=None, kind=Account.Kind.PLATFORM_COMMISSION).balance
    assert data["commission"] == commission
    assert data["revenue"] == payable + commission
    # every card-hour charge the set-based settlement wrote is booked by its own transfer and agrees
    # with the allocation's meter
    for allocation in Allocation.objects.filter(kind="card_hours", status="completed").select_related("meter"):
        charged = Charge.objects.filter(allocation=allocation, kind="card_hours").aggregate(s=Sum("amount"))["s"]
        assert charged == allocation.meter.billed_amount
        assert Hold.objects.get(allocation=allocation).status in ("posted", "voided")
    # token usage, settled set-based at the end: every event is on a transfer, and each token
    # allocation's charges add up to its events' own amounts
    events = UsageEvent.objects.filter(allocation__order__organisation_id__in=run.buyer_ids)
    assert events.exists() and not events.filter(settled_transfer__isnull=True).exists()
    for allocation_id, amount in events.values_list("allocation_id").annotate(s=Sum("amount")):
        charged = Charge.objects.filter(allocation_id=allocation_id, kind__in=["input_hit_tokens", "input_miss_tokens",
                                                                              "output_tokens"])
        assert charged.aggregate(s=Sum("amount"))["s"] == amount
    # service credits, read back from the wallets that received them
    credited = Entry.objects.filter(transfer__kind="service_credit", account__kind=Account.Kind.BUYER_WALLET)
    assert data["service_credits"] == (credited.aggregate(s=Sum("amount"))["s"] or Decimal(0))
    assert data["failures"] == 1
    # utilisation at the start, read back from the slot calendar
    first = ListingHour.objects.filter(hour=run.first_hour, listing__token_model__isnull=True).aggregate(
        o=Sum("cards_offered"), s=Sum("cards_sold"))
    assert data["utilisation_start"] == pytest.approx(first["s"] / first["o"])
    assert 0.15 < data["utilisation_start"] < 0.6  # the incumbents' ~30% background load
    # demand against supply, read back from the orders and the calendar
    orders = Order.objects.filter(organisation_id__in=market_buyers(run), kind="card_hours")
    assert data["orders"] == orders.count()
    assert data["requested_card_hours"] == sum(o.cards * (o.original_duration_hours or o.duration_hours)
                                               for o in orders)
    in_run = ListingHour.objects.filter(listing__organisation_id__in=run.supplier_ids, listing__token_model__isnull=True,
                                        hour__gte=run.first_hour, hour__lt=run.first_hour + run.hours)
    offered = in_run.aggregate(s=Sum("cards_offered"))["s"]
    incumbents = sum(a.cards * (a.end_hour - a.start_hour) for a in Allocation.objects.filter(
        order__organisation_id__in=run.incumbent_ids, kind="card_hours").exclude(status="released"))
    assert data["free_card_hours"] == offered - incumbents
    assert data["demand_supply_ratio"] == pytest.approx(data["requested_card_hours"] / data["free_card_hours"])
    # fill rate: of the orders a round could have served, those the database shows matched
    filled = set(Allocation.objects.filter(order__in=orders, status__in=["confirmed", "running", "completed",
                                                                         "interrupted"]).values_list("order_id", flat=True))
    assert data["servable_orders"] > 0 and data["filled_servable"] == len(run.servable & filled)
    assert filled <= run.servable  # nothing is matched that the opening probe found no placement for
    assert data["fill_rate"] == pytest.approx(len(run.servable & filled) / len(run.servable))
    assert 0 < data["fill_rate_in_the_money"] <= 1 and data["filled_in_the_money"] <= data["in_the_money_orders"]
    # time to match, on the simulated clock, and the hindsight bound above what the market reached
    assert data["match_rounds_median"] >= 1 and data["match_rounds_p95"] >= data["match_rounds_median"]
    assert data["hindsight_bound"] > 0 and 0 < data["welfare_vs_hindsight"] <= 1
    assert 0 < data["hindsight_plan"] <= data["hindsight_bound"] and 0 <= data["hindsight_gap"] < 1
    assert set(data["utilisation_by_hub"]) and all(0 <= u["run"] <= 1 for u in data["utilisation_by_hub"].values())
    assert 0 <= data["outside_province_share"] <= 1
    assert set(data["clearing_price_by_chip"]) and all(p > 0 for p in data["clearing_price_by_chip"].values())
    assert data["wall_s"] > 0 and len(run.phase_seconds["rounds"]) == run.hours
    assert_books_balance()

    files = write_report(run, data, tmp_path)
    assert {f.name for f in files} == {"report.txt", "utilisation.png", "clearing_prices.png", "market.png"}
    assert all(f.stat().st_size > 1000 for f in files if f.suffix == ".png")
    text = (tmp_path / "report.txt").read_text()
    assert f"{data['revenue']:,.2f}" in text
    last = json.loads(text.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(headline(data)))
    for key in ("utilisation_end", "fill_rate", "welfare_vs_hindsight", "orders", "demand_supply_ratio", "wall_s",
                "hindsight_gap", "hindsight_converged"):
        assert last[key] is not None


def test_the_hindsight_bound_holds_against_an_exact_solve_of_a_tiny_market():
    # given a tiny market run through the pipeline, and its books solved exactly: the integer
    # optimum by MILP and the LP relaxation over every column
    run = simulate(TINY)
    data = figures(run, hindsight_seconds=10)
    supply, demand = hindsight_books(run)
    assert demand.size >= 20 and supply.size > 0
    exact = milp_optimum(supply, demand, time_limit=60)
    optimum = Decimal(exact["welfare"] / 1e6).quantize(Decimal("0.01"))
    relaxed = Decimal(lp_optimum(supply, demand) / 1e6)

    # the bound is above the LP optimum (weak duality) and, the search having converged on a tiny
    # market, within a hair of it; the LP optimum is above the integer optimum
    assert data["hindsight_bound"] >= relaxed >= optimum - Decimal("0.01")
    assert data["hindsight_bound"] <= relaxed * Decimal("1.005") + Decimal("0.01")
    # the plan found is a feasible offline plan: at most the optimum, and the report's gap is theirs
    assert 0 < data["hindsight_plan"] <= optimum + Decimal("0.01")
    assert data["hindsight_gap"] == pytest.approx(float((data["hindsight_bound"] - data["hindsight_plan"])
                                                         / data["hindsight_bound"]), abs=1e-4)
    assert data["hindsight_converged"] == (data["hindsight_gap"] <= 0.02)
    # ... and the online market, one feasible offline solution among many, reaches at most the optimum
    assert 0 < data["welfare"] <= optimum + Decimal("0.01")
    assert data["welfare_vs_hindsight"] <= data["welfare_vs_hindsight_at_most"] <= 1


def test_simulate_documents_its_knobs(capsys):
    with pytest.raises(SystemExit):
        call_command("simulate", "--help")
    text = capsys.readouterr().out
    for knob in ("--suppliers", "--nodes", "--buyers", "--days", "--orders-per-hour", "--failures", "--seed", "--out",
                 "--hindsight-seconds"):
        assert knob in text
