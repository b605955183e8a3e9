"""Tests always use the real PostgreSQL and Redis on this machine (never SQLite, never mocks)."""
import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/sanduisan")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1")

from .base import *  # noqa: E402,F401,F403
from .base import DATABASES  # noqa: E402

if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise RuntimeError("tests run on PostgreSQL only; set DATABASE_URL to a postgres:// URL")

# Test processes close connections after each request; a server process started by a test may keep
# them like production (tests/api/test_operable.py).
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("SANDUISAN_TEST_CONN_MAX_AGE", "0"))
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only; never in prod
DEBUG = False

# Unit tests drive matching rounds explicitly; integration tests switch automatic rounds on.
SANDUISAN = {**SANDUISAN, "AUTO_MATCH": False}  # noqa: F405

# The suite drives thousands of requests from a handful of keys; tests of the limits themselves
# override these (tests/api/test_limits.py).
SANDUISAN_THROTTLE_RATES = {"api": "1000000/minute", "anon": "1000000/minute", "usage": "1000000/minute"}
