"""`invoke local`: check the run here in a second while the training process starts beside it.

The config is composed and the data resolved and verified in the invoke process (the standard
library and Hydra only, no torch), so a typo, a missing folder or a damaged file is one line at
once instead of after Lightning's start-up. Training runs as `python -m project.training.child` (which is
project.training.train's main) with the same overrides, started before the check: it imports torch and
Lightning (most of its start-up) while this process checks, then trains on the word it reads on a
pipe (project/core/process.py: run_child here, a Listener there): "go", followed by what was
checked (`Checked`): the run it trains (the check chose it: with no run_name, the unfinished run
of the same config, project/core/identity.py), and the data as the check resolved it
(project/training/resolve.py: each channel's folder, each verified file with the hash of the bytes
verified), or the pipe closed without a word, and it exits, or killed when the check failed, since
it has only imported by then. It resolves nothing itself: it trains on those folders and files (a
channel at s3:// was mirrored or fetched by the check, and the training process never reads S3:
the platform's source, project/aws/source.py, is registered in this process only). It hears the
word on a thread as soon as it is said, and reads, hashes and decompresses those files while its
imports run (Resolved.warm); bytes that are not the ones verified are checked in full when read. It
runs in a process group of its own: every Ctrl-C, SIGTERM or SIGHUP (the terminal closed) reaches
it exactly once, through this process, and it stops at the next step boundary with a checkpoint
(project/training/checkpoints.py), exiting 130, 143 or 129. The child prints its own errors, so its exit
code is passed on.

Nothing trains on when this process dies without passing a signal on (SIGKILL, or killed before
it could): it holds the pipe's end until the child exits, and the child, reading on, hears the
pipe close when the kernel closes that end, and stops as on SIGTERM, with a checkpoint ("the
command that started this run is gone"). The DDP ranks Lightning starts from the child
(trainer.gpus > 1) die with it (Linux's parent-death signal: project/core/process.py).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from project.core import process, startup
from project.core.config import CONF_DIR, compose
from project.core.errors import HANGUP_EXIT, INTERRUPTED_EXIT, STALLED_EXIT, TERMINATED_EXIT, USER_ERROR_EXIT
from project.core.identity import choose_run, default_run_name, run_identity
from project.core.runtime import check_writable
from project.training.resolve import Resolved, resolve
from project.training.stalls import HEARTBEAT_ENV, Limits
from project.training.watchdog import Watchdog

# Exit codes of `python -m project.training.train` that need no further word: it said what happened
# (STALLED_EXIT: the watchdog here did).
SELF_REPORTED_EXITS = (USER_ERROR_EXIT, INTERRUPTED_EXIT, TERMINATED_EXIT, HANGUP_EXIT, STALLED_EXIT)
CHILD_MODULE = "project.training.child"  # what the training child runs: `python -m project.training.child <overrides>`
# Where `project` is imported from: the child finds it from any folder (`invoke -r <repo> local`).
PROJECT_ROOT = str(CONF_DIR.parent)


def run(overrides: Sequence[str]) -> int:
    """`invoke local`: the training child's exit code; a failed check raises (its one line)."""
    startup.mark("invoke_ready")
    return train_in_child(overrides, check_first=lambda: check(overrides))


@dataclass(frozen=True)
class Checked:
    """What the check passes on to the training child with "go"."""

    run_name: str = ""  # the run to train, as the check chose it; "": the child decides (a config file's)
    data: Resolved | None = None  # the data as resolve() made it; None: the child resolves it
    # The watchdog's limits (trainer.stall_timeout_minutes...), for this process's watchdog: not sent.
    limits: Limits = field(default_factory=Limits)

    def to_json(self) -> dict[str, Any]:
        """What the training child is told with "go" (process.run_child)."""
        return {"run_name": self.run_name, "data": self.data.to_json() if self.data is not None else None}

    @classmethod
    def from_json(cls, said: Any) -> Checked:
        """What to_json wrote; a ValueError, KeyError or TypeError for anything else."""
        return cls(str(said["run_name"]), Resolved.from_json(said["data"]) if said["data"] is not None else None)

    def warm(self) -> None:
        """Decompress the files the training child will read, while its imports run."""
        if self.data is not None:
            self.data.warm()


def check(overrides: Sequence[str]) -> Checked:
    """Compose and validate the config, make every data channel present (and verified, with
    dataset.files), and choose the run (a new one, or the unfinished run of this config:
    identity.choose_run); the compressed files the training child will read are warmed while it imports."""
    cfg = compose(list(overrides))
    check_writable(Path(cfg.paths.runs_dir), "paths.runs_dir")  # a read-only mount, /proc: a second, not an epoch
    startup.mark("invoke_config")
    # The data first: a damaged file or a wrong folder is what to hear about, even where this
    # config's run is finished (its identity holds what the data is, not where it is read from).
    data = resolve(cfg)
    run_name = choose_run(
        run_identity(cfg), cfg.run_name, Path(cfg.paths.runs_dir), lambda: default_run_name(cfg), cfg.trainer.resume
    )
    startup.mark("invoke_checked")
    return Checked(run_name, data, Limits.of(cfg.trainer, in_container=False))


def train_in_child(overrides: Sequence[str], check_first: Callable[[], Checked] = Checked) -> int:
    """Run `python -m project.training.child <overrides>`; its exit code (128 + N when signal N killed it).

    The child starts at once and imports while `check_first()` runs here; it trains only after the
    check passed, trains the run it chose, and warms the files it names. A check that raises (or a
    Ctrl-C during it) kills the child, which has only imported, and the error propagates
    (process.run_child). With the check's limits on (trainer.stall_timeout_minutes or
    startup_timeout_minutes set), a watchdog thread here watches the child and the ranks it starts
    (project/training/watchdog.py); a stall ends them, and this returns STALLED_EXIT.
    """
    with tempfile.TemporaryDirectory(prefix="heartbeats-") as beats:
        env = {**os.environ, "PYTHONPATH": _with_project(os.environ.get("PYTHONPATH")), HEARTBEAT_ENV: beats}
        limits = Limits()

        def checked() -> dict[str, Any]:
            nonlocal limits
            said = check_first()
            limits = said.limits
            return said.to_json()

        dog: list[Watchdog] = []

        def told(pid: int) -> None:
            """The watchdog over the child and the ranks it starts: on a stall it kills them (the
            ranks die with the child) and this process returns STALLED_EXIT."""
            if limits.on:
                host = socket.gethostname()
                dog.append(Watchdog(Path(beats), limits, host, 1, end=lambda _: None, kill_also=[pid]).start())

        code = process.run_child([sys.executable, "-m", CHILD_MODULE, *overrides], env, checked, told)
        if dog and dog[0].fired:
            return STALLED_EXIT
        for watching in dog:
            watching.stop()
        return code


def _with_project(pythonpath: str | None) -> str:
    """PYTHONPATH with the project's root first (the user's folder stays sys.path[0] under -m)."""
    return os.pathsep.join([PROJECT_ROOT, *(pythonpath.split(os.pathsep) if pythonpath else [])])


# In the training child: what the check said, heard on a thread; its data warmed as soon as heard.
_word: process.Listener[Checked] = process.Listener(Checked.from_json, prepare=Checked.warm)


def listen() -> None:
    """In the training child, before its heavy imports: hear the word on a thread, and on "go" warm
    the files it names, then stop the run when the pipe closes (train_in_child's process died).
    Nothing when not started by train_in_child, except in a DDP rank started from such a child: it
    dies with the child (process.Listener.listen)."""
    _word.listen()


def wait_for_go() -> bool:
    """In the training child: whether to train. True unless started by train_in_child and its pipe
    closed without "go"."""
    return _word.wait_for_go()  # a child started as `python -m project.training.train` listens only now


def chosen_run_name() -> str | None:
    """In the training child: the run `invoke local`'s check chose; None when started otherwise."""
    checked = _word.payload
    return checked.run_name or None if checked is not None else None


def checked_data() -> Resolved | None:
    """In the training child: the data as the check resolved it; None when started otherwise."""
    return _word.payload.data if _word.payload is not None else None
