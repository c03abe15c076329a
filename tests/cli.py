"""The project's command lines as a user runs them: `python -m invoke ...` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `invoke <args>` from the repository root; its exit code and both outputs, as text.

    With TEST_CLI_TIMES=<file>, each call appends "<seconds> <args>" there: where a slow test's time goes.
    """
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env if env is not None else os.environ),
    )
    if log := os.environ.get("TEST_CLI_TIMES"):
        with open(log, "a") as out:
            out.write(f"{time.monotonic() - started:7.1f} {' '.join(args)[:160]}\n")
    return result


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The task failed cleanly: exit 2, no traceback, one `error: ...` line on stderr."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]
