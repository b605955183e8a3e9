"""API keys: ``Authorization: Bearer sds_<prefix>_<secret>`` (or ``X-Api-Key: ...``).

Only the SHA-256 of the whole key is stored; the prefix is stored in clear so a key can be
recognised in lists and logs without revealing it.
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

from django.core.exceptions import ObjectDoesNotExist
from django.utils import timezone
from rest_framework import authentication, exceptions

from .models import ApiKey

KEY_SCHEME = "sds"


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


class ApiKeyPrincipal:
    """What ``request.user`` is for a request authenticated by API key."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False

    def __init__(self, api_key: ApiKey) -> None:
        self.api_key = api_key
        self.pk = None

    def __str__(self) -> str:
        return f"api-key:{self.api_key.prefix}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        raw = request.headers.get("X-Api-Key")
        if not raw:
            header = request.headers.get("Authorization", "")
            scheme, _, value = header.partition(" ")
            if scheme.lower() not in ("bearer", "api-key"):
                return None
            # A token that is not one of ours is refused, never skipped: falling back to a session
            # cookie would accept a request whose stated credentials are invalid.
            raw = value.strip()
        parts = raw.split("_")
        if len(parts) != 3 or parts[0] != KEY_SCHEME:
            raise exceptions.AuthenticationFailed("Malformed API key.")
        try:
            key = ApiKey.objects.select_related("organisation").get(prefix=parts[1])
        except ObjectDoesNotExist:
            raise exceptions.AuthenticationFailed("Unknown API key.")
        if not hmac.compare_digest(key.hashed_secret, hash_key(raw)):
            raise exceptions.AuthenticationFailed("Unknown API key.")
        if key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key has been revoked.")
        now = timezone.now()
        # Record use at most once a minute so reads do not turn into writes on every request.
        if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return ApiKeyPrincipal(key), key

    def authenticate_header(self, request):
        return 'Bearer realm="api"'
