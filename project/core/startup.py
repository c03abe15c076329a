"""Run trace: when each phase of a run is reached, for bench/time_to_first_step.py and
bench/time_to_accuracy.py (start-up, then the fit, test and artifacts).

With LIGHTNING_SAGEMAKER_STARTUP_TRACE=<file> set, every process of a run (the `invoke` process,
the training child, each rank) appends one JSON line per phase to that file: the phase, the
wall clock (time.time(), comparable across processes), the pid, and what the phase reports.
Unset (the normal case) `mark` returns at once. Standard library only: `invoke local` and
tasks.py import it.
"""

from __future__ import annotations

import json
import os
import time

TRACE_ENV = "LIGHTNING_SAGEMAKER_STARTUP_TRACE"


def enabled() -> bool:
    return bool(os.environ.get(TRACE_ENV))


def mark(phase: str, at: float | None = None, **extra: object) -> None:
    """Append `phase` reached now (or `at`), and `extra`, to the trace file, when tracing is on."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    record = {"phase": phase, "t": time.time() if at is None else at, "pid": os.getpid(), **extra}
    with open(path, "a") as trace:  # one short write per line, appended: processes do not interleave
        trace.write(json.dumps(record) + "\n")


def process_started() -> float | None:
    """Wall-clock time this process was started (Linux /proc, 10 ms resolution), else None."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: start, clock ticks after boot
        with open("/proc/uptime") as uptime:
            since_boot = float(uptime.read().split()[0])  # /proc/stat's btime has whole seconds only
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))


def mark_process_start() -> None:
    """The interpreter's start (from /proc), then `imported`: this process's imports are done."""
    if enabled():
        started = process_started()
        if started is not None:
            mark("process_start", at=started)
        mark("imported")
