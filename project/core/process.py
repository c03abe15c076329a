"""Process plumbing, in one place: a child started and told "go" over a pipe, the signals passed on to
it, processes that die with the one that started them, stop signals recorded for a step boundary,
the garbage collector of a short process, and a SageMaker job's failure reason. Standard library
only: tasks.py, the sandbox (which imports only core) and the training process all import it.

The hand-off (`invoke local` and the local sweep, project/training/local.py, say what they hand
off): `run_child` starts a child in a process group of its own with one end of a pipe (GO_ENV names
it), runs a check meanwhile, then says GO, the check's result as one line of JSON, and END. Until
the child exits it passes on every SIGINT, SIGTERM and SIGHUP (the terminal closed), so each
reaches the child exactly once, and it holds its end of the pipe open: the pipe is the child's
lifeline. In the child, a `Listener` hears the word on a thread as soon as it is said (while the
child imports), and when the pipe closes (the parent died without passing a signal on: SIGKILL,
or killed before it could) it stops the child as on SIGTERM. A pipe rather than Linux's
parent-death signal: it works on every system. The processes the child starts (DDP ranks: they
inherit its environment) die with it by that signal (`die_with_parent`), since a rank whose rank
zero is gone can do nothing useful.

Linux's parent-death signal (prctl PR_SET_PDEATHSIG): the kernel signals a process when the
*thread* that started it ends, even while the rest of that process lives on. So a process given
one must be started from a thread that lives as long as the process should: the main thread, or
the thread that waits for it (a sandbox job's, project/sandbox/container.py). The request survives
exec (not of a set-user-ID program). Other systems have no such signal: there it is a no-op.

This module is over 300 lines because it is the one home of process plumbing (#27): five short sections, each
with its own heading.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from project.core import startup

T = TypeVar("T")

# --- the hand-off ------------------------------------------------------------------------------

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GO_ENV = "LIGHTNING_SAGEMAKER_GO_FD"  # the child's end of the pipe that says "go"
GO = b"go\n"
END = b"\n"  # an empty line ends the word; the pipe stays open while the parent lives
# The child's pid, for the processes it starts (DDP ranks: they inherit the environment).
RANK_ZERO_ENV = "LIGHTNING_SAGEMAKER_RANK_ZERO_PID"
PARENT_GONE = "the command that started this run is gone: stopping at the next step"


def _block_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def run_child(
    argv: Sequence[str],
    env: Mapping[str, str],
    check_first: Callable[[], object],
    told: Callable[[int], object] = lambda pid: None,
) -> int:
    """Run `argv`, told "go" with what `check_first()` returns (JSON-able); its exit code (128 + N
    when signal N killed it). `told(pid)` runs once the child was told (the watchdog starts there).

    The child starts at once and works on (imports) while `check_first()` runs here. A check that
    raises (or a Ctrl-C during it: the child, in a process group of its own, never sees that one)
    kills the child, which is only starting, and the error propagates.
    """
    go_read, go_write = os.pipe()
    # Its own process group, not the terminal's: each Ctrl-C reaches it once, passed on from here.
    # SIGINT blocked until the child handles it (project/training/checkpoints.py unblocks it):
    # one during its imports waits instead of a traceback.
    child = subprocess.Popen(
        list(argv),
        process_group=0,
        preexec_fn=_block_sigint,
        env={**env, GO_ENV: str(go_read)},
        pass_fds=(go_read,),
    )
    os.close(go_read)
    try:
        payload = check_first()
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
        with contextlib.suppress(BrokenPipeError):  # a child that died starting: its exit code says so
            os.write(go_write, GO + json.dumps(payload).encode() + b"\n" + END)
        told(child.pid)
        code = child.wait()
    finally:
        os.close(go_write)  # only now: the child reads its close as this process's death
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


class Listener(Generic[T]):
    """The child's side of `run_child`: the word heard on a thread, and the pipe watched after it.

    `decode` turns the JSON payload into a T (a ValueError, KeyError or TypeError: a word cut
    short, its sender died, as if it said nothing); `prepare(payload)` then runs on the listening
    thread, before `wait_for_go` returns (the training child decompresses its data files there
    while its imports run). One Listener per process: the pipe's end is in the environment once.
    """

    def __init__(self, decode: Callable[[Any], T], prepare: Callable[[T], None] = lambda _: None) -> None:
        self.decode, self.prepare = decode, prepare
        self.listener: threading.Thread | None = None
        self.heard = threading.Event()  # set once the word was heard (and prepared for)
        self.go = False
        self.payload: T | None = None

    def listen(self) -> None:
        """Hear the word on a thread, then stop this process when the pipe closes (its parent died).
        Nothing when not started by run_child, except in a process started from such a child (a
        DDP rank): it dies with the child. The pipe's end is not passed on (ranks start from here)."""
        fd = os.environ.pop(GO_ENV, None)
        if fd is None:
            _follow_rank_zero()
            return
        if self.listener is not None:
            return
        os.environ[RANK_ZERO_ENV] = str(os.getpid())
        self.listener = threading.Thread(target=self._hear, args=(int(fd),), name="go", daemon=True)
        self.listener.start()

    def _hear(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            try:
                self.go = pipe.readline() == GO  # nothing (the pipe closed): the check failed
                self.payload = self._decoded(pipe.readline()) if self.go else None
                self.go = self.payload is not None
                if self.go:
                    pipe.readline()  # END
                startup.mark("go_heard")
                if self.payload is not None:
                    self.prepare(self.payload)
            finally:
                self.heard.set()
            if self.go:
                pipe.read()  # returns when the pipe closes: run_child's process has died
                _parent_gone()

    def _decoded(self, line: bytes) -> T | None:
        try:
            return self.decode(json.loads(line))
        except (ValueError, KeyError, TypeError):
            return None

    def wait_for_go(self) -> bool:
        """Whether to go on: True unless started by run_child and its pipe closed without "go"."""
        self.listen()  # a child that did not listen before its imports listens only now
        if self.listener is None:
            return True
        self.heard.wait()
        startup.mark("go")
        return self.go


def _parent_gone() -> None:
    """Stop as on SIGTERM (at the next step, with a checkpoint); before training that ends the process."""
    os.kill(os.getpid(), signal.SIGTERM)
    with contextlib.suppress(OSError):  # its terminal may be gone with it
        print(PARENT_GONE, file=sys.stderr, flush=True)


def _follow_rank_zero() -> None:
    """A DDP rank Lightning started from the training child dies with it: a rank whose rank 0 is
    gone can neither checkpoint (rank 0 writes) nor finish a collective, where SIGTERM would leave
    it waiting (Lightning's own watch over its ranks uses SIGKILL for that reason)."""
    rank_zero = os.environ.get(RANK_ZERO_ENV)
    if rank_zero and int(rank_zero) != os.getpid():
        die_with_parent(signal.SIGKILL, int(rank_zero))


# --- the parent-death signal -------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SUPPORTED = sys.platform.startswith("linux")


def _prctl() -> Callable[..., int]:
    return ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(signum: int, parent: int) -> None:
    """Have the kernel send this process `signum` when its parent `parent` (a pid) ends; at once
    if it already has, since no signal would come then."""
    if not SUPPORTED:
        return
    if _prctl()(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)


def dying_with_this_thread(signum: int) -> Callable[[], None] | None:
    """A Popen preexec_fn: the started process gets `signum` when the calling thread ends.

    Everything it needs is looked up here, before the fork: the forked child of a process with
    other threads runs only the prctl call and two system calls, taking no lock a thread held.
    """
    if not SUPPORTED:
        return None
    prctl, parent = _prctl(), os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # it died between the fork and the request
            os.kill(os.getpid(), signum)

    return in_child


# --- stop signals, recorded ------------------------------------------------------------------

# Each stops a run at the next step boundary with a checkpoint (project/training/checkpoints.py).
# SIGTERM: SageMaker's stop (spot reclaim, StopTrainingJob, max runtime); SIGHUP: the terminal
# closed, passed on by `invoke local` (FORWARDED_SIGNALS) to its training child.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def leave_terminal() -> None:
    """After SIGHUP the terminal is gone and every write to it fails (EIO): the process's remaining
    lines go to /dev/null rather than end it with an OSError before its checkpoint."""
    for fd in (0, 1, 2):
        if os.isatty(fd):
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, fd)
            os.close(devnull)


class StopSignals:
    """SIGTERM and SIGHUP recorded, not acted on: the training loop asks `signum` at a step
    boundary. A handler runs between any two bytecodes, so it records what only the kernel sees
    and nothing else. `install` replaces both handlers; `restore` gives SIGHUP back what it had
    (SIGTERM's is the framework's to restore: Lightning puts back the original at its teardown)."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the stop signal that arrived; None: none yet
        self._previous_sighup: Any = None

    def _record(self, signum: int, _frame: object) -> None:
        self.signum = signum
        if signum == signal.SIGHUP:
            leave_terminal()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._record)
        self._previous_sighup = signal.signal(signal.SIGHUP, self._record)

    def restore(self) -> None:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None


# --- the garbage collector ---------------------------------------------------------------------

# Young objects collected every 50,000 allocations instead of 700; older generations as before.
SHORT_PROCESS_GC_THRESHOLD = (50_000, 20, 20)


def tune_gc_for_a_short_process() -> None:
    """For a process that builds large, long-lived object graphs as it starts and then ends (an
    invoke task: Hydra's config tree, botocore's service models): the cyclic GC walks them over
    and over while they grow, and again at exit, freeing next to nothing (~0.3 s of a 1 s
    `invoke upload`). Collect young objects rarely, and skip everything at exit. Idempotent."""
    gc.set_threshold(*SHORT_PROCESS_GC_THRESHOLD)
    atexit.unregister(freeze_for_exit)
    atexit.register(freeze_for_exit)


def freeze_for_exit() -> None:
    """The process ends next, and its objects with it: keep them out of the interpreter's last
    garbage collections (1.1-1.5 s of every exit with torch and Lightning loaded; frozen objects
    are not collected). Exit handlers, finalizers and flushes still run: close what you wrote first."""
    gc.freeze()


# --- a SageMaker job's failure reason ----------------------------------------------------------


def failure_text(exc: BaseException) -> str:
    """`Type: message` on one line, with the root of its chain of causes (Hydra wraps import errors).

    The type names the class of failure for `invoke why` (project/aws/triage.py): DataError,
    ModuleNotFoundError, torch.OutOfMemoryError's CUDA message.
    """
    text = f"{type(exc).__name__}: {exc}"
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    if root is not exc:
        text += f" (caused by {type(root).__name__}: {root})"
    return " ".join(text.split())


def record_failure(reason: str, environ: Mapping[str, str] = os.environ) -> None:
    """In a SageMaker container: the job's FailureReason, in /opt/ml/output/failure.

    The first rank to fail writes it (the others' errors are usually consequences). Outside a
    container this does nothing.
    """
    if "SM_MODEL_DIR" not in environ:
        return
    failure = Path(environ.get("SM_OUTPUT_DIR", "/opt/ml/output")) / "failure"
    try:
        with open(failure, "x") as out:
            out.write(reason[:1024])
    except OSError:
        pass  # already written by another rank, or no output dir: the exit code still fails the job
