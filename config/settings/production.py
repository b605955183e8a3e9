"""Production refuses the laptop defaults: SQLite, the filesystem broker and the default secret."""
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
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
