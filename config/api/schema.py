"""OpenAPI postprocessing: the schema says what the API answers and accepts.

``errors_document`` (a drf-spectacular postprocessing hook) adds the one error shape as the
``Error`` component and, on every operation, every error status the shared machinery can answer:

- 400 everywhere (invalid input, malformed or over-deep JSON, a filter out of range);
- 401 and 403 wherever the operation needs authentication (no key; a read-only key, a buyer
  calling a supplier's endpoint, a non-admin calling an admin one);
- 404 on operations with a path parameter (missing, or another organisation's: alike);
- 409 on writes (lifecycle, capacity and idempotency conflicts);
- 413 everywhere (``SANDUISAN_MAX_BODY_BYTES``), 429 everywhere (rate limits, with
  ``Retry-After``) and 503 everywhere (the statement timeout).

It also marks every request-body component ``additionalProperties: false``, which is what
``config.api.strict`` enforces, and ``ContractAutoSchema`` (the default schema class) publishes
request fields as strictly as ``config.api.strict`` checks them: a decimal's exact pattern, text
that may not hold NUL or, unless blank is allowed, be only whitespace (DRF trims it). Being a hook over the generated schema, it covers every endpoint,
including ones added later; a view only declares its success response and request body with
``extend_schema`` as before.
"""
from __future__ import annotations

import sys

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

from .strict import MAX_MOMENT, MIN_MOMENT, decimal_regex

ERROR_COMPONENT = "Error"
ERROR_SCHEMA = {
    "type": "object",
    "description": "The one error shape of the API.",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message", "fields"],
        "properties": {
            "code": {"type": "string", "example": "validation_error"},
            "message": {"type": "string"},
            "fields": {"type": "object", "description": "Dotted field path -> messages (possibly empty).",
                       "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        },
    }},
}
DESCRIPTIONS = {
    400: "Invalid input (`validation_error`, with `fields`) or a malformed or over-deep JSON body "
         "(`malformed_request`).",
    401: "No valid API key or login.",
    403: "The key or member may not do this (`permission_denied`).",
    404: "No such object, or another organisation's (`not_found`).",
    409: "A conflict: `invalid_transition`, `capacity_unavailable`, `idempotency_conflict`.",
    413: "The request body is too large (`payload_too_large`).",
    429: "Rate limit reached (`throttled`); retry after `Retry-After` seconds.",
    503: "The database cut a statement off at the API's statement timeout (`statement_timeout`) or the "
         "service is unavailable.",
}
WRITE_METHODS = {"post", "put", "patch", "delete"}


def error_statuses(*, path: str, method: str, operation: dict) -> list[int]:
    """The error statuses an operation can answer, by the rules in this module's docstring."""
    statuses = {400, 413, 429, 503}
    if not any(requirement == {} for requirement in operation.get("security", [])):
        statuses |= {401, 403}
    if "{" in path:
        statuses.add(404)
    if method in WRITE_METHODS:
        statuses.add(409)
    return sorted(statuses)


def _error_response(status: int) -> dict:
    response = {"description": DESCRIPTIONS[status],
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}}}
    if status == 429:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                               "description": "Seconds until the limit resets."}}
    return response


def errors_document(result: dict, generator, request, public) -> dict:
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_COMPONENT] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for status in error_statuses(path=path, method=method, operation=operation):
                responses.setdefault(str(status), _error_response(status))
    for name, schema in schemas.items():
        if name.endswith("Request") and schema.get("type") == "object" and "properties" in schema:
            schema["additionalProperties"] = False
    return result


# Python's whitespace (what DRF's CharField trims) and NUL, as a regex class body.
_TRIMMED = "".join(f"\\u{code:04x}" for code in range(sys.maxunicode + 1) if code == 0 or chr(code).isspace())
NON_BLANK_TEXT = f"^[^\\u0000]*[^{_TRIMMED}][^\\u0000]*$"
ANY_TEXT = "^[^\\u0000]*$"
DATETIME_DESCRIPTION = (f"An ISO 8601 moment with a time zone, from {MIN_MOMENT:%Y-%m-%d} up to (not including) "
                        f"{MAX_MOMENT:%Y-%m-%d} UTC.")


class ContractAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema, publishing request fields as config.api.strict checks them."""

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction != "request" or not isinstance(schema, dict):
            return schema
        if isinstance(field, (serializers.ListField, serializers.ListSerializer)) and not field.allow_empty:
            schema.setdefault("minItems", 1)
        if isinstance(field, serializers.DecimalField):
            schema.pop("format", None)
            schema["pattern"] = decimal_regex(field)
        elif isinstance(field, serializers.DateTimeField):
            schema.setdefault("description", DATETIME_DESCRIPTION)
        elif (isinstance(field, serializers.CharField) and schema.get("type") == "string"
              and not {"pattern", "format", "enum"} & set(schema)):
            schema["pattern"] = ANY_TEXT if field.allow_blank else NON_BLANK_TEXT
        return schema
