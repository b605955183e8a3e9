"""Start the gateway and the fake upstream as real server processes (tests, bench, make run)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen, *, grace: float) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace`` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class Server:
    """``uvicorn <app>`` on 127.0.0.1 in its own process group, with uvloop and httptools."""

    def __init__(self, app: str, *, log: Path, env: dict | None = None, port: int | None = None,
                 health: str = "/health", workers: int = 1) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(self.port), "--loop",
             "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning", "--lifespan", "on",
             *(["--workers", str(workers)] if workers > 1 else [])],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=open(log, "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        self._wait(health)

    def _wait(self, health: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + health, timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        _stop(self.process, grace=15)


class Flusher:
    """``python -m gateway.flusher`` in its own process group."""

    def __init__(self, *, log: Path, env: dict | None = None, interval: float = 0.2,
                 outcomes_interval: float = 0.2) -> None:
        """Both intervals short by default, for tests that wait for the buffer to drain; the
        command's own default folds outcomes every 5 s (see ``gateway.flusher``)."""
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.flusher", "--interval", str(interval), "--outcomes-interval",
             str(outcomes_interval)], cwd=ROOT,
            env={**os.environ, **(env or {})}, stdout=open(log, "w"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def stop(self) -> None:
        _stop(self.process, grace=30)  # it flushes once more before it exits
