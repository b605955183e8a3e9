"""OpenAPI descriptions of the one error shape, for ``extend_schema(responses=...)``."""
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ErrorOutput = inline_serializer("Error", {"error": inline_serializer("ErrorBody", {
    "code": serializers.CharField(), "message": serializers.CharField(),
    "fields": serializers.DictField(child=serializers.ListField(child=serializers.CharField()))})})

MEANING = {400: "invalid input (field-level messages in `fields`)", 401: "not authenticated",
           403: "not allowed: a missing permission, a read-only key, or the same admin approving",
           404: "no such object, or not yours", 409: "conflicts with the current state or a used reference"}


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    return {status: OpenApiResponse(ErrorOutput, description=MEANING[status]) for status in statuses}
