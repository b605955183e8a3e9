"""A seeded market driven through the real pipeline on a simulated clock.

Suppliers list nodes across the provinces and the 东数西算 hubs, buyers post card-hour and token
orders every hour, and each simulated hour runs what production runs: matching rounds, suppliers
starting the work they sold, token usage reported and rated, node failures, allocations closing,
settlement and order expiry, all through the services the API and the Celery tasks call, each
given the simulated ``now``. Nothing here computes a result: ``simulation.report`` reads them
back from the database.
"""
from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.test.utils import override_settings
from django.conf import settings
from django.utils import timezone

from billing import invoicing, settlement
from billing.metering import UsageIn, usage_record_batch
from billing.models import Charge
from billing.services import wallet_top_up
from config.errors import ApplicationError, Unavailable
from lifecycle import services as lifecycle
from marketplace import services as market
from marketplace.demand import CardHoursDemand, RegionPolicySpec, TokensDemand
from marketplace.hours import current_hour_index, hour_start
from marketplace.models import Allocation, Node, Order, Organisation, Region
from matching import services as matching

# Chips on sale, with a reference price per card-hour in CNY (DeepSeek's cost model assumed
# 2 USD per H800-hour; consumer 4090s rent for a fraction of that) and a share of the nodes.
CHIPS = {
    "nvidia-h800-sxm": (Decimal("14.5"), 0.16), "nvidia-h20": (Decimal("8.0"), 0.16),
    "nvidia-a800-sxm": (Decimal("9.0"), 0.12), "nvidia-h100-sxm": (Decimal("16.0"), 0.04),
    "nvidia-rtx-4090": (Decimal("2.2"), 0.16), "nvidia-rtx-4090-48gb": (Decimal("3.5"), 0.10),
    "nvidia-l20": (Decimal("4.0"), 0.06), "huawei-ascend-910b": (Decimal("7.0"), 0.14),
    "moore-threads-mtt-s4000": (Decimal("3.0"), 0.03), "hygon-dcu-k100-ai": (Decimal("5.0"), 0.03),
}
# Where buyers are: mostly the east (over 600k AI companies there against about 10k in the west).
BUYER_HOMES = {"CN-SH": 5, "CN-ZJ": 4, "CN-JS": 4, "CN-GD": 5, "CN-BJ": 5, "CN-SC": 1, "CN-HB": 1, "CN-SD": 1}
WEST_HUBS = {"guizhou", "inner-mongolia", "gansu", "ningxia", "chengdu-chongqing"}
TOKEN_MODELS = ("DeepSeek-V3", "DeepSeek-R1")
MINUTE = timedelta(minutes=1)
# Production sweeps every 5 minutes of real time; a simulated hour passes in well under a second,
# so sweeping every simulated hour would settle each long-running allocation 72 times for nothing.
SETTLE_EVERY_HOURS = 36


@dataclass
class SimConfig:
    suppliers: int = 200
    nodes: int = 1000
    buyers: int = 2000
    days: int = 3
    orders_per_hour: int = 20
    token_orders_per_hour: int = 2
    failures: int = 4
    background_load: float = 0.30
    seed: int = 7


@dataclass
class SimRun:
    tag: str
    start: datetime
    end: datetime
    first_hour: int
    hours: int
    supplier_ids: list[int] = field(default_factory=list)
    buyer_ids: list[int] = field(default_factory=list)
    node_ids: list[int] = field(default_factory=list)
    failed_nodes: list[int] = field(default_factory=list)


def simulate(config: SimConfig, *, progress: Callable[[int, int, str], None] | None = None) -> SimRun:
    """Create the market and drive it hour by hour. Needs PostgreSQL (matching rounds lock rows)."""
    if connection.vendor != "postgresql":
        raise Unavailable("The simulation runs matching rounds, which need PostgreSQL; set DATABASE_URL.",
                          code="postgresql_required")
    rng = random.Random(config.seed)
    first = current_hour_index(timezone.now()) + 2
    hours = config.days * 24
    run = SimRun(tag=f"sim{config.seed}-{uuid.uuid4().hex[:8]}", start=hour_start(first), end=hour_start(first + hours),
                 first_hour=first, hours=hours)
    report = progress or (lambda done, total, what: None)
    # The simulation does not send a heartbeat every minute: the grace covers a whole allocation.
    # It runs the rounds itself, on its clock, so arrivals do not also queue rounds for a worker.
    with override_settings(SANDUISAN={**settings.SANDUISAN, "HEARTBEAT_GRACE_SECONDS": 3600 * 24 * 30,
                                      "AUTO_MATCH": False}):
        _create_supply(run, config, rng, report)
        _create_buyers(run, config, rng, report)
        _analyze()
        _background_load(run, config, rng)
        failure_hours = sorted(rng.sample(range(2, hours - 1), min(config.failures, max(0, hours - 3))))
        for step in range(hours):
            now = hour_start(first + step) + MINUTE
            _arrivals(run, config, rng, now)
            matching.round_run(bucket="*:*", now=now)
            matching.round_run(bucket=matching.TOKENS_BUCKET, now=now)
            _start_due_work(run, now)
            _report_token_usage(run, rng, now)
            if step in failure_hours:
                _fail_a_busy_node(run, rng, now)
            lifecycle.allocations_close_due(now=now)  # settles what ends, as it ends
            if step % SETTLE_EVERY_HOURS == SETTLE_EVERY_HOURS - 1:
                settlement.settle_due(now=now)  # the periodic sweep of running work and token usage
            market.order_expire_due(now=now)
            report(step + 1, hours, f"hour {step + 1}/{hours}")
            if step == 0:
                _analyze()  # once more, with allocations, holds and charges in place
        finish = run.end + MINUTE
        lifecycle.allocations_close_due(now=finish)
        settlement.settle_due(now=finish)
        _issue_documents(run, finish)
    return run


# --- the market -----------------------------------------------------------------------------

def _create_supply(run: SimRun, config: SimConfig, rng: random.Random, report) -> None:
    # Chinese provinces and data-centre cities (the catalogue also holds a few foreign regions).
    regions = list(Region.objects.exclude(kind=Region.Kind.COUNTRY).filter(code__startswith="CN-"))
    hub_cities = [r for r in regions if r.hub]
    chip_codes = list(CHIPS)
    weights = [CHIPS[c][1] for c in chip_codes]
    for s in range(config.suppliers):
        home = rng.choice(hub_cities if rng.random() < 0.7 else regions)
        org = market.organisation_create(name=f"Sim supplier {s} ({home.name_en})", slug=f"{run.tag}-s{s}",
                                         is_supplier=True, home_region_code=home.code)
        run.supplier_ids.append(org.pk)
    per_supplier = max(1, math.ceil(config.nodes / max(1, config.suppliers)))
    for n in range(config.nodes):
        org = Organisation(pk=run.supplier_ids[n // per_supplier % len(run.supplier_ids)])
        region = rng.choice(hub_cities if rng.random() < 0.75 else regions)
        chip = rng.choices(chip_codes, weights)[0]
        interconnect = "infiniband" if chip.startswith("nvidia-h") and rng.random() < 0.5 else rng.choice(
            ["roce", "pcie", "roce"])
        node = market.node_create(organisation=org, name=f"n{n}", chip_code=chip, card_count=8,
                                  region_code=region.code, interconnect=interconnect,
                                  fabric_id=f"{region.code.lower()}-{interconnect}" if interconnect != "pcie" else "")
        run.node_ids.append(node.pk)
        base, _ = CHIPS[chip]
        discount = Decimal("0.85") if region.hub in WEST_HUBS else Decimal("1")
        ask = (base * discount * Decimal(rng.uniform(0.85, 1.15))).quantize(Decimal("0.01"))
        endpoint = None
        if chip in ("nvidia-h800-sxm", "nvidia-h20", "huawei-ascend-910b") and rng.random() < 0.08:
            endpoint = market.TokenEndpoint(rng.choice(TOKEN_MODELS), Decimal("0.5"), Decimal("2"),
                                            Decimal(rng.choice(["8", "12", "16"])))
        market.listing_create(organisation=org, node_id=node.pk, cards=8, start=run.start, end=run.end,
                              ask_per_card_hour=ask, token_endpoint=endpoint)
        if n % 50 == 49:
            report(0, run.hours, f"listed {n + 1} nodes")


def _create_buyers(run: SimRun, config: SimConfig, rng: random.Random, report) -> None:
    homes, weights = list(BUYER_HOMES), list(BUYER_HOMES.values())
    for b in range(config.buyers):
        home = rng.choices(homes, weights)[0]
        org = market.organisation_create(name=f"Sim buyer {b}", slug=f"{run.tag}-b{b}", is_buyer=True,
                                         home_region_code=home)
        wallet_top_up(organisation_id=org.pk, amount=Decimal(rng.choice([5_000, 20_000, 50_000, 200_000])),
                      reference=f"{run.tag}-opening-{b}")
        run.buyer_ids.append(org.pk)
        if b % 200 == 199:
            report(0, run.hours, f"{b + 1} buyers")


def _analyze() -> None:
    """Fresh statistics for the planner: the tables just grew from nothing to tens of thousands of
    rows, and plans made for empty tables make every hour of the run slower."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _background_load(run: SimRun, config: SimConfig, rng: random.Random) -> None:
    """Incumbent customers who already rent about ``background_load`` of the card-hour capacity:
    whole nodes for the whole run, bought through orders that the first round matches."""
    incumbents = []
    for i in range(5):
        org = market.organisation_create(name=f"Sim incumbent {i}", slug=f"{run.tag}-i{i}", is_buyer=True,
                                         home_region_code="CN-SH")
        wallet_top_up(organisation_id=org.pk, amount=Decimal("100000000"), reference=f"{run.tag}-incumbent-{i}")
        run.buyer_ids.append(org.pk)
        incumbents.append(org)
    nodes = list(Node.objects.filter(pk__in=run.node_ids, listings__token_model__isnull=True)
                 .values_list("chip__code", "region__code").order_by("pk"))
    for chip, region in rng.sample(nodes, int(len(nodes) * config.background_load)):
        demand = CardHoursDemand(duration_hours=run.hours, earliest_start=run.start, latest_end=run.end, chips=[chip],
                                 cards=8, max_price_per_card_hour=CHIPS[chip][0] * Decimal("1.5"),
                                 region=RegionPolicySpec(policy="regions", regions=[region]))
        _post(lambda: market.order_create_card_hours(organisation=rng.choice(incumbents), demand=demand))
    matching.round_run(bucket="*:*", now=run.start - timedelta(minutes=30))


def _arrivals(run: SimRun, config: SimConfig, rng: random.Random, now: datetime) -> None:
    for _ in range(_poisson(rng, config.orders_per_hour)):
        buyer = Organisation.objects.get(pk=rng.choice(run.buyer_ids[:config.buyers]))
        _post(lambda: market.order_create_card_hours(organisation=buyer, demand=_card_hours_demand(run, rng, now,
                                                                                                   buyer)))
    for _ in range(_poisson(rng, config.token_orders_per_hour)):
        buyer = Organisation.objects.get(pk=rng.choice(run.buyer_ids[:config.buyers]))
        demand = TokensDemand(model=rng.choice(TOKEN_MODELS), expected_input_tokens=rng.choice([5, 20, 50]) * 10**6,
                              expected_output_tokens=rng.choice([1, 4, 10]) * 10**6,
                              expected_cache_hit_ratio=Decimal(rng.choice(["0.1", "0.3", "0.5"])),
                              max_price_input_hit_per_m=Decimal("0.5"), max_price_input_miss_per_m=Decimal("2"),
                              max_price_output_per_m=Decimal(rng.choice(["8", "12", "16"])))
        _post(lambda: market.order_create_tokens(organisation=buyer, demand=demand))


def _card_hours_demand(run: SimRun, rng: random.Random, now: datetime, buyer: Organisation) -> CardHoursDemand:
    hour = current_hour_index(now) + 1 + rng.randrange(0, 3)
    duration = rng.choice([1, 2, 4, 6, 8, 12, 24])
    slack = rng.choice([0, 2, 6, 12])
    last = run.first_hour + run.hours
    start = min(hour, last - duration)
    chip = rng.choices(list(CHIPS), [w for _, w in CHIPS.values()])[0]
    bid = (CHIPS[chip][0] * Decimal(rng.uniform(0.8, 1.4))).quantize(Decimal("0.01"))
    rule = rng.random()
    chips, memory = ([chip], None) if rule < 0.6 else (None, rng.choice([24, 48, 64, 80]))
    if memory is not None:  # a memory floor opens every chip that has it, at a price for the cheapest
        bid = (Decimal(rng.uniform(3, 15))).quantize(Decimal("0.01"))
    region = RegionPolicySpec()
    where = rng.random()
    if where < 0.2:
        region = RegionPolicySpec(policy="own_province")
    elif where < 0.35:
        region = RegionPolicySpec(policy="regions", regions=rng.sample(["CN-GZ", "CN-NM", "CN-GS", "CN-NX", "CN-SC",
                                                                         "CN-SH", "CN-ZJ", "CN-JS", "CN-GD"], 3))
    return CardHoursDemand(duration_hours=duration, earliest_start=hour_start(start),
                           latest_end=hour_start(min(last, start + duration + slack)), chips=chips,
                           min_memory_gb=memory, cards=rng.choice([1, 2, 4, 8, 8]), max_price_per_card_hour=bid,
                           region=region)


def _post(create) -> None:
    try:
        create()
    except ApplicationError:
        pass  # an order this buyer could not place (no chip fits its rule): buyers try something else


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


# --- each hour --------------------------------------------------------------------------------

def _start_due_work(run: SimRun, now: datetime) -> None:
    """Suppliers start the card-hour work sold to begin this hour."""
    hour = current_hour_index(now)
    due = Allocation.objects.filter(supplier_id__in=run.supplier_ids, kind=Order.Kind.CARD_HOURS,
                                    status=Allocation.Status.CONFIRMED, start_hour__lte=hour, end_hour__gt=hour)
    for pk, supplier_id in due.values_list("pk", "supplier_id"):
        lifecycle.allocation_start(organisation=Organisation(pk=supplier_id), allocation_id=pk, now=now)


def _report_token_usage(run: SimRun, rng: random.Random, now: datetime) -> None:
    """Each serving supplier reports the hour's tokens of each live token allocation."""
    live = Allocation.objects.filter(supplier_id__in=run.supplier_ids, kind=Order.Kind.TOKENS,
                                     status=Allocation.Status.CONFIRMED).order_by("pk").values_list("pk", "supplier_id")
    batches: dict[int, list[UsageIn]] = {}
    for pk, supplier_id in live:
        input_tokens = rng.randrange(200_000, 3_000_000)
        hit = int(input_tokens * rng.uniform(0.1, 0.5))
        batches.setdefault(supplier_id, []).append(UsageIn(f"{run.tag}-{pk}-{now:%Y%m%d%H}", pk, now - MINUTE, hit,
                                                           input_tokens - hit, rng.randrange(50_000, 800_000)))
    for supplier_id, events in batches.items():  # one batch per supplier per hour, as a client would send
        usage_record_batch(organisation_id=supplier_id, now=now, events=events)


def _fail_a_busy_node(run: SimRun, rng: random.Random, now: datetime) -> None:
    """A domestic server "hangs after one error": a node with running work fails."""
    busy = list(Allocation.objects.filter(supplier_id__in=run.supplier_ids, status=Allocation.Status.RUNNING)
                .values_list("parts__node_id", flat=True).distinct())
    if busy:
        node_id = rng.choice(sorted(busy))
        lifecycle.node_fail(node_id=node_id, reason="hung after an error; needs a restart", now=now)
        run.failed_nodes.append(node_id)


def _issue_documents(run: SimRun, now: datetime) -> None:
    buyers = set(Charge.objects.filter(buyer_id__in=run.buyer_ids).values_list("buyer_id", flat=True))
    suppliers = set(Charge.objects.filter(supplier_id__in=run.supplier_ids).values_list("supplier_id", flat=True))
    for pk in sorted(buyers):
        invoicing.invoice_issue(organisation_id=pk, kind="invoice", now=now)
    for pk in sorted(suppliers):
        invoicing.invoice_issue(organisation_id=pk, kind="statement", now=now)
