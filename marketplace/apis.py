"""Marketplace HTTP API. Views are thin: validate input, call one service or selector, render."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.idempotency import HEADER, KEY_SCHEMA, idempotent
from config.api.jsonable import jsonable
from config.errors import ValidationFailed
from lifecycle import services as lifecycle

from . import selectors, services
from .actors import actor_for_request
from .demand import CardHoursDemand, RegionPolicySpec, TokensDemand
from .fit import MAX_CARDS_PER_ORDER
from .hours import hour_start
from .models import (AIModel, Allocation, ApiKey, ChipType, Interconnect, Listing, Node, Order, Region,
                     RegionPolicy, Role)

PRICE_FIELD = {"max_digits": 18, "decimal_places": 6, "min_value": Decimal("0.000001"),
               "max_value": Decimal("100000")}


def _price(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(**PRICE_FIELD, **kwargs)


class OrganisationScopedListMixin:
    """A list view whose rows come from a selector scoped to the caller's organisation."""

    selector = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no caller
            return self.serializer_class.Meta.model.objects.none()
        organisation = actor_for_request(self.request).require_organisation()
        return type(self).selector(organisation=organisation)


def _validated(serializer_class, data, **kwargs) -> dict:
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


# --- shared shapes --------------------------------------------------------------------------------

class RegionPolicyInput(serializers.Serializer):
    policy = serializers.ChoiceField(choices=RegionPolicy.choices, default=RegionPolicy.ANYWHERE)
    regions = serializers.ListField(child=serializers.CharField(max_length=32), required=False, max_length=200,
                                    default=list)
    lat = serializers.FloatField(required=False, min_value=-90, max_value=90)
    lon = serializers.FloatField(required=False, min_value=-180, max_value=180)
    radius_km = serializers.IntegerField(required=False, min_value=1, max_value=5000)

    def to_spec(self, data: dict) -> RegionPolicySpec:
        return RegionPolicySpec(policy=data.get("policy", RegionPolicy.ANYWHERE), regions=data.get("regions", []),
                                lat=data.get("lat"), lon=data.get("lon"), radius_km=data.get("radius_km"))


class WorkloadInput(serializers.Serializer):
    image = serializers.CharField(max_length=300, required=False, allow_blank=True)
    command = serializers.CharField(max_length=10000, required=False, allow_blank=True)
    ssh_public_key = serializers.CharField(max_length=10000, required=False, allow_blank=True)

    def validate_ssh_public_key(self, value: str) -> str:
        if value and not value.strip().startswith(("ssh-", "ecdsa-", "sk-")):
            raise serializers.ValidationError("Not an OpenSSH public key (expected 'ssh-ed25519 AAAA...').")
        return value.strip()

    @staticmethod
    def to_model_fields(data: dict | None) -> dict:
        data = data or {}
        return {"workload_image": data.get("image", ""), "workload_command": data.get("command", ""),
                "ssh_public_key": data.get("ssh_public_key", "")}


class WindowInput(serializers.Serializer):
    earliest_start = serializers.DateTimeField()
    latest_end = serializers.DateTimeField()


class ModelFitInput(serializers.Serializer):
    model = serializers.CharField(max_length=100)
    precision = serializers.ChoiceField(choices=AIModel.Precision.choices, required=False)
    weights_only = serializers.BooleanField(default=False)


class CardHoursInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=[Order.Kind.CARD_HOURS])
    chips = serializers.ListField(child=serializers.CharField(max_length=60), required=False, max_length=50,
                                  allow_empty=False, allow_null=True)
    min_memory_gb = serializers.IntegerField(required=False, min_value=1, max_value=4096, allow_null=True)
    model_fit = ModelFitInput(required=False, allow_null=True)
    cards = serializers.IntegerField(required=False, min_value=1, max_value=MAX_CARDS_PER_ORDER, allow_null=True)
    placement = serializers.ChoiceField(choices=Order.Placement.choices, default=Order.Placement.SINGLE_NODE)
    interconnects = serializers.ListField(child=serializers.ChoiceField(choices=Interconnect.choices),
                                          required=False, default=list, max_length=4)
    duration_hours = serializers.IntegerField(min_value=1, max_value=24 * 90)
    window = WindowInput()
    max_price_per_card_hour = _price()
    region = RegionPolicyInput(required=False)
    workload = WorkloadInput(required=False)

    def to_demand(self, data: dict) -> CardHoursDemand:
        fit = data.get("model_fit") or {}
        return CardHoursDemand(
            duration_hours=data["duration_hours"], earliest_start=data["window"]["earliest_start"],
            latest_end=data["window"]["latest_end"], max_price_per_card_hour=data["max_price_per_card_hour"],
            chips=data.get("chips"), min_memory_gb=data.get("min_memory_gb"), model=fit.get("model"),
            precision=fit.get("precision"), weights_only=fit.get("weights_only", False), cards=data.get("cards"),
            placement=data["placement"], interconnects=data.get("interconnects", []),
            region=RegionPolicyInput().to_spec(data.get("region") or {}),
        )


class TokenMaxPricesInput(serializers.Serializer):
    input_hit_per_m = _price()
    input_miss_per_m = _price()
    output_per_m = _price()


class TokensInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=[Order.Kind.TOKENS])
    model = serializers.CharField(max_length=100)
    expected_input_tokens = serializers.IntegerField(min_value=0, max_value=10**13)
    expected_output_tokens = serializers.IntegerField(min_value=0, max_value=10**13)
    expected_cache_hit_ratio = serializers.DecimalField(max_digits=5, decimal_places=4, min_value=Decimal(0),
                                                        max_value=Decimal(1), default=Decimal(0))
    max_prices = TokenMaxPricesInput()
    max_spend = serializers.DecimalField(
        max_digits=24, decimal_places=6, min_value=Decimal("0.01"), max_value=Decimal("1000000000"), required=False,
        allow_null=True, help_text=("The most one allocation may cost (CNY). Usage beyond it is refused, never "
                                    "charged. Default (null): the order's hold, its expected maximum cost."))
    region = RegionPolicyInput(required=False)
    workload = WorkloadInput(required=False)

    def to_demand(self, data: dict) -> TokensDemand:
        prices = data["max_prices"]
        return TokensDemand(
            model=data["model"], expected_input_tokens=data["expected_input_tokens"],
            expected_output_tokens=data["expected_output_tokens"],
            expected_cache_hit_ratio=data["expected_cache_hit_ratio"],
            max_price_input_hit_per_m=prices["input_hit_per_m"], max_price_input_miss_per_m=prices["input_miss_per_m"],
            max_price_output_per_m=prices["output_per_m"], max_spend=data.get("max_spend"),
            region=RegionPolicyInput().to_spec(data.get("region") or {}),
        )


ORDER_INPUT = PolymorphicProxySerializer(component_name="OrderInput", resource_type_field_name="kind", serializers={
    Order.Kind.CARD_HOURS.value: CardHoursInput, Order.Kind.TOKENS.value: TokensInput})
IDEMPOTENCY_KEY = OpenApiParameter(HEADER, KEY_SCHEMA, OpenApiParameter.HEADER, required=False,
                                   description="Replays the first response for the same key and body (1-200 "
                                               "characters, per organisation).")


class KindInput(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Order.Kind.choices)


def _demand_input(data) -> tuple[str, serializers.Serializer, dict]:
    if not isinstance(data, dict):
        raise ValidationFailed.on("non_field_errors", "Expected a JSON object.")
    kind = _validated(KindInput, {"kind": data.get("kind")})["kind"]
    serializer = CardHoursInput() if kind == Order.Kind.CARD_HOURS else TokensInput()
    return kind, serializer, _validated(type(serializer), data)


# --- catalogues -----------------------------------------------------------------------------------

class RegionOutput(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)

    class Meta:
        model = Region
        fields = ["code", "name_en", "name_zh", "kind", "parent", "hub", "lat", "lon"]


class ChipOutput(serializers.ModelSerializer):
    class Meta:
        model = ChipType
        fields = ["code", "vendor", "model", "memory_gb", "memory_type", "bf16_tflops", "domestic", "notes"]


class AIModelOutput(serializers.ModelSerializer):
    class Meta:
        model = AIModel
        fields = ["name", "params_billion", "native_precision", "architecture", "notes"]


class RegionListApi(generics.ListAPIView):
    serializer_class = RegionOutput
    queryset = Region.objects.select_related("parent")
    filterset_fields = ["kind", "hub"]
    ordering_fields = ["code", "name_en"]


class ChipListApi(generics.ListAPIView):
    serializer_class = ChipOutput
    queryset = ChipType.objects.all()
    filterset_fields = ["vendor", "domestic"]
    ordering_fields = ["code", "memory_gb"]


class AIModelListApi(generics.ListAPIView):
    serializer_class = AIModelOutput
    queryset = AIModel.objects.all()
    ordering_fields = ["name", "params_billion"]


# --- who am I, keys -------------------------------------------------------------------------------

class MeApi(APIView):
    @extend_schema(responses=inline_serializer("Me", {
        "organisation": serializers.CharField(allow_null=True), "role": serializers.CharField(allow_null=True),
        "is_supplier": serializers.BooleanField(), "is_buyer": serializers.BooleanField(),
        "is_platform_admin": serializers.BooleanField()}))
    def get(self, request):
        actor = actor_for_request(request)
        org = actor.organisation
        return Response({"organisation": org.slug if org else None, "role": actor.role,
                         "is_supplier": bool(org and org.is_supplier), "is_buyer": bool(org and org.is_buyer),
                         "is_platform_admin": actor.is_platform_admin})


class ApiKeyOutput(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "role", "created_at", "last_used_at", "revoked_at"]


class ApiKeyListCreateApi(OrganisationScopedListMixin, generics.ListAPIView):
    selector = selectors.api_key_list
    serializer_class = ApiKeyOutput
    ordering_fields = ["created_at", "name"]

    class ApiKeyListCreateInput(serializers.Serializer):
        name = serializers.CharField(max_length=80)
        role = serializers.ChoiceField(choices=Role.choices, default=Role.OPERATOR)

    @extend_schema(request=ApiKeyListCreateInput, responses={201: ApiKeyOutput})
    def post(self, request):
        actor = actor_for_request(request)
        actor.require_owner()
        data = _validated(self.ApiKeyListCreateInput, request.data)
        key, plaintext = services.api_key_create(organisation=actor.organisation, name=data["name"],
                                                 role=data["role"], created_by_id=actor.user_id)
        return Response({**ApiKeyOutput(key).data, "key": plaintext}, status=status.HTTP_201_CREATED)


class ApiKeyRevokeApi(APIView):
    @extend_schema(request=None, responses=ApiKeyOutput)
    def post(self, request, key_id: int):
        actor = actor_for_request(request)
        actor.require_owner()
        return Response(ApiKeyOutput(services.api_key_revoke(organisation=actor.organisation, key_id=key_id)).data)


# --- nodes ----------------------------------------------------------------------------------------

class NodeOutput(serializers.ModelSerializer):
    chip = serializers.SlugRelatedField(slug_field="code", read_only=True)
    region = serializers.SlugRelatedField(slug_field="code", read_only=True)

    class Meta:
        model = Node
        fields = ["id", "name", "chip", "card_count", "region", "interconnect", "fabric_id", "status",
                  "created_at", "updated_at"]


class NodeListCreateApi(OrganisationScopedListMixin, generics.ListAPIView):
    selector = selectors.node_list
    serializer_class = NodeOutput
    filterset_fields = ["status", "interconnect", "fabric_id"]
    ordering_fields = ["id", "name", "created_at"]

    class NodeListCreateInput(serializers.Serializer):
        name = serializers.CharField(max_length=80)
        chip = serializers.CharField(max_length=60)
        card_count = serializers.IntegerField(min_value=1, max_value=64)
        region = serializers.CharField(max_length=32)
        interconnect = serializers.ChoiceField(choices=Interconnect.choices)
        fabric_id = serializers.CharField(max_length=60, required=False, allow_blank=True, default="")

    @extend_schema(request=NodeListCreateInput, responses={201: NodeOutput})
    def post(self, request):
        actor = actor_for_request(request)
        actor.require_write()
        org = actor.require_supplier()
        data = _validated(self.NodeListCreateInput, request.data)
        node = services.node_create(organisation=org, name=data["name"], chip_code=data["chip"],
                                    card_count=data["card_count"], region_code=data["region"],
                                    interconnect=data["interconnect"], fabric_id=data["fabric_id"])
        return Response(NodeOutput(node).data, status=status.HTTP_201_CREATED)


class NodeDetailApi(APIView):
    class NodeDetailInput(serializers.Serializer):
        name = serializers.CharField(max_length=80, required=False)
        status = serializers.ChoiceField(choices=Node.Status.choices, required=False)

    @extend_schema(responses=NodeOutput)
    def get(self, request, node_id: int):
        org = actor_for_request(request).require_organisation()
        return Response(NodeOutput(selectors.node_get(organisation=org, node_id=node_id)).data)

    @extend_schema(request=NodeDetailInput, responses=NodeOutput)
    def patch(self, request, node_id: int):
        actor = actor_for_request(request)
        actor.require_write()
        org = actor.require_organisation()
        data = _validated(self.NodeDetailInput, request.data)
        if data.get("status") == Node.Status.FAILED:
            # A failure is more than a status: unfinished work on the node is re-matched.
            lifecycle.node_fail(node_id=node_id, organisation=org, reason="marked failed by the supplier",
                      reported_by_id=actor.user_id)
            data.pop("status")
        node = services.node_update(organisation=org, node_id=node_id, **data)
        return Response(NodeOutput(node).data)


# --- listings -------------------------------------------------------------------------------------

class TokenEndpointIO(serializers.Serializer):
    model = serializers.CharField(max_length=100)
    price_input_hit_per_m = _price()
    price_input_miss_per_m = _price()
    price_output_per_m = _price()
    tokens_per_minute = serializers.IntegerField(
        min_value=1, max_value=10**12, help_text=(
            "What the endpoint can serve, input plus output tokens per minute. Required on new endpoints: "
            "usage beyond what it could have served since an allocation started is refused as implausible."))


class ListingOutput(serializers.ModelSerializer):
    node = serializers.PrimaryKeyRelatedField(read_only=True)
    chip = serializers.CharField(source="node.chip.code", read_only=True)
    token_endpoint = serializers.SerializerMethodField()
    card_hours = serializers.SerializerMethodField()

    class Meta:
        model = Listing
        fields = ["id", "node", "chip", "cards", "start", "end", "ask_per_card_hour", "min_cards", "min_hours",
                  "token_endpoint", "status", "card_hours", "created_at", "updated_at"]

    def get_token_endpoint(self, listing: Listing) -> dict | None:
        if not listing.serves_tokens:
            return None
        return {"model": listing.token_model.name,
                "price_input_hit_per_m": str(listing.price_input_hit_per_m),
                "price_input_miss_per_m": str(listing.price_input_miss_per_m),
                "price_output_per_m": str(listing.price_output_per_m),
                "tokens_per_minute": listing.tokens_per_minute}

    def get_card_hours(self, listing: Listing) -> dict:
        return selectors.listing_card_hours(listing=listing)


class ListingListCreateApi(OrganisationScopedListMixin, generics.ListAPIView):
    selector = selectors.listing_list
    serializer_class = ListingOutput
    filterset_fields = ["status", "node"]
    ordering_fields = ["id", "start", "ask_per_card_hour"]

    class ListingListCreateInput(serializers.Serializer):
        node = serializers.IntegerField(min_value=1)
        cards = serializers.IntegerField(min_value=1, max_value=64)
        start = serializers.DateTimeField()
        end = serializers.DateTimeField()
        ask_per_card_hour = _price()
        min_cards = serializers.IntegerField(min_value=1, max_value=64, default=1)
        min_hours = serializers.IntegerField(min_value=1, max_value=24 * 90, default=1)
        token_endpoint = TokenEndpointIO(required=False)

    @extend_schema(request=ListingListCreateInput, responses={201: ListingOutput}, parameters=[IDEMPOTENCY_KEY])
    def post(self, request):
        actor = actor_for_request(request)
        actor.require_write()
        org = actor.require_supplier()

        def create() -> Response:
            data = _validated(self.ListingListCreateInput, request.data)
            endpoint = data.pop("token_endpoint", None)
            listing = services.listing_create(
                organisation=org, node_id=data.pop("node"), **data,
                token_endpoint=services.TokenEndpoint(**endpoint) if endpoint else None)
            return Response(ListingOutput(listing).data, status=status.HTTP_201_CREATED)

        return idempotent(request, organisation=org, scope="listing_create", handler=create)


class ListingDetailApi(APIView):
    class ListingDetailInput(serializers.Serializer):
        ask_per_card_hour = _price(required=False)
        min_cards = serializers.IntegerField(min_value=1, max_value=64, required=False)
        min_hours = serializers.IntegerField(min_value=1, max_value=24 * 90, required=False)

    @extend_schema(responses=ListingOutput)
    def get(self, request, listing_id: int):
        org = actor_for_request(request).require_organisation()
        return Response(ListingOutput(selectors.listing_get(organisation=org, listing_id=listing_id)).data)

    @extend_schema(request=ListingDetailInput, responses=ListingOutput)
    def patch(self, request, listing_id: int):
        actor = actor_for_request(request)
        actor.require_write()
        data = _validated(self.ListingDetailInput, request.data)
        listing = services.listing_update(organisation=actor.require_organisation(), listing_id=listing_id, **data)
        return Response(ListingOutput(listing).data)


class ListingWithdrawApi(APIView):
    @extend_schema(request=None, responses=ListingOutput)
    def post(self, request, listing_id: int):
        actor = actor_for_request(request)
        actor.require_write()
        listing = services.listing_withdraw(organisation=actor.require_organisation(), listing_id=listing_id)
        return Response(ListingOutput(listing).data)


# --- orders ---------------------------------------------------------------------------------------

class OrderOutput(serializers.ModelSerializer):
    chip_options = serializers.SerializerMethodField()
    model_fit = serializers.SerializerMethodField()
    window = serializers.SerializerMethodField()
    region = serializers.SerializerMethodField()
    token_model = serializers.SlugRelatedField(slug_field="name", read_only=True)
    max_prices = serializers.SerializerMethodField()
    workload = serializers.SerializerMethodField()

    class Meta:
        model = Order
        fields = ["id", "kind", "status", "status_reason", "chip_rule", "chip_options", "min_memory_gb", "model_fit",
                  "cards", "placement", "interconnects", "duration_hours", "window", "max_price_per_card_hour",
                  "token_model", "expected_input_tokens", "expected_output_tokens", "expected_cache_hit_ratio",
                  "max_prices", "max_spend", "region", "workload", "created_at", "updated_at"]

    def get_chip_options(self, order: Order) -> list[dict]:
        return [{"chip": o.chip.code, "cards": o.cards} for o in order.chip_options.all()]

    def get_model_fit(self, order: Order) -> dict | None:
        if order.fit_model is None:
            return None
        return {"model": order.fit_model.name, "precision": order.fit_precision, "weights_only": order.fit_weights_only}

    def get_window(self, order: Order) -> dict | None:
        if order.earliest_start is None:
            return None
        return {"earliest_start": order.earliest_start, "latest_end": order.latest_end}

    def get_region(self, order: Order) -> dict:
        return {"policy": order.region_policy, "regions": sorted(r.code for r in order.allowed_regions.all()),
                "lat": order.center_lat, "lon": order.center_lon, "radius_km": order.radius_km}

    def get_max_prices(self, order: Order) -> dict | None:
        if order.kind != Order.Kind.TOKENS:
            return None
        return {"input_hit_per_m": str(order.max_price_input_hit_per_m),
                "input_miss_per_m": str(order.max_price_input_miss_per_m),
                "output_per_m": str(order.max_price_output_per_m)}

    def get_workload(self, order: Order) -> dict:
        return {"image": order.workload_image, "command": order.workload_command,
                "ssh_public_key": order.ssh_public_key}


class OrderListCreateApi(OrganisationScopedListMixin, generics.ListAPIView):
    selector = selectors.order_list
    serializer_class = OrderOutput
    filterset_fields = ["status", "kind"]
    ordering_fields = ["id", "created_at", "max_price_per_card_hour"]

    @extend_schema(request=ORDER_INPUT, responses={201: OrderOutput}, parameters=[IDEMPOTENCY_KEY],
                   description="Body is a card_hours order or a tokens order (by `kind`).")
    def post(self, request):
        actor = actor_for_request(request)
        actor.require_write()
        org = actor.require_buyer()

        def create() -> Response:
            kind, serializer, data = _demand_input(request.data)
            workload = WorkloadInput.to_model_fields(data.get("workload"))
            if kind == Order.Kind.CARD_HOURS:
                order = lifecycle.order_create_card_hours(organisation=org, demand=serializer.to_demand(data),
                                                          workload=workload)
            else:
                order = lifecycle.order_create_tokens(organisation=org, demand=serializer.to_demand(data),
                                                      workload=workload)
            order = selectors.order_get(organisation=org, order_id=order.pk)
            return Response(OrderOutput(order).data, status=status.HTTP_201_CREATED)

        return idempotent(request, organisation=org, scope="order_create", handler=create)


class OrderDetailApi(APIView):
    @extend_schema(responses=OrderOutput)
    def get(self, request, order_id: int):
        org = actor_for_request(request).require_organisation()
        return Response(OrderOutput(selectors.order_get(organisation=org, order_id=order_id)).data)


class OrderCancelApi(APIView):
    class OrderCancelInput(serializers.Serializer):
        reason = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")

    @extend_schema(request=OrderCancelInput, responses=OrderOutput)
    def post(self, request, order_id: int):
        actor = actor_for_request(request)
        actor.require_write()
        org = actor.require_organisation()
        data = _validated(self.OrderCancelInput, request.data or {})
        lifecycle.order_cancel(organisation=org, order_id=order_id, reason=data["reason"])
        return Response(OrderOutput(selectors.order_get(organisation=org, order_id=order_id)).data)


# --- allocations ----------------------------------------------------------------------------------

class AllocationOutput(serializers.ModelSerializer):
    order = serializers.PrimaryKeyRelatedField(read_only=True)
    supplier = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    start = serializers.SerializerMethodField()
    end = serializers.SerializerMethodField()
    nodes = serializers.SerializerMethodField()
    workload = serializers.SerializerMethodField()

    class Meta:
        model = Allocation
        fields = ["id", "order", "supplier", "status", "start", "end", "cards", "price_per_card_hour", "price_rule",
                  "nodes", "workload", "created_at"]

    def get_start(self, a: Allocation) -> datetime:
        return hour_start(a.start_hour)

    def get_end(self, a: Allocation) -> datetime:
        return hour_start(a.end_hour)

    def get_nodes(self, a: Allocation) -> list[dict]:
        return [{"node": p.node_id, "name": p.node.name, "cards": p.cards} for p in a.parts.all()]

    def get_workload(self, a: Allocation) -> dict | None:
        # The buyer always sees its own workload; the supplier only once the match is confirmed
        # (not while it waits for review, nor after it was released).
        org = self.context["organisation"]
        visible = a.order.organisation_id == org.pk or a.status in Allocation.SUPPLIER_SEES_WORKLOAD
        if not visible:
            return None
        return {"image": a.order.workload_image, "command": a.order.workload_command,
                "ssh_public_key": a.order.ssh_public_key}


class AllocationListApi(OrganisationScopedListMixin, generics.ListAPIView):
    selector = selectors.allocation_list
    serializer_class = AllocationOutput
    filterset_fields = ["status", "order"]
    ordering_fields = ["id", "start_hour"]

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "organisation": actor_for_request(self.request).organisation}


class AllocationDetailApi(APIView):
    @extend_schema(responses=AllocationOutput)
    def get(self, request, allocation_id: int):
        org = actor_for_request(request).require_organisation()
        allocation = selectors.allocation_get(organisation=org, allocation_id=allocation_id)
        return Response(AllocationOutput(allocation, context={"organisation": org}).data)


# --- quotes ---------------------------------------------------------------------------------------

class QuoteApi(APIView):
    @extend_schema(request=ORDER_INPUT, responses={200: inline_serializer("Quote", {
        "kind": serializers.CharField(), "offers": serializers.IntegerField(),
        "feasible_offers": serializers.IntegerField(), "best_price": serializers.JSONField(),
        "best_offer": serializers.JSONField(), "depth": serializers.JSONField()})},
        description="Takes the same body as POST /orders (card_hours or tokens) and creates nothing.")
    def post(self, request):
        org = actor_for_request(request).require_organisation()
        kind, serializer, data = _demand_input(request.data)
        if kind == Order.Kind.CARD_HOURS:
            quote = selectors.quote_card_hours(organisation=org, demand=serializer.to_demand(data))
        else:
            quote = selectors.quote_tokens(organisation=org, demand=serializer.to_demand(data))
        return Response(jsonable(quote))
