"""Production settings refuse the laptop defaults."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _import_production(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                                                              "SECRET_KEY")}
    clean.update(env)
    return subprocess.run([sys.executable, "-c", "import config.settings.production"], cwd=ROOT, env=clean,
                          capture_output=True, text=True)


def test_production_refuses_default_secret_and_sqlite():
    result = _import_production()
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr
    result = _import_production(SECRET_KEY="x" * 50)
    assert result.returncode != 0 and "PostgreSQL" in result.stderr


def test_production_accepts_real_services():
    result = _import_production(SECRET_KEY="x" * 50, DATABASE_URL="postgres://u@db/x", REDIS_URL="redis://r:6379/0",
                                CELERY_BROKER_URL="redis://r:6379/1")
    assert result.returncode == 0, result.stderr
