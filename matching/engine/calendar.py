"""Hourly slot calendars as plain sequences of free-card counts. Pure Python."""
from __future__ import annotations

from collections.abc import Sequence


def earliest_run(free: Sequence[int], duration: int, cards: int) -> int | None:
    """Index of the first run of ``duration`` consecutive hours that each have ``cards`` free,
    or None. Linear time: it tracks the length of the current qualifying streak."""
    if duration <= 0:
        raise ValueError("duration must be positive")
    streak = 0
    for i, value in enumerate(free):
        streak = streak + 1 if value >= cards else 0
        if streak >= duration:
            return i - duration + 1
    return None
