"""A pytest plugin that starts every test two seconds before an hour boundary, each a later hour
(so the run also crosses days and a month's end). The slot calendar, review deadlines, settlement
and invoices all turn on the hour, and a test that only fails when the wall clock crosses one fails
in CI once in a while, never on demand. Run through ``scripts/test_near_the_hour.sh``, which
preloads libfaketime; this plugin only moves its clock, by rewriting the offset file libfaketime
reads on every clock call (``FAKETIME_TIMESTAMP_FILE`` with ``FAKETIME_NO_CACHE=1``). Celery
workers the tests start inherit the preload and the file, so they share the faked clock. The
database's clock is not faked: nothing in the application reads ``now()`` in SQL."""
import itertools
import os
import time

import pytest

OFFSET_FILE = os.environ.get("FAKETIME_TIMESTAMP_FILE", "")
LEAD_SECONDS = 2
_hours_ahead = itertools.count()


def _offset_write(seconds: int) -> None:
    with open(OFFSET_FILE, "w") as handle:
        handle.write(f"+{seconds}s\n")


@pytest.fixture(autouse=True)
def near_the_hour():
    if "faketime" not in os.environ.get("LD_PRELOAD", "") or not OFFSET_FILE:
        pytest.exit("near_the_hour needs libfaketime: run scripts/test_near_the_hour.sh", returncode=2)
    _offset_write(0)  # read the true time first, then offset from it
    now = time.time()
    _offset_write(int(3600 - now % 3600) - LEAD_SECONDS + 3600 * next(_hours_ahead))
    yield
