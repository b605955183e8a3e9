"""Matching HTTP API: explain for buyers, failure reports for suppliers, review for admins."""
from __future__ import annotations

from datetime import datetime

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.jsonable import jsonable
from config.api.responses import ErrorOutput, errors
from config.errors import NotFound
from lifecycle import admin_services
from lifecycle import services as lifecycle
from marketplace.actors import actor_for_request, admin_actor_for_request
from marketplace.permissions import IsPlatformAdmin

from . import selectors, services
from .models import MatchReview, MatchRound, NodeFailure


class ReasonInput(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class NodeFailureOutput(serializers.ModelSerializer):
    impacts = serializers.SerializerMethodField()

    class Meta:
        model = NodeFailure
        fields = ["id", "node", "failed_hour", "reason", "reported_by_supplier", "created_at", "impacts"]

    def get_impacts(self, failure: NodeFailure) -> list[dict]:
        return [{"allocation": i.allocation_id, "order": i.allocation.order_id, "hours_lost": i.hours_lost,
                 "cards": i.cards, "started": i.started} for i in failure.impacts.select_related("allocation")]


class OrderExplainApi(APIView):
    @extend_schema(responses=inline_serializer("Explain", {
        "order": serializers.IntegerField(), "status": serializers.CharField(), "reasons": serializers.JSONField(),
        "alternatives": serializers.JSONField()}))
    def get(self, request, order_id: int):
        org = actor_for_request(request).require_organisation()
        return Response(jsonable(selectors.order_explain(organisation=org, order_id=order_id)))


class NodeFailApi(APIView):
    """A supplier reports its own node failed; unfinished work on it is re-matched."""

    @extend_schema(request=ReasonInput, responses={201: NodeFailureOutput})
    def post(self, request, node_id: int):
        actor = actor_for_request(request)
        actor.require_write()
        data = ReasonInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        failure = lifecycle.node_fail(node_id=node_id, organisation=actor.require_organisation(),
                                      reason=data.validated_data["reason"], reported_by_id=actor.user_id)
        return Response(NodeFailureOutput(failure).data, status=status.HTTP_201_CREATED)


class AdminNodeFailApi(APIView):
    """Fail a supplier's node on its behalf (permission ``matching.fail_node``)."""

    permission_classes = [IsPlatformAdmin]

    @extend_schema(request=ReasonInput, responses={201: NodeFailureOutput, **errors(400, 401, 403, 404, 409)})
    def post(self, request, node_id: int):
        data = ReasonInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        failure = admin_services.node_fail_by_admin(actor=admin_actor_for_request(request), node_id=node_id,
                                                    reason=data.validated_data["reason"])
        return Response(NodeFailureOutput(failure).data, status=status.HTTP_201_CREATED)


class ReviewOutput(serializers.ModelSerializer):
    order = serializers.IntegerField(source="allocation.order_id")
    buyer = serializers.CharField(source="allocation.order.organisation.slug")
    supplier = serializers.CharField(source="allocation.supplier.slug")
    allocation_status = serializers.CharField(source="allocation.status")
    price_per_card_hour = serializers.DecimalField(source="allocation.price_per_card_hour", max_digits=18,
                                                   decimal_places=6)
    cards = serializers.IntegerField(source="allocation.cards")
    hours = serializers.SerializerMethodField()
    decided_by = serializers.CharField(source="decided_by.username", default=None)
    decide_by = serializers.SerializerMethodField(help_text="after this the match expires undecided")

    class Meta:
        model = MatchReview
        fields = ["id", "allocation", "order", "buyer", "supplier", "allocation_status", "price_per_card_hour",
                  "cards", "hours", "reasons", "status", "decide_by", "decided_by", "decided_at", "decision_reason",
                  "created_at"]

    def get_decide_by(self, review: MatchReview) -> datetime:
        return lifecycle.review_deadline(review=review)

    def get_hours(self, review: MatchReview) -> int:
        return review.allocation.end_hour - review.allocation.start_hour


class ReviewListApi(generics.ListAPIView):
    permission_classes = [IsPlatformAdmin]
    serializer_class = ReviewOutput
    ordering_fields = ["id", "created_at"]

    def get_queryset(self):
        return selectors.review_list(status=self.request.query_params.get("status"))


class ReviewDetailApi(APIView):
    permission_classes = [IsPlatformAdmin]

    @extend_schema(responses=ReviewOutput)
    def get(self, request, review_id: int):
        review = selectors.review_list().filter(pk=review_id).first()
        if review is None:
            raise NotFound("No such review.")
        return Response(ReviewOutput(review).data)


REVIEW_CLOSED = OpenApiResponse(ErrorOutput, description="already decided or withdrawn (invalid_transition), or past its "
                                            "deadline (review_expired)")


class ReviewApproveApi(APIView):
    """Approve a flagged match (permission ``matching.decide_review``)."""

    permission_classes = [IsPlatformAdmin]

    @extend_schema(request=ReasonInput, responses={200: ReviewOutput, **errors(400, 401, 403, 404), 409: REVIEW_CLOSED})
    def post(self, request, review_id: int):
        data = ReasonInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        review = admin_services.review_decide(actor=admin_actor_for_request(request), review_id=review_id,
                                              decision="approve", reason=data.validated_data["reason"])
        return Response(ReviewOutput(review).data)


class ReviewRejectApi(APIView):
    """Reject a flagged match, with a reason (permission ``matching.decide_review``)."""

    permission_classes = [IsPlatformAdmin]

    class RejectInput(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)

    @extend_schema(request=RejectInput, responses={200: ReviewOutput, **errors(400, 401, 403, 404), 409: REVIEW_CLOSED})
    def post(self, request, review_id: int):
        data = self.RejectInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        review = admin_services.review_decide(actor=admin_actor_for_request(request), review_id=review_id,
                                              decision="reject", reason=data.validated_data["reason"])
        return Response(ReviewOutput(review).data)


class RoundOutput(serializers.ModelSerializer):
    class Meta:
        model = MatchRound
        fields = ["id", "round_id", "bucket", "status", "price_rule", "orders_considered", "listings_considered",
                  "matches", "flagged", "skipped_stale", "welfare", "load_ms", "engine_ms", "persist_ms", "created_at"]


class RoundListRunApi(generics.ListAPIView):
    """Rounds so far; POST runs one now (synchronously) for a bucket, e.g. ``*:*`` or ``tokens``."""

    permission_classes = [IsPlatformAdmin]
    serializer_class = RoundOutput
    filterset_fields = ["bucket", "status"]
    ordering_fields = ["id"]

    class RunInput(serializers.Serializer):
        bucket = serializers.RegexField(r"^([a-z0-9-]+|\*):([a-z0-9-]+|\*)$|^tokens$", max_length=80)

    def get_queryset(self):
        return selectors.round_list()

    @extend_schema(request=RunInput, responses={201: RoundOutput})
    def post(self, request):
        data = self.RunInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        outcome = services.round_run(bucket=data.validated_data["bucket"])
        return Response(RoundOutput(MatchRound.objects.get(round_id=outcome.round_id)).data,
                        status=status.HTTP_201_CREATED)
