"""The project's command lines as a user runs them: `python -m invoke ...` in a subprocess."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
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


def refusal(*args: str) -> str:
    """The one `error: ...` line `invoke <args>` refuses with (one_error_line's checks), the task run
    in this process by invoke's own Program: the same parser, task, checks and error handling as the
    command, without a new interpreter importing invoke, Hydra and boto3 again (about a second of
    CPU a call, a few hundred calls a run). For refusals: a task expected to stop before it starts
    anything. Each task's command line itself stays tested through `invoke()` elsewhere."""
    return one_error_line(invoke_here(*args))


def invoke_here(*args: str) -> subprocess.CompletedProcess:
    """`invoke <args>` run in this process as `python -m invoke` runs it (invoke.main's Program),
    from the repository root, with what it prints and its exit code; an exception that escapes the
    task is printed as the command would print it (a traceback, exit 1)."""
    from invoke.main import program

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _as_a_fresh_process(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            program.run(["invoke", *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - what the interpreter would print, then exit 1
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["invoke", *args], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _as_a_fresh_process() -> Iterator[None]:
    """What a new `python -m invoke` process would have and pytest changes: the repository root as
    the working directory, Python's default warning filters (pytest records warnings, which the
    command prints on stderr), no logging handler (logging's last resort prints to stderr), and
    the signal handlers put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with contextlib.chdir(ROOT), warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        root.handlers, root.level = [], logging.WARNING
        try:
            yield
        finally:
            GlobalHydra.instance().clear()  # as the process's end would (a multirun leaves it set)
            root.handlers, root.level = handlers, level
            for sig, handler in signals.items():
                signal.signal(sig, handler)
