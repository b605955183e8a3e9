"""Input is what the OpenAPI schema says it is: no more, no less.

DRF is lenient where the schema is not: it ignores keys a serializer does not declare (an order
posted with ``placment``, a typo, was accepted with the default placement), takes ``12`` for a
string and ``"12"`` for an integer, and parses ``"1e3"`` or ``" 5"`` as decimals. ``install()``
(run once by ``config.api.apps``) makes every serializer field of the project as strict as its
schema:

- a ``Serializer`` refuses keys of a JSON object it does not accept as input, with a 400 naming
  each of them (``Unknown field.``; dotted paths for nested objects, as everywhere else);
- ``CharField``/``ChoiceField``/``DateTimeField`` take only JSON strings, ``IntegerField`` only
  JSON integers, ``FloatField`` only numbers, ``BooleanField`` only ``true``/``false``;
- ``DecimalField`` takes only a string matching ``decimal_regex(field)``, the same pattern the
  schema publishes (``config.api.schema``), which also encodes positivity and a power-of-ten
  maximum, so a value the schema allows is a value the field accepts;
- ``DateTimeField`` refuses moments outside ``[MIN_MOMENT, MAX_MOMENT)``, so date arithmetic (a
  period's default start, an hour index) can never overflow into a 500.

It is installed globally, not as a base class, so every endpoint, including ones added later,
inherits these rules with nothing to remember. Query strings (``QueryDict``) are text by nature:
their values are not type-checked as JSON and unknown keys pass (pagination, ordering and filters
share them), but an empty value for a non-text field is refused rather than read as "not given".
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache

from django.http import QueryDict
from rest_framework import serializers

MIN_MOMENT = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_MOMENT = datetime(2200, 1, 1, tzinfo=timezone.utc)
DATETIME_OUT_OF_RANGE = f"Must be from {MIN_MOMENT:%Y-%m-%d} up to (not including) {MAX_MOMENT:%Y-%m-%d} UTC."
UNKNOWN_FIELD = "Unknown field."
NOT_A_STRING = "Not a valid string."
NOT_AN_INTEGER = "A valid integer is required."
NOT_A_NUMBER = "A valid number is required."
NOT_A_BOOLEAN = "Must be true or false."
NOT_A_DECIMAL = "Must be a decimal number written as a string, e.g. \"12.50\"."

_installed = False


def unknown_fields(serializer: serializers.Serializer, data) -> list[str]:
    """The keys of ``data`` that ``serializer`` does not accept as input, sorted."""
    if not isinstance(data, Mapping) or isinstance(data, QueryDict):
        return []
    accepted = {field.field_name for field in serializer._writable_fields}
    return sorted(str(key) for key in data if key not in accepted)


def _from_query_string(field: serializers.Field) -> bool:
    root = field.root
    return isinstance(getattr(root, "initial_data", None), QueryDict)


@lru_cache(maxsize=256)
def _decimal_regex(max_digits: int | None, decimal_places: int | None, min_value: Decimal | None,
                   max_value: Decimal | None) -> str:
    places = decimal_places or 0
    whole_digits = (max_digits - places) if max_digits is not None else 30
    fraction = f"(?:\\.[0-9]{{1,{places}}})?" if places else ""
    alternatives = []
    if max_value is not None and max_value >= 1 and max_value == Decimal(10) ** max_value.adjusted():
        # 10^k: at most k whole digits, or exactly 10^k
        whole_digits = max_value.adjusted()
        alternatives.append("0*1" + "0" * whole_digits + (f"(?:\\.0{{1,{places}}})?" if places else ""))
    if min_value is not None and min_value > 0:
        # positive: some digit is not zero (the smallest positive value at these places is the minimum)
        if whole_digits:
            alternatives.append(f"0*[1-9][0-9]{{0,{whole_digits - 1}}}{fraction}")
        if places:
            tails = "|".join(f"0{{{zeros}}}[1-9][0-9]{{0,{places - zeros - 1}}}" for zeros in range(places))
            alternatives.append(f"0*\\.(?:{tails})")
        sign = ""
    else:
        if whole_digits:
            alternatives.append(f"0*[0-9]{{1,{whole_digits}}}{fraction}")
        else:
            alternatives.append(f"0+{fraction}")
        if places:
            alternatives.append(f"\\.[0-9]{{1,{places}}}")
        sign = "" if min_value is not None and min_value >= 0 else "-?"
    return "^" + sign + "(?:" + "|".join(alternatives) + ")$"


def decimal_regex(field: serializers.DecimalField) -> str:
    """The exact text form a ``DecimalField`` accepts (published as the schema's ``pattern``)."""
    return _decimal_regex(field.max_digits, field.decimal_places,
                          Decimal(field.min_value) if field.min_value is not None else None,
                          Decimal(field.max_value) if field.max_value is not None else None)


def _strict(original, check):
    def to_internal_value(self, data):
        if not _from_query_string(self):
            message = check(self, data)
            if message:
                raise serializers.ValidationError(message)
        return original(self, data)

    return to_internal_value


def _serializer_to_internal_value(original):
    def to_internal_value(self, data):
        unknown = {key: [UNKNOWN_FIELD] for key in unknown_fields(self, data)}
        try:
            value = original(self, data)
        except serializers.ValidationError as exc:
            if unknown and isinstance(exc.detail, dict):  # every problem at once, unknown keys too
                raise serializers.ValidationError({**exc.detail, **unknown})
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return value

    return to_internal_value


def _get_value(original):
    def get_value(self, dictionary):
        # DRF reads ``?start=`` (empty) as "not given"; for anything but text it is an invalid value.
        if (isinstance(dictionary, QueryDict) and dictionary.get(self.field_name) == ""
                and not isinstance(self, serializers.CharField)):
            return ""
        return original(self, dictionary)

    return get_value


def _bounded_datetime(original):
    def to_internal_value(self, value):
        moment = original(self, value)
        if isinstance(moment, datetime) and moment.tzinfo is not None and not MIN_MOMENT <= moment < MAX_MOMENT:
            raise serializers.ValidationError(DATETIME_OUT_OF_RANGE)
        return moment

    return to_internal_value


def _string(field, data) -> str | None:
    return None if isinstance(data, str) else NOT_A_STRING


def _integer(field, data) -> str | None:
    return None if type(data) is int else NOT_AN_INTEGER


def _number(field, data) -> str | None:
    return None if type(data) in (int, float) else NOT_A_NUMBER


def _boolean(field, data) -> str | None:
    return None if type(data) is bool else NOT_A_BOOLEAN


def _decimal(field, data) -> str | None:
    if isinstance(data, str) and re.fullmatch(decimal_regex(field), data):
        return None
    return NOT_A_DECIMAL


def install() -> None:
    """Idempotent: wraps ``to_internal_value`` of ``Serializer`` and the scalar fields."""
    global _installed
    if _installed:
        return
    s = serializers
    s.Serializer.to_internal_value = _serializer_to_internal_value(s.Serializer.to_internal_value)
    s.Field.get_value = _get_value(s.Field.get_value)
    for cls, check in ((s.CharField, _string), (s.ChoiceField, _string), (s.DateTimeField, _string),
                       (s.IntegerField, _integer), (s.FloatField, _number), (s.BooleanField, _boolean),
                       (s.DecimalField, _decimal)):
        cls.to_internal_value = _strict(cls.to_internal_value, check)
    s.DateTimeField.to_internal_value = _bounded_datetime(s.DateTimeField.to_internal_value)
    _installed = True
