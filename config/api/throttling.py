"""Rate limits per API key (per login for members, per client IP for anonymous calls), counted in
the cache (Redis) in fixed windows, so every web process shares one count.

A view picks its limit with ``throttle_scope`` (``usage`` for the token-usage ingestion
endpoints); otherwise authenticated callers get ``api`` and anonymous ones ``anon``. The rates
live in ``settings.SANDUISAN_THROTTLE_RATES`` (``"<n>/<second|minute|hour>"``). A refused call
answers 429 ``throttled`` with ``Retry-After`` (seconds until the window turns over). Installed
as DRF's default throttle: every view inherits it unless it sets ``throttle_classes``.

A fixed window lets a client send up to twice its rate across a window's edge; the limit is a
guard against runaway cost, not an exact meter, and costs one cache round trip per request.
"""
from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def rate_parse(rate: str) -> tuple[int, int]:
    """``"600/minute"`` -> ``(600, 60)``."""
    count, _, period = rate.partition("/")
    return int(count), PERIODS[period.strip()[0]]


class ApiRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait: float | None = None

    @staticmethod
    def caller(request) -> tuple[str, str]:
        """(default scope, identity) of the caller."""
        user = getattr(request, "user", None)
        api_key = getattr(user, "api_key", None)
        if api_key is not None:
            return "api", f"key:{api_key.prefix}"
        if user is not None and user.is_authenticated:
            return "api", f"user:{user.pk}"
        return "anon", f"ip:{request.META.get('REMOTE_ADDR', '')}"

    def allow_request(self, request, view) -> bool:
        scope, identity = self.caller(request)
        rates = settings.SANDUISAN_THROTTLE_RATES
        scope = getattr(view, "throttle_scope", None) if getattr(view, "throttle_scope", None) in rates else scope
        limit, period = rate_parse(rates[scope])
        now = time.time()
        window = int(now // period)
        key = f"throttle:{scope}:{identity}:{window}"
        # add() creates the counter with its expiry; incr() is atomic in Redis.
        cache.add(key, 0, timeout=period + 1)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=period + 1)
            count = 1
        if count <= limit:
            return True
        self._wait = (window + 1) * period - now
        return False

    def wait(self) -> float | None:
        return self._wait
