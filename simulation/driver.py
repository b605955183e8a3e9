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
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Sum
from django.test.utils import override_settings
from django.conf import settings
from django.utils import timezone

from billing import batch, invoicing
from billing.metering import UsageIn, usage_record_batch
from billing.models import Charge
from config.errors import ApplicationError, Unavailable
from lifecycle import batch as lifecycle_batch, services as lifecycle
from marketplace import services as market
from marketplace.demand import CardHoursDemand, RegionPolicySpec, TokensDemand
from marketplace.hours import current_hour_index, hour_index, hour_start
from marketplace.models import AIModel, Allocation, ChipType, Listing, ListingHour, Node, Order, Organisation, Region
from matching import services as matching
from matching.models import MatchRound

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
SETTLE_EVERY_HOURS = 24
# Listings run this long past the simulated run (the market goes on): the book ahead that the
# dashboard shows, and token endpoints still serving at the end.
BOOK_AHEAD_HOURS = 24
DURATIONS = (1, 2, 3, 4, 6, 8, 12, 16)
CARDS = (1, 1, 2, 2, 4, 8)
DOCUMENTS = 50


@dataclass
class SimConfig:
    suppliers: int = 200
    nodes: int = 1000
    buyers: int = 2000
    days: int = 3
    orders_per_hour: int = 320
    token_orders_per_hour: int = 3
    failures: int = 4
    background_load: float = 0.30
    token_endpoint_share: float = 0.08
    seed: int = 7


PHASES = ("arrivals", "rounds", "persistence", "settlement", "usage", "rest")


@dataclass
class SimRun:
    tag: str
    start: datetime
    end: datetime
    first_hour: int
    hours: int
    supplier_ids: list[int] = field(default_factory=list)
    buyer_ids: list[int] = field(default_factory=list)  # the market's buyers, then the incumbents
    incumbent_ids: list[int] = field(default_factory=list)
    node_ids: list[int] = field(default_factory=list)
    failed_nodes: list[int] = field(default_factory=list)
    # Observed while running (the rest of the report is read back from the database): orders a
    # round's opening probe found a feasible placement for within their bid, the first round that
    # saw each order, and where each simulated hour's wall time went.
    servable: set[int] = field(default_factory=set)
    arrival_step: dict[int, int] = field(default_factory=dict)  # order id -> simulated hour it arrived
    round_step: dict[str, int] = field(default_factory=dict)  # round id -> simulated hour it ran
    phase_seconds: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    setup_seconds: float = 0.0
    finish_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0


def simulate(config: SimConfig, *, progress: Callable[[int, int, str], None] | None = None) -> SimRun:
    """Create the market and drive it hour by hour. Needs PostgreSQL (matching rounds lock rows).

    The run ends at the present hour, so the operators' dashboard (which looks around ``now``)
    shows it as it ran; the card-hour listings run a day beyond it, so the book ahead is there too."""
    if connection.vendor != "postgresql":
        raise Unavailable("The simulation runs matching rounds, which need PostgreSQL; set DATABASE_URL.",
                          code="postgresql_required")
    started = time.perf_counter()
    rng = random.Random(config.seed)
    hours = config.days * 24
    first = current_hour_index(timezone.now()) + 1 - hours
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
        run.setup_seconds = time.perf_counter() - started
        buyers = list(Organisation.objects.filter(pk__in=run.buyer_ids[:config.buyers]).order_by("pk"))
        failure_hours = sorted(rng.sample(range(2, hours - 1), min(config.failures, max(0, hours - 3))))
        for step in range(hours):
            now = hour_start(first + step) + MINUTE
            clock = _Clock(run)
            for order in _arrivals(run, config, rng, now, buyers):
                run.arrival_step[order.pk] = step
            clock.lap("arrivals")
            outcome = matching.round_run(bucket="*:*", now=now, probe=True)
            matching.round_run(bucket=matching.TOKENS_BUCKET, now=now)
            persist = MatchRound.objects.filter(round_id=outcome.round_id).values_list("persist_ms", flat=True).first()
            clock.lap("rounds", split=("persistence", (persist or 0) / 1000))
            run.servable.update(outcome.servable)
            run.round_step[outcome.round_id] = step
            lifecycle_batch.allocations_start(allocation_ids=_due_work(run, now), now=now)
            clock.lap("settlement")
            _report_token_usage(run, rng, now)
            clock.lap("usage")
            if step in failure_hours:
                _fail_a_busy_node(run, rng, now)
            clock.lap("rest")
            lifecycle_batch.allocations_close_due_batched(now=now)  # settles what ends, as it ends
            if step % SETTLE_EVERY_HOURS == SETTLE_EVERY_HOURS - 1:
                lifecycle_batch.settle_due_batched(now=now)  # the periodic sweep of running work and token usage
            clock.lap("settlement")
            market.order_expire_due(now=now)
            if step == 0:
                _analyze()  # once more, with allocations, holds and charges in place
            clock.lap("rest")
            clock.close()
            report(step + 1, hours, f"hour {step + 1}/{hours}")
        finish = run.end + MINUTE
        mark = time.perf_counter()
        lifecycle_batch.allocations_close_due_batched(now=finish)
        lifecycle_batch.settle_due_batched(now=finish)
        run.finish_seconds["settlement"] = time.perf_counter() - mark
        mark = time.perf_counter()
        _issue_documents(run, finish)
        run.finish_seconds["documents"] = time.perf_counter() - mark
    run.wall_seconds = time.perf_counter() - started
    return run


class _Clock:
    """Wall time of one simulated hour, by phase."""

    def __init__(self, run: SimRun):
        self.run, self.mark, self.spent = run, time.perf_counter(), {p: 0.0 for p in PHASES}

    def lap(self, phase: str, split: tuple[str, float] | None = None) -> None:
        now = time.perf_counter()
        seconds, self.mark = now - self.mark, now
        if split:
            part = min(seconds, split[1])
            self.spent[split[0]] += part
            seconds -= part
        self.spent[phase] += seconds

    def close(self) -> None:
        for phase, seconds in self.spent.items():
            self.run.phase_seconds[phase].append(seconds)


# --- the market -----------------------------------------------------------------------------
# Supply and buyers are created set-based (a thousand nodes with 96 hourly slots each): the rows
# are exactly what node_create, listing_create and wallet_top_up write, in a few statements.

def _create_supply(run: SimRun, config: SimConfig, rng: random.Random, report) -> None:
    # Chinese provinces and data-centre cities (the catalogue also holds a few foreign regions).
    regions = list(Region.objects.exclude(kind=Region.Kind.COUNTRY).filter(code__startswith="CN-").order_by("pk"))
    hub_cities = [r for r in regions if r.hub]
    chips = {c.code: c for c in ChipType.objects.filter(code__in=list(CHIPS))}
    models = {m.name: m for m in AIModel.objects.filter(name__in=TOKEN_MODELS)}
    chip_codes = list(CHIPS)
    weights = [CHIPS[c][1] for c in chip_codes]
    suppliers = []
    for s in range(config.suppliers):
        home = rng.choice(hub_cities if rng.random() < 0.7 else regions)
        suppliers.append(Organisation(name=f"Sim supplier {s} ({home.name_en})", slug=f"{run.tag}-s{s}",
                                      is_supplier=True, home_region=home))
    with transaction.atomic():
        Organisation.objects.bulk_create(suppliers)
        run.supplier_ids = [o.pk for o in suppliers]
        per_supplier = max(1, math.ceil(config.nodes / max(1, config.suppliers)))
        nodes, listings = [], []
        for n in range(config.nodes):
            org = suppliers[n // per_supplier % len(suppliers)]
            region = rng.choice(hub_cities if rng.random() < 0.75 else regions)
            chip = rng.choices(chip_codes, weights)[0]
            interconnect = "infiniband" if chip.startswith("nvidia-h") and rng.random() < 0.5 else rng.choice(
                ["roce", "pcie", "roce"])
            node = Node(organisation=org, name=f"n{n}", chip=chips[chip], card_count=8, region=region,
                        interconnect=interconnect,
                        fabric_id=f"{region.code.lower()}-{interconnect}" if interconnect != "pcie" else "")
            nodes.append(node)
            base, _ = CHIPS[chip]
            discount = Decimal("0.85") if region.hub in WEST_HUBS else Decimal("1")
            ask = (base * discount * Decimal(rng.uniform(0.85, 1.15))).quantize(Decimal("0.01"))
            endpoint = (chip in ("nvidia-h800-sxm", "nvidia-h20", "huawei-ascend-910b")
                        and rng.random() < config.token_endpoint_share)
            model = models[rng.choice(TOKEN_MODELS)] if endpoint else None
            listings.append(Listing(
                organisation=org, node=node, cards=8, start=run.start,
                end=run.end + timedelta(hours=BOOK_AHEAD_HOURS), ask_per_card_hour=ask,
                token_model=model, price_input_hit_per_m=Decimal("0.5") if endpoint else None,
                price_input_miss_per_m=Decimal("2") if endpoint else None,
                price_output_per_m=Decimal(rng.choice(["8", "12", "16"])) if endpoint else None))
        Node.objects.bulk_create(nodes, batch_size=2000)
        run.node_ids = [n.pk for n in nodes]
        for listing in listings:
            listing.node_id = listing.node.pk
        Listing.objects.bulk_create(listings, batch_size=2000)
        report(0, run.hours, f"listed {len(listings)} nodes")
        # the calendar: one row per listed node-hour, as listing_create writes them, in one statement
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO marketplace_listinghour (listing_id, node_id, hour, node_cards, cards_offered, cards_sold)"
                " SELECT l.id, l.node_id, h, 8, l.cards, 0 FROM marketplace_listing l,"
                " generate_series(%s::int, %s::int - 1) AS h WHERE l.id = ANY(%s)",
                [run.first_hour, run.first_hour + run.hours + BOOK_AHEAD_HOURS, [x.pk for x in listings]])


def _create_buyers(run: SimRun, config: SimConfig, rng: random.Random, report) -> None:
    homes, weights = list(BUYER_HOMES), list(BUYER_HOMES.values())
    regions = {r.code: r for r in Region.objects.filter(code__in=homes)}
    buyers = [Organisation(name=f"Sim buyer {b}", slug=f"{run.tag}-b{b}", is_buyer=True,
                           home_region=regions[rng.choices(homes, weights)[0]]) for b in range(config.buyers)]
    Organisation.objects.bulk_create(buyers)
    run.buyer_ids = [o.pk for o in buyers]
    batch.wallets_top_up(top_ups=[(o.pk, Decimal(rng.choice([5_000, 20_000, 50_000, 200_000])),
                                   f"{run.tag}-opening-{b}") for b, o in enumerate(buyers)])
    report(0, run.hours, f"{config.buyers} buyers")


def _analyze() -> None:
    """Fresh statistics for the planner: the tables just grew from nothing to tens of thousands of
    rows, and plans made for empty tables make every hour of the run slower."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _background_load(run: SimRun, config: SimConfig, rng: random.Random) -> None:
    """Incumbent customers who already rent about ``background_load`` of the card-hour capacity:
    whole nodes for the whole run, bought through orders that the first round matches."""
    incumbents = [Organisation(name=f"Sim incumbent {i}", slug=f"{run.tag}-i{i}", is_buyer=True,
                               home_region=Region.objects.get(code="CN-SH")) for i in range(5)]
    Organisation.objects.bulk_create(incumbents)
    run.incumbent_ids = [o.pk for o in incumbents]
    run.buyer_ids += run.incumbent_ids
    batch.wallets_top_up(top_ups=[(o.pk, Decimal("100000000"), f"{run.tag}-incumbent-{i}")
                                  for i, o in enumerate(incumbents)])
    nodes = list(Node.objects.filter(pk__in=run.node_ids, listings__token_model__isnull=True)
                 .values_list("chip__code", "region__code").order_by("pk"))
    at = run.start - timedelta(minutes=30)
    orders = []
    for chip, region in rng.sample(nodes, int(len(nodes) * config.background_load)):
        demand = CardHoursDemand(duration_hours=run.hours, earliest_start=run.start, latest_end=run.end, chips=[chip],
                                 cards=8, max_price_per_card_hour=CHIPS[chip][0] * Decimal("1.5"),
                                 region=RegionPolicySpec(policy="regions", regions=[region]))
        orders.append((rng.choice(incumbents), demand))
    lifecycle.orders_create_card_hours(orders=orders, now=at)
    matching.round_run(bucket="*:*", now=at)


def _arrivals(run: SimRun, config: SimConfig, rng: random.Random, now: datetime,
              buyers: list[Organisation]) -> list[Order]:
    """The hour's new orders: card-hours in one batch (as a burst of API calls would arrive),
    tokens one by one. Returns the card-hour orders created."""
    orders = []
    for _ in range(_poisson(rng, config.orders_per_hour)):
        buyer = rng.choice(buyers)
        demand = _card_hours_demand(run, rng, now, buyer)
        if demand is not None:
            orders.append((buyer, demand))
    created = [o for o in lifecycle.orders_create_card_hours(orders=orders, now=now) if isinstance(o, Order)]
    for _ in range(_poisson(rng, config.token_orders_per_hour)):
        buyer = rng.choice(buyers)
        demand = TokensDemand(model=rng.choice(TOKEN_MODELS), expected_input_tokens=rng.choice([5, 20, 50]) * 10**6,
                              expected_output_tokens=rng.choice([1, 4, 10]) * 10**6,
                              expected_cache_hit_ratio=Decimal(rng.choice(["0.1", "0.3", "0.5"])),
                              max_price_input_hit_per_m=Decimal("0.5"), max_price_input_miss_per_m=Decimal("2"),
                              max_price_output_per_m=Decimal(rng.choice(["8", "12", "16"])))
        _post(lambda: lifecycle.order_create_tokens(organisation=buyer, demand=demand))
    return created


def _card_hours_demand(run: SimRun, rng: random.Random, now: datetime,
                       buyer: Organisation) -> CardHoursDemand | None:
    """One buyer's order. Most want work within a few hours; a quarter book half a day ahead and
    about one in six a day or more ahead (what the slot calendar is for). Windows end with the run."""
    lead = rng.random()
    hour = current_hour_index(now) + 1 + (rng.randrange(0, 3) if lead < 0.6 else rng.randrange(3, 13) if lead < 0.84
                                          else rng.randrange(24, 37))
    last = run.first_hour + run.hours
    duration = rng.choice(DURATIONS)
    if hour + duration > last:
        hour = max(current_hour_index(now) + 1, last - duration)
        duration = min(duration, last - hour)
        if duration < 1:
            return None
    slack = rng.choice([0, 2, 6, 12])
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
    return CardHoursDemand(duration_hours=duration, earliest_start=hour_start(hour),
                           latest_end=hour_start(min(last, hour + duration + slack)), chips=chips,
                           min_memory_gb=memory, cards=rng.choice(CARDS), max_price_per_card_hour=bid, region=region)


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

def _due_work(run: SimRun, now: datetime) -> list[int]:
    """The card-hour work sold to begin this hour, which its suppliers start."""
    hour = current_hour_index(now)
    return list(Allocation.objects.filter(supplier_id__in=run.supplier_ids, kind=Order.Kind.CARD_HOURS,
                                          status=Allocation.Status.CONFIRMED, start_hour__lte=hour, end_hour__gt=hour)
                .values_list("pk", flat=True))


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
    """Invoices for the buyers who spent most and statements for the suppliers who earned most
    (``DOCUMENTS`` of each): documents are monthly, not part of the hourly flow, and issuing 2,200
    one by one would take longer than the market's three days."""
    spend = (Charge.objects.filter(buyer_id__in=run.buyer_ids).values("buyer_id").annotate(s=Sum("amount"))
             .order_by("-s", "buyer_id").values_list("buyer_id", flat=True)[:DOCUMENTS])
    suppliers = (Charge.objects.filter(supplier_id__in=run.supplier_ids).values("supplier_id")
                 .annotate(s=Sum("amount")).order_by("-s", "supplier_id")
                 .values_list("supplier_id", flat=True)[:DOCUMENTS])
    for pk in sorted(spend):
        invoicing.invoice_issue(organisation_id=pk, kind="invoice", now=now)
    for pk in sorted(suppliers):
        invoicing.invoice_issue(organisation_id=pk, kind="statement", now=now)
