"""Billing HTTP API after the match: card-hour meters (supplier), invoices and statements
(their owners), payouts and refunds (platform admins). Thin views over billing services."""
from datetime import timedelta
from decimal import Decimal

import django_filters
from django.shortcuts import render
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.filters import IdFilter, OpaqueIdFilterSet
from config.api.jsonable import jsonable
from config.api.responses import errors
from config.errors import NotFound
from lifecycle import services as lifecycle
from lifecycle.figures import buyer_figures, supplier_figures
from marketplace.actors import actor_for_request, admin_actor_for_request
from marketplace.models import Organisation
from marketplace.permissions import IsPlatformAdmin

from . import admin_services, invoicing, selectors, settlement
from .apis import MoneyApprovalOutput
from .models import Charge, Invoice, InvoiceLine

MeterOutput = inline_serializer("AllocationMeter", {
    "allocation": serializers.IntegerField(), "status": serializers.CharField(),
    "started_at": serializers.DateTimeField(allow_null=True), "last_heartbeat_at": serializers.DateTimeField(allow_null=True),
    "stopped_at": serializers.DateTimeField(allow_null=True), "metered_minutes": serializers.IntegerField(),
    "billed_minutes": serializers.IntegerField(), "billed_amount": serializers.DecimalField(30, 12),
    "budget": inline_serializer("TokenBudget", {
        "max_spend": serializers.DecimalField(30, 12), "accepted_amount": serializers.DecimalField(30, 12),
        "accepted_tokens": serializers.IntegerField(), "remaining": serializers.DecimalField(30, 12),
        "out_of_budget": serializers.BooleanField(), "refused_over_budget": serializers.IntegerField(),
        "refused_implausible": serializers.IntegerField()}, allow_null=True,
        help_text="token allocations: usage against the order's max_spend; null for card-hours")})


class AllocationMeterApi(APIView):
    """The meter of an allocation you bought or supply: minutes used so far and charged."""

    @extend_schema(responses=MeterOutput)
    def get(self, request, allocation_id: int):
        org = actor_for_request(request).require_organisation()
        allocation, meter = selectors.allocation_meter_get(organisation=org, allocation_id=allocation_id)
        return Response(jsonable(selectors.meter_figures(allocation=allocation, meter=meter)))


class AllocationMeterActionApi(APIView):
    """The supplier starts, keeps alive (heartbeat, every minute or so) or stops the buyer's work;
    billing is per minute of actual use. One view, bound to one action per URL."""

    action = None
    ACTIONS = {"start": lifecycle.allocation_start, "heartbeat": lifecycle.allocation_heartbeat,
               "stop": lifecycle.allocation_stop}

    @extend_schema(request=None, responses=MeterOutput)
    def post(self, request, allocation_id: int):
        actor = actor_for_request(request)
        actor.require_write()
        org = actor.require_organisation()
        self.ACTIONS[self.action](organisation=org, allocation_id=allocation_id)
        allocation, meter = selectors.allocation_meter_get(organisation=org, allocation_id=allocation_id)
        return Response(jsonable(selectors.meter_figures(allocation=allocation, meter=meter)))


class InvoiceLineOutput(serializers.ModelSerializer):
    class Meta:
        model = InvoiceLine
        fields = ["order", "kind", "adjustment", "quantity", "amount", "commission", "description"]


class InvoiceOutput(serializers.ModelSerializer):
    lines = InvoiceLineOutput(many=True, read_only=True)

    class Meta:
        model = Invoice
        fields = ["id", "number", "kind", "period_start", "period_end", "currency", "subtotal", "commission", "total",
                  "rounding", "figures", "issued_at", "lines"]


class InvoiceListIssueApi(generics.ListAPIView):
    """GET: your invoices (as a buyer) and statements (as a supplier). POST: issue the next one
    now, covering everything since the previous one (monthly ones are issued automatically)."""

    serializer_class = InvoiceOutput
    filterset_fields = ["kind"]
    ordering_fields = ["id", "period_end"]

    class IssueInput(serializers.Serializer):
        kind = serializers.ChoiceField(choices=Invoice.Kind.choices, default=Invoice.Kind.INVOICE)
        period_end = serializers.DateTimeField(required=False)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Invoice.objects.none()
        org = actor_for_request(self.request).require_organisation()
        return selectors.invoice_list(organisation=org).prefetch_related("lines")

    @extend_schema(request=IssueInput, responses={201: InvoiceOutput})
    def post(self, request):
        actor = actor_for_request(request)
        actor.require_write()
        org = actor.require_organisation()
        data = self.IssueInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        invoice = invoicing.invoice_issue(organisation_id=org.pk, kind=data.validated_data["kind"],
                                          period_end=data.validated_data.get("period_end"))
        return Response(InvoiceOutput(invoice).data, status=status.HTTP_201_CREATED)


class InvoiceDetailApi(APIView):
    @extend_schema(responses=InvoiceOutput)
    def get(self, request, invoice_id: int):
        org = actor_for_request(request).require_organisation()
        return Response(InvoiceOutput(selectors.invoice_get(organisation=org, invoice_id=invoice_id)).data)


class InvoiceDocumentApi(APIView):
    """The invoice or statement as a printable HTML page."""

    @extend_schema(responses={(200, "text/html"): OpenApiResponse(description="printable document")})
    def get(self, request, invoice_id: int):
        org = actor_for_request(request).require_organisation()
        invoice = selectors.invoice_get(organisation=org, invoice_id=invoice_id)
        lines = [{"line": line, "earnings": line.amount - line.commission} for line in invoice.lines.all()]
        return render(request, "billing/invoice.html", {"invoice": invoice, "organisation": org, "lines": lines})


class AdminPayoutApi(APIView):
    """Pay a supplier what it is owed, floored to the fen (idempotent by ``reference``)."""

    permission_classes = [IsPlatformAdmin]

    class PayoutInput(serializers.Serializer):
        reference = serializers.CharField(max_length=150)

    @extend_schema(request=PayoutInput, responses={201: inline_serializer(
        "Payout", {"id": serializers.IntegerField(), "amount": serializers.DecimalField(30, 12)}),
        **errors(400, 401, 403, 404, 409)})
    def post(self, request, organisation_id: int):
        if not Organisation.objects.filter(pk=organisation_id).exists():
            raise NotFound("No such organisation.")
        data = self.PayoutInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        transfer = admin_services.payout_by_admin(actor=admin_actor_for_request(request),
                                                  organisation_id=organisation_id,
                                                  reference=data.validated_data["reference"])
        paid = transfer.entries.filter(account__kind="external").values_list("amount", flat=True).first()
        return Response(jsonable({"id": transfer.pk, "amount": paid}), status=status.HTTP_201_CREATED)


class AdminRefundApi(APIView):
    """Refund part or all of a charge to its buyer (idempotent by ``reference``)."""

    permission_classes = [IsPlatformAdmin]

    class RefundInput(serializers.Serializer):
        amount = serializers.DecimalField(max_digits=24, decimal_places=12, min_value=Decimal("0.000000000001"))
        reason = serializers.CharField(max_length=250)
        reference = serializers.CharField(max_length=150)

    @extend_schema(request=RefundInput, responses={
        201: inline_serializer("Refund", {"id": serializers.IntegerField(), "amount": serializers.DecimalField(30, 12)}),
        202: OpenApiResponse(MoneyApprovalOutput, description=(
            "above the second-approval threshold: a request another admin must approve")),
        **errors(400, 401, 403, 404, 409)})
    def post(self, request, charge_id: int):
        data = self.RefundInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        outcome = admin_services.refund_by_admin(actor=admin_actor_for_request(request), charge_id=charge_id,
                                                 **data.validated_data)
        if outcome.approval is not None:
            return Response(MoneyApprovalOutput(outcome.approval).data, status=status.HTTP_202_ACCEPTED)
        refund = outcome.charge
        return Response(jsonable({"id": refund.pk, "amount": refund.amount}), status=status.HTTP_201_CREATED)


class ChargeOutput(serializers.Serializer):
    id = serializers.IntegerField()
    side = serializers.SerializerMethodField()
    order = serializers.IntegerField(source="order_id")
    allocation = serializers.IntegerField(source="allocation_id")
    kind = serializers.CharField()
    quantity = serializers.DecimalField(24, 6)
    unit_price = serializers.DecimalField(18, 6)
    amount = serializers.DecimalField(30, 12)
    commission = serializers.DecimalField(30, 12)
    usage_from = serializers.DateTimeField()
    usage_to = serializers.DateTimeField()
    invoice = serializers.IntegerField(source="invoice_id", allow_null=True)
    statement = serializers.IntegerField(source="statement_id", allow_null=True)
    memo = serializers.CharField()

    def get_side(self, charge) -> str:
        return "buyer" if charge.buyer_id == self.context["organisation"].pk else "supplier"


class ChargeFilter(OpaqueIdFilterSet):
    kind = django_filters.ChoiceFilter(choices=Charge.Kind.choices)
    order = IdFilter(field_name="order_id")
    allocation = IdFilter(field_name="allocation_id")

    class Meta:
        model = Charge
        fields = ["kind", "order", "allocation"]


class ChargeListApi(generics.ListAPIView):
    """Every charge, credit and refund you paid (as a buyer) or earned (as a supplier)."""

    serializer_class = ChargeOutput
    # Plain numbers, not model choices: validating an id against every order would tell a caller
    # which ids exist.
    filterset_class = ChargeFilter
    ordering_fields = ["id", "usage_to"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Charge.objects.none()
        return selectors.charge_list(organisation=actor_for_request(self.request).require_organisation())

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "organisation": actor_for_request(self.request).organisation}


class FiguresApi(APIView):
    """Your own figures over a period (default: the last 30 days). ``side`` is bound per URL:
    ``supplier`` (racked vs lit card-hours, earnings, reliability) or ``buyer`` (spend, open
    orders and why they wait)."""

    side = None

    class PeriodInput(serializers.Serializer):
        start = serializers.DateTimeField(required=False)
        end = serializers.DateTimeField(required=False)

        def validate(self, data):
            end = data.get("end") or timezone.now()
            start = data.get("start") or end - timedelta(days=30)
            if start >= end:
                raise serializers.ValidationError({"start": ["Must be before end."]})
            return {"start": start, "end": end}

    @extend_schema(parameters=[PeriodInput], responses={200: inline_serializer(
        "Figures", {"period": serializers.JSONField(), "card_hours": serializers.JSONField(required=False),
                    "earnings": serializers.JSONField(required=False), "spend": serializers.JSONField(required=False),
                    "orders": serializers.JSONField(required=False)})})
    def get(self, request):
        actor = actor_for_request(request)
        period = self.PeriodInput(data=request.query_params)
        period.is_valid(raise_exception=True)
        if self.side == "supplier":
            figures = supplier_figures(organisation=actor.require_supplier(), **period.validated_data)
        else:
            figures = buyer_figures(organisation=actor.require_buyer(), **period.validated_data)
        return Response(jsonable(figures))
