"""Input serializers say exactly what they accept.

DRF ignores keys a serializer does not declare, so ``{"placment": "same_fabric"}`` (a typo) was
accepted with the default placement. ``install()`` (run once by ``config.api.apps``) makes every
``Serializer`` refuse undeclared keys of a JSON object with a 400 naming each of them (dotted
paths for nested objects, as everywhere else), and every ``DateTimeField`` refuse moments outside
``[MIN_MOMENT, MAX_MOMENT)``, so arithmetic on a date (a period's default start, an hour index)
can never overflow into a 500. It is installed globally, not as a base class, so that every
endpoint, including ones added later, inherits both rules with nothing to remember. The OpenAPI
side (``additionalProperties: false`` on request bodies) is ``config.api.schema``.

Query strings (``QueryDict``) are not checked for unknown keys: pagination, ordering and DRF's
``format`` share them with the filters.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

from django.http import QueryDict
from rest_framework import serializers

MIN_MOMENT = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_MOMENT = datetime(2200, 1, 1, tzinfo=timezone.utc)
UNKNOWN_FIELD = "Unknown field."

_installed = False


def unknown_fields(serializer: serializers.Serializer, data) -> list[str]:
    """The keys of ``data`` that ``serializer`` does not accept as input, sorted."""
    if not isinstance(data, Mapping) or isinstance(data, QueryDict):
        return []
    accepted = {field.field_name for field in serializer._writable_fields}
    return sorted(str(key) for key in data if key not in accepted)


def _strict_to_internal_value(original):
    def to_internal_value(self, data):
        unknown = unknown_fields(self, data)
        if unknown:
            raise serializers.ValidationError({key: [UNKNOWN_FIELD] for key in unknown})
        return original(self, data)

    return to_internal_value


def _bounded_datetime(original):
    def to_internal_value(self, value):
        moment = original(self, value)
        if isinstance(moment, datetime) and moment.tzinfo is not None and not MIN_MOMENT <= moment < MAX_MOMENT:
            raise serializers.ValidationError(
                f"Must be from {MIN_MOMENT:%Y-%m-%d} up to (not including) {MAX_MOMENT:%Y-%m-%d} UTC.")
        return moment

    return to_internal_value


def install() -> None:
    """Idempotent: wraps ``Serializer.to_internal_value`` and ``DateTimeField.to_internal_value``."""
    global _installed
    if _installed:
        return
    serializers.Serializer.to_internal_value = _strict_to_internal_value(serializers.Serializer.to_internal_value)
    serializers.DateTimeField.to_internal_value = _bounded_datetime(serializers.DateTimeField.to_internal_value)
    _installed = True
