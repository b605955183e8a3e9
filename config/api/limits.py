"""Request limits for every ``/api/`` request, before any view or parser runs.

- A body larger than ``SANDUISAN_MAX_BODY_BYTES`` (by its ``Content-Length``, or by what was read)
  answers 413 ``payload_too_large``.
- A JSON body nested deeper than ``SANDUISAN_MAX_JSON_DEPTH`` answers 400 ``malformed_request``.
  Parsers recurse, so a body of 100,000 ``[`` must be refused before one runs.
- Every request runs under a PostgreSQL ``statement_timeout`` (``SANDUISAN_STATEMENT_TIMEOUT_MS``);
  a statement cut off answers 503 ``statement_timeout`` (``config.api.errors``). It is set per
  request, not per connection, so Celery workers and management commands, which share the
  settings but not this middleware, keep no timeout.

Being middleware, it covers every endpoint, including the hand-parsed usage-event fast path and
any endpoint added later, with nothing for a view to do.
"""
from __future__ import annotations

import re
from contextlib import contextmanager

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse

from .errors import error_body

API_PREFIX = "/api/"
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]+|\\.)*"|[\[\]{}]')
_OPENERS = (ord("["), ord("{"))
_CLOSERS = (ord("]"), ord("}"))


def json_depth_exceeds(body: bytes, *, limit: int) -> bool:
    """True if ``body`` nests arrays/objects deeper than ``limit``. Brackets inside strings do not
    count. Linear in the body, and free for the usual small body with few brackets."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for match in _JSON_TOKENS.finditer(body):
        char = match.group()[0]
        if char in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif char in _CLOSERS:
            depth -= 1
    return False


def _too_large(limit: int) -> JsonResponse:
    return JsonResponse(error_body("payload_too_large", f"The request body is larger than {limit} bytes."),
                        status=413)


class ApiRequestLimitsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        refused = self.refuse(request)
        if refused is not None:
            return refused
        with statement_timeout(settings.SANDUISAN_STATEMENT_TIMEOUT_MS):
            return self.get_response(request)

    @staticmethod
    def refuse(request) -> JsonResponse | None:
        limit = settings.SANDUISAN_MAX_BODY_BYTES
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return _too_large(limit)
        if declared <= 0:
            return None
        body = request.body  # at most ``limit`` bytes (DATA_UPLOAD_MAX_MEMORY_SIZE is above it)
        if len(body) > limit:
            return _too_large(limit)
        if "json" in request.META.get("CONTENT_TYPE", "") and json_depth_exceeds(
                body, limit=settings.SANDUISAN_MAX_JSON_DEPTH):
            depth = settings.SANDUISAN_MAX_JSON_DEPTH
            return JsonResponse(error_body("malformed_request", f"JSON nested deeper than {depth} levels."),
                                status=400)
        return None


def _statement_timeout_set(value: str) -> None:
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {value}")
    except DatabaseError:
        # An aborted transaction (a test's, around the request) cannot run SET; the request itself
        # has already answered.
        pass


@contextmanager
def statement_timeout(milliseconds: int):
    """``SET statement_timeout`` for the block, then back to the server's default (0: no limit).
    A no-op on databases other than PostgreSQL."""
    milliseconds = int(milliseconds)
    if not milliseconds:
        yield
        return
    _statement_timeout_set(str(milliseconds))
    try:
        yield
    finally:
        _statement_timeout_set("DEFAULT")
