"""Suppliers' endpoint credentials, encrypted at rest (Fernet: AES-128-CBC with HMAC-SHA256).

The key comes from the environment (``SANDUISAN_GATEWAY_CREDENTIAL_KEY``) or, failing that, is
derived from ``SECRET_KEY``; never from the database, so a dump of the database alone does not
reveal a credential. Rotating the key means re-registering the endpoints' credentials.
"""
from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@lru_cache(maxsize=4)
def _fernet(key: str, secret_key: str) -> Fernet:
    if key:
        return Fernet(key.encode())
    derived = hashlib.sha256(b"sanduisan-gateway-credentials:" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def _cipher() -> Fernet:
    return _fernet(settings.SANDUISAN_GATEWAY["CREDENTIAL_KEY"], settings.SECRET_KEY)


def credential_encrypt(*, plaintext: str) -> str:
    return _cipher().encrypt(plaintext.encode()).decode() if plaintext else ""


def credential_decrypt(*, token: str) -> str:
    """The plaintext, or "" for no credential. Raises ``ValueError`` if the key does not match."""
    if not token:
        return ""
    try:
        return _cipher().decrypt(token.encode()).decode()
    except InvalidToken as error:
        raise ValueError("credential was encrypted with another key") from error
