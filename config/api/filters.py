"""List filters that cannot be used as an existence oracle.

django-filter turns a foreign key in ``filterset_fields`` into a choice of every row of the
related table, so ``/allocations?order=<id>`` answered 400 for an id that does not exist and 200
(an empty list) for another organisation's: the difference told a caller which ids exist. Here
every foreign-key filter is a plain number compared with the column, so a missing id and another
organisation's id both answer 200 with an empty list, exactly alike. Installed as the default
filter backend: every list view's ``filterset_fields`` inherit it.
"""
from __future__ import annotations

import django_filters
from django.db import models
from django_filters.rest_framework import DjangoFilterBackend


class OpaqueIdFilterSet(django_filters.FilterSet):
    @classmethod
    def filter_for_field(cls, field, field_name, lookup_expr=None):
        if isinstance(field, (models.ForeignKey, models.OneToOneField)):
            return django_filters.NumberFilter(field_name=f"{field_name}_id", lookup_expr=lookup_expr or "exact",
                                               min_value=1, max_value=2**63 - 1)
        return super().filter_for_field(field, field_name, lookup_expr)


class OpaqueIdFilterBackend(DjangoFilterBackend):
    filterset_base = OpaqueIdFilterSet
