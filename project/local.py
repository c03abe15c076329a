"""`invoke local`: check the run here in a second, then train in a child process.

The config is composed and the data resolved and verified in the invoke process (the standard
library and Hydra only, no torch), so a typo, a missing folder or a damaged file is one line at
once instead of after Lightning's start-up. Training then runs as `python -m project.train` with
the same overrides, in a process group of its own: every Ctrl-C (or SIGTERM) reaches it exactly
once, through this process, and it stops at the next step boundary with a checkpoint
(project/checkpoints.py). The child prints its own errors, so its exit code is passed on.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Sequence

from .config import compose
from .errors import INTERRUPTED_EXIT, USER_ERROR_EXIT
from .raw import channel_folders

# Exit codes of `python -m project.train` that need no further word: it said what happened.
SELF_REPORTED_EXITS = (USER_ERROR_EXIT, INTERRUPTED_EXIT)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def check(overrides: Sequence[str]) -> None:
    """Compose and validate the config, and make every data channel present (and verified, with dataset.files)."""
    channel_folders(compose(list(overrides)))


def _block_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def train_in_child(overrides: Sequence[str]) -> int:
    """Run `python -m project.train <overrides>`; its exit code (128 + N when signal N killed it)."""
    argv = [sys.executable, "-m", "project.train", *overrides]
    child: subprocess.Popen[bytes] | None = None
    early: list[int] = []  # signals that came before the child existed: it gets them on starting

    def forward(signum: int, _frame: object) -> None:
        if child is None:
            early.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}  # before the child: no gap
    try:
        # Its own process group, not the terminal's: each Ctrl-C reaches it once, forwarded by us. SIGINT
        # blocked until project.train.main handles it: one during the imports waits instead of a traceback.
        child = subprocess.Popen(argv, process_group=0, preexec_fn=_block_sigint)
        for signum in early:
            child.send_signal(signum)
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
