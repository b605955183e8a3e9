"""One JSON error shape for the whole API:

    {"error": {"code": "validation_error", "message": "...", "fields": {"window.end": ["..."]}}}

``fields`` is present (possibly empty) on every error so clients need not branch.
"""
from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from config.errors import ApplicationError

logger = logging.getLogger(__name__)

QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE when statement_timeout cuts a statement off


def flatten_errors(detail, prefix: str = "") -> dict[str, list[str]]:
    """Turn DRF's nested error detail into ``{"a.b.0.c": ["message", ...]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            # a nested object's own errors belong to the object's path
            if key in ("non_field_errors", "__all__"):
                name = prefix or "non_field_errors"
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            for k, v in flatten_errors(value, name).items():
                out.setdefault(k, []).extend(v)
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            out.setdefault(prefix or "non_field_errors", []).extend(str(item) for item in detail)
        else:
            for index, item in enumerate(detail):
                if item in ({}, [], None):
                    continue
                for k, v in flatten_errors(item, f"{prefix}.{index}" if prefix else str(index)).items():
                    out.setdefault(k, []).extend(v)
    else:
        out.setdefault(prefix or "non_field_errors", []).append(str(detail))
    return out


def error_body(code: str, message: str, fields: dict | None = None, extra: dict | None = None) -> dict:
    body = {"code": code, "message": message, "fields": fields or {}}
    if extra:
        body.update(extra)
    return {"error": body}


def exception_handler(exc, context):
    if isinstance(exc, ApplicationError):
        return Response(error_body(exc.code, exc.message, exc.fields, exc.extra), status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        fields = flatten_errors(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
        return Response(error_body("validation_error", "Invalid input.", fields), status=400)
    if isinstance(exc, OperationalError) and getattr(exc.__cause__, "sqlstate", None) == QUERY_CANCELED:
        logger.warning("statement timeout on %s", context["request"].path)
        return Response(error_body("statement_timeout", "The request took too long and was cut off; narrow it "
                                   "(a shorter period, fewer hours) or retry later."), status=503)
    if isinstance(exc, OverflowError):
        # Date arithmetic on an input at the edge of what Python represents; DateTimeField bounds
        # (config.api.strict) should refuse such input first.
        return Response(error_body("validation_error", "A value is out of range."), status=400)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        # Unexpected: log it and let Django's 500 machinery run (tests treat any 500 as a bug).
        return None
    if isinstance(exc, drf_exceptions.ValidationError):
        fields = flatten_errors(exc.detail)
        message = "Invalid input."
        if set(fields) == {"non_field_errors"}:
            message = fields["non_field_errors"][0]
        response.data = error_body("validation_error", message, fields)
    elif isinstance(exc, drf_exceptions.ParseError):
        response.data = error_body("malformed_request", str(exc.detail), {})
    else:
        code = getattr(exc, "default_code", "error")
        detail = exc.detail if isinstance(exc, drf_exceptions.APIException) else str(exc)
        response.data = error_body(code, str(detail), {})
    return response


def json_404(request, exception=None):
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def json_500(request):
    return JsonResponse(error_body("server_error", "Internal error; it has been logged."), status=500)


def csrf_failure(request, reason=""):
    """A session request without its CSRF token, in the API's error shape (settings.CSRF_FAILURE_VIEW)."""
    return JsonResponse(error_body("permission_denied", f"CSRF check failed: {reason}"), status=403)
