"""``GET /api/v1/``: what the API offers, with links, for a newcomer and for clients that browse.

The list is read from the URL configuration, so an endpoint added later appears with nothing to
do: every route without a path parameter is listed by its URL name.
"""
from __future__ import annotations

from django.urls import URLPattern, URLResolver
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

DOC_ROUTES = {"schema", "docs", "redoc"}


def routes_without_parameters(patterns, prefix: str = "") -> list[tuple[str, str]]:
    """``(url name, route)`` of every route under ``patterns`` that takes no path parameter."""
    found: list[tuple[str, str]] = []
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if "<" in route or "(" in route:
            continue
        if isinstance(pattern, URLResolver):
            found.extend(routes_without_parameters(pattern.url_patterns, route))
        elif isinstance(pattern, URLPattern) and pattern.name and route:
            found.append((pattern.name, route))
    return found


class ApiIndexApi(APIView):
    """The resources of this API version, with links; no authentication needed."""

    permission_classes = [AllowAny]
    patterns: list = []  # bound per URL (config.urls)

    @extend_schema(responses=inline_serializer("ApiIndex", {
        "name": serializers.CharField(), "version": serializers.CharField(),
        "authentication": serializers.CharField(),
        "resources": serializers.DictField(child=serializers.URLField()),
        "docs": serializers.URLField(), "schema": serializers.URLField()}))
    def get(self, request):
        base = request.build_absolute_uri()
        routes = routes_without_parameters(self.patterns)
        return Response({
            "name": "Sanduisan exchange API", "version": "v1",
            "authentication": "Authorization: Bearer sds_<prefix>_<secret> (an organisation's API key)",
            "resources": {name: base + route for name, route in routes if name not in DOC_ROUTES},
            "docs": base + "docs", "schema": base + "schema",
        })
