"""A pytest plugin that starts every test beside a boundary of the clock: two seconds before it
(even-numbered tests, so the test crosses it) or one second after it (odd-numbered, so the test
runs in a boundary's first moments, as one posted in the previous hour would). The boundary is the
next hour for most tests, the next midnight for two tests in ten and the next month for two in
fifty (one before it, one after), each later than the one before. The slot calendar, review deadlines, settlement and invoices turn
on the hour, the day and the month, and a test that only fails beside one fails in CI once in a
while, never on demand.

Run through ``scripts/test_near_the_hour.sh``, which preloads libfaketime into the tests and
every process they start (Celery workers, servers; never Chromium). This plugin moves that clock
by replacing the offset file libfaketime reads on every clock call (``FAKETIME_TIMESTAMP_FILE``
with ``FAKETIME_NO_CACHE=1``), atomically, so no process ever reads a half-written file. The
database's clock is not faked: nothing in the application reads ``now()`` in SQL."""
import os
from datetime import datetime, timedelta, timezone
import time

import pytest

OFFSET_FILE = os.environ.get("FAKETIME_TIMESTAMP_FILE", "")
BEFORE, AFTER = timedelta(seconds=2), timedelta(seconds=1)
_state = {"offset": 0, "tests": 0}


def _boundary_after(moment: datetime, test_number: int) -> datetime:
    hour = moment.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if test_number % 50 in (48, 49):
        first_of_month = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return (first_of_month + timedelta(days=32)).replace(day=1)
    if test_number % 10 in (8, 9):
        return moment.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return hour


def _offset_write(seconds: int) -> None:
    staged = f"{OFFSET_FILE}.next"
    with open(staged, "w") as handle:
        handle.write(f"{seconds:+d}s\n")
    os.replace(staged, OFFSET_FILE)


@pytest.fixture(autouse=True)
def near_the_boundary():
    if not OFFSET_FILE:
        pytest.exit("near_the_hour needs libfaketime: run scripts/test_near_the_hour.sh", returncode=2)
    faked_now = datetime.fromtimestamp(time.time(), timezone.utc)  # the clock as every process reads it now
    # The boundary is at least three seconds ahead, so the clock only ever moves forward.
    boundary = _boundary_after(faked_now + BEFORE + timedelta(seconds=1), _state["tests"])
    target = boundary - BEFORE if _state["tests"] % 2 == 0 else boundary + AFTER
    true_now = time.time() - _state["offset"]
    _state["offset"] = int(round(target.timestamp() - true_now))
    _state["tests"] += 1
    _offset_write(_state["offset"])
    if abs(time.time() - target.timestamp()) > 1.5:
        pytest.exit("the clock did not move: libfaketime is not preloaded (run scripts/test_near_the_hour.sh)",
                    returncode=2)
    yield
