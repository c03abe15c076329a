"""`invoke local` as a user runs it: early one-line errors, Ctrl-C keeps the work, exit codes.

Each test runs the real command line in a subprocess, in a session of its own so a test can
signal its whole process group as a terminal's Ctrl-C does, with stdin closed as under nohup or
CI, and SIGINT at its default (a shell's background jobs would inherit it ignored).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from project.training import local
from tests.synthetic import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def start_invoke(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def run_invoke(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def wait_until(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"condition not reached (exit {proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
        time.sleep(0.05)


def ctrl_c(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    """SIGINT to the process group, as a terminal sends Ctrl-C; the exit code and both outputs."""
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("*.ckpt"))


def children_named(pid: int, needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and needle in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_ctrl_c_checkpoints_at_a_step_and_the_same_command_resumes(tiny_data, tmp_path):
    overrides = tiny_overrides(*tiny_data, tmp_path / "runs", run_name="long", **{"trainer.max_epochs": 12})
    run_dir = tmp_path / "runs" / "long"
    proc = start_invoke("local", *overrides)
    wait_until(lambda: bool(checkpoints(run_dir)), proc)  # the first epoch's end: training is under way
    code, out, err = ctrl_c(proc)
    assert code == 130, (out[-2000:], err[-2000:])
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("interrupted at step")]
    assert len(lines) == 1 and lines[0].endswith("; checkpoint saved; run the same command to resume"), err[-2000:]
    step = int(lines[0].split()[3].rstrip(";"))
    assert checkpoints(run_dir)[-1].name.endswith(f"step={step:08d}.ckpt")
    assert "training failed" not in err and not (run_dir / "metrics.json").exists()

    resumed = run_invoke("local", *overrides)  # the same command
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert re.search(rf"^resuming run long from step {step} \(\w+-step={step:08d}\.ckpt\)$", resumed.stdout, re.M)
    assert (run_dir / "metrics.json").exists()


def test_ctrl_c_during_start_up_leaves_nothing_and_no_traceback(tiny_data, tmp_path):
    overrides = tiny_overrides(*tiny_data, tmp_path / "runs", run_name="early")
    proc = start_invoke("local", *overrides)
    wait_until(lambda: bool(children_named(proc.pid, local.CHILD_MODULE)), proc)  # training's Python is starting
    trainers = children_named(proc.pid, local.CHILD_MODULE)
    code, out, err = ctrl_c(proc)
    assert code == 130, (out[-2000:], err[-2000:])
    assert "Traceback" not in out + err
    # Ctrl-C during invoke's check stops the check (the child, only importing, goes with it); after it,
    # the training process says it before training began. Either way one line, nothing left.
    assert err.strip().splitlines()[-1] in (
        "interrupted before training began; nothing was saved",
        "interrupted: nothing half-written was kept; run the task again to resume",
    ), err[-2000:]
    assert not (tmp_path / "runs" / "early").exists()
    # invoke reaps its child before it exits, so at its exit the child is gone: no wait, no zombie.
    assert not [pid for pid in trainers if Path(f"/proc/{pid}").exists()]  # none left running


def test_ctrl_c_in_code_built_by_exec_still_exits_130_under_python_m(tmp_path):
    """Ctrl-C while invoke's imports build a dataclass (exec of a string): CPython remembers that
    KeyboardInterrupt and, under `python -m`, ended the process by SIGINT (-2) after printing the
    one line, whatever exit code followed. The task's handler clears it."""
    (tmp_path / "interrupted_in_exec.py").write_text(
        "import os, signal, sys\n"
        "from invoke import Exit\n"
        "from project.face.cli import user_errors\n"
        "try:\n"
        "    with user_errors():\n"
        "        exec('os.kill(os.getpid(), signal.SIGINT)\\nwhile True: pass')\n"
        "except Exit as stop:\n"
        "    print(stop.message, file=sys.stderr)\n"
        "    sys.exit(stop.code)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    done = subprocess.run(
        [sys.executable, "-m", "interrupted_in_exec"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130, (done.returncode, done.stderr[-2000:])
    assert done.stderr == "interrupted: nothing half-written was kept; run the task again to resume\n"


def test_a_data_error_is_one_line_before_training_and_leaves_no_run_folder(tiny_data, tmp_path):
    folder, files = tiny_data
    runs = tmp_path / "runs"
    missing = run_invoke("local", *tiny_overrides(tmp_path / "nowhere", files, runs))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: dataset.channels.train {tmp_path / 'nowhere'} does not exist: point it at the folder holding "
        + ", ".join(f"{stem}(.gz)" for stem in files)
        + " (e.g. dataset.channels.train=../shared/data/mnist), or at an https:// or s3:// prefix"
    ]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in folder.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    stem = "t10k-images-idx3-ubyte"
    raw = (damaged / f"{stem}.gz").read_bytes()
    (damaged / f"{stem}.gz").write_bytes(raw[: len(raw) // 2])
    result = run_invoke("local", *tiny_overrides(damaged, files, runs))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {damaged / stem}.gz: gzip stream check failed: the file is truncated"), line
    assert "training failed" not in result.stderr and "Traceback" not in result.stderr
    assert not runs.exists()  # no stub: the data was checked before any run folder


def test_an_error_the_training_process_reports_is_not_repeated(tiny_data, tmp_path):
    """trainer.gpus=1 on a machine without one: only the training process can tell; one line."""
    result = run_invoke("local", *tiny_overrides(*tiny_data, tmp_path / "runs"), "trainer.gpus=1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: trainer.gpus=1 but this machine has 0 GPU(s); "
        "use trainer.gpus<=0 (null: all of them), or an instance type with more (instance=...)"
    ]
    assert not (tmp_path / "runs").exists()


# --- a stopped command leaves nothing training ----------------------------------------------------

LONG_RUN = {"trainer.max_epochs": 1000}  # never finishes: each test stops it
SAVED = re.compile(r"^stopped by (SIG[A-Z]+); saved (\S+); run again with the same config to resume$", re.M)


def trainers_of(runs_dir: Path) -> list[int]:
    """Live `python -m project.training.child` processes training into runs_dir, whoever their parent is now."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if local.CHILD_MODULE.encode() in cmdline and f"paths.runs_dir={runs_dir}".encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until_none_train(runs_dir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while trainers_of(runs_dir):
        assert time.monotonic() < deadline, f"still training after {timeout} s: {trainers_of(runs_dir)}"
        time.sleep(0.05)


def all_checkpoints(runs_dir: Path) -> list[Path]:
    return sorted(runs_dir.glob("**/checkpoints/*.ckpt"))


def start_training(*args: str, runs_dir: Path) -> tuple[subprocess.Popen, Path]:
    """`invoke local <args>` with the default run name, once its first checkpoint is written."""
    proc = start_invoke("local", *args)
    wait_until(lambda: bool(all_checkpoints(runs_dir)), proc)  # the first epoch's end: training is under way
    return proc, all_checkpoints(runs_dir)[-1]


def assert_stopped_with_a_checkpoint(out: str, signal_name: str, first: Path) -> None:
    (saved,) = SAVED.findall(out)
    assert saved[0] == signal_name, out[-2000:]
    path = Path(saved[1])
    assert path.is_file() and path.parent == first.parent, (path, first)
    assert path.name >= first.name  # the step it stopped at, at or after the first checkpoint's


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_or_sighup_checkpoint_and_exit_128_plus_the_signal(tiny_data, tmp_path, sig, code):
    """SIGTERM exited 0, as if the run had finished; SIGHUP (a closed terminal) left the trainer running."""
    runs = tmp_path / "runs"
    proc, first = start_training(*tiny_overrides(*tiny_data, runs, **LONG_RUN), runs_dir=runs)
    os.killpg(proc.pid, sig)  # the command's process group: the trainer has its own, and hears it through invoke
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (out[-2000:], err[-2000:])
    assert "Traceback" not in out + err and "training failed" not in err
    assert_stopped_with_a_checkpoint(out, sig.name, first)
    wait_until_none_train(runs)


@pytest.mark.slow
def test_sigkill_of_the_command_stops_its_trainer_after_a_checkpoint(tiny_data, tmp_path):
    """The trainer, in a process group of its own, trained on with PPID 1 and kept writing checkpoints."""
    runs = tmp_path / "runs"
    proc, first = start_training(*tiny_overrides(*tiny_data, runs, **LONG_RUN), runs_dir=runs)
    assert trainers_of(runs)
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)  # the trainer holds both pipes: they close when it has exited too
    assert proc.returncode == -signal.SIGKILL
    assert "the command that started this run is gone: stopping at the next step" in err, err[-2000:]
    assert_stopped_with_a_checkpoint(out, "SIGTERM", first)
    wait_until_none_train(runs)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_a_local_sweep_stopped_leaves_no_trainer_and_starts_no_next_job(tiny_data, tmp_path, sig):
    runs = tmp_path / "runs"
    sweep = [*tiny_overrides(*tiny_data, runs, **LONG_RUN), "model.lr=0.03,0.02"]
    proc, first = start_training("-m", *sweep, runs_dir=runs)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 129), (out[-2000:], err[-2000:])
    assert_stopped_with_a_checkpoint(out, "SIGTERM" if sig == signal.SIGKILL else "SIGHUP", first)
    wait_until_none_train(runs)
    assert first.parent.parent.name == "0" and not (first.parent.parent.parent / "1").exists()  # job 1 never began
