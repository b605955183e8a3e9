"""Production refuses the laptop defaults: SQLite, the filesystem broker and the default secret.

HTTPS only: HSTS (``SANDUISAN_HSTS_SECONDS``, default one year) and a redirect to HTTPS. Behind a
TLS-terminating proxy, set ``SANDUISAN_PROXY_SSL_HEADER=HTTP_X_FORWARDED_PROTO`` (the header the
proxy sets, and strips from clients) so Django knows a request came over HTTPS; without it the
header is never trusted, since any client could send it.
"""
import os

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F401,F403
from .base import CELERY_BROKER_URL, DATABASES, DEFAULT_SECRET_KEY, REDIS_URL, SECRET_KEY

if SECRET_KEY == DEFAULT_SECRET_KEY or len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be set to a long random value in production")
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured("production needs DATABASE_URL pointing at PostgreSQL")
if not REDIS_URL:
    raise ImproperlyConfigured("production needs REDIS_URL")
if CELERY_BROKER_URL.startswith("filesystem://"):
    raise ImproperlyConfigured("production needs CELERY_BROKER_URL pointing at a real broker")

DEBUG = False
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
ENVIRONMENT = "production"
SECURE_SSL_REDIRECT = os.environ.get("SANDUISAN_SSL_REDIRECT", "1") == "1"
# /health is probed over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^health$"]
SECURE_HSTS_SECONDS = int(os.environ.get("SANDUISAN_HSTS_SECONDS", str(365 * 24 * 3600)))
# The exchange's domain serves nothing over plain HTTP; set both to 0 for a shared parent domain.
SECURE_HSTS_INCLUDE_SUBDOMAINS = os.environ.get("SANDUISAN_HSTS_INCLUDE_SUBDOMAINS", "1") == "1"
SECURE_HSTS_PRELOAD = os.environ.get("SANDUISAN_HSTS_PRELOAD", "1") == "1"
if os.environ.get("SANDUISAN_PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = (os.environ["SANDUISAN_PROXY_SSL_HEADER"], "https")
