"""The simulation's report, read back from the database (never from the generator's intentions):
utilisation of listed card-hours over time, fill rate of in-the-money orders, welfare, clearing
price per chip, work placed outside the buyer's province, revenue, commission and credits. Written
as text and as PNG charts."""
from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from pathlib import Path

from django.db.models import Min, Sum

from billing.models import Charge
from marketplace.models import Allocation, ListingHour, Order, Region

from .driver import SimRun

ZERO = Decimal(0)
SPEND = (Charge.Kind.CARD_HOURS, Charge.Kind.INPUT_HIT, Charge.Kind.INPUT_MISS, Charge.Kind.OUTPUT)
FILLED = (Allocation.Status.CONFIRMED, Allocation.Status.RUNNING, Allocation.Status.COMPLETED,
          Allocation.Status.INTERRUPTED)


def figures(run: SimRun) -> dict:
    """Every headline figure of a run, from what the database holds."""
    hours = ListingHour.objects.filter(listing__organisation_id__in=run.supplier_ids,
                                       listing__token_model__isnull=True,
                                       hour__gte=run.first_hour, hour__lt=run.first_hour + run.hours)
    per_hour = {h: (offered, sold) for h, offered, sold in hours.values_list("hour").annotate(
        o=Sum("cards_offered"), s=Sum("cards_sold")).order_by("hour")}
    utilisation = [float(sold / offered) if offered else 0.0 for offered, sold in
                   (per_hour.get(run.first_hour + h, (0, 0)) for h in range(run.hours))]
    last_day = utilisation[-24:] if len(utilisation) >= 24 else utilisation

    orders = Order.objects.filter(organisation_id__in=run.buyer_ids, kind=Order.Kind.CARD_HOURS)
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

    sold = Allocation.objects.filter(supplier_id__in=run.supplier_ids, kind=Order.Kind.CARD_HOURS, status__in=FILLED)
    welfare, price_num, price_den = ZERO, defaultdict(Decimal), defaultdict(int)
    outside, total_card_hours = 0, 0
    regions = {r.pk: r for r in Region.objects.all()}
    for allocation in sold.select_related("order__organisation").prefetch_related("parts__listing", "parts__node__chip"):
        parts = list(allocation.parts.all())
        card_hours = allocation.cards * (allocation.end_hour - allocation.start_hour)
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
    return {
        "hours": run.hours, "suppliers": len(run.supplier_ids), "nodes": len(run.node_ids),
        "buyers": len(run.buyer_ids), "orders": orders.count(),
        "token_orders": Order.objects.filter(organisation_id__in=run.buyer_ids, kind=Order.Kind.TOKENS).count(),
        "utilisation_start": utilisation[0] if utilisation else 0.0,
        "utilisation_end": sum(last_day) / len(last_day) if last_day else 0.0,
        "utilisation_by_hour": utilisation,
        "in_the_money_orders": in_money, "filled_in_the_money": filled,
        "fill_rate": filled / in_money if in_money else 0.0,
        "welfare": welfare, "card_hours_sold": total_card_hours,
        "clearing_price_by_chip": {c: (price_num[c] / price_den[c]).quantize(Decimal("0.01")) for c in price_den},
        "outside_province_share": outside / total_card_hours if total_card_hours else 0.0,
        "revenue": revenue, "commission": commission, "service_credits": credits,
        "failures": len(run.failed_nodes),
    }


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
    lines = [
        f"Sanduisan simulated market: {data['suppliers']} suppliers, {data['nodes']} nodes, {data['buyers']} buyers, "
        f"{data['hours']} hours ({run.start:%Y-%m-%d %H:%M} to {run.end:%Y-%m-%d %H:%M} UTC)",
        f"orders: {data['orders']} card-hours, {data['token_orders']} tokens; node failures: {data['failures']}",
        f"utilisation of listed card-hours: start {data['utilisation_start']:.1%}, "
        f"end (last day's average) {data['utilisation_end']:.1%}",
        f"fill rate of in-the-money orders: {data['fill_rate']:.1%} "
        f"({data['filled_in_the_money']} of {data['in_the_money_orders']})",
        f"welfare (bid minus ask, over {data['card_hours_sold']:,} card-hours sold): {data['welfare']:,.2f} CNY",
        f"work placed outside the buyer's province: {data['outside_province_share']:.1%} of card-hours",
        f"revenue: {data['revenue']:,.2f} CNY; platform commission: {data['commission']:,.2f} CNY; "
        f"service credits paid: {data['service_credits']:,.2f} CNY",
        "average clearing price per card-hour, by chip:",
        *[f"  {chip:28s} {price:>8} CNY" for chip, price in sorted(data["clearing_price_by_chip"].items())],
    ]
    text = out / "report.txt"
    text.write_text("\n".join(lines) + "\n")
    return [text, *_charts(data, out)]


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
