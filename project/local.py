"""`invoke local`: check the run here in a second while the training process starts beside it.

The config is composed and the data resolved and verified in the invoke process (the standard
library and Hydra only, no torch), so a typo, a missing folder or a damaged file is one line at
once instead of after Lightning's start-up. Training runs as `python -m project.train` with the
same overrides, started before the check: it imports torch and Lightning (most of its start-up)
while this process checks, then waits for the word on a pipe (GO_ENV names its end): "go", or
the pipe closed, and it exits without a word, or killed when the check failed, since it has only
imported by then. It runs in a process group of its own: every Ctrl-C (or SIGTERM) reaches it
exactly once, through this process, and it stops at the next step boundary with a checkpoint
(project/checkpoints.py). The child prints its own errors, so its exit code is passed on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

from . import startup
from .config import compose
from .errors import INTERRUPTED_EXIT, USER_ERROR_EXIT
from .raw import channel_folders

# Exit codes of `python -m project.train` that need no further word: it said what happened.
SELF_REPORTED_EXITS = (USER_ERROR_EXIT, INTERRUPTED_EXIT)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GO_ENV = "LIGHTNING_SAGEMAKER_GO_FD"  # the training child's end of the pipe that says "go"
GO = b"go\n"


def run(overrides: Sequence[str]) -> int:
    """`invoke local`: the training child's exit code; a failed check raises (its one line)."""
    startup.mark("invoke_ready")
    return train_in_child(overrides, check_first=lambda: check(overrides))


def check(overrides: Sequence[str]) -> None:
    """Compose and validate the config, and make every data channel present (and verified, with dataset.files)."""
    cfg = compose(list(overrides))
    startup.mark("invoke_config")
    channel_folders(cfg)
    startup.mark("invoke_checked")


def _block_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def train_in_child(overrides: Sequence[str], check_first: Callable[[], None] = lambda: None) -> int:
    """Run `python -m project.train <overrides>`; its exit code (128 + N when signal N killed it).

    The child starts at once and imports while `check_first()` runs here; it trains only after the
    check passed. A check that raises (or a Ctrl-C during it: the child, in a process group of its
    own, never sees that one) kills the child, which has only imported, and the error propagates.
    """
    go_read, go_write = os.pipe()
    # Its own process group, not the terminal's: each Ctrl-C reaches it once, forwarded by us. SIGINT
    # blocked until project.train.main handles it: one during the imports waits instead of a traceback.
    child = subprocess.Popen(
        [sys.executable, "-m", "project.train", *overrides],
        process_group=0,
        preexec_fn=_block_sigint,
        env={**os.environ, GO_ENV: str(go_read)},
        pass_fds=(go_read,),
    )
    os.close(go_read)
    try:
        check_first()
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
            os.write(go_write, GO)
        os.close(go_write)
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def wait_for_go() -> bool:
    """In the training child: whether to train. True unless started by train_in_child and its pipe
    closed without "go". The pipe's end is not passed on (DDP ranks start from here)."""
    fd = os.environ.pop(GO_ENV, None)
    if fd is None:
        return True
    with os.fdopen(int(fd), "rb") as pipe:
        word = pipe.read(len(GO))
    startup.mark("go")
    return word == GO
