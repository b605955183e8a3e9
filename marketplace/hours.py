"""Capacity is counted in whole UTC hours. An *hour index* is hours since 1970-01-01T00:00Z.

Integers keep the slot calendar compact and let the matching engine work on plain arrays.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def is_whole_hour(moment: datetime) -> bool:
    return moment.minute == 0 and moment.second == 0 and moment.microsecond == 0


def hour_index(moment: datetime) -> int:
    """Hour index of an aware datetime that falls on a whole hour."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    delta = moment.astimezone(timezone.utc) - EPOCH
    return int(delta.total_seconds() // 3600)


def hour_start(index: int) -> datetime:
    return EPOCH + timedelta(hours=index)


def current_hour_index(now: datetime) -> int:
    return hour_index(now.replace(minute=0, second=0, microsecond=0))
