"""`invoke local`: check the run here in a second while the training process starts beside it.

The config is composed and the data resolved and verified in the invoke process (the standard
library and Hydra only, no torch), so a typo, a missing folder or a damaged file is one line at
once instead of after Lightning's start-up. Training runs as `python -m project.training.child` (which is
project.training.train's main) with the same overrides, started before the check: it imports torch and
Lightning (most of its start-up) while this process checks, then trains on the word it reads on a
pipe (GO_ENV names its end): "go", followed by the run it trains (the check chose it: with no
run_name, the unfinished run of the same config, project/core/identity.py), and the data as the check resolved it
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
pipe close when the kernel closes that end, and stops as on SIGTERM, with a checkpoint. A pipe
rather than Linux's parent-death signal: it works on every system. The DDP ranks Lightning starts
from the child (trainer.gpus > 1) die with it (project/core/lifeline.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from project.core import lifeline, startup
from project.core.config import CONF_DIR, compose
from project.core.errors import HANGUP_EXIT, INTERRUPTED_EXIT, TERMINATED_EXIT, USER_ERROR_EXIT
from project.core.identity import choose_run, default_run_name, run_identity
from project.core.runtime import check_writable
from project.training.resolve import Resolved, resolve

# Exit codes of `python -m project.training.train` that need no further word: it said what happened.
SELF_REPORTED_EXITS = (USER_ERROR_EXIT, INTERRUPTED_EXIT, TERMINATED_EXIT, HANGUP_EXIT)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GO_ENV = "LIGHTNING_SAGEMAKER_GO_FD"  # the training child's end of the pipe that says "go"
GO = b"go\n"
END = b"\n"  # an empty line ends the word; the pipe stays open while this process lives
# The training child's pid, for the DDP ranks Lightning starts from it (they inherit the environment).
RANK_ZERO_ENV = "LIGHTNING_SAGEMAKER_RANK_ZERO_PID"
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

    def word(self) -> bytes:
        """The word "go", then what was checked as one line of JSON, then END."""
        data = self.data.to_json() if self.data is not None else None
        return GO + json.dumps({"run_name": self.run_name, "data": data}).encode() + b"\n" + END


def check(overrides: Sequence[str]) -> Checked:
    """Compose and validate the config, choose the run (a new one, or the unfinished run of this
    config: identity.choose_run), and make every data channel present (and verified, with
    dataset.files); the compressed files the training child will read are warmed while it imports."""
    cfg = compose(list(overrides))
    check_writable(Path(cfg.paths.runs_dir), "paths.runs_dir")  # a read-only mount, /proc: a second, not an epoch
    startup.mark("invoke_config")
    run_name = choose_run(
        run_identity(cfg), cfg.run_name, Path(cfg.paths.runs_dir), lambda: default_run_name(cfg), cfg.trainer.resume
    )
    data = resolve(cfg)
    startup.mark("invoke_checked")
    return Checked(run_name, data)


def _block_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def train_in_child(overrides: Sequence[str], check_first: Callable[[], Checked] = Checked) -> int:
    """Run `python -m project.training.child <overrides>`; its exit code (128 + N when signal N killed it).

    The child starts at once and imports while `check_first()` runs here; it trains only after the
    check passed, trains the run it chose, and warms the files it names. A check that raises (or a
    Ctrl-C during it: the child, in a process group of its own, never sees that one) kills the
    child, which has only imported, and the error propagates.
    """
    go_read, go_write = os.pipe()
    # Its own process group, not the terminal's: each Ctrl-C reaches it once, forwarded by us. SIGINT
    # blocked until project.training.train.main handles it: one during the imports waits instead of a traceback.
    child = subprocess.Popen(
        [sys.executable, "-m", CHILD_MODULE, *overrides],
        process_group=0,
        preexec_fn=_block_sigint,
        env={**os.environ, GO_ENV: str(go_read), "PYTHONPATH": _with_project(os.environ.get("PYTHONPATH"))},
        pass_fds=(go_read,),
    )
    os.close(go_read)
    try:
        checked = check_first()
    except BaseException:
        os.close(go_write)
        child.kill()  # it has only imported: nothing to save, and no reason to wait for it
        child.wait()
        raise

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}  # before "go": no gap
    try:
        with contextlib.suppress(BrokenPipeError):  # a child that died importing: its exit code says so
            os.write(go_write, checked.word())
        code = child.wait()
    finally:
        os.close(go_write)  # only now: the child reads its close as this process's death
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def _with_project(pythonpath: str | None) -> str:
    """PYTHONPATH with the project's root first (the user's folder stays sys.path[0] under -m)."""
    return os.pathsep.join([PROJECT_ROOT, *(pythonpath.split(os.pathsep) if pythonpath else [])])


def listen() -> None:
    """In the training child, before its heavy imports: hear the word on a thread, and on "go" warm
    the files it names, then stop the run when the pipe closes (train_in_child's process died).
    Nothing when not started by train_in_child, except in a DDP rank started from such a child: it
    dies with the child. The pipe's end is not passed on (DDP ranks start from here)."""
    fd = os.environ.pop(GO_ENV, None)
    if fd is None:
        _follow_rank_zero()
        return
    if _word.listener is not None:
        return
    os.environ[RANK_ZERO_ENV] = str(os.getpid())

    def hear() -> None:
        with os.fdopen(int(fd), "rb") as pipe:
            try:
                _word.go = pipe.readline() == GO  # nothing (the pipe closed): the check failed
                checked = _checked(pipe.readline()) if _word.go else None
                _word.go = checked is not None  # a word cut short: its sender died, as if it said nothing
                if checked is not None:
                    _word.run_name, _word.data = checked.run_name, checked.data
                    pipe.readline()  # END
                startup.mark("go_heard")
                if _word.data is not None:
                    _word.data.warm()
            finally:
                _word.heard.set()
            if _word.go:
                pipe.read()  # returns when the pipe closes: train_in_child's process has died
                _parent_gone()

    _word.listener = threading.Thread(target=hear, name="go", daemon=True)
    _word.listener.start()


def _checked(line: bytes) -> Checked | None:
    try:
        said = json.loads(line)
        data = Resolved.from_json(said["data"]) if said["data"] is not None else None
        return Checked(str(said["run_name"]), data)
    except (ValueError, KeyError, TypeError):
        return None


def _parent_gone() -> None:
    """Stop as on SIGTERM (at the next step, with a checkpoint); before training that ends the process."""
    os.kill(os.getpid(), signal.SIGTERM)
    with contextlib.suppress(OSError):  # its terminal may be gone with it
        print("the command that started this run is gone: stopping at the next step", file=sys.stderr, flush=True)


def _follow_rank_zero() -> None:
    """A DDP rank Lightning started from the training child dies with it: a rank whose rank 0 is
    gone can neither checkpoint (rank 0 writes) nor finish a collective, where SIGTERM would leave
    it waiting (Lightning's own watch over its ranks uses SIGKILL for that reason)."""
    rank_zero = os.environ.get(RANK_ZERO_ENV)
    if rank_zero and int(rank_zero) != os.getpid():
        lifeline.die_with_parent(signal.SIGKILL, int(rank_zero))


class _Word:
    """What listen() heard: its thread, set `heard` once it heard (and warmed), and whether the word was "go"."""

    listener: threading.Thread | None = None
    heard = threading.Event()
    go = False
    run_name = ""
    data: Resolved | None = None


_word = _Word()


def wait_for_go() -> bool:
    """In the training child: whether to train. True unless started by train_in_child and its pipe
    closed without "go"."""
    listen()  # a child started as `python -m project.training.train` listens only now
    if _word.listener is None:
        return True
    _word.heard.wait()
    startup.mark("go")
    return _word.go


def chosen_run_name() -> str | None:
    """In the training child: the run `invoke local`'s check chose; None when started otherwise."""
    return _word.run_name or None


def checked_data() -> Resolved | None:
    """In the training child: the data as the check resolved it; None when started otherwise."""
    return _word.data
