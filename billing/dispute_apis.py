"""Disputes over HTTP: the buyer disputes a charge; both parties see it; an admin with
``billing.resolve_dispute`` refunds or rejects it. Thin views over ``billing.disputes``."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.responses import errors
from marketplace.actors import actor_for_request, admin_actor_for_request
from marketplace.permissions import IsPlatformAdmin

from . import disputes
from .models import AMOUNT, Dispute
from .rating import SCALE


class DisputeOutput(serializers.ModelSerializer):
    side = serializers.SerializerMethodField()

    class Meta:
        model = Dispute
        fields = ["id", "side", "charge", "buyer", "supplier", "reference", "amount", "withheld", "reason", "status",
                  "refunded", "refund", "approval", "resolved_at", "resolution_reason", "created_at"]

    def get_side(self, dispute: Dispute) -> str | None:
        organisation = self.context.get("organisation")
        if organisation is None:
            return None
        return "buyer" if dispute.buyer_id == organisation.pk else "supplier"


class ChargeDisputeApi(APIView):
    """The buyer disputes (part of) one of its charges, within the dispute window. 201 new; 200
    the same ``reference`` again (the first dispute); 404 not your charge; 409 not disputable,
    window closed, already disputed, or the reference names another dispute."""

    class DisputeInput(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)
        reference = serializers.CharField(max_length=150, required=False, help_text=(
            "yours, unique among your disputes; the same one again answers the first dispute"))
        amount = serializers.DecimalField(**AMOUNT, min_value=SCALE, required=False,
                                          help_text="default: all that is left of the charge")

    @extend_schema(request=DisputeInput, responses={
        201: DisputeOutput, 200: OpenApiResponse(DisputeOutput, description="a replay: the first dispute"),
        **errors(400, 401, 403, 404, 409)})
    def post(self, request, charge_id: int):
        actor = actor_for_request(request)
        actor.require_write()
        organisation = actor.require_organisation()
        data = self.DisputeInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        dispute, created = disputes.dispute_open(organisation=organisation, charge_id=charge_id, **data.validated_data)
        return Response(DisputeOutput(dispute, context={"organisation": organisation}).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema_view(get=extend_schema(responses={200: DisputeOutput(many=True), **errors(400, 401, 403)}))
class DisputeListApi(generics.ListAPIView):
    """Disputes you raised (as a buyer) or that concern your charges (as a supplier)."""

    serializer_class = DisputeOutput
    filterset_fields = ["status", "charge"]
    ordering_fields = ["id"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Dispute.objects.none()
        return disputes.dispute_list(organisation=actor_for_request(self.request).require_organisation())

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "organisation": actor_for_request(self.request).organisation}


class DisputeDetailApi(APIView):
    @extend_schema(responses={200: DisputeOutput, **errors(401, 403, 404)})
    def get(self, request, dispute_id: int):
        organisation = actor_for_request(request).require_organisation()
        dispute = disputes.dispute_get(organisation=organisation, dispute_id=dispute_id)
        return Response(DisputeOutput(dispute, context={"organisation": organisation}).data)


@extend_schema_view(get=extend_schema(responses={200: DisputeOutput(many=True), **errors(400, 401, 403)}))
class AdminDisputeListApi(generics.ListAPIView):
    """Every dispute, for the admins who resolve them."""

    permission_classes = [IsPlatformAdmin]
    serializer_class = DisputeOutput
    filterset_fields = ["status"]
    ordering_fields = ["id"]

    def get_queryset(self):
        return Dispute.objects.order_by("-id")


class AdminDisputeResolveApi(APIView):
    """Refund the buyer (all or ``amount`` of the disputed sum; above the second-approval
    threshold this waits for a second admin, 202) or reject the dispute. Needs
    ``billing.resolve_dispute``."""

    permission_classes = [IsPlatformAdmin]

    class ResolveInput(serializers.Serializer):
        outcome = serializers.ChoiceField(choices=["refund", "reject"])
        reason = serializers.CharField(max_length=2000)
        amount = serializers.DecimalField(**AMOUNT, min_value=SCALE, required=False)

    @extend_schema(request=ResolveInput, responses={
        200: DisputeOutput, 202: OpenApiResponse(DisputeOutput, description=(
            "the refund is above the second-approval threshold: it waits for another admin")),
        **errors(400, 401, 403, 404, 409)})
    def post(self, request, dispute_id: int):
        data = self.ResolveInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        dispute = disputes.dispute_resolve(actor=admin_actor_for_request(request), dispute_id=dispute_id,
                                           **data.validated_data)
        return Response(DisputeOutput(dispute).data, status=status.HTTP_202_ACCEPTED
                        if dispute.status == Dispute.Status.AWAITING_APPROVAL else status.HTTP_200_OK)
