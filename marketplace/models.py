"""Marketplace data: who trades (organisations, members, API keys), what exists (catalogues),
what is offered (nodes, listings and their hourly slot calendar) and what is wanted (orders).

Models hold data and database constraints only; behaviour lives in ``services`` and ``selectors``.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q

PRICE = {"max_digits": 18, "decimal_places": 6}


class Region(models.Model):
    class Kind(models.TextChoices):
        COUNTRY = "country"
        PROVINCE = "province"
        CITY = "city"

    code = models.CharField(max_length=32, unique=True)
    name_en = models.CharField(max_length=100)
    name_zh = models.CharField(max_length=100, blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    hub = models.CharField(max_length=40, blank=True, help_text="东数西算 hub, if any")
    lat = models.FloatField()
    lon = models.FloatField()

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} {self.name_en}"


class ChipType(models.Model):
    code = models.SlugField(max_length=60, unique=True)
    vendor = models.CharField(max_length=60)
    model = models.CharField(max_length=60)
    memory_gb = models.PositiveIntegerField(null=True, blank=True, help_text="unknown for some domestic chips")
    memory_type = models.CharField(max_length=20, blank=True)
    bf16_tflops = models.PositiveIntegerField(null=True, blank=True)
    domestic = models.BooleanField(default=False)
    notes = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["vendor", "model"]
        constraints = [models.UniqueConstraint(fields=["vendor", "model"], name="chip_vendor_model_unique")]

    def __str__(self) -> str:
        return f"{self.vendor} {self.model}"


class AIModel(models.Model):
    class Precision(models.TextChoices):
        FP32 = "fp32"
        BF16 = "bf16"
        FP16 = "fp16"
        FP8 = "fp8"
        INT8 = "int8"
        INT4 = "int4"

    name = models.CharField(max_length=100, unique=True)
    params_billion = models.DecimalField(max_digits=8, decimal_places=2)
    native_precision = models.CharField(max_length=8, choices=Precision.choices)
    architecture = models.CharField(max_length=20, blank=True)
    notes = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "AI model"

    def __str__(self) -> str:
        return self.name


class Organisation(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True)
    is_supplier = models.BooleanField(default=False)
    is_buyer = models.BooleanField(default=False)
    home_region = models.ForeignKey(Region, null=True, blank=True, on_delete=models.PROTECT,
                                    help_text="used by the 'own province' region policy")
    reliability = models.DecimalField(max_digits=4, decimal_places=3, default=1,
                                      help_text="share of sold card-hours delivered without failure (1 = perfect)")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(reliability__gte=0) & Q(reliability__lte=1),
                                   name="organisation_reliability_range"),
        ]

    def __str__(self) -> str:
        return self.name


class RelatedParty(models.Model):
    """Two organisations a platform admin marks as related (one owner, a parent and its
    subsidiary, ...): neither's order is ever matched to the other's listing, either way, just as
    an organisation never trades with itself. Symmetric, so stored once per pair, lower id first."""

    organisation_a = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    organisation_b = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(max_length=300)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "related parties"
        constraints = [
            models.UniqueConstraint(fields=["organisation_a", "organisation_b"], name="related_party_once"),
            models.CheckConstraint(condition=Q(organisation_a__lt=F("organisation_b")),
                                   name="related_party_lower_id_first"),
        ]

    def __str__(self) -> str:
        return f"{self.organisation_a_id} ~ {self.organisation_b_id}"


class Role(models.TextChoices):
    OWNER = "owner"  # everything, including members and API keys
    OPERATOR = "operator"  # trade: nodes, listings, orders
    VIEWER = "viewer"  # read only


class Membership(models.Model):
    """A user belongs to one organisation (a platform admin is a staff user, with or without one)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.OPERATOR)

    def __str__(self) -> str:
        return f"{self.user} @ {self.organisation} ({self.role})"


class ApiKey(models.Model):
    """A machine client's key. The secret is shown once; only its SHA-256 is stored."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=16, unique=True)
    hashed_secret = models.CharField(max_length=64)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.OPERATOR)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… {self.name}"


class Interconnect(models.TextChoices):
    PCIE = "pcie"
    NVLINK = "nvlink"
    ROCE = "roce"
    INFINIBAND = "infiniband"


class Node(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        DRAINING = "draining"  # finishes what it sold, takes nothing new
        OFFLINE = "offline"
        FAILED = "failed"

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="nodes")
    name = models.CharField(max_length=80)
    chip = models.ForeignKey(ChipType, on_delete=models.PROTECT)
    card_count = models.PositiveSmallIntegerField()
    region = models.ForeignKey(Region, on_delete=models.PROTECT)
    interconnect = models.CharField(max_length=12, choices=Interconnect.choices)
    fabric_id = models.CharField(max_length=60, blank=True,
                                 help_text="nodes of one supplier sharing this id sit on one IB/RoCE fabric")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "name"], name="node_name_unique_per_org"),
            models.CheckConstraint(condition=Q(card_count__gte=1) & Q(card_count__lte=64), name="node_card_count_range"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.card_count}x {self.chip})"


class Listing(models.Model):
    """Some or all of a node's cards offered over whole hours at an ask per card-hour.

    With a token endpoint (``token_model`` set) the cards serve that model and are sold per token;
    their card-hours are then not sold as card-hours.
    """

    class Status(models.TextChoices):
        ACTIVE = "active"
        WITHDRAWN = "withdrawn"

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="listings")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="listings")
    cards = models.PositiveSmallIntegerField()
    start = models.DateTimeField()
    end = models.DateTimeField()
    ask_per_card_hour = models.DecimalField(**PRICE)
    min_cards = models.PositiveSmallIntegerField(default=1)
    min_hours = models.PositiveSmallIntegerField(default=1)
    token_model = models.ForeignKey(AIModel, null=True, blank=True, on_delete=models.PROTECT)
    price_input_hit_per_m = models.DecimalField(null=True, blank=True, **PRICE)
    price_input_miss_per_m = models.DecimalField(null=True, blank=True, **PRICE)
    price_output_per_m = models.DecimalField(null=True, blank=True, **PRICE)
    # What a token endpoint can physically serve (input + output tokens per minute); usage beyond
    # what this could have served since an allocation started is refused as implausible.
    tokens_per_minute = models.PositiveBigIntegerField(null=True, blank=True)
    # Served through the exchange's token gateway (a registered endpoint): the exchange meters its
    # usage, and what the supplier reports for it is kept for reconciliation only, never billed.
    metered_by_exchange = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(end__gt=F("start")), name="listing_window_positive"),
            models.CheckConstraint(condition=Q(ask_per_card_hour__gt=0), name="listing_ask_positive"),
            models.CheckConstraint(condition=Q(cards__gte=1) & Q(min_cards__lte=F("cards")), name="listing_cards_valid"),
            models.CheckConstraint(
                condition=Q(token_model__isnull=True) | (
                    Q(price_input_hit_per_m__gt=0) & Q(price_input_miss_per_m__gt=0) & Q(price_output_per_m__gt=0)),
                name="listing_token_prices_when_endpoint"),
            # what allocation parts' (listing, node) foreign key refers to
            models.UniqueConstraint(fields=["id", "node"], name="listing_id_node_unique"),
        ]

    def __str__(self) -> str:
        return f"listing {self.pk} on {self.node_id}"

    @property
    def serves_tokens(self) -> bool:
        return self.token_model_id is not None


class ListingHour(models.Model):
    """The slot calendar: one row per listed node-hour, holding ``cards_offered`` card-hour slots.

    Database guarantees, whatever the code does:
    - a node-hour belongs to at most one listing (``unique(node, hour)``), and a listing never
      offers more cards than the node has (``cards_offered <= node_cards``);
    - slots are never oversold (``0 <= cards_sold <= cards_offered``).
    Together: no card-hour of a node is ever sold twice.

    And by the services (quotes rely on it): an *active* listing has a row for every hour of its
    ``[start, end)`` and, where nothing is sold, ``cards_offered`` is the listing's ``cards``;
    only withdrawing removes or shrinks rows, and it makes the listing inactive at the same time.

    On PostgreSQL, ``marketplace_listinghoursold`` (listing_id, hour, free) holds every row with
    ``cards_sold > 0``, kept exact by statement-level triggers (migration 0011): what quotes read.
    """

    # db_index=False: the unique (listing, hour) and (node, hour) lead with these
    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="hours", db_index=False)
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="+", db_index=False)
    hour = models.IntegerField(help_text="hours since 1970-01-01T00:00Z")
    node_cards = models.PositiveSmallIntegerField()
    cards_offered = models.PositiveSmallIntegerField()
    cards_sold = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["listing_id", "hour"]
        constraints = [
            models.UniqueConstraint(fields=["node", "hour"], name="listinghour_node_hour_unique"),
            # a listing's rows are its node's, so this follows from the one above; stated, because
            # the table of sold hours is keyed by it (migration 0011)
            models.UniqueConstraint(fields=["listing", "hour"], name="listinghour_listing_hour_unique"),
            models.CheckConstraint(condition=Q(cards_sold__gte=0) & Q(cards_sold__lte=F("cards_offered")),
                                   name="listinghour_never_oversold"),
            models.CheckConstraint(condition=Q(cards_offered__lte=F("node_cards")), name="listinghour_within_node"),
        ]
        # No index reads ``cards_sold``, so a sale is a HOT update that touches no index. The sold
        # hours quotes need are in ``marketplace_listinghoursold``, kept by triggers (migration 0011).


class RegionPolicy(models.TextChoices):
    ANYWHERE = "anywhere"
    REGIONS = "regions"  # a list; a province admits its cities, a country its provinces
    OWN_PROVINCE = "own_province"  # the buyer organisation's home province
    WITHIN_KM = "within_km"  # great-circle distance from a point


class Order(models.Model):
    class Kind(models.TextChoices):
        CARD_HOURS = "card_hours"
        TOKENS = "tokens"

    class Status(models.TextChoices):
        OPEN = "open"
        MATCHED = "matched"
        RUNNING = "running"
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        EXPIRED = "expired"
        FAILED = "failed"

    class ChipRule(models.TextChoices):
        CHIPS = "chips"
        MIN_MEMORY = "min_memory"
        MODEL = "model"

    class Placement(models.TextChoices):
        SINGLE_NODE = "single_node"
        SAME_FABRIC = "same_fabric"

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="orders")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)

    # Card-hours demand.
    chip_rule = models.CharField(max_length=12, choices=ChipRule.choices, blank=True)
    min_memory_gb = models.PositiveIntegerField(null=True, blank=True)
    fit_model = models.ForeignKey(AIModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                  db_index=False)  # indexed where set: Meta.indexes
    fit_precision = models.CharField(max_length=8, choices=AIModel.Precision.choices, blank=True)
    fit_weights_only = models.BooleanField(default=False)
    cards = models.PositiveSmallIntegerField(null=True, blank=True,
                                             help_text="with the model rule, the minimum per chip is computed")
    placement = models.CharField(max_length=12, choices=Placement.choices, blank=True)
    interconnects = models.JSONField(default=list, blank=True, help_text="acceptable interconnects; empty = any")
    duration_hours = models.PositiveIntegerField(null=True, blank=True)
    earliest_start = models.DateTimeField(null=True, blank=True)
    latest_end = models.DateTimeField(null=True, blank=True)
    max_price_per_card_hour = models.DecimalField(null=True, blank=True, **PRICE)

    # Tokens demand.
    token_model = models.ForeignKey(AIModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                    db_index=False)  # indexed where set: Meta.indexes
    expected_input_tokens = models.BigIntegerField(null=True, blank=True)
    expected_output_tokens = models.BigIntegerField(null=True, blank=True)
    expected_cache_hit_ratio = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    max_price_input_hit_per_m = models.DecimalField(null=True, blank=True, **PRICE)
    max_price_input_miss_per_m = models.DecimalField(null=True, blank=True, **PRICE)
    max_price_output_per_m = models.DecimalField(null=True, blank=True, **PRICE)
    # The most the buyer agreed to pay for one allocation of this token order (CNY); set to the
    # hold when the buyer gives none. Usage beyond it is refused, never charged.
    max_spend = models.DecimalField(null=True, blank=True, max_digits=30, decimal_places=12)

    # Where the work may run.
    region_policy = models.CharField(max_length=14, choices=RegionPolicy.choices, default=RegionPolicy.ANYWHERE)
    allowed_regions = models.ManyToManyField(Region, blank=True, related_name="+")
    center_lat = models.FloatField(null=True, blank=True)
    center_lon = models.FloatField(null=True, blank=True)
    radius_km = models.PositiveIntegerField(null=True, blank=True)

    # What the matched supplier needs to start the work; nobody else ever sees it.
    workload_image = models.CharField(max_length=300, blank=True)
    workload_command = models.TextField(blank=True)
    ssh_public_key = models.TextField(blank=True)

    status_reason = models.CharField(max_length=300, blank=True)
    # After a supplier failure the undelivered remainder is matched again: ``duration_hours`` and
    # the window then describe the remainder, and these keep what the buyer first asked for.
    rematch_count = models.PositiveSmallIntegerField(default=0)
    original_duration_hours = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "kind"], name="order_status_kind"),
            # The model references are set on few orders: indexed only where set, so the many
            # orders without one (and every status change, which rewrites the index entries of
            # a row) do not carry two index entries of NULL. Lookups by model use them alike.
            models.Index(fields=["fit_model"], condition=Q(fit_model__isnull=False), name="order_fit_model_set"),
            models.Index(fields=["token_model"], condition=Q(token_model__isnull=False), name="order_token_model_set"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind="tokens") | (
                    Q(duration_hours__gte=1) & Q(max_price_per_card_hour__gt=0) & Q(latest_end__gt=F("earliest_start"))),
                name="order_card_hours_complete"),
            models.CheckConstraint(
                condition=Q(kind="card_hours") | (
                    Q(token_model__isnull=False) & Q(max_price_input_hit_per_m__gt=0)
                    & Q(max_price_input_miss_per_m__gt=0) & Q(max_price_output_per_m__gt=0)),
                name="order_tokens_complete"),
        ]

    def __str__(self) -> str:
        return f"order {self.pk} ({self.kind}, {self.status})"


class OrderChipOption(models.Model):
    """One acceptable chip for a card-hours order, with the cards the order needs on it."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="chip_options")
    chip = models.ForeignKey(ChipType, on_delete=models.PROTECT)
    cards = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["order_id", "cards", "chip_id"]
        constraints = [
            models.UniqueConstraint(fields=["order", "chip"], name="orderchip_unique"),
            models.CheckConstraint(condition=Q(cards__gte=1), name="orderchip_cards_positive"),
        ]


class Allocation(models.Model):
    """Capacity sold to an order: cards on one node, or on several nodes of one fabric, for a
    contiguous run of hours at one price per card-hour. Created only by ``slots_reserve``."""

    class Status(models.TextChoices):
        PENDING_REVIEW = "pending_review"
        CONFIRMED = "confirmed"
        RUNNING = "running"
        COMPLETED = "completed"
        RELEASED = "released"  # cancelled, rejected or re-matched before it started
        INTERRUPTED = "interrupted"  # the supplier failed while it ran; the rest was re-matched

    ACTIVE = (Status.PENDING_REVIEW, Status.CONFIRMED, Status.RUNNING)
    # The supplier sees the buyer's workload only once the match is confirmed (not under review,
    # nor after a release).
    SUPPLIER_SEES_WORKLOAD = (Status.CONFIRMED, Status.RUNNING, Status.COMPLETED, Status.INTERRUPTED)

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="allocations")
    # Checked by triggers once per statement instead of a key per row (migration 0013): an
    # existing organisation, locked like a key, never deleted or changed under the allocation.
    supplier = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="supplied_allocations",
                                 db_constraint=False)
    kind = models.CharField(max_length=12, choices=Order.Kind.choices, default=Order.Kind.CARD_HOURS)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CONFIRMED)
    start_hour = models.IntegerField()
    end_hour = models.IntegerField()
    cards = models.PositiveSmallIntegerField()
    price_per_card_hour = models.DecimalField(**PRICE)
    price_rule = models.CharField(max_length=40, blank=True)
    # Token allocations: the endpoint's per-million-token prices the buyer pays.
    price_input_hit_per_m = models.DecimalField(null=True, blank=True, **PRICE)
    price_input_miss_per_m = models.DecimalField(null=True, blank=True, **PRICE)
    price_output_per_m = models.DecimalField(null=True, blank=True, **PRICE)
    # Hours actually delivered when an allocation was interrupted (end of service).
    delivered_end_hour = models.IntegerField(null=True, blank=True)
    # Not indexed: nothing looks allocations up by round (the round's own row has its figures).
    round_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(end_hour__gt=F("start_hour")), name="allocation_hours_positive"),
            models.CheckConstraint(condition=Q(price_per_card_hour__gt=0), name="allocation_price_positive"),
            # An order holds at most one live card-hour allocation: a round retried or raced
            # can never match it twice.
            models.UniqueConstraint(fields=["order"], condition=Q(status__in=["pending_review", "confirmed", "running"]),
                                    name="allocation_one_live_per_order"),
        ]

    def __str__(self) -> str:
        return f"allocation {self.pk} for order {self.order_id}"


class AllocationPart(models.Model):
    """Cards of one node for an allocation, sold from one of its listings.

    On PostgreSQL one foreign key, ``(listing_id, node_id)`` to the listing's ``(id, node_id)``
    (migration 0012), stands for the two single ones: the listing exists, and the part's node is
    that listing's node (which two keys could not say), checked once per row instead of twice.
    """

    # indexed by the unique (allocation, node) below, which leads with it
    allocation = models.ForeignKey(Allocation, on_delete=models.CASCADE, related_name="parts", db_index=False)
    listing = models.ForeignKey(Listing, on_delete=models.PROTECT, related_name="allocation_parts",
                                db_constraint=False)
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="allocation_parts", db_constraint=False)
    cards = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["allocation_id", "node_id"]
        constraints = [
            models.UniqueConstraint(fields=["allocation", "node"], name="allocationpart_node_unique"),
            models.CheckConstraint(condition=Q(cards__gte=1), name="allocationpart_cards_positive"),
        ]


class IdempotencyRecord(models.Model):
    """The first response to a create request carrying an ``Idempotency-Key``."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE)
    key = models.CharField(max_length=200)
    scope = models.CharField(max_length=60)
    request_hash = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "scope", "key"], name="idempotency_key_unique"),
        ]
