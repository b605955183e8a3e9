"""``Idempotency-Key`` on create endpoints.

The first request with a key runs; its response is stored in the same transaction as whatever it
created. A replay with the same body returns that stored response; the same key with a different
body answers 409. Two concurrent first requests with one key: the second blocks on the unique
index until the first commits, then its whole transaction is rolled back and it replays the first.
Error responses are not stored (nothing was created), so a corrected retry may reuse the key.
"""
from __future__ import annotations

import hashlib
import re
import json
from collections.abc import Callable

from django.db import IntegrityError, transaction
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from config.errors import Conflict, ValidationFailed
from marketplace.models import IdempotencyRecord, Organisation

HEADER = "Idempotency-Key"
# Printable ASCII with something visible (HTTP servers trim surrounding blanks); published as is.
KEY_PATTERN = r"^[\t -~]*[!-~][\t -~]*$"
KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": KEY_PATTERN}


def _request_hash(data) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), cls=JSONEncoder)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(record: IdempotencyRecord, request_hash: str) -> Response:
    if record.request_hash != request_hash:
        raise Conflict("This Idempotency-Key was already used with a different request body.",
                       code="idempotency_conflict")
    response = Response(record.response_body, status=record.response_status)
    response["Idempotent-Replayed"] = "true"
    return response


def idempotent(request, *, organisation: Organisation, scope: str, handler: Callable[[], Response]) -> Response:
    key = request.headers.get(HEADER)
    if key is None:
        return handler()
    if not key or len(key) > 200 or not re.match(KEY_PATTERN, key):
        raise ValidationFailed.on(HEADER, "Must be 1 to 200 printable ASCII characters.")
    request_hash = _request_hash(request.data)
    existing = IdempotencyRecord.objects.filter(organisation=organisation, scope=scope, key=key).first()
    if existing is not None:
        return _replay(existing, request_hash)
    try:
        with transaction.atomic():
            response = handler()
            IdempotencyRecord.objects.create(organisation=organisation, scope=scope, key=key,
                                             request_hash=request_hash, response_status=response.status_code,
                                             # Stored exactly as the renderer encodes it, so a replay is byte-for-byte the same JSON.
                                             response_body=json.loads(json.dumps(response.data, cls=JSONEncoder)))
            return response
    except IntegrityError:
        existing = IdempotencyRecord.objects.filter(organisation=organisation, scope=scope, key=key).first()
        if existing is None:
            raise
        return _replay(existing, request_hash)
