"""Marketplace writes: the records of organisations, supply, demand and sold slots. Flows that
also move money or ask for matching (reserving with a hold, cancelling, failures, the meter) are
the allocation lifecycle's, in ``lifecycle.services``; this module never imports billing, matching
or the lifecycle.

Lock order, everywhere (so concurrent services never deadlock):
    node -> listing -> order -> allocation -> listing-hour rows ordered by (listing_id, hour).
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from config.errors import CapacityUnavailable, Conflict, InvalidTransition, NotFound, ValidationFailed

from .authentication import KEY_SCHEME, hash_key
from .demand import (MAX_DURATION_HOURS, CardHoursDemand, TokensDemand, catalogue_load, order_region_rule, region_info,
                     regions_by_id, resolve_card_hours, resolve_tokens)
from .hours import current_hour_index, hour_index, hour_start, is_whole_hour
from matching.engine.geo import region_allows

from .models import (AIModel, Allocation, AllocationPart, ApiKey, ChipType, IdempotencyRecord, Interconnect, Listing,
                     ListingHour, Membership, Node, Order, OrderChipOption, Organisation, Region, RelatedParty, Role)
from .selectors import related_parties, trade_barred

MAX_LISTING_HOURS = 24 * 90
# A listing starts at most this far ahead (README): a calendar is for capacity a supplier can
# promise, and hour rows for year 9999 are not capacity.
LISTING_HORIZON_DAYS = 365
MAX_PRICE_PER_CARD_HOUR = Decimal("100000")
MAX_PRICE_PER_MILLION = Decimal("100000")


# --- organisations, members, keys ---------------------------------------------------------------

def organisation_create(*, name: str, slug: str, is_supplier: bool = False, is_buyer: bool = False,
                        home_region_code: str | None = None) -> Organisation:
    home = None
    if home_region_code:
        home = Region.objects.filter(code=home_region_code).first()
        if home is None:
            raise ValidationFailed.on("home_region", f"Unknown region {home_region_code!r}.")
    return Organisation.objects.create(name=name, slug=slug, is_supplier=is_supplier, is_buyer=is_buyer,
                                       home_region=home)


def related_party_create(*, organisation_ids: tuple[int, int], reason: str,
                         created_by_id: int | None = None) -> RelatedParty:
    """Mark two organisations as related (an admin's decision): from now on no round matches one's
    order to the other's listing. Symmetric and idempotent: the pair is stored once, lower id first."""
    a, b = sorted(organisation_ids)
    if a == b:
        raise ValidationFailed.on("organisation_b", "An organisation is always related to itself; pick another.")
    if not reason.strip():
        raise ValidationFailed.on("reason", "Say why they are related.")
    if Organisation.objects.filter(pk__in=[a, b]).count() != 2:
        raise ValidationFailed.on("organisation_b", "No such organisation.")
    party, _ = RelatedParty.objects.get_or_create(organisation_a_id=a, organisation_b_id=b, defaults={
        "reason": reason.strip()[:300], "created_by_id": created_by_id})
    return party


def member_create(*, organisation: Organisation, username: str, password: str, role: str = Role.OPERATOR,
                  email: str = ""):
    user = get_user_model().objects.create_user(username=username, password=password, email=email)
    Membership.objects.create(user=user, organisation=organisation, role=role)
    return user


def api_key_create(*, organisation: Organisation, name: str, role: str = Role.OPERATOR,
                   created_by_id: int | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns it with the plaintext, which is never stored and cannot be shown again."""
    if role not in Role.values:
        raise ValidationFailed.on("role", f"Unknown role {role!r}.")
    prefix = secrets.token_hex(6)
    plaintext = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32).replace('_', 'x')}"
    key = ApiKey.objects.create(organisation=organisation, name=name, prefix=prefix, role=role,
                                hashed_secret=hash_key(plaintext), created_by_id=created_by_id)
    return key, plaintext


def api_key_revoke(*, organisation: Organisation, key_id: int) -> ApiKey:
    key = ApiKey.objects.filter(organisation=organisation, pk=key_id).first()
    if key is None:
        raise NotFound("No such API key.")
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


# --- supply ---------------------------------------------------------------------------------------

def node_create(*, organisation: Organisation, name: str, chip_code: str, card_count: int, region_code: str,
                interconnect: str, fabric_id: str = "") -> Node:
    chip = ChipType.objects.filter(code=chip_code).first()
    if chip is None:
        raise ValidationFailed.on("chip", f"Unknown chip type {chip_code!r}.")
    region = Region.objects.filter(code=region_code).first()
    if region is None:
        raise ValidationFailed.on("region", f"Unknown region {region_code!r}.")
    if interconnect not in Interconnect.values:
        raise ValidationFailed.on("interconnect", f"Unknown interconnect {interconnect!r}.")
    if fabric_id and interconnect not in (Interconnect.INFINIBAND, Interconnect.ROCE):
        raise ValidationFailed.on("fabric_id", "Only InfiniBand or RoCE nodes join a fabric.")
    try:
        with transaction.atomic():
            return Node.objects.create(organisation=organisation, name=name, chip=chip, card_count=card_count,
                                       region=region, interconnect=interconnect, fabric_id=fabric_id)
    except IntegrityError:
        raise ValidationFailed.on("name", f"You already have a node named {name!r}.")


# Failing a node is lifecycle.services.node_fail (it settles, credits and re-matches the node's work).
NODE_TRANSITIONS = {
    Node.Status.ACTIVE: {Node.Status.DRAINING, Node.Status.OFFLINE},
    Node.Status.DRAINING: {Node.Status.ACTIVE, Node.Status.OFFLINE},
    Node.Status.OFFLINE: {Node.Status.ACTIVE},
    Node.Status.FAILED: {Node.Status.ACTIVE, Node.Status.OFFLINE},
}


def node_update(*, organisation: Organisation, node_id: int, name: str | None = None,
                status: str | None = None) -> Node:
    """Rename a node or move it between statuses. A node that is not active sells nothing new."""
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(organisation=organisation, pk=node_id).first()
        if node is None:
            raise NotFound("No such node.")
        fields = []
        if name is not None and name != node.name:
            if Node.objects.filter(organisation=organisation, name=name).exclude(pk=node.pk).exists():
                raise ValidationFailed.on("name", f"You already have a node named {name!r}.")
            node.name = name
            fields.append("name")
        if status is not None and status != node.status:
            if status not in NODE_TRANSITIONS.get(node.status, set()):
                raise InvalidTransition(f"A node cannot go from {node.status} to {status}.",
                                        fields={"status": [f"Not allowed from {node.status}."]})
            node.status = status
            fields.append("status")
        if fields:
            node.save(update_fields=[*fields, "updated_at"])
        return node


@dataclass(frozen=True)
class TokenEndpoint:
    model: str
    price_input_hit_per_m: Decimal
    price_input_miss_per_m: Decimal
    price_output_per_m: Decimal
    # What the endpoint can serve (input + output tokens per minute); None on rows older than
    # the field, read as the default per card (README "Money").
    tokens_per_minute: int | None = None


def listing_create(*, organisation: Organisation, node_id: int, cards: int, start, end,
                   ask_per_card_hour: Decimal, min_cards: int = 1, min_hours: int = 1,
                   token_endpoint: TokenEndpoint | None = None) -> Listing:
    """Offer a node's cards for whole hours ``[start, end)``.

    Locks the node row, so listings of one node are created one at a time; a node-hour already
    listed answers 409. ``unique(node, hour)`` on the calendar is the database backstop.
    """
    for name, moment in (("start", start), ("end", end)):
        if not is_whole_hour(moment):
            raise ValidationFailed.on(name, "Must fall on a whole hour (minutes and seconds zero).")
    if end <= start:
        raise ValidationFailed.on("end", "Must be after start.")
    first, last = hour_index(start), hour_index(end)
    if last - first > MAX_LISTING_HOURS:
        raise ValidationFailed.on("end", "A listing may span at most 90 days; list again later.")
    if end <= timezone.now():
        raise ValidationFailed.on("end", "Must be in the future.")
    if start > timezone.now() + timedelta(days=LISTING_HORIZON_DAYS):
        raise ValidationFailed.on("start", f"Must be within {LISTING_HORIZON_DAYS} days from now.")
    if min_cards > cards:
        raise ValidationFailed.on("min_cards", "Cannot exceed the cards offered.")
    if min_hours > last - first:
        raise ValidationFailed.on("min_hours", "Cannot exceed the listing's length in hours.")
    token_model = None
    if token_endpoint is not None:
        token_model = AIModel.objects.filter(name=token_endpoint.model).first()
        if token_model is None:
            raise ValidationFailed.on("token_endpoint.model", f"Unknown model {token_endpoint.model!r}.")

    with transaction.atomic():
        node = Node.objects.select_for_update().filter(organisation=organisation, pk=node_id).first()
        if node is None:
            raise ValidationFailed.on("node", "No such node among yours.")
        if node.status != Node.Status.ACTIVE:
            raise ValidationFailed.on("node", f"The node is {node.status}; only active nodes can be listed.")
        if cards > node.card_count:
            raise ValidationFailed.on("cards", f"The node has only {node.card_count} cards.")
        taken = list(ListingHour.objects.filter(node=node, hour__gte=first, hour__lt=last)
                     .order_by("hour").values_list("hour", flat=True)[:1])
        if taken:
            raise Conflict(f"This node is already listed for the hour starting {hour_start(taken[0]).isoformat()}; "
                           "change or withdraw that listing first.", fields={"start": ["Overlaps another listing."]},
                           code="listing_overlap")
        listing = Listing.objects.create(
            organisation=organisation, node=node, cards=cards, start=start, end=end,
            ask_per_card_hour=ask_per_card_hour, min_cards=min_cards, min_hours=min_hours, token_model=token_model,
            price_input_hit_per_m=token_endpoint.price_input_hit_per_m if token_endpoint else None,
            price_input_miss_per_m=token_endpoint.price_input_miss_per_m if token_endpoint else None,
            price_output_per_m=token_endpoint.price_output_per_m if token_endpoint else None,
            tokens_per_minute=token_endpoint.tokens_per_minute if token_endpoint else None,
        )
        _calendar_insert(listing=listing, node=node, first=first, last=last, cards=cards)
        return listing


_CALENDAR_INSERT = """
INSERT INTO marketplace_listinghour (listing_id, node_id, hour, node_cards, cards_offered, cards_sold)
SELECT %s, %s, h, %s, %s, 0 FROM generate_series(%s::int, %s::int - 1) AS h
"""


def _calendar_insert(*, listing: Listing, node: Node, first: int, last: int, cards: int) -> None:
    """The listing's hours ``[first, last)`` on the slot calendar. On PostgreSQL one statement
    generates the rows server-side (a 90-day listing is 2,160 rows: no model objects, no
    parameters per row); elsewhere (the embedded SQLite default) the ORM inserts them."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_CALENDAR_INSERT, [listing.pk, node.pk, node.card_count, cards, first, last])
        return
    ListingHour.objects.bulk_create([
        ListingHour(listing=listing, node=node, hour=h, node_cards=node.card_count, cards_offered=cards)
        for h in range(first, last)
    ], batch_size=500)


def listing_update(*, organisation: Organisation, listing_id: int, ask_per_card_hour: Decimal | None = None,
                   min_cards: int | None = None, min_hours: int | None = None) -> Listing:
    """Change terms for future sales; capacity already sold keeps its price."""
    with transaction.atomic():
        listing = Listing.objects.select_for_update().filter(organisation=organisation, pk=listing_id).first()
        if listing is None:
            raise NotFound("No such listing.")
        if listing.status != Listing.Status.ACTIVE:
            raise InvalidTransition("A withdrawn listing cannot be changed.")
        if ask_per_card_hour is not None:
            listing.ask_per_card_hour = ask_per_card_hour
        if min_cards is not None:
            if min_cards > listing.cards:
                raise ValidationFailed.on("min_cards", "Cannot exceed the cards offered.")
            listing.min_cards = min_cards
        if min_hours is not None:
            listing.min_hours = min_hours
        listing.save()
        return listing


def listing_withdraw(*, organisation: Organisation, listing_id: int) -> Listing:
    """Take unsold future slots off the market. Sold slots stay sold; their hours stay with this
    listing, and every unsold future node-hour becomes free to list again."""
    with transaction.atomic():
        listing = Listing.objects.select_for_update().filter(organisation=organisation, pk=listing_id).first()
        if listing is None:
            raise NotFound("No such listing.")
        if listing.status == Listing.Status.WITHDRAWN:
            return listing
        now_hour = current_hour_index(timezone.now())
        future = (ListingHour.objects.select_for_update().filter(listing=listing, hour__gte=now_hour)
                  .order_by("hour"))
        list(future.values_list("pk", flat=True))  # take the row locks in hour order
        future.filter(cards_sold=0).delete()
        future.filter(cards_sold__gt=0).update(cards_offered=F("cards_sold"))
        listing.status = Listing.Status.WITHDRAWN
        listing.save(update_fields=["status", "updated_at"])
        return listing


# --- demand ---------------------------------------------------------------------------------------

def _check_price(value: Decimal | None, field: str, cap: Decimal) -> None:
    if value is not None and not (Decimal(0) < value <= cap):
        raise ValidationFailed.on(field, f"Must be more than 0 and at most {cap}.")


def order_create_card_hours(*, organisation: Organisation, demand: CardHoursDemand, workload: dict | None = None) -> Order:
    _check_price(demand.max_price_per_card_hour, "max_price_per_card_hour", MAX_PRICE_PER_CARD_HOUR)
    resolved = resolve_card_hours(demand, organisation=organisation)
    with transaction.atomic():
        order = Order.objects.create(
            organisation=organisation, kind=Order.Kind.CARD_HOURS, chip_rule=resolved.chip_rule,
            min_memory_gb=demand.min_memory_gb, fit_model=resolved.fit_model, fit_precision=resolved.fit_precision,
            fit_weights_only=demand.weights_only, cards=demand.cards, placement=demand.placement,
            interconnects=sorted(set(demand.interconnects)), duration_hours=demand.duration_hours,
            earliest_start=demand.earliest_start, latest_end=demand.latest_end,
            max_price_per_card_hour=demand.max_price_per_card_hour,
            region_policy=demand.region.policy, center_lat=demand.region.lat, center_lon=demand.region.lon,
            radius_km=demand.region.radius_km, **(workload or {}),
        )
        OrderChipOption.objects.bulk_create([OrderChipOption(order=order, chip=o.chip, cards=o.cards)
                                             for o in resolved.options])
        if resolved.regions:
            order.allowed_regions.set(resolved.regions)
        return order


def orders_create_card_hours(*, orders: Sequence[tuple[Organisation, CardHoursDemand]],
                             now=None) -> list[Order | ValidationFailed]:
    """``order_create_card_hours`` for many orders in one transaction and three inserts (a burst
    of arrivals, a bulk import). Each order is validated alone: one that fails is answered by its
    ``ValidationFailed`` at its position and the others are created."""
    out: list[Order | ValidationFailed] = []
    resolved = []
    catalogue = catalogue_load()
    for organisation, demand in orders:
        try:
            _check_price(demand.max_price_per_card_hour, "max_price_per_card_hour", MAX_PRICE_PER_CARD_HOUR)
            resolved.append(resolve_card_hours(demand, organisation=organisation, now=now, catalogue=catalogue))
            out.append(Order(
                organisation=organisation, kind=Order.Kind.CARD_HOURS, chip_rule=resolved[-1].chip_rule,
                min_memory_gb=demand.min_memory_gb, fit_model=resolved[-1].fit_model,
                fit_precision=resolved[-1].fit_precision, fit_weights_only=demand.weights_only, cards=demand.cards,
                placement=demand.placement, interconnects=sorted(set(demand.interconnects)),
                duration_hours=demand.duration_hours, earliest_start=demand.earliest_start,
                latest_end=demand.latest_end, max_price_per_card_hour=demand.max_price_per_card_hour,
                region_policy=demand.region.policy, center_lat=demand.region.lat, center_lon=demand.region.lon,
                radius_km=demand.region.radius_km))
        except ValidationFailed as error:
            out.append(error)
    created = [o for o in out if isinstance(o, Order)]
    if not created:
        return out
    stamp = timezone.now()
    # Plain set-based inserts: the ORM's per-field preparation costs more than the statements here.
    with transaction.atomic(), connection.cursor() as cursor:
        # ids drawn first, so each order knows its row without relying on RETURNING's order
        cursor.execute("SELECT nextval(pg_get_serial_sequence('marketplace_order', 'id')) FROM generate_series(1, %s)",
                       [len(created)])
        for order, (pk,) in zip(created, cursor.fetchall()):
            order.pk, order.status, order.created_at, order.updated_at = pk, Order.Status.OPEN, stamp, stamp
        columns = {
            "id": ("bigint", [o.pk for o in created]),
            "organisation_id": ("bigint", [o.organisation_id for o in created]),
            "chip_rule": ("text", [o.chip_rule for o in created]),
            "min_memory_gb": ("int", [o.min_memory_gb for o in created]),
            "fit_model_id": ("bigint", [o.fit_model_id for o in created]),
            "fit_precision": ("text", [o.fit_precision or "" for o in created]),
            "fit_weights_only": ("bool", [bool(o.fit_weights_only) for o in created]),
            "cards": ("int", [o.cards for o in created]), "placement": ("text", [o.placement for o in created]),
            "interconnects": ("jsonb", [json.dumps(o.interconnects) for o in created]),
            "duration_hours": ("int", [o.duration_hours for o in created]),
            "earliest_start": ("timestamptz", [o.earliest_start for o in created]),
            "latest_end": ("timestamptz", [o.latest_end for o in created]),
            "max_price_per_card_hour": ("numeric", [o.max_price_per_card_hour for o in created]),
            "region_policy": ("text", [o.region_policy for o in created]),
            "center_lat": ("float8", [o.center_lat for o in created]),
            "center_lon": ("float8", [o.center_lon for o in created]),
            "radius_km": ("int", [o.radius_km for o in created]),
        }
        names = ", ".join(columns)
        cursor.execute(
            f"INSERT INTO marketplace_order ({names}, kind, status, workload_image, workload_command, ssh_public_key,"
            f" status_reason, rematch_count, created_at, updated_at)"
            f" SELECT {names}, 'card_hours', 'open', '', '', '', '', 0, %s, %s FROM unnest("
            + ", ".join(f"%s::{kind}[]" for kind, _ in columns.values())
            + f") AS t({names})",
            [stamp, stamp, *[values for _, values in columns.values()]])
        options = [(order.pk, o.chip.pk, o.cards) for order, r in zip(created, resolved) for o in r.options]
        cursor.execute("INSERT INTO marketplace_orderchipoption (order_id, chip_id, cards)"
                       " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::int[])",
                       [[x[0] for x in options], [x[1] for x in options], [x[2] for x in options]])
        regions = [(order.pk, region.pk) for order, r in zip(created, resolved) for region in r.regions]
        if regions:
            cursor.execute("INSERT INTO marketplace_order_allowed_regions (order_id, region_id)"
                           " SELECT * FROM unnest(%s::bigint[], %s::bigint[])",
                           [[x[0] for x in regions], [x[1] for x in regions]])
    return out


def order_create_tokens(*, organisation: Organisation, demand: TokensDemand, workload: dict | None = None) -> Order:
    for name in ("max_price_input_hit_per_m", "max_price_input_miss_per_m", "max_price_output_per_m"):
        _check_price(getattr(demand, name), name, MAX_PRICE_PER_MILLION)
    model, regions = resolve_tokens(demand, organisation=organisation)
    with transaction.atomic():
        order = Order.objects.create(
            organisation=organisation, kind=Order.Kind.TOKENS, token_model=model,
            expected_input_tokens=demand.expected_input_tokens, expected_output_tokens=demand.expected_output_tokens,
            expected_cache_hit_ratio=demand.expected_cache_hit_ratio,
            max_price_input_hit_per_m=demand.max_price_input_hit_per_m,
            max_price_input_miss_per_m=demand.max_price_input_miss_per_m,
            max_price_output_per_m=demand.max_price_output_per_m, max_spend=demand.max_spend,
            region_policy=demand.region.policy, center_lat=demand.region.lat, center_lon=demand.region.lon,
            radius_km=demand.region.radius_km, **(workload or {}),
        )
        if regions:
            order.allowed_regions.set(regions)
        return order


CANCELLABLE = {Order.Status.OPEN, Order.Status.MATCHED}


# --- slots ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlotClaim:
    listing_id: int
    cards: int


def slots_sell(*, order_id: int, claims: Sequence[SlotClaim], start_hour: int, end_hour: int,
               price_per_card_hour: Decimal, price_rule: str = "ask", round_id: str = "",
               status: str = Allocation.Status.CONFIRMED) -> tuple[Order, Allocation]:
    """Sell card-hour slots ``[start_hour, end_hour)`` on the claimed listings to one open order,
    all or nothing, and mark the order matched: the records only. Returns the locked order and
    the new allocation; ``lifecycle.services.slots_reserve`` places the buyer's hold in the same
    transaction (call this inside the caller's atomic block for that).

    Opens its own atomic block (a savepoint inside a caller's). Locks the claimed nodes FOR SHARE
    (a failure waits, and a failed node is refused), the order row, then the listing-hour rows
    ordered by (listing_id, hour). Re-checks every hard constraint of the order
    against what it locked and raises ``CapacityUnavailable`` or ``ValidationFailed`` otherwise.
    The ``listinghour_never_oversold`` CHECK constraint is the backstop should any path skip this.
    """
    if not claims:
        raise ValidationFailed.on("claims", "Claim at least one listing.")
    listing_ids = sorted({c.listing_id for c in claims})
    if len(listing_ids) != len(claims):
        raise ValidationFailed.on("claims", "Claim each listing once.")
    if end_hour <= start_hour:
        raise ValidationFailed.on("end_hour", "Must be after start_hour.")
    hours = end_hour - start_hour
    cards_by_listing = {c.listing_id: c.cards for c in claims}

    with transaction.atomic():
        nodes_lock_shared(node_ids=Listing.objects.filter(pk__in=listing_ids).values_list("node_id", flat=True))
        order = Order.objects.select_for_update().filter(pk=order_id).first()
        if order is None:
            raise NotFound("No such order.")
        if order.status != Order.Status.OPEN or order.kind != Order.Kind.CARD_HOURS:
            raise InvalidTransition(f"Order {order.pk} is {order.status}; only open card-hour orders can be matched.")
        rows = list(ListingHour.objects.select_for_update()
                    .filter(listing_id__in=listing_ids, hour__gte=start_hour, hour__lt=end_hour)
                    .order_by("listing_id", "hour").values("listing_id", "hour", "cards_offered", "cards_sold"))
        listings = {l.pk: l for l in Listing.objects.select_related("node", "node__region").filter(pk__in=listing_ids)}
        _check_claim(order=order, listings=listings, cards_by_listing=cards_by_listing, start_hour=start_hour,
                     hours=hours, price=price_per_card_hour)
        free: dict[int, int] = {}
        seen: dict[int, int] = {}
        for row in rows:
            seen[row["listing_id"]] = seen.get(row["listing_id"], 0) + 1
            free[row["listing_id"]] = min(free.get(row["listing_id"], 1 << 30), row["cards_offered"] - row["cards_sold"])
        for listing_id in listing_ids:
            if seen.get(listing_id, 0) != hours or free.get(listing_id, 0) < cards_by_listing[listing_id]:
                raise CapacityUnavailable(f"Listing {listing_id} no longer has {cards_by_listing[listing_id]} free "
                                          f"cards for every hour of the claim.")
        for listing_id in listing_ids:
            ListingHour.objects.filter(listing_id=listing_id, hour__gte=start_hour, hour__lt=end_hour).update(
                cards_sold=F("cards_sold") + cards_by_listing[listing_id])
        first = listings[listing_ids[0]]
        allocation = Allocation.objects.create(
            order=order, supplier_id=first.organisation_id, status=status, start_hour=start_hour, end_hour=end_hour,
            cards=sum(cards_by_listing.values()), price_per_card_hour=price_per_card_hour, price_rule=price_rule,
            round_id=round_id)
        AllocationPart.objects.bulk_create([
            AllocationPart(allocation=allocation, listing_id=lid, node_id=listings[lid].node_id,
                           cards=cards_by_listing[lid]) for lid in listing_ids])
        order.status = Order.Status.MATCHED
        order.save(update_fields=["status", "updated_at"])
        return order, allocation


def nodes_lock_shared(*, node_ids) -> None:
    """Lock nodes FOR SHARE in id order (first in the global order): whatever sells their capacity
    holds this until commit, so a node failure (FOR UPDATE) waits for it, and its foreign keys to
    the nodes never queue behind a failure that waits for this transaction's ledger accounts."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM marketplace_node WHERE id = ANY(%s) ORDER BY id FOR SHARE",
                       [sorted(set(node_ids))])


def _check_claim(*, order: Order, listings: dict[int, Listing], cards_by_listing: dict[int, int], start_hour: int,
                 hours: int, price: Decimal) -> None:
    """Every hard constraint of the order, checked against the listings being sold."""
    if len(listings) != len(cards_by_listing):
        raise CapacityUnavailable("A claimed listing does not exist.")
    chosen = list(listings.values())
    chips = {l.node.chip_id for l in chosen}
    suppliers = {l.organisation_id for l in chosen}
    if len(chips) != 1 or len(suppliers) != 1:
        raise ValidationFailed.on("claims", "One allocation uses one chip type from one supplier.")
    supplier_id = next(iter(suppliers))
    if trade_barred(buyer_id=order.organisation_id, supplier_id=supplier_id,
                    related=related_parties(organisation_ids=[order.organisation_id])):
        raise ValidationFailed.on("claims", "The buyer and the supplier are one organisation or related parties.")
    if len(chosen) > 1:
        fabrics = {l.node.fabric_id for l in chosen}
        if order.placement != Order.Placement.SAME_FABRIC or len(fabrics) != 1 or "" in fabrics:
            raise ValidationFailed.on("claims", "Several nodes can only serve a same-fabric order on one fabric.")
    option = order.chip_options.filter(chip_id=chips.pop()).first()
    if option is None:
        raise ValidationFailed.on("claims", "The order does not accept this chip.")
    if sum(cards_by_listing.values()) != option.cards:
        raise ValidationFailed.on("claims", f"The order needs exactly {option.cards} cards on this chip.")
    if hours != order.duration_hours:
        raise ValidationFailed.on("claims", f"The order needs {order.duration_hours} contiguous hours.")
    if start_hour < hour_index(order.earliest_start) or start_hour + hours > hour_index(order.latest_end):
        raise ValidationFailed.on("claims", "The hours fall outside the order's window.")
    if price > order.max_price_per_card_hour:
        raise ValidationFailed.on("claims", "The price is above the buyer's limit.")
    by_id = regions_by_id()
    rule = order_region_rule(order, by_id)
    for listing in chosen:
        if listing.status != Listing.Status.ACTIVE or listing.serves_tokens:
            raise CapacityUnavailable(f"Listing {listing.pk} is not selling card-hours.")
        if listing.node.status != Node.Status.ACTIVE:
            raise CapacityUnavailable(f"Node {listing.node_id} is {listing.node.status}.")
        if price < listing.ask_per_card_hour:
            raise ValidationFailed.on("claims", "The price is below the supplier's ask.")
        if cards_by_listing[listing.pk] < listing.min_cards or hours < listing.min_hours:
            raise ValidationFailed.on("claims", f"Listing {listing.pk}'s minimum rental is not met.")
        if order.interconnects and listing.node.interconnect not in order.interconnects:
            raise ValidationFailed.on("claims", "The node's interconnect is not acceptable to the buyer.")
        if not region_allows(rule, region_info(by_id[listing.node.region_id], by_id)):
            raise ValidationFailed.on("claims", "The node is outside the buyer's allowed regions.")


def slots_release(*, allocation_id: int, from_hour: int | None = None) -> Allocation:
    """Put an allocation's unused slots back on sale (from ``from_hour`` on, default: all)."""
    with transaction.atomic():
        return allocation_release_locked(allocation_id=allocation_id, from_hour=from_hour)


def allocation_release_locked(*, allocation_id: int, from_hour: int | None = None) -> Allocation:
    """Call inside atomic, after locking the allocation's order. Locks listing-hour rows in
    (listing_id, hour) order."""
    allocation = Allocation.objects.select_for_update().get(pk=allocation_id)
    if allocation.status == Allocation.Status.RELEASED:
        return allocation
    allocation_release_unused_locked(allocation=allocation, from_hour=from_hour)
    allocation.status = Allocation.Status.RELEASED
    allocation.save(update_fields=["status", "updated_at"])
    return allocation


def allocation_release_unused_locked(*, allocation: Allocation, from_hour: int | None = None) -> None:
    """Put the allocation's slots from ``from_hour`` on (default: all) back on sale, leaving its
    status alone. Call inside atomic with the order and allocation locked; locks listing-hours in
    (listing_id, hour) order."""
    allocations_release_unused_locked(releases=[(allocation, from_hour)])


def allocations_release_unused_locked(*, releases: Sequence[tuple[Allocation, int | None]]) -> None:
    """Put several allocations' slots back on sale, each from its ``from_hour`` on (None: all),
    leaving their statuses alone. Every listing-hour row they touch is locked in one pass, in
    (listing_id, hour) order, so releasing many at once keeps the global lock order. Call inside
    atomic with their orders and allocations locked."""
    spans = {}
    for allocation, from_hour in releases:
        start = max(allocation.start_hour, from_hour if from_hour is not None else allocation.start_hour)
        if start < allocation.end_hour and allocation.kind == Order.Kind.CARD_HOURS:
            spans[allocation.pk] = (start, allocation.end_hour)
    if not spans:
        return
    parts = list(AllocationPart.objects.filter(allocation_id__in=spans).order_by("listing_id", "allocation_id"))
    cells = Q()
    for part in parts:
        start, end = spans[part.allocation_id]
        cells |= Q(listing_id=part.listing_id, hour__gte=start, hour__lt=end)
    list(ListingHour.objects.select_for_update().filter(cells).order_by("listing_id", "hour")
         .values_list("pk", flat=True))
    for part in parts:
        start, end = spans[part.allocation_id]
        ListingHour.objects.filter(listing_id=part.listing_id, hour__gte=start, hour__lt=end).update(
            cards_sold=F("cards_sold") - part.cards)


def order_expire_due(*, now=None) -> int:
    """Expire open card-hour orders that can no longer fit: no whole hour from the next one on
    leaves ``duration_hours`` before ``latest_end``. Idempotent; returns how many expired.
    Locks each order row (skipping any a matching round holds) before changing it."""
    now = now or timezone.now()
    next_hour = current_hour_index(now) + 1
    horizon = hour_start(next_hour + MAX_DURATION_HOURS)
    due = [pk for pk, latest_end, duration in Order.objects.filter(
        status=Order.Status.OPEN, kind=Order.Kind.CARD_HOURS, latest_end__lt=horizon,
    ).values_list("pk", "latest_end", "duration_hours") if hour_index(latest_end) - duration < next_hour]
    if not due:
        return 0
    # One statement: lock the due orders still open (skipping any a matching round holds), expire them.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE marketplace_order SET status = %s, status_reason = %s, updated_at = %s WHERE id IN ("
            " SELECT id FROM marketplace_order WHERE id = ANY(%s) AND status = %s ORDER BY id FOR UPDATE SKIP LOCKED)",
            [Order.Status.EXPIRED, "the window closed before the order could be matched", timezone.now(), sorted(due),
             Order.Status.OPEN])
        return cursor.rowcount


def idempotency_records_purge(*, now=None) -> int:
    """Delete idempotency records older than ``IDEMPOTENCY_TTL_HOURS``; answers how many. Safe to
    run any number of times (a key past its TTL is then free for a new request)."""
    cutoff = (now or timezone.now()) - timedelta(hours=settings.SANDUISAN["IDEMPOTENCY_TTL_HOURS"])
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
