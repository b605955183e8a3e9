"""Real Celery workers for integration tests: each a ``celery worker`` subprocess on its own
queue, against the test database and the machine's Redis."""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


class Worker:
    def __init__(self, name: str, queue: str, log_dir: Path, **extra_env):
        db = connection.settings_dict
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "CELERY_TASK_DEFAULT_QUEUE": queue,
               "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
               "CELERY_VISIBILITY_TIMEOUT": "4", **extra_env}
        self.log = log_dir / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue, "-P", "solo", "-n",
             f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"],
            cwd=ROOT, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def succeeded(self) -> int:
        return self.log.read_text().count("succeeded in")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        process_group_stop(self.process)


def process_group_stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group a test started (``start_new_session=True``); SIGKILL after 15 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def queue():
    return f"sanduisan-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(tmp_path, queue):
    started: list[Worker] = []

    def start(name: str, **env) -> Worker:
        worker = Worker(name, queue, tmp_path, **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


