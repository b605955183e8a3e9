"""Billing HTTP API: a buyer's wallet; admin credit of wallets; token usage events."""
from decimal import Decimal

import orjson
from django.http import HttpResponse, QueryDict
from django.utils.http import parse_header_parameters
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.jsonable import jsonable
from config.api.responses import ErrorOutput, errors
from config.errors import Conflict, NotFound, ValidationFailed
from marketplace.actors import actor_for_request, admin_actor_for_request
from marketplace.models import Organisation
from marketplace.permissions import IsPlatformAdmin

from . import admin_services, selectors
from .claims import usage_record_or_claim
from .metering import usage_batch_parse, usage_event_parse
from .models import MoneyApproval

WalletOutput = inline_serializer("Wallet", {"currency": serializers.CharField(),
                                            "available": serializers.DecimalField(30, 12),
                                            "held": serializers.DecimalField(30, 12)})


class WalletApi(APIView):
    @extend_schema(responses=WalletOutput)
    def get(self, request):
        org = actor_for_request(request).require_organisation()
        return Response(jsonable(selectors.wallet_balances(organisation_id=org.pk)))


class MoneyApprovalOutput(serializers.ModelSerializer):
    requested_by = serializers.CharField(source="requested_by.username")
    decided_by = serializers.CharField(source="decided_by.username", default=None)

    class Meta:
        model = MoneyApproval
        fields = ["id", "kind", "organisation", "charge", "amount", "reference", "reason", "status", "requested_by",
                  "decided_by", "decided_at", "decision_reason", "transfer", "created_at"]


class AdminTopUpApi(APIView):
    """Credit an organisation's wallet (idempotent by ``reference``, e.g. a bank transfer id)."""

    permission_classes = [IsPlatformAdmin]

    class TopUpInput(serializers.Serializer):
        amount = serializers.DecimalField(max_digits=18, decimal_places=2, min_value=Decimal("0.01"),
                                          max_value=Decimal("100000000"))
        reference = serializers.CharField(max_length=150)

        reason = serializers.CharField(max_length=250, required=False, allow_blank=True, default="")

    @extend_schema(request=TopUpInput, responses={
        201: WalletOutput, 202: OpenApiResponse(MoneyApprovalOutput, description=(
            "above the second-approval threshold: a request another admin must approve")),
        **errors(400, 401, 403, 404, 409)})
    def post(self, request, organisation_id: int):
        if not Organisation.objects.filter(pk=organisation_id).exists():
            raise NotFound("No such organisation.")
        data = self.TopUpInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        outcome = admin_services.wallet_top_up_by_admin(actor=admin_actor_for_request(request),
                                                        organisation_id=organisation_id, **data.validated_data)
        if outcome.approval is not None:
            return Response(MoneyApprovalOutput(outcome.approval).data, status=status.HTTP_202_ACCEPTED)
        return Response(jsonable(selectors.wallet_balances(organisation_id=organisation_id)),
                        status=status.HTTP_201_CREATED)


@extend_schema_view(get=extend_schema(responses={200: MoneyApprovalOutput(many=True), **errors(400, 401, 403)}))
class MoneyApprovalListApi(generics.ListAPIView):
    """Top-ups and refunds waiting for (or decided by) a second admin."""

    permission_classes = [IsPlatformAdmin]
    serializer_class = MoneyApprovalOutput
    filterset_fields = ["status", "kind"]
    ordering_fields = ["id"]

    def get_queryset(self):
        return MoneyApproval.objects.select_related("requested_by", "decided_by").order_by("-id")


class MoneyApprovalDecideApi(APIView):
    """A second admin (not the requester, with the operation's permission) approves: the money
    moves now; or rejects (a reason is required): nothing moves. One view, one decision per URL."""

    permission_classes = [IsPlatformAdmin]
    decision = None

    class DecideInput(serializers.Serializer):
        reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")

    @extend_schema(request=DecideInput, responses={200: MoneyApprovalOutput, **errors(400, 401, 403, 404, 409)})
    def post(self, request, approval_id: int):
        data = self.DecideInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        decide = (admin_services.money_approval_approve if self.decision == "approve"
                  else admin_services.money_approval_reject)
        approval = decide(actor=admin_actor_for_request(request), approval_id=approval_id,
                          reason=data.validated_data["reason"])
        return Response(MoneyApprovalOutput(approval).data)


# Documents the request only: billing.metering.usage_event_parse validates it, by hand, with
# these fields' messages.
class UsageEventInput(serializers.Serializer):
    """One token usage event."""

    event_id = serializers.CharField(max_length=200)
    allocation = serializers.IntegerField(min_value=1)
    occurred_at = serializers.DateTimeField(help_text="With a time zone (an offset or Z).")
    input_hit_tokens = serializers.IntegerField(min_value=0, max_value=10**12, default=0)
    input_miss_tokens = serializers.IntegerField(min_value=0, max_value=10**12, default=0)
    output_tokens = serializers.IntegerField(min_value=0, max_value=10**12, default=0)


UsageResultOutput = inline_serializer("UsageResult", {
    "event_id": serializers.CharField(),
    "status": serializers.ChoiceField(choices=["created", "replayed", "conflict", "rejected", "reconciliation"]),
    "code": serializers.ChoiceField(required=False, help_text="why it was refused", choices=[
        "unknown_allocation", "out_of_period", "over_budget", "implausible", "idempotency_conflict", "not_stored"]),
    "amount": serializers.CharField(required=False),
    "error": serializers.DictField(required=False, child=serializers.ListField(child=serializers.CharField()))})


class UsageEventApi(APIView):
    """One token usage event from the supplier serving the allocation. 201 new, 200 replay (the
    original result), 409 same id with a different payload (``idempotency_conflict``) or beyond
    the allocation's ``max_spend`` (``over_budget``), 400 refused: unknown allocation, outside
    its live period (``out_of_period``), or more than the endpoint could serve (``implausible``)."""

    throttle_scope = "usage"  # ingestion has its own, higher rate limit (config.api.throttling)

    @staticmethod
    def json_body(request):
        """The decoded body: orjson for UTF-8 JSON; otherwise (or if orjson refuses it) DRF's
        parsers, so malformed JSON and other media types answer as everywhere else."""
        media_type, params = parse_header_parameters(request.META.get("CONTENT_TYPE", ""))
        if media_type == "application/json" and params.get("charset", "utf-8").lower() in ("utf-8", "utf8"):
            body = request.body
            if body:
                try:
                    return orjson.loads(body)
                except orjson.JSONDecodeError:
                    pass  # DRF's parser says why
        data = request.data
        return data.dict() if isinstance(data, QueryDict) else data

    @staticmethod
    def json_response(request, data, status_code: int):
        """orjson when the client takes JSON (as it almost always does); DRF's renderers otherwise."""
        renderer = getattr(request, "accepted_renderer", None)
        if renderer is not None and renderer.format == "json":
            return HttpResponse(orjson.dumps(data), status=status_code, content_type="application/json")
        return Response(data, status=status_code)

    @extend_schema(request=UsageEventInput, responses={
        201: UsageResultOutput, 200: OpenApiResponse(UsageResultOutput, description="a replay: the original result"),
        **errors(400, 401, 403), 409: OpenApiResponse(ErrorOutput, description=(
            "`idempotency_conflict`: the id was used with another payload; `over_budget`: the allocation's "
            "max_spend does not cover it"))})
    def post(self, request):
        actor = actor_for_request(request)
        actor.require_write()
        event = usage_event_parse(self.json_body(request))
        [result] = usage_record_or_claim(organisation_id=actor.require_organisation().pk, events=[event])
        if result["status"] == "conflict":
            raise Conflict("This event id was already used with a different payload.", fields=result["error"],
                           code="idempotency_conflict")
        if result["status"] == "rejected":
            if result["code"] == "over_budget":
                raise Conflict("The allocation's max_spend does not cover this usage.", fields=result["error"],
                               code="over_budget")
            raise ValidationFailed("Usage event refused.", fields=result["error"],
                                   code="validation_error" if result["code"] == "unknown_allocation" else result["code"])
        return self.json_response(request, result, status.HTTP_201_CREATED if result["status"] in ("created", "reconciliation")
                                  else status.HTTP_200_OK)


class UsageEventBatchApi(APIView):
    """Up to 1,000 events; one result per event, in order, each with its status and, when
    refused, its code (as the single endpoint's)."""

    throttle_scope = "usage"

    # Documents the request only: billing.metering.usage_batch_parse validates it.
    class BatchInput(serializers.Serializer):
        events = serializers.ListField(child=UsageEventInput(), min_length=1, max_length=1000)

    @extend_schema(request=BatchInput, responses={200: inline_serializer(
        "UsageBatchResult", {"results": serializers.ListField(child=UsageResultOutput), "counts": serializers.JSONField()}),
        **errors(400, 401, 403)})
    def post(self, request):
        actor = actor_for_request(request)
        actor.require_write()
        events = usage_batch_parse(UsageEventApi.json_body(request))
        results = usage_record_or_claim(organisation_id=actor.require_organisation().pk, events=events)
        counts = {"created": 0, "replayed": 0, "conflict": 0, "rejected": 0}
        for result in results:  # "reconciliation" appears only for allocations the exchange meters
            counts[result["status"]] = counts.get(result["status"], 0) + 1
        return UsageEventApi.json_response(request, {"results": results, "counts": counts}, status.HTTP_200_OK)
