"""A real `mlflow server` of a test module's own on loopback (a free port, a SQLite store, artifacts
served over HTTP): what logger=mlflow runs log to in tests/test_tracking.py and a sandbox job."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from project.core import process
from tests.failing_runs import free_port

START_SECONDS = 120  # a loaded 2-core CI machine imports mlflow and starts uvicorn in ~10-25 s


@contextmanager
def mlflow_server(store: Path) -> Iterator[str]:
    """The server's URL while the block runs; stopped after it."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(store / "artifacts")]
    # It dies with the test process even when that is killed outright (no fixture teardown runs then).
    dies_with_us = process.dying_with_this_thread(signal.SIGTERM)
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=dies_with_us
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_it_answers(server, url)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_until_it_answers(server: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {server.stderr.read() if server.stderr else ''}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)  # polling for the port to open, not guessing how long start-up takes
    raise RuntimeError(f"mlflow server did not answer at {url} within {START_SECONDS} s")
