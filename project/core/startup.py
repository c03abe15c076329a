"""Run trace: when each phase of a run is reached, for bench/time_to_first_step.py and
bench/time_to_accuracy.py (start-up, then the fit, test and artifacts).

With LIGHTNING_SAGEMAKER_STARTUP_TRACE=<file> set, every process of a run (the `invoke` process,
the training child, each rank) appends one JSON line per phase to that file: the phase, the
wall clock (time.time(), comparable across processes), the pid, and what the phase reports.
Unset (the normal case) `mark` writes no file. Standard library only: `invoke local` and
tasks.py import it.

In a SageMaker container (SM_CURRENT_HOST set) the first process of each host also prints one
line per start-up phase, `[startup] phase=<phase> t=<wall clock>`, to its log: CloudWatch keeps it,
and `invoke status JOB`, `invoke why` and the end of `invoke train` read it back
(project/aws/startup_times.py) for the breakdown of the job's start-up.
"""

from __future__ import annotations

import json
import os
import re
import time

TRACE_ENV = "LIGHTNING_SAGEMAKER_STARTUP_TRACE"

# The phases a job's log announces, in the order a job reaches them (a SageMaker job's start-up:
# the container's PID 1, the launcher, the training code imported, its config and data checked,
# the model built, the process group and DataModule set up, the sanity check, the first step).
LOGGED_PHASES = (
    "container_start",
    "launcher_ready",
    "imported",
    "data_verified",
    "built",
    "data_loaded",
    "train_start",
    "first_step",
)
FIRST_STEP = LOGGED_PHASES[-1]  # where a job's start-up ends
MARKER = "[startup]"
_MARKER_LINE = re.compile(r"^\[startup\] phase=(\w+) t=(\d+(?:\.\d+)?)\s*$")


def enabled() -> bool:
    return bool(os.environ.get(TRACE_ENV))


def logging_phases() -> bool:
    """A SageMaker container's first process of its host: it prints the start-up phases to the job's log."""
    return bool(os.environ.get("SM_CURRENT_HOST")) and os.environ.get("LOCAL_RANK", "0") == "0"


def wanted() -> bool:
    """Whether marks go anywhere: a trace file, or the job's log."""
    return enabled() or logging_phases()


def marker_line(phase: str, at: float) -> str:
    return f"{MARKER} phase={phase} t={at:.3f}"


def parse_marker(line: str) -> tuple[str, float] | None:
    """(phase, wall clock) of a `[startup]` log line; None for any other line."""
    found = _MARKER_LINE.match(line.strip())
    return (found.group(1), float(found.group(2))) if found else None


def mark(phase: str, at: float | None = None, **extra: object) -> None:
    """`phase` reached now (or `at`): one line of the job's log (in a container, for the logged
    phases) and, `extra` with it, the trace file's (when tracing is on)."""
    at = time.time() if at is None else at
    if phase in LOGGED_PHASES and logging_phases():
        print(marker_line(phase, at), flush=True)
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    record = {"phase": phase, "t": at, "pid": os.getpid(), **extra}
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
    if wanted():
        started = process_started()
        if started is not None:
            mark("process_start", at=started)
        mark("imported")
