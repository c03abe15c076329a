"""Checkpoints keyed by run identity: periodic saves, a save on SIGTERM, and safe resume.

SageMaker sends SIGTERM before reclaiming a spot instance (and on StopTrainingJob); Lightning
turns it into SIGTERMException after the current batch, and `SaveOnSigterm` writes a checkpoint
to the checkpoint directory, which SageMaker syncs to S3. On the next start, `newest_valid`
picks the newest checkpoint of the same identity that loads; a truncated one is skipped.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

STEP_PATTERN = re.compile(r"-step=(\d+)\.ckpt$")


def checkpoint_name(identity: str, step: int) -> str:
    return f"{identity}-step={step:08d}.ckpt"


def candidates(checkpoint_dir: Path, identity: str) -> list[Path]:
    """This run's checkpoints, newest (highest step) first; other runs' files are ignored."""
    found = []
    for path in Path(checkpoint_dir).glob(f"{identity}-step=*.ckpt"):
        match = STEP_PATTERN.search(path.name)
        if match:
            found.append((int(match.group(1)), path.stat().st_mtime, path))
    return [path for _, _, path in sorted(found, reverse=True)]


def newest_valid(checkpoint_dir: Path, identity: str) -> Optional[Path]:
    for path in candidates(checkpoint_dir, identity):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if "state_dict" in state and "loops" in state:
                return path
            log.warning("checkpoint %s is incomplete; trying an older one", path.name)
        except Exception as exc:  # truncated zip, bad pickle, partial sync from S3
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path.name, type(exc).__name__)
    return None


def save_atomically(trainer: pl.Trainer, path: Path) -> None:
    """Save under a temporary name, then rename, so a kill mid-write leaves no bad newest file."""
    tmp = path.with_name(f".{path.name}.part")
    trainer.save_checkpoint(tmp)
    if trainer.is_global_zero:
        os.replace(tmp, path)


class RunCheckpoints(pl.Callback):
    """Every `every_n_steps` optimizer steps and at each epoch end, keep the newest `keep` files."""

    def __init__(self, checkpoint_dir: Path, identity: str, every_n_steps: int = 0, keep: int = 2):
        self.dir, self.identity, self.every, self.keep = Path(checkpoint_dir), identity, every_n_steps, keep
        self._saved_step = -1  # decided identically on every rank: saving is a collective call

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self._saved_step:
            return
        self._saved_step = trainer.global_step
        save_atomically(trainer, self.dir / checkpoint_name(self.identity, trainer.global_step))
        if trainer.is_global_zero:
            for old in candidates(self.dir, self.identity)[self.keep :]:
                old.unlink(missing_ok=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every and trainer.global_step % self.every == 0 and not trainer.received_sigterm:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self._save(trainer)
            if trainer.is_global_zero:
                print(f"sigterm_checkpoint_step={trainer.global_step}", flush=True)
