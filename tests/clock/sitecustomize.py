"""Loaded by every Python process under ``scripts/test_near_the_hour.sh`` (this folder leads
PYTHONPATH). libfaketime 0.9.10 answers Python 3.11's ``time.sleep`` (an absolute
``clock_nanosleep`` on the monotonic clock) with EINVAL, so sleep through ``select`` instead."""
import os
import select
import time

if "faketime" in os.environ.get("LD_PRELOAD", ""):
    def _sleep(seconds: float, _select=select.select) -> None:
        if seconds > 0:
            _select([], [], [], seconds)

    time.sleep = _sleep
