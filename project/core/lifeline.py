"""Processes that end with the process that started them, so that none trains on as an orphan.

Linux's parent-death signal (prctl PR_SET_PDEATHSIG): the kernel signals a process when the
*thread* that started it ends, even while the rest of that process lives on. So a process given
one must be started from a thread that lives as long as the process should: the main thread, or
the thread that waits for it (a sandbox job's). The request survives exec (not of a set-user-ID
program). Other systems have no such signal: there it is a no-op, and `invoke local`'s training
process watches a pipe instead (project/training/local.py), which works everywhere.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

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
