"""A real HTTP server process (gunicorn) serving the app against the test database."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.db import connection

from tests.workers import process_group_stop

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiServer:
    """``gunicorn config.wsgi`` on a free port, with the test settings and the test database; its
    connections are kept between requests (``CONN_MAX_AGE``) like production's."""

    def __init__(self, log: Path, *, workers: int = 2, **env) -> None:
        db = connection.settings_dict
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test",
                       "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}", **env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "-b", f"127.0.0.1:{self.port}", "-w", str(workers),
             "--log-level", "warning"], cwd=ROOT, env=environment, stdout=open(log, "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2).read()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise AssertionError(f"the API server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        process_group_stop(self.process)
