"""ASGI entry point of the token gateway: ``uvicorn gateway.asgi:application --loop uvloop
--http httptools`` (``scripts/gateway.sh``). Django is set up first: the gateway reads keys and
routes through its selectors on a cache miss and records usage through billing."""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
django.setup()

from gateway.app import Gateway  # noqa: E402  (needs Django set up)

# The flusher runs as its own process (python -m gateway.flusher); SANDUISAN_GATEWAY_FLUSH=1 runs it
# in a thread of this process instead (simpler, but its database work then competes for the GIL).
application = Gateway(flush=os.environ.get("SANDUISAN_GATEWAY_FLUSH", "0") == "1")
