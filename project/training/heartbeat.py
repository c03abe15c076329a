"""A training process's side of the watchdog (project/training/watchdog.py): its progress, reported.

`phase(name)` records the phase of the run (train.py calls it before fit: start-up, data set-up,
rendezvous; after it: test, export), `Progress`, a Lightning callback, each batch and phase of fit.
Recording only sets fields in memory; a thread writes them to rank-N.json in the folder
stalls.HEARTBEAT_ENV names at most once a second (WRITE_SECONDS), when they changed, so a step costs
no I/O. A rank stuck in a call that holds the GIL, or in one that releases it, writes nothing new either
way. On start the process also has faulthandler dump every thread's stack to
rank-N.stacks on stalls.STACKS_SIGNAL: it runs at the signal, in C, whatever the main thread is doing.

Nothing is written where HEARTBEAT_ENV is unset (no watchdog started the process).
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import socket
import threading
from pathlib import Path
from typing import IO

import pytorch_lightning as pl

from project.core.atomic import write_atomically
from project.training import stalls

WRITE_SECONDS = 1.0  # the most often a rank rewrites its heartbeat file


class Heartbeat:
    """This process's progress, written to `folder` by a daemon thread."""

    def __init__(self, folder: Path, rank: int, host: str) -> None:
        self.folder, self.rank, self.host = Path(folder), rank, host
        self.phase, self.step, self.progress = stalls.STARTUP, 0, 0
        self._written: str | None = None
        self._lock = threading.Lock()
        self._stacks: IO[str] | None = None
        self._wake = threading.Event()

    def start(self) -> Heartbeat:
        self._register_stacks()
        threading.Thread(target=self._write_periodically, name="heartbeat", daemon=True).start()
        atexit.register(self.finish)
        return self

    def _register_stacks(self) -> None:
        if self._stacks is not None:
            self._stacks.close()
        self._stacks = open(stalls.stacks_file(self.folder, self.rank), "a")  # noqa: SIM115  # open for the process's life
        faulthandler.register(stalls.STACKS_SIGNAL, file=self._stacks, all_threads=True)

    def set_rank(self, rank: int) -> None:
        """Lightning knows the global rank only once its launcher started the process."""
        if rank != self.rank:
            with self._lock:
                old = stalls.heartbeat_file(self.folder, self.rank)
                self.rank, self._written = rank, None
                old.unlink(missing_ok=True)
                self._register_stacks()

    def beat(self, phase: str, step: int | None = None) -> None:
        if phase != self.phase and self._stacks is not None:
            # Again at each new phase: Lightning's Trainer puts back at its teardown every signal's
            # handler as Python saw it at its start, and Python does not see faulthandler's.
            faulthandler.register(stalls.STACKS_SIGNAL, file=self._stacks, all_threads=True)
        self.phase, self.progress = phase, self.progress + 1
        if step is not None:
            self.step = step

    def _write_periodically(self) -> None:
        while not self._wake.wait(WRITE_SECONDS):
            self.write()

    def write(self) -> None:
        with self._lock:
            beat = stalls.Beat(self.rank, self.host, os.getpid(), self.phase, self.step, self.progress)
            text = beat.to_json()
            if text != self._written:
                try:
                    write_atomically(stalls.heartbeat_file(self.folder, self.rank), text)
                except OSError:
                    return  # the watcher's folder is gone (it ended): nobody reads it any more
                self._written = text

    def finish(self) -> None:
        self.beat(stalls.DONE)
        self.write()


_heartbeat: Heartbeat | None = None


def start(environ: dict[str, str] | os._Environ = os.environ) -> Heartbeat | None:
    """This process's heartbeat, if a watchdog started it (HEARTBEAT_ENV); once per process."""
    global _heartbeat
    folder = environ.get(stalls.HEARTBEAT_ENV)
    if folder and _heartbeat is None:
        rank = int(environ.get("RANK") or environ.get("LOCAL_RANK") or 0)
        host = environ.get("SM_CURRENT_HOST") or socket.gethostname()
        _heartbeat = Heartbeat(Path(folder), rank, host).start()
    return _heartbeat


def phase(name: str, step: int | None = None) -> None:
    """Record the run's phase (stalls.PHASES); nothing without a watchdog."""
    if _heartbeat is None:
        start()
    if _heartbeat is not None:
        _heartbeat.beat(name, step)


class Progress(pl.Callback):
    """Each batch and phase of fit, recorded in the heartbeat (cheap: fields in memory)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if _heartbeat is not None:
            _heartbeat.set_rank(trainer.global_rank)
            _heartbeat.beat(stalls.DATA)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        phase(stalls.VALIDATION, trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        phase(stalls.TRAINING, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        phase(stalls.TRAINING, trainer.global_step)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        phase(stalls.TRAINING, trainer.global_step)  # the first batch's loading comes next

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        phase(stalls.VALIDATION, trainer.global_step)

    def on_validation_start(self, trainer, pl_module) -> None:
        phase(stalls.VALIDATION, trainer.global_step)

    def on_test_start(self, trainer, pl_module) -> None:
        phase(stalls.TEST, trainer.global_step)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        phase(stalls.TEST, trainer.global_step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        phase(stalls.CHECKPOINT, trainer.global_step)
