"""The supplier's side of the gateway in the REST API: register the endpoint serving a token
listing (``PUT /api/v1/listings/{id}/endpoint``) and read it back. The credential is write-only."""
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import NotFound
from marketplace.actors import actor_for_request

from . import selectors, services
from .models import SupplierEndpoint


class EndpointOutput(serializers.ModelSerializer):
    has_credential = serializers.SerializerMethodField()
    tokens_per_minute = serializers.IntegerField(source="listing.tokens_per_minute", read_only=True)

    class Meta:
        model = SupplierEndpoint
        fields = ["listing", "base_url", "upstream_model", "has_credential", "tokens_per_minute", "health",
                  "last_checked_at", "last_error", "requests_served", "requests_failed", "created_at", "updated_at"]

    def get_has_credential(self, endpoint: SupplierEndpoint) -> bool:
        return bool(endpoint.credential_encrypted)


class EndpointApi(APIView):
    class EndpointInput(serializers.Serializer):
        base_url = serializers.URLField(max_length=300, help_text="OpenAI-compatible base, e.g. https://host/v1")
        credential = serializers.CharField(max_length=500, required=False, allow_blank=True, write_only=True,
                                           trim_whitespace=False,
                                           help_text="sent upstream as a Bearer token; write-only. Omit to keep "
                                                     "the stored one, empty to remove it.")
        upstream_model = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        tokens_per_minute = serializers.IntegerField(min_value=1, max_value=10**12, required=False,
                                                     help_text="declared serving capacity (input + output)")

    @extend_schema(responses={200: EndpointOutput, 404: OpenApiResponse(description="not your listing's endpoint")})
    def get(self, request, listing_id: int):
        org = actor_for_request(request).require_organisation()
        endpoint = selectors.endpoint_get(organisation_id=org.pk, listing_id=listing_id)
        if endpoint is None:
            raise NotFound("No endpoint registered for a listing of yours with this id.")
        return Response(EndpointOutput(endpoint).data)

    @extend_schema(request=EndpointInput, responses={
        200: EndpointOutput, 400: OpenApiResponse(description="validation_error"),
        403: OpenApiResponse(description="read-only key or not a supplier"),
        404: OpenApiResponse(description="not your listing")})
    def put(self, request, listing_id: int):
        actor = actor_for_request(request)
        actor.require_write()
        org = actor.require_supplier()
        data = self.EndpointInput(data=request.data or {})
        data.is_valid(raise_exception=True)
        values = data.validated_data
        endpoint = services.endpoint_register(organisation=org, listing_id=listing_id, base_url=values["base_url"],
                                              credential=values.get("credential"),
                                              upstream_model=values.get("upstream_model", ""),
                                              tokens_per_minute=values.get("tokens_per_minute"))
        endpoint.refresh_from_db()
        return Response(EndpointOutput(endpoint).data, status=status.HTTP_200_OK)
