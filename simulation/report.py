"""The simulation's report, read back from the database (never from the generator's intentions):
utilisation of listed card-hours over time, fill rate of in-the-money orders, welfare, clearing
price per chip, work placed outside the buyer's province, revenue, commission and credits. Written
as text and as PNG charts."""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

from django.db.models import Min, Sum

from billing.models import Charge
from marketplace.models import Allocation, ListingHour, Order, Region
from matching.snapshot import hub_of

from .driver import PHASES, SimRun
from .hindsight import hindsight_books, hindsight_bound, market_buyers

ZERO = Decimal(0)
SPEND = (Charge.Kind.CARD_HOURS, Charge.Kind.INPUT_HIT, Charge.Kind.INPUT_MISS, Charge.Kind.OUTPUT)
FILLED = (Allocation.Status.CONFIRMED, Allocation.Status.RUNNING, Allocation.Status.COMPLETED,
          Allocation.Status.INTERRUPTED)


def figures(run: SimRun, *, hindsight_seconds: float = 30.0) -> dict:
    """Every headline figure of a run, from what the database holds (and the round probes and
    wall times the driver observed). ``hindsight_seconds`` bounds the offline optimum's LP solve
    (0: skip it)."""
    hours = ListingHour.objects.filter(listing__organisation_id__in=run.supplier_ids,
                                       listing__token_model__isnull=True,
                                       hour__gte=run.first_hour, hour__lt=run.first_hour + run.hours)
    per_hour = {h: (offered, sold) for h, offered, sold in hours.values_list("hour").annotate(
        o=Sum("cards_offered"), s=Sum("cards_sold")).order_by("hour")}
    utilisation = [float(sold / offered) if offered else 0.0 for offered, sold in
                   (per_hour.get(run.first_hour + h, (0, 0)) for h in range(run.hours))]
    last_day = utilisation[-24:] if len(utilisation) >= 24 else utilisation

    buyers = market_buyers(run)
    orders = Order.objects.filter(organisation_id__in=buyers, kind=Order.Kind.CARD_HOURS)
    cheapest = dict(ListingHour.objects.filter(listing__organisation_id__in=run.supplier_ids,
                                               listing__token_model__isnull=True)
                    .values_list("listing__node__chip_id").annotate(a=Min("listing__ask_per_card_hour")))
    in_money, filled = 0, 0
    filled_ids = set(Allocation.objects.filter(order__in=orders, status__in=FILLED).values_list("order_id", flat=True))
    for pk, bid, chips in _orders_with_chips(orders):
        asks = [cheapest[c] for c in chips if c in cheapest]
        if asks and bid >= min(asks):
            in_money += 1
            filled += pk in filled_ids

    servable = run.servable & set(orders.values_list("pk", flat=True))
    filled_servable = len(servable & filled_ids)

    sold = Allocation.objects.filter(supplier_id__in=run.supplier_ids, kind=Order.Kind.CARD_HOURS, status__in=FILLED,
                                     order__organisation_id__in=buyers)
    welfare, price_num, price_den = ZERO, defaultdict(Decimal), defaultdict(int)
    outside, total_card_hours = 0, 0
    regions = {r.pk: r for r in Region.objects.all()}
    for allocation in sold.select_related("order__organisation").prefetch_related("parts__listing", "parts__node__chip"):
        parts = list(allocation.parts.all())
        end = allocation.delivered_end_hour if allocation.status == Allocation.Status.INTERRUPTED else allocation.end_hour
        card_hours = allocation.cards * max(0, (end if end is not None else allocation.end_hour) - allocation.start_hour)
        ask = max(p.listing.ask_per_card_hour for p in parts)
        welfare += (allocation.order.max_price_per_card_hour - ask) * card_hours
        chip = parts[0].node.chip.code
        price_num[chip] += allocation.price_per_card_hour * card_hours
        price_den[chip] += card_hours
        total_card_hours += card_hours
        home = allocation.order.organisation.home_region_id
        if home and _province(regions[parts[0].node.region_id], regions) != _province(regions[home], regions):
            outside += card_hours

    charges = Charge.objects.filter(buyer_id__in=run.buyer_ids)
    revenue = charges.filter(kind__in=SPEND).aggregate(s=Sum("amount"))["s"] or ZERO
    commission = charges.aggregate(s=Sum("commission"))["s"] or ZERO
    credits = -(charges.filter(kind=Charge.Kind.SERVICE_CREDIT).aggregate(s=Sum("amount"))["s"] or ZERO)
    supply, demand = hindsight_books(run)
    free_card_hours = int(supply.free.astype("int64").sum())
    requested = sum(cards * (original or duration) for cards, original, duration in orders.values_list(
        "cards", "original_duration_hours", "duration_hours"))
    hindsight = {"bound": None, "plan": None, "seconds": 0.0, "evaluations": 0, "gap": None, "converged": None}
    if hindsight_seconds > 0 and supply.size and demand.size:
        hindsight = hindsight_bound(run, supply, demand, time_budget=hindsight_seconds)
    waits = _time_to_match(run, orders)
    per_hour = {p: statistics.fmean(v) if v else 0.0 for p, v in run.phase_seconds.items()}
    return {
        "hours": run.hours, "suppliers": len(run.supplier_ids), "nodes": len(run.node_ids),
        "buyers": len(buyers), "orders": orders.count(), "orders_per_hour": orders.count() / max(1, run.hours),
        "requested_card_hours": requested, "free_card_hours": free_card_hours,
        "demand_supply_ratio": requested / free_card_hours if free_card_hours else 0.0,
        "servable_orders": len(servable), "filled_servable": filled_servable,
        "fill_rate": filled_servable / len(servable) if servable else 0.0,
        "hindsight_bound": hindsight["bound"], "hindsight_plan": hindsight["plan"],
        "hindsight_seconds": hindsight["seconds"], "hindsight_evaluations": hindsight["evaluations"],
        "hindsight_gap": hindsight["gap"], "hindsight_converged": hindsight["converged"],
        "welfare_vs_hindsight": float(welfare / hindsight["bound"]) if hindsight["bound"] else None,
        # the offline optimum is at least the best plan found: the share can be at most this
        "welfare_vs_hindsight_at_most": float(welfare / hindsight["plan"]) if hindsight["plan"] else None,
        **waits, "utilisation_by_hub": _utilisation_by_hub(run),
        "wall_per_hour": per_hour, "setup_s": run.setup_seconds, "finish_s": dict(run.finish_seconds),
        "wall_s": run.wall_seconds,
        "token_orders": Order.objects.filter(organisation_id__in=run.buyer_ids, kind=Order.Kind.TOKENS).count(),
        "utilisation_start": utilisation[0] if utilisation else 0.0,
        "utilisation_end": sum(last_day) / len(last_day) if last_day else 0.0,
        "utilisation_by_hour": utilisation,
        "in_the_money_orders": in_money, "filled_in_the_money": filled,
        "fill_rate_in_the_money": filled / in_money if in_money else 0.0,
        "welfare": welfare, "card_hours_sold": total_card_hours,
        "clearing_price_by_chip": {c: (price_num[c] / price_den[c]).quantize(Decimal("0.01"))
                                   for c in price_den if price_den[c]},
        "outside_province_share": outside / total_card_hours if total_card_hours else 0.0,
        "revenue": revenue, "commission": commission, "service_credits": credits,
        "failures": len(run.failed_nodes),
    }


def _time_to_match(run: SimRun, orders) -> dict:
    """From an order's arrival to the round that matched it, on the simulated clock. The driver
    runs one round per bucket per simulated hour, so waits are whole hours (1 round: the first
    round after arrival)."""
    arrival = {pk: run.arrival_step[pk] for pk in orders.values_list("pk", flat=True) if pk in run.arrival_step}
    first_match: dict[int, int] = {}
    for order_id, round_id in (Allocation.objects.filter(order_id__in=list(arrival)).exclude(round_id="")
                               .order_by("pk").values_list("order_id", "round_id")):
        if round_id in run.round_step:
            first_match.setdefault(order_id, run.round_step[round_id])
    rounds = sorted(first_match[o] - arrival[o] + 1 for o in first_match)
    if not rounds:
        return {"match_minutes_median": None, "match_minutes_p95": None, "match_rounds_median": None,
                "match_rounds_p95": None}
    p95 = rounds[min(len(rounds) - 1, int(0.95 * len(rounds)))]
    median = statistics.median(rounds)
    return {"match_minutes_median": (median - 1) * 60, "match_minutes_p95": (p95 - 1) * 60,
            "match_rounds_median": median, "match_rounds_p95": p95}


def _utilisation_by_hub(run: SimRun) -> dict[str, dict[str, float]]:
    """Share of listed card-hours sold per 东数西算 hub, over the run and over its last day."""
    by_id = {r.pk: r for r in Region.objects.all()}
    last_day = run.first_hour + max(0, run.hours - 24)
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for region_id, hour, offered, sold in (ListingHour.objects.filter(
            listing__organisation_id__in=run.supplier_ids, listing__token_model__isnull=True,
            hour__gte=run.first_hour, hour__lt=run.first_hour + run.hours)
            .values_list("listing__node__region_id", "hour").annotate(o=Sum("cards_offered"), s=Sum("cards_sold"))):
        row = sums[hub_of(by_id[region_id], by_id)]
        row[0] += offered
        row[1] += sold
        if hour >= last_day:
            row[2] += offered
            row[3] += sold
    return {hub: {"run": s / o if o else 0.0, "last_day": ls / lo if lo else 0.0}
            for hub, (o, s, lo, ls) in sorted(sums.items())}


def _orders_with_chips(orders):
    chips = defaultdict(list)
    for order_id, chip_id in orders.values_list("pk", "chip_options__chip_id"):
        if chip_id is not None:
            chips[order_id].append(chip_id)
    for pk, bid in orders.values_list("pk", "max_price_per_card_hour"):
        yield pk, bid, chips[pk]


def _province(region: Region, regions: dict[int, Region]) -> str:
    while region.kind == Region.Kind.CITY and region.parent_id:
        region = regions[region.parent_id]
    return region.code


def write_report(run: SimRun, data: dict, out: Path) -> list[Path]:
    """``report.txt`` and PNG charts under ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    per_hour = data["wall_per_hour"]
    bound = data["hindsight_bound"]
    lines = [
        f"Sanduisan simulated market: {data['suppliers']} suppliers, {data['nodes']} nodes, {data['buyers']} buyers, "
        f"{data['hours']} hours ({run.start:%Y-%m-%d %H:%M} to {run.end:%Y-%m-%d %H:%M} UTC)",
        f"orders: {data['orders']:,} card-hours ({data['orders_per_hour']:.0f} an hour), {data['token_orders']} tokens; "
        f"node failures: {data['failures']}",
        f"demand: {data['requested_card_hours']:,} card-hours requested against {data['free_card_hours']:,} free "
        f"(listed less the incumbents' rentals): {data['demand_supply_ratio']:.2f}x",
        f"utilisation of listed card-hours: start {data['utilisation_start']:.1%}, "
        f"end (last day's average) {data['utilisation_end']:.1%}",
        "utilisation by hub (whole run / last day): " + ", ".join(
            f"{hub} {u['run']:.0%}/{u['last_day']:.0%}" for hub, u in data["utilisation_by_hub"].items()),
        f"fill rate of orders that could have been served (a round found a placement within the bid): "
        f"{data['fill_rate']:.1%} ({data['filled_servable']:,} of {data['servable_orders']:,}); of every in-the-money "
        f"order (bid at or above the cheapest ask of an acceptable chip): {data['fill_rate_in_the_money']:.1%} "
        f"({data['filled_in_the_money']:,} of {data['in_the_money_orders']:,})",
        f"welfare (bid minus ask, over {data['card_hours_sold']:,} card-hours sold): {data['welfare']:,.2f} CNY",
        (f"offline optimum (same orders and free supply known in advance): at most {bound:,.2f} CNY (LP bound, "
         f"{data['hindsight_evaluations']} dual evaluations, {data['hindsight_seconds']:.0f} s) and at least "
         f"{data['hindsight_plan']:,.2f} CNY (a feasible offline plan found), gap {data['hindsight_gap']:.2%}, "
         + ("converged (within 2%)" if data["hindsight_converged"] else "NOT converged (gap above 2%)")
         + f"; the market captured between {data['welfare_vs_hindsight']:.1%} and "
         f"{data['welfare_vs_hindsight_at_most']:.1%} of it"
         if bound else "offline optimum: not computed"),
        (f"time to match: median {data['match_minutes_median']:.0f} simulated minutes "
         f"({data['match_rounds_median']:g} rounds), 95th percentile {data['match_minutes_p95']:.0f} minutes "
         f"({data['match_rounds_p95']:g} rounds); one round per simulated hour"
         if data["match_rounds_median"] is not None else "time to match: nothing matched"),
        f"work placed outside the buyer's province: {data['outside_province_share']:.1%} of card-hours",
        f"revenue: {data['revenue']:,.2f} CNY; platform commission: {data['commission']:,.2f} CNY; "
        f"service credits paid: {data['service_credits']:,.2f} CNY",
        f"wall time: {data['wall_s']:.0f} s (setup {data['setup_s']:.1f} s; per simulated hour "
        f"{sum(per_hour.values()):.2f} s: " + ", ".join(f"{p} {per_hour[p]:.2f}" for p in PHASES) + "; at the end: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in data["finish_s"].items()) + ")",
        "average clearing price per card-hour, by chip:",
        *[f"  {chip:28s} {price:>8} CNY" for chip, price in sorted(data["clearing_price_by_chip"].items())],
    ]
    text = out / "report.txt"
    text.write_text("\n".join(lines) + "\n" + json.dumps(headline(data)) + "\n")
    return [text, *_charts(data, out)]


def headline(data: dict) -> dict:
    """The report's last line: one JSON-able object of the headline figures."""
    def num(x, digits=4):
        return None if x is None else round(float(x), digits)

    return {"utilisation_start": num(data["utilisation_start"]), "utilisation_end": num(data["utilisation_end"]),
            "fill_rate": num(data["fill_rate"]), "fill_rate_in_the_money": num(data["fill_rate_in_the_money"]),
            "welfare_vs_hindsight": num(data["welfare_vs_hindsight"]),
            "welfare_vs_hindsight_at_most": num(data["welfare_vs_hindsight_at_most"]), "welfare_cny": num(data["welfare"], 2),
            "hindsight_bound_cny": num(data["hindsight_bound"], 2), "hindsight_plan_cny": num(data["hindsight_plan"], 2),
            "hindsight_gap": num(data["hindsight_gap"]), "hindsight_converged": data["hindsight_converged"],
            "orders": data["orders"],
            "orders_per_hour": num(data["orders_per_hour"], 1), "demand_supply_ratio": num(data["demand_supply_ratio"]),
            "match_minutes_median": data["match_minutes_median"], "match_minutes_p95": data["match_minutes_p95"],
            "match_rounds_median": data["match_rounds_median"], "match_rounds_p95": data["match_rounds_p95"],
            "wall_s": num(data["wall_s"], 1), "setup_s": num(data["setup_s"], 1),
            "wall_per_hour_s": {k: num(v, 3) for k, v in data["wall_per_hour"].items()},
            "hindsight_s": num(data["hindsight_seconds"], 1)}


def _charts(data: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(range(len(data["utilisation_by_hour"])), [u * 100 for u in data["utilisation_by_hour"]], color="#2b6cb0")
    ax.set(title="Utilisation of listed card-hours", xlabel="simulated hour", ylabel="% sold", ylim=(0, 100))
    ax.grid(alpha=0.3)
    files.append(_save(fig, out / "utilisation.png"))

    prices = sorted(data["clearing_price_by_chip"].items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.barh([c for c, _ in prices], [float(p) for _, p in prices], color="#38a169")
    ax.set(title="Average clearing price per card-hour", xlabel="CNY")
    files.append(_save(fig, out / "clearing_prices.png"))

    fig, ax = plt.subplots(figsize=(9, 3.6))
    labels = ["fill rate (in the money)", "outside buyer's province", "utilisation, start", "utilisation, end"]
    values = [data["fill_rate"], data["outside_province_share"], data["utilisation_start"], data["utilisation_end"]]
    ax.bar(labels, [v * 100 for v in values], color=["#2b6cb0", "#dd6b20", "#a0aec0", "#38a169"])
    ax.set(title="The market's figures", ylabel="%", ylim=(0, 100))
    files.append(_save(fig, out / "market.png"))
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
