"""The run trace (project/core/startup.py) that bench/time_to_first_step.py and time_to_accuracy.py read."""

import json
import os
import time

import pytest

from project.core import startup
from tests.cli import invoke

# The phases of `invoke local`: the invoke process checks while its child starts and imports;
# the child goes on (`go`) once the check passed.
INVOKE_PHASES = ["invoke_ready", "invoke_config", "invoke_checked"]
CHILD_PHASES = [
    "process_start",
    "go_heard",  # by the child's listener thread, while the imports run: then it warms the data files
    "imported",
    "go",
    "config",
    "data_verified",
    "built",
    "data_loaded",
    "sanity_start",
    "train_start",
    "first_step",
    "fit_end",  # then the segments of the whole run (bench/time_to_accuracy.py)
    "tested",
    "written",
]


def test_mark_appends_nothing_when_the_trace_is_off(tmp_path, monkeypatch):
    monkeypatch.delenv(startup.TRACE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    startup.mark("anything")
    assert not startup.enabled() and list(tmp_path.iterdir()) == []


def test_process_started_is_this_process_start():
    """A fresh interpreter's start is a moment before its first line runs (this test process may be
    old: the whole suite runs in it)."""
    import subprocess
    import sys

    code = "import time; from project.core import startup; print(startup.process_started(), time.time())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    started, now = (float(v) for v in out.split())
    assert 0 <= now - started < 60


@pytest.mark.slow
def test_invoke_local_traces_every_phase_in_order(tiny_run, tmp_path):
    trace = tmp_path / "trace.jsonl"
    started = time.time()
    result = invoke("local", *tiny_run(), env={**os.environ, startup.TRACE_ENV: str(trace)})
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    parent = [r for r in records if r["phase"].startswith("invoke_")]
    child = [r for r in records if not r["phase"].startswith("invoke_")]
    assert [r["phase"] for r in parent] == INVOKE_PHASES
    first = {}
    for r in sorted(child, key=lambda r: r["t"]):  # process_start is written late, with its time from /proc
        first.setdefault(r["phase"], r)
    assert list(first) == CHILD_PHASES  # setup's mark repeats for the test pass, later
    assert {r["pid"] for r in child} != {r["pid"] for r in parent}  # the training child, not invoke
    # Started right after invoke_ready (process_start is /proc's, in 10 ms ticks), before the check ends...
    ready, checked = parent[0]["t"], parent[-1]["t"]
    assert ready - 0.05 <= first["process_start"]["t"] < checked
    # It hears the check's word while it still imports (the data files are warmed meanwhile)...
    assert checked <= first["go_heard"]["t"] < first["imported"]["t"]
    # ... and it trains only after the check passed.
    times = [r["t"] for r in parent] + [first[p]["t"] for p in CHILD_PHASES[CHILD_PHASES.index("go") :]]
    assert started - 1 <= times[0] and times == sorted(times) and times[-1] <= time.time()
    assert first["first_step"]["threads"] >= 1 and first["first_step"]["interop_threads"] >= 1
    assert first["data_verified"]["resolved_here"] is False  # the check resolved the data: the child trusts it
