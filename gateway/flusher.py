"""The usage flusher as its own process: ``python -m gateway.flusher`` records what the gateway
buffered in Redis every ``--interval`` seconds (usage events) and every ``--outcomes-interval``
seconds (endpoint outcomes, folded into the suppliers' reliability) until stopped (SIGTERM or
SIGINT), then flushes both once more. Several may run: a Redis lock lets one flush at a time.

Outcomes wait longer because folding them recomputes each supplier's reliability, a dearer
transaction than a batch of events (about 10 ms of this process's CPU, plus PostgreSQL's, whatever
the number of requests): five times a second that was some 50 ms of CPU a second, taken from the
cores the gateway shares. Reliability moves slowly; budgets do not depend on it."""
import argparse
import logging
import os
import signal
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
django.setup()

from gateway.buffer import usage_flush  # noqa: E402  (needs Django set up)

logger = logging.getLogger("gateway.flusher")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--outcomes-interval", type=float, default=5.0)
    args = parser.parse_args()
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    outcomes_at = 0.0
    while not stopping:
        now = time.monotonic()
        outcomes = now >= outcomes_at
        if outcomes:  # what this turn does not fold (another flusher held the lock) waits in Redis
            outcomes_at = now + args.outcomes_interval
        try:
            usage_flush(outcomes=outcomes)
        except Exception:  # the database may be briefly away: the events stay in Redis
            logger.exception("usage flush failed")
        time.sleep(args.interval)
    usage_flush()


if __name__ == "__main__":
    main()
