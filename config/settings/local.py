"""A bare laptop: SQLite and a filesystem Celery broker unless the environment says otherwise."""
import os

os.environ.setdefault("DEBUG", "1")

from .base import *  # noqa: E402,F401,F403
from .base import VAR_DIR  # noqa: E402

VAR_DIR.mkdir(parents=True, exist_ok=True)
DEBUG = True

# SQLite cannot express "one platform account per kind" (a unique constraint over a NULL
# organisation); PostgreSQL, which tests and production use, enforces it.
SILENCED_SYSTEM_CHECKS = ["models.W047"]
