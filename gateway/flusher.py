"""The usage flusher as its own process: ``python -m gateway.flusher`` records what the gateway
buffered in Redis (usage events, endpoint outcomes) every ``--interval`` seconds until stopped
(SIGTERM or SIGINT), then flushes once more. Several may run: a Redis lock lets one flush at a time."""
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
    args = parser.parse_args()
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    while not stopping:
        try:
            usage_flush()
        except Exception:  # the database may be briefly away: the events stay in Redis
            logger.exception("usage flush failed")
        time.sleep(args.interval)
    usage_flush()


if __name__ == "__main__":
    main()
