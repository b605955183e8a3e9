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
