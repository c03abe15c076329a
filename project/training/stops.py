"""How a run stops: by a stop signal (SIGTERM, SIGHUP) or by Ctrl-C, and the exit code it then has.

SageMaker sends SIGTERM before reclaiming a spot instance, on StopTrainingJob and at the
max-runtime limit, then SIGKILL 120 s later. The signals are recorded (project/core/process.py
StopSignals) and acted on at a step boundary by RunCheckpoints (project/training/checkpoints.py),
which raises Stopped or Interrupted there. In a SageMaker container a stopped process exits 0: a
stop is not a failure (SageMaker marks the job Stopped or, for spot, restarts it; a non-zero exit
would make the SDK's driver write a failure reason). Anywhere else (`invoke local`, a local
sweep's job) a stopped run is not a success: it exits 128 + the signal (stop_exit).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from pytorch_lightning.utilities.exceptions import SIGTERMException

from project.core.errors import TERMINATED_EXIT
from project.core.runtime import CLEAN_STOP_ENV


class Stopped(SIGTERMException):
    """The run stopped at a step boundary with a checkpoint after `signum` (process.STOP_SIGNALS)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = signum


def stop_exit(stop: SIGTERMException, in_container: bool) -> int:
    """The exit code of a process whose run was stopped (not by Ctrl-C): 0 in a SageMaker container,
    whose contract that is (see the module's docstring), else 128 + the signal, as a shell says it."""
    if in_container:
        return 0
    return 128 + stop.signum if isinstance(stop, Stopped) else TERMINATED_EXIT  # Lightning's own: SIGTERM


class Interrupted(SIGTERMException):
    """The run was stopped by Ctrl-C (SIGINT); the entry point exits 130.

    A SIGTERMException, so Lightning tears the run down without its KeyboardInterrupt handling
    (which exits 1 and saves nothing) and callbacks see it in on_exception. `forced`: a second
    Ctrl-C while the first was waiting for a step boundary. `reported`: a line was printed.
    """

    def __init__(self, forced: bool = False) -> None:
        super().__init__()
        self.forced, self.reported = forced, False


class Interrupts:
    """Ctrl-C during a run. Inside the training loop the first one is recorded and the run stops
    at the next step boundary with a checkpoint (RunCheckpoints); anywhere else, and a second one,
    stop the run at once by raising Interrupted."""

    active: ClassVar[Interrupts | None] = None  # the one whose handler is installed: SIGINT is per process

    def __init__(self) -> None:
        self.pending = False  # a Ctrl-C waits for the step boundary
        self.deferring = False  # inside the training loop: RunCheckpoints stops it cleanly

    def handler(self, signum: int, frame: Any) -> None:
        if self.deferring and not self.pending:
            self.pending = True
            print(
                "\ninterrupted: stopping at the next step, with a checkpoint (Ctrl-C again to quit now)",
                file=sys.stderr,
                flush=True,
            )
            return
        raise Interrupted(forced=self.pending)

    @contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Handle SIGINT for the block. A SIGINT that arrived while it was blocked (invoke local
        starts training with it blocked, so start-up is never cut by a traceback) lands now."""
        previous = signal.signal(signal.SIGINT, self.handler)
        Interrupts.active = self
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            yield self
        finally:
            Interrupts.active = None
            signal.signal(signal.SIGINT, previous)


def mark_clean_stop(rank: int, environ: Mapping[str, str] = os.environ) -> None:
    """Tell the container's launcher that this worker checkpointed after SIGTERM (project/training/launch.py)."""
    folder = environ.get(CLEAN_STOP_ENV)
    if folder:
        Path(folder, f"rank-{rank}").touch()
