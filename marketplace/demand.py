"""Demand specs (what a buyer asks for) and their resolution against the catalogues.

Orders and quotes take the same specs, so a quote answers for exactly the order it previews.
Resolution raises ``ValidationFailed`` naming the field at fault.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from config.errors import ValidationFailed
from matching.engine.geo import RegionInfo, RegionRule

from .fit import MAX_CARDS_PER_ORDER, memory_needed_gb, min_cards
from .hours import is_whole_hour
from .models import AIModel, ChipType, Interconnect, Organisation, Order, Region, RegionPolicy

MAX_DURATION_HOURS = 24 * 90
MAX_WINDOW = timedelta(days=90)
MAX_LEAD = timedelta(days=365)


@dataclass
class RegionPolicySpec:
    policy: str = RegionPolicy.ANYWHERE
    regions: list[str] = field(default_factory=list)
    lat: float | None = None
    lon: float | None = None
    radius_km: int | None = None


@dataclass
class CardHoursDemand:
    duration_hours: int
    earliest_start: datetime
    latest_end: datetime
    max_price_per_card_hour: Decimal
    chips: list[str] | None = None
    min_memory_gb: int | None = None
    model: str | None = None
    precision: str | None = None
    weights_only: bool = False
    cards: int | None = None
    placement: str = Order.Placement.SINGLE_NODE
    interconnects: list[str] = field(default_factory=list)
    region: RegionPolicySpec = field(default_factory=RegionPolicySpec)


@dataclass
class TokensDemand:
    model: str
    expected_input_tokens: int
    expected_output_tokens: int
    max_price_input_hit_per_m: Decimal
    max_price_input_miss_per_m: Decimal
    max_price_output_per_m: Decimal
    expected_cache_hit_ratio: Decimal = Decimal(0)
    region: RegionPolicySpec = field(default_factory=RegionPolicySpec)
    # The most one allocation may cost the buyer (CNY); None: its hold (the expected maximum cost).
    max_spend: Decimal | None = None


@dataclass
class ChipOption:
    chip: ChipType
    cards: int


@dataclass
class ResolvedCardHours:
    demand: CardHoursDemand
    chip_rule: str
    options: list[ChipOption]
    fit_model: AIModel | None
    fit_precision: str
    needed_gb: Decimal | None
    regions: list[Region]


def model_fit_overhead() -> Decimal:
    return Decimal(str(settings.SANDUISAN["MODEL_FIT_OVERHEAD"]))


def _chip_rule(demand: CardHoursDemand) -> str:
    given = [name for name, value in (("chips", demand.chips), ("min_memory_gb", demand.min_memory_gb),
                                      ("model", demand.model)) if value not in (None, [], "")]
    if len(given) != 1:
        raise ValidationFailed("Give exactly one of chips, min_memory_gb or model.",
                               fields={"chips": ["Give exactly one of chips, min_memory_gb or model."]})
    return {"chips": Order.ChipRule.CHIPS, "min_memory_gb": Order.ChipRule.MIN_MEMORY,
            "model": Order.ChipRule.MODEL}[given[0]]


def _resolve_options(demand: CardHoursDemand, rule: str,
                     catalogue: Catalogue | None = None
                     ) -> tuple[list[ChipOption], AIModel | None, str, Decimal | None]:
    if rule != Order.ChipRule.MODEL and not demand.cards:
        raise ValidationFailed.on("cards", "cards is required unless the order names a model.")
    if rule == Order.ChipRule.CHIPS:
        codes = list(dict.fromkeys(demand.chips or []))
        chips = ({code: catalogue.chips[code] for code in codes if code in catalogue.chips} if catalogue
                 else {c.code: c for c in ChipType.objects.filter(code__in=codes)})
        unknown = [c for c in codes if c not in chips]
        if unknown:
            raise ValidationFailed.on("chips", f"Unknown chip type(s): {', '.join(unknown)}.")
        return [ChipOption(chips[c], demand.cards) for c in codes], None, "", None
    if rule == Order.ChipRule.MIN_MEMORY:
        if catalogue:
            chips = [c for c in catalogue.chips.values()
                     if c.memory_gb is not None and c.memory_gb >= demand.min_memory_gb]
        else:
            chips = list(ChipType.objects.filter(memory_gb__gte=demand.min_memory_gb).order_by("code"))
        if not chips:
            raise ValidationFailed.on("min_memory_gb", f"No chip in the catalogue has {demand.min_memory_gb} GB per card.")
        return [ChipOption(c, demand.cards) for c in chips], None, "", None

    model = AIModel.objects.filter(name=demand.model).first()
    if model is None:
        raise ValidationFailed.on("model", f"Unknown model {demand.model!r}.")
    precision = demand.precision or model.native_precision
    needed = memory_needed_gb(params_billion=model.params_billion, precision=precision,
                              overhead=model_fit_overhead(), weights_only=demand.weights_only)
    options = []
    for chip in ChipType.objects.exclude(memory_gb__isnull=True).order_by("code"):
        need = min_cards(needed_gb=needed, card_memory_gb=chip.memory_gb)
        if demand.cards is not None:
            if need <= demand.cards:
                options.append(ChipOption(chip, demand.cards))
        elif need <= MAX_CARDS_PER_ORDER:
            options.append(ChipOption(chip, need))
    if not options:
        field_name = "cards" if demand.cards is not None else "model"
        raise ValidationFailed.on(field_name, f"{model.name} at {precision} needs {needed} GB; no chip fits it in "
                                  f"{demand.cards or MAX_CARDS_PER_ORDER} cards.")
    return options, model, precision, needed


def resolve_region_policy(spec: RegionPolicySpec, *, organisation: Organisation, prefix: str = "region",
                          catalogue: Catalogue | None = None) -> list[Region]:
    if spec.policy == RegionPolicy.REGIONS:
        codes = list(dict.fromkeys(spec.regions))
        if not codes:
            raise ValidationFailed.on(f"{prefix}.regions", "List at least one region for the 'regions' policy.")
        regions = ([catalogue.regions[c] for c in codes if c in catalogue.regions] if catalogue
                   else list(Region.objects.filter(code__in=codes)))
        unknown = sorted(set(codes) - {r.code for r in regions})
        if unknown:
            raise ValidationFailed.on(f"{prefix}.regions", f"Unknown region(s): {', '.join(unknown)}.")
        return regions
    if spec.policy == RegionPolicy.OWN_PROVINCE and organisation.home_region_id is None:
        raise ValidationFailed.on(f"{prefix}.policy", "Your organisation has no home region, so 'own_province' "
                                  "cannot apply; set one or list regions.")
    if spec.policy == RegionPolicy.WITHIN_KM:
        missing = [n for n in ("lat", "lon", "radius_km") if getattr(spec, n) is None]
        if missing:
            raise ValidationFailed("The 'within_km' policy needs lat, lon and radius_km.",
                                   fields={f"{prefix}.{n}": ["Required for the 'within_km' policy."] for n in missing})
    return []


@dataclass(frozen=True)
class Catalogue:
    """Chips and regions read once, for resolving many orders without a query each."""
    chips: dict[str, ChipType]
    regions: dict[str, Region]


def catalogue_load() -> Catalogue:
    return Catalogue(chips={c.code: c for c in ChipType.objects.order_by("code")},
                     regions={r.code: r for r in Region.objects.all()})


def resolve_card_hours(demand: CardHoursDemand, *, organisation: Organisation, now: datetime | None = None,
                       catalogue: Catalogue | None = None) -> ResolvedCardHours:
    now = now or timezone.now()
    for name in ("earliest_start", "latest_end"):
        if not is_whole_hour(getattr(demand, name)):
            raise ValidationFailed.on(f"window.{name}", "Must fall on a whole hour (minutes and seconds zero).")
    if demand.latest_end <= demand.earliest_start:
        raise ValidationFailed.on("window.latest_end", "Must be after earliest_start.")
    if demand.latest_end - demand.earliest_start > MAX_WINDOW:
        raise ValidationFailed.on("window.latest_end", "A window may span at most 90 days.")
    if demand.latest_end <= now:
        raise ValidationFailed.on("window.latest_end", "Must be in the future.")
    if demand.earliest_start - now > MAX_LEAD:
        raise ValidationFailed.on("window.earliest_start", "Must be within a year from now.")
    if demand.latest_end - demand.earliest_start < timedelta(hours=demand.duration_hours):
        raise ValidationFailed.on("duration_hours", "Does not fit in the window between earliest_start and latest_end.")
    unknown_ic = [i for i in demand.interconnects if i not in Interconnect.values]
    if unknown_ic:
        raise ValidationFailed.on("interconnects", f"Unknown interconnect(s): {', '.join(unknown_ic)}.")
    rule = _chip_rule(demand)
    options, model, precision, needed = _resolve_options(demand, rule, catalogue)
    if demand.placement == Order.Placement.SINGLE_NODE:
        too_big = [o for o in options if o.cards > 64]
        if too_big and len(too_big) == len(options):
            raise ValidationFailed.on("placement", "No single node has that many cards; use 'same_fabric'.")
    regions = resolve_region_policy(demand.region, organisation=organisation, catalogue=catalogue)
    return ResolvedCardHours(demand=demand, chip_rule=rule, options=options, fit_model=model,
                             fit_precision=precision, needed_gb=needed, regions=regions)


def resolve_tokens(demand: TokensDemand, *, organisation: Organisation) -> tuple[AIModel, list[Region]]:
    model = AIModel.objects.filter(name=demand.model).first()
    if model is None:
        raise ValidationFailed.on("model", f"Unknown model {demand.model!r}.")
    if not (Decimal(0) <= demand.expected_cache_hit_ratio <= Decimal(1)):
        raise ValidationFailed.on("expected_cache_hit_ratio", "Must be between 0 and 1.")
    return model, resolve_region_policy(demand.region, organisation=organisation)


def region_info(region: Region, by_id: dict[int, Region]) -> RegionInfo:
    """Plain-data view of a region with its ancestors, for the pure region rules."""
    ancestors = []
    current: Region | None = region
    province = None
    while current is not None:
        ancestors.append(current.code)
        if current.kind == Region.Kind.PROVINCE:
            province = current.code
        current = by_id.get(current.parent_id) if current.parent_id else None
    return RegionInfo(code=region.code, lat=region.lat, lon=region.lon, ancestors=frozenset(ancestors), province=province)


def regions_by_id() -> dict[int, Region]:
    return {r.pk: r for r in Region.objects.all()}


def region_rule(*, policy: str, allowed_codes, home_region_id: int | None, by_id: dict[int, Region],
                lat: float | None, lon: float | None, radius_km: float | None) -> RegionRule:
    """A region policy as plain data for the pure rules; 'own province' is the province of the
    buyer organisation's home region."""
    # only the policy that reads it carries the home province, so that orders of one policy from
    # buyers in different provinces share one rule (a round evaluates each distinct rule once)
    home = by_id.get(home_region_id) if home_region_id and policy == RegionPolicy.OWN_PROVINCE else None
    own = region_info(home, by_id).province if home is not None else None
    return RegionRule(policy=policy, allowed=frozenset(allowed_codes), own_province=own,
                      center=(lat, lon) if lat is not None and lon is not None else None, radius_km=radius_km)


def order_region_rule(order: Order, by_id: dict[int, Region]) -> RegionRule:
    """The region rule an order carries (allowed regions prefetched where many orders are read)."""
    return region_rule(policy=order.region_policy, allowed_codes=[r.code for r in order.allowed_regions.all()],
                       home_region_id=order.organisation.home_region_id, by_id=by_id, lat=order.center_lat,
                       lon=order.center_lon, radius_km=order.radius_km)


def demand_from_order(order: Order) -> CardHoursDemand:
    """The card-hours demand an existing order stands for (what it was created from). Reads its
    chip options and allowed regions through ``all()``: prefetch them (``order_list`` does) where
    many orders are read."""
    options = list(order.chip_options.all())
    common = dict(
        duration_hours=order.duration_hours, earliest_start=order.earliest_start, latest_end=order.latest_end,
        max_price_per_card_hour=order.max_price_per_card_hour, placement=order.placement or Order.Placement.SINGLE_NODE,
        interconnects=list(order.interconnects or []),
        region=RegionPolicySpec(policy=order.region_policy, regions=[r.code for r in order.allowed_regions.all()],
                                lat=order.center_lat, lon=order.center_lon, radius_km=order.radius_km),
    )
    if order.chip_rule == Order.ChipRule.MODEL and order.fit_model_id:
        return CardHoursDemand(model=order.fit_model.name, precision=order.fit_precision,
                               weights_only=order.fit_weights_only, cards=order.cards, **common)
    if order.chip_rule == Order.ChipRule.MIN_MEMORY:
        return CardHoursDemand(min_memory_gb=order.min_memory_gb, cards=order.cards, **common)
    return CardHoursDemand(chips=[o.chip.code for o in options], cards=order.cards or options[0].cards, **common)
