"""List filters that answer as their schema says and cannot be used as an existence oracle.

django-filter turns a foreign key in ``filterset_fields`` into a choice of every row of the
related table, so ``/allocations?order=<id>`` answered 400 for an id that does not exist and 200
(an empty list) for another organisation's: the difference told a caller which ids exist. Here
every foreign-key filter is a plain 64-bit integer compared with the column, so a missing id and
another organisation's id both answer 200 with an empty list, exactly alike.

django-filter also ignores a value it cannot use (``?status=``, ``?domestic=null``) and answers
the whole list. Here a choice, number or boolean filter given an empty or invalid value answers
400, as its schema says (free-text filters take any text, the empty string included).

Installed as the default filter backend: every list view's filters inherit both rules, whether
from ``filterset_fields`` or from a ``filterset_class`` built on ``OpaqueIdFilterSet``.
"""
from __future__ import annotations

import django_filters
from django import forms
from django.db import models
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework.exceptions import ValidationError

EMPTY_VALUE = "May not be empty; leave the parameter out instead."
NOT_A_BOOLEAN = "Must be true or false."
BOOLEAN_TEXT = {"true", "false"}


@extend_schema_field(OpenApiTypes.INT64)
class IdFilter(django_filters.NumberFilter):
    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("min_value", -(2**63))
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


class OpaqueIdFilterSet(django_filters.FilterSet):
    @classmethod
    def filter_for_field(cls, field, field_name, lookup_expr=None):
        if isinstance(field, (models.ForeignKey, models.OneToOneField)):
            return IdFilter(field_name=f"{field_name}_id", lookup_expr=lookup_expr or "exact")
        return super().filter_for_field(field, field_name, lookup_expr)


def _value_problem(filter_, value: str) -> str | None:
    if isinstance(filter_, django_filters.CharFilter) and not isinstance(filter_, django_filters.ChoiceFilter):
        return None
    if value == "":
        return EMPTY_VALUE
    if isinstance(filter_, django_filters.BooleanFilter) and value not in BOOLEAN_TEXT:
        return NOT_A_BOOLEAN
    return None


class OpaqueIdFilterBackend(DjangoFilterBackend):
    filterset_base = OpaqueIdFilterSet

    def get_filterset(self, request, queryset, view):
        filterset = super().get_filterset(request, queryset, view)
        if filterset is not None:
            problems = {}
            for name, filter_ in filterset.filters.items():
                for value in request.query_params.getlist(name):
                    problem = _value_problem(filter_, value)
                    if problem:
                        problems[name] = [problem]
            if problems:
                raise ValidationError(problems)
        return filterset
