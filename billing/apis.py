"""Billing HTTP API: a buyer's wallet; admin credit of wallets."""
from decimal import Decimal

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.jsonable import jsonable
from config.errors import NotFound
from marketplace.actors import actor_for_request
from marketplace.models import Organisation
from marketplace.permissions import IsPlatformAdmin

from . import selectors, services

WalletOutput = inline_serializer("Wallet", {"currency": serializers.CharField(),
                                            "available": serializers.DecimalField(30, 12),
                                            "held": serializers.DecimalField(30, 12)})


class WalletApi(APIView):
    @extend_schema(responses=WalletOutput)
    def get(self, request):
        org = actor_for_request(request).require_organisation()
        return Response(jsonable(selectors.wallet_balances(organisation_id=org.pk)))


class AdminTopUpApi(APIView):
    """Credit an organisation's wallet (idempotent by ``reference``, e.g. a bank transfer id)."""

    permission_classes = [IsPlatformAdmin]

    class TopUpInput(serializers.Serializer):
        amount = serializers.DecimalField(max_digits=18, decimal_places=2, min_value=Decimal("0.01"),
                                          max_value=Decimal("100000000"))
        reference = serializers.CharField(max_length=150)

    @extend_schema(request=TopUpInput, responses={201: WalletOutput})
    def post(self, request, organisation_id: int):
        if not Organisation.objects.filter(pk=organisation_id).exists():
            raise NotFound("No such organisation.")
        data = self.TopUpInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        services.wallet_top_up(organisation_id=organisation_id, amount=data.validated_data["amount"],
                               reference=f"admin:{data.validated_data['reference']}")
        return Response(jsonable(selectors.wallet_balances(organisation_id=organisation_id)),
                        status=status.HTTP_201_CREATED)


class UsageEventInput(serializers.Serializer):
    event_id = serializers.CharField(max_length=200)
    allocation = serializers.IntegerField(min_value=1)
    occurred_at = serializers.DateTimeField()
    input_hit_tokens = serializers.IntegerField(min_value=0, max_value=10**12, default=0)
    input_miss_tokens = serializers.IntegerField(min_value=0, max_value=10**12, default=0)
    output_tokens = serializers.IntegerField(min_value=0, max_value=10**12, default=0)

    @staticmethod
    def to_usage(data: dict):
        from .metering import UsageIn

        return UsageIn(event_id=data["event_id"], allocation_id=data["allocation"], occurred_at=data["occurred_at"],
                       input_hit_tokens=data["input_hit_tokens"], input_miss_tokens=data["input_miss_tokens"],
                       output_tokens=data["output_tokens"])


class UsageEventApi(APIView):
    """One token usage event from the supplier serving the allocation. 201 new, 200 replay (the
    original result), 409 same id with a different payload, 400 refused."""

    @extend_schema(request=UsageEventInput, responses={201: inline_serializer(
        "UsageResult", {"event_id": serializers.CharField(), "status": serializers.CharField(),
                        "amount": serializers.CharField()})})
    def post(self, request):
        from config.errors import Conflict, ValidationFailed

        from .metering import usage_record_batch

        actor = actor_for_request(request)
        actor.require_write()
        data = UsageEventInput(data=request.data)
        data.is_valid(raise_exception=True)
        [result] = usage_record_batch(organisation_id=actor.require_organisation().pk,
                                      events=[UsageEventInput.to_usage(data.validated_data)])
        if result["status"] == "conflict":
            raise Conflict("This event id was already used with a different payload.", fields=result["error"],
                           code="idempotency_conflict")
        if result["status"] == "rejected":
            raise ValidationFailed("Usage event refused.", fields=result["error"])
        return Response(result, status=status.HTTP_201_CREATED if result["status"] == "created" else status.HTTP_200_OK)


class UsageEventBatchApi(APIView):
    """Up to 1,000 events; one result per event, in order."""

    class BatchInput(serializers.Serializer):
        events = UsageEventInput(many=True, allow_empty=False, max_length=1000)

    @extend_schema(request=BatchInput, responses={200: inline_serializer(
        "UsageBatchResult", {"results": serializers.JSONField(), "counts": serializers.JSONField()})})
    def post(self, request):
        from .metering import usage_record_batch

        actor = actor_for_request(request)
        actor.require_write()
        data = self.BatchInput(data=request.data)
        data.is_valid(raise_exception=True)
        results = usage_record_batch(organisation_id=actor.require_organisation().pk,
                                     events=[UsageEventInput.to_usage(e) for e in data.validated_data["events"]])
        counts = {s: sum(r["status"] == s for r in results) for s in ("created", "replayed", "conflict", "rejected")}
        return Response({"results": results, "counts": counts})
