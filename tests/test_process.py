"""Process plumbing (project/core/process.py), with real processes: the "go" hand-off, signals passed
on, the pipe as a lifeline, ranks that die with rank zero; the GC of a short process; what importing
`project` and tasks.py changes in the interpreter; a SageMaker job's failure file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from project.core import process

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A child of run_child: it listens, then writes what it heard (and its pid) to the file it is given.
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from project.core import process
    out, stopped = sys.argv[1], []
    def stop(signum, _frame):  # as training does: note it, stop a moment later (at the next step)
        with open(out + ".stopped", "a") as f:
            f.write(signal.Signals(signum).name + "\\n")
        stopped.append(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # run_child started it with SIGINT blocked
    word = process.Listener(dict)
    word.listen()
    go = word.wait_for_go()
    with open(out, "w") as f:
        json.dump({"go": go, "payload": word.payload, "pid": os.getpid()}, f)
    if len(sys.argv) > 2:  # a rank started from here: it follows this process
        import subprocess
        rank = subprocess.Popen([sys.executable, "-c", sys.argv[2]])
        open(out + ".rank", "w").write(str(rank.pid))
    deadline = time.monotonic() + float(os.environ.get("CHILD_SECONDS", "0"))
    while time.monotonic() < deadline and not stopped:
        time.sleep(0.05)
    time.sleep(0.5 if stopped else 0)
    sys.exit(stopped[0] if stopped else 0)
    """
)
# A rank: it follows its rank zero once listen() returns, and says so in the file RANK_READY names.
RANK = (
    "import os, time; from project.core import process; process.Listener(dict).listen(); "
    "open(os.environ['RANK_READY'], 'w').write('listening'); time.sleep(60)"
)

# The parent: run_child with CHILD; prints what run_child returned (or the error the check raised).
PARENT = textwrap.dedent(
    """
    import json, os, sys
    from project.core import process
    child, out, payload, rank = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
    def check():
        if payload == "fail":
            raise RuntimeError("the check failed")
        return payload
    try:
        print(process.run_child([sys.executable, "-c", child, out, *rank], os.environ, check), flush=True)
    except RuntimeError as exc:
        print(exc, flush=True)
    """
)


def start_parent(tmp_path: Path, payload: object, seconds: float = 0, rank: bool = False) -> subprocess.Popen[str]:
    ranks = [RANK] if rank else []
    argv = [sys.executable, "-c", PARENT, CHILD, str(tmp_path / "heard"), json.dumps(payload), *ranks]
    env = {**ENV, "CHILD_SECONDS": str(seconds), "RANK_READY": str(tmp_path / "rank.ready")}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path.name} never came"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_child_hears_go_and_the_payload_and_its_exit_code_comes_back(tmp_path):
    parent = start_parent(tmp_path, {"run_name": "r1", "data": [1, 2]})
    out, err = parent.communicate(timeout=60)
    assert out.strip() == "0", err
    heard = json.loads((tmp_path / "heard").read_text())
    assert heard["go"] is True and heard["payload"] == {"run_name": "r1", "data": [1, 2]}


def test_a_failed_check_kills_the_child_before_go_and_raises(tmp_path):
    parent = start_parent(tmp_path, "fail", seconds=30)
    out, err = parent.communicate(timeout=60)
    assert out.strip() == "the check failed", err
    assert not (tmp_path / "heard").exists()  # killed while it waited: it never went on


def test_a_word_cut_short_is_no_go(tmp_path):
    go_read, go_write = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "heard")],
        env={**ENV, process.GO_ENV: str(go_read)},
        pass_fds=(go_read,),
    )
    os.close(go_read)
    os.write(go_write, process.GO + b'{"run_name": "r')  # its sender died mid-word
    os.close(go_write)
    assert child.wait(timeout=60) == 0
    heard = json.loads((tmp_path / "heard").read_text())
    assert heard["go"] is False and heard["payload"] is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda sig: sig.name)
def test_signals_reach_the_child_once_through_the_parent(tmp_path, sig):
    """SIGINT and SIGTERM: the child stops and exits 130 or 143; SIGHUP kills it (no handler),
    and the parent says so as 128 + 1: the exit codes `invoke local` passes on."""
    parent = start_parent(tmp_path, {}, seconds=30)
    wait_for(tmp_path / "heard")
    parent.send_signal(sig)
    out, err = parent.communicate(timeout=60)
    assert out.strip() == str(128 + sig), err
    if sig != signal.SIGHUP:
        assert (tmp_path / "heard.stopped").read_text() == sig.name + "\n"  # once


def test_a_parent_killed_outright_stops_the_child_as_on_sigterm(tmp_path):
    parent = start_parent(tmp_path, {}, seconds=30)
    wait_for(tmp_path / "heard")
    child = json.loads((tmp_path / "heard").read_text())["pid"]
    parent.kill()  # no signal passed on: only the pipe's close tells the child
    _, err = parent.communicate(timeout=60)
    wait_for(tmp_path / "heard.stopped")
    assert (tmp_path / "heard.stopped").read_text() == "SIGTERM\n"
    deadline = time.monotonic() + 20
    while not gone(child):
        assert time.monotonic() < deadline, "the child trained on as an orphan"
        time.sleep(0.05)
    # The child's stderr is the parent's; the parent is gone, so the line went to the pipe we read.
    assert process.PARENT_GONE in err


@pytest.mark.skipif(not process.SUPPORTED, reason="Linux's parent-death signal")
def test_a_rank_started_from_the_child_dies_with_it(tmp_path):
    parent = start_parent(tmp_path, {}, seconds=30, rank=True)
    wait_for(tmp_path / "heard.rank")
    child = json.loads((tmp_path / "heard").read_text())["pid"]
    rank = int((tmp_path / "heard.rank").read_text())
    wait_for(tmp_path / "rank.ready")  # the rank asked for the signal (a fixed sleep was a race on a busy machine)
    assert not gone(rank)
    os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while not gone(rank):
        assert time.monotonic() < deadline, "the rank lived on without its rank zero"
        time.sleep(0.05)
    parent.communicate(timeout=60)


def test_a_process_not_started_by_run_child_goes_on_at_once(monkeypatch):
    monkeypatch.delenv(process.GO_ENV, raising=False)
    monkeypatch.delenv(process.RANK_ZERO_ENV, raising=False)
    word = process.Listener(dict)
    assert word.wait_for_go() is True and word.payload is None and word.listener is None


# What importing changes: every global an import could patch, before and after, in a fresh interpreter.
SNAPSHOT = textwrap.dedent(
    """
    import atexit, gc, json, logging, os, signal, sys, threading, warnings
    import invoke
    def snapshot():
        return {
            "gc_threshold": list(gc.get_threshold()),
            "gc_enabled": gc.isenabled(),
            "atexit_handlers": atexit._ncallbacks(),
            "signals": {s.name: repr(signal.getsignal(s)) for s in signal.valid_signals()
                        if isinstance(s, signal.Signals) and s not in (signal.SIGKILL, signal.SIGSTOP)},
            "sigmask": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "environ": dict(os.environ),
            "threads": threading.active_count(),
            "excepthook": repr(sys.excepthook),
            "switchinterval": sys.getswitchinterval(),
            "recursionlimit": sys.getrecursionlimit(),
            "warnings": len(warnings.filters),
            "logging": [repr(h) for h in logging.getLogger().handlers] + [logging.getLogger().level],
            "collection_to_contexts": repr(invoke.Collection.to_contexts),
        }
    def frozen_at_exit():  # registered first, so it runs after the handlers the import registers
        print(json.dumps({"frozen_at_exit": gc.get_freeze_count() > 0}), flush=True)
    atexit.register(frozen_at_exit)
    before = snapshot()
    __import__(sys.argv[1])
    after = snapshot()
    print(json.dumps({k: after[k] for k in after if after[k] != before[k]}), flush=True)
    """
)


def changes_of_importing(module: str) -> tuple[dict, bool]:
    result = subprocess.run(
        [sys.executable, "-c", SNAPSHOT, module], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    changed, at_exit = result.stdout.splitlines()
    return json.loads(changed), json.loads(at_exit)["frozen_at_exit"]


@pytest.mark.parametrize("module", ["project", "project.core.process", "project.face.cli", "project.training.local"])
def test_importing_project_changes_nothing_global(module):
    changed, frozen = changes_of_importing(module)
    assert changed == {} and not frozen


def test_importing_tasks_changes_only_what_it_documents():
    """tasks.py's docstring: invoke's parser learns bare overrides, the GC is tuned for a short process."""
    changed, frozen = changes_of_importing("tasks")
    assert set(changed) == {"gc_threshold", "atexit_handlers", "collection_to_contexts"}
    assert tuple(changed["gc_threshold"]) == process.SHORT_PROCESS_GC_THRESHOLD
    assert frozen  # its one exit handler: the objects freeze before the last collections


def test_the_failure_file_is_written_once_and_only_in_a_container(tmp_path):
    process.record_failure("DataError: not there", {"SM_OUTPUT_DIR": str(tmp_path)})
    assert not (tmp_path / "failure").exists()  # not in a container
    container = {"SM_MODEL_DIR": str(tmp_path / "model"), "SM_OUTPUT_DIR": str(tmp_path)}
    process.record_failure("DataError: " + "x" * 2000, container)
    process.record_failure("NCCL timeout: a consequence", container)  # a second rank's
    assert (tmp_path / "failure").read_text() == ("DataError: " + "x" * 2000)[:1024]
