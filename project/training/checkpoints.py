"""Checkpoints keyed by run identity: periodic saves, a save on SIGTERM, and safe resume.

SageMaker sends SIGTERM before reclaiming a spot instance, on StopTrainingJob and at the max-
runtime limit, then SIGKILL 120 s later (torchrun, when it launched the job, forwards it to its
workers and waits 30 s). `RunCheckpoints` has the signal recorded (project/core/process.py
StopSignals); at the end of the current training batch all ranks agree on it, write a checkpoint to
the checkpoint directory (which SageMaker syncs to S3), print `sigterm_checkpoint_step=N` and raise
Lightning's SIGTERMException (project/training/stops.py says what exit code the process then has).
SIGHUP, a closed terminal, stops a run as SIGTERM does; `invoke local`'s training process also
stops so when the command that started it dies (project/training/local.py). The exported model and
metrics.json are written only by a run that finishes.

On the next start, `newest_valid` picks the newest checkpoint of the same run identity
(project/core/identity.py, the config hash) that loads; a truncated or corrupt one is skipped with a
warning. A checkpoint holds the loop progress, optimizer and lr-schedule state, the training
loader's position within the epoch (data.ResumableLoader) and the global RNG state, so a resumed
run takes the same optimizer steps on the same batches as one that was never stopped.

Under trainer.strategy=fsdp a checkpoint is a folder of the same name in Lightning's sharded
format: each rank writes its own shard of the weights and optimizer state (`__<rank>_0.distcp`),
global rank 0 the index (`.metadata`) and the rest (`meta.pt`). Each host's local rank 0 renames
and prunes the folders on its own disk; SageMaker's sync to the one checkpoint prefix puts the
hosts' shards together, and a restart downloads the whole folder to every host.

This module is over 300 lines because it is one concern, a run's checkpoints: the periodic save, the save on a
stop and the resume agree on one format (loop progress, loader position, RNG state, the sharded folder).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from project.core.identity import CHECKPOINT_FILE, SHARDED_INDEX, SHARDED_STATE, checkpoint_name
from project.core.process import StopSignals
from project.core.topology import Topology, check_resume
from project.training.stops import Interrupted, Interrupts, Stopped, mark_clean_stop

log = logging.getLogger(__name__)

KEEP = 2  # the newest checkpoints of a run kept on disk (an older one is removed after each save)
# A checkpoint holds the weights and the optimizer's state: an Adam-style optimizer (AdamW,
# LitClassifier's) keeps two moments the size of the weights, so three copies. SGD with momentum
# keeps one and plain SGD none: for them the estimate errs on the safe side.
CHECKPOINT_COPIES_OF_WEIGHTS = 3
# Everything else a run writes, with room to spare: a tiny run's plots, serving code, metrics and
# the checkpoint's and TorchScript file's own overhead came to ~0.4 MiB besides the weights, and
# the logged curves (CSV, TensorBoard) grow with the steps.
RUN_FILES_BYTES = 4 << 20


def run_bytes(module: torch.nn.Module) -> int:
    """About the most disk a run of `module` uses at once: `KEEP` checkpoints and the one being
    written, and the exports (the state dict and the TorchScript model, a copy of the weights each)."""
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    return (KEEP + 1) * CHECKPOINT_COPIES_OF_WEIGHTS * weights + 2 * weights + RUN_FILES_BYTES


def candidates(checkpoint_dir: Path, identity: str) -> list[Path]:
    """This run's checkpoints, newest (highest step) first; other runs' files are ignored."""
    found = []
    for path in Path(checkpoint_dir).glob(f"{identity}-step=*.ckpt"):
        match = CHECKPOINT_FILE.match(path.name)
        if match and match.group("identity") == identity:
            found.append((int(match.group("step")), path.stat().st_mtime, path))
    return [path for _, _, path in sorted(found, reverse=True)]


def _complete(path: Path) -> bool:
    """Whether a checkpoint holds a whole training state: a file its weights and loops, a sharded
    folder its loops and the index of every rank's shards (written last, once all were)."""
    if path.is_dir():
        state = torch.load(path / SHARDED_STATE, map_location="cpu", weights_only=True)
        return "loops" in state and (path / SHARDED_INDEX).is_file()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return "state_dict" in state and "loops" in state


def newest_valid(checkpoint_dir: Path, identity: str) -> Path | None:
    for path in candidates(checkpoint_dir, identity):
        try:
            # weights_only, as Lightning loads it: a file it would refuse is skipped here too.
            if _complete(path):
                return path
            log.warning("checkpoint %s is incomplete; trying an older one", path.name)
        except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
            # a truncated zip (RuntimeError from the stream reader), a bad pickle, a partial sync from S3
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path.name, type(exc).__name__)
    return None


def remove(path: Path) -> None:
    """A checkpoint file, or a sharded checkpoint's folder."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def keeps_files(trainer: pl.Trainer, sharded: bool) -> bool:
    """Whether this process renames and prunes checkpoints: global rank 0, which writes them all;
    sharded, every host's local rank 0 (each host's ranks write their shards to its own disk)."""
    return trainer.local_rank == 0 if sharded else trainer.is_global_zero


def save_atomically(trainer: pl.Trainer, path: Path, sharded: bool = False) -> None:
    """Save under a temporary name, then rename, so a kill mid-write leaves no bad newest file."""
    tmp = path.with_name(f".{path.name}.part")
    if sharded:  # a folder a killed save left: its shards are not this save's
        if keeps_files(trainer, sharded):
            remove(tmp)
        trainer.strategy.barrier("checkpoint folder cleared")
    trainer.save_checkpoint(tmp, weights_only=False)  # the full training state; every rank has written on return
    if keeps_files(trainer, sharded) and tmp.exists():
        if path.is_dir():  # this step's folder from before a resume: a rename cannot replace a folder
            remove(path)
        os.replace(tmp, path)


def rng_state() -> dict:
    """The global RNG states in types `torch.load(weights_only=True)` accepts."""
    legacy: tuple[str, np.ndarray, int, int, float] = np.random.get_state()  # type: ignore[assignment]  # legacy=True: a tuple
    kind, keys, pos, has_gauss, gauss = legacy
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's own device
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def share_rank0_buffers(trainer: pl.Trainer) -> None:
    """Every rank's buffers (BatchNorm's running statistics) made rank 0's before a sharded save.

    FSDP leaves buffers whole but, unlike DDP, does not broadcast them: each rank's follow its own
    batches. A sharded checkpoint stores one copy of a tensor every rank holds, from whichever rank;
    rank 0's is the one a run validates, tests and exports with (LitClassifier shares it), so it is
    the one a resumed run must start from.
    """
    for buffer in trainer.lightning_module.buffers():
        torch.distributed.broadcast(buffer, src=0)


class RunCheckpoints(pl.Callback):
    """Every `every_n_steps` optimizer steps and at each epoch end, keep the newest `keep` files.

    Only global rank 0 writes (Lightning's save is rank-zero-only); every rank takes part in the
    save, which is a collective call.
    """

    def __init__(
        self,
        checkpoint_dir: Path,
        identity: str,
        every_n_steps: int = 0,
        topology: Topology | None = None,
        keep: int = KEEP,
    ):
        self.dir, self.identity, self.every, self.keep = Path(checkpoint_dir), identity, every_n_steps, keep
        self.topology = topology  # recorded in each checkpoint; a resume on another world size is refused
        self._saved_step = -1  # decided identically on every rank: saving is a collective call
        self._rng_to_restore: dict | None = None
        self._stop_signals = StopSignals()  # SIGTERM, SIGHUP: recorded, acted on at a step boundary
        self._training = False  # inside the training loop, where a stop waits for a step boundary

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self._saved_step:
            return
        self._saved_step = trainer.global_step
        sharded = self.topology is not None and self.topology.sharded
        if sharded:
            share_rank0_buffers(trainer)
        save_atomically(trainer, self.dir / checkpoint_name(self.identity, trainer.global_step), sharded)
        if keeps_files(trainer, sharded):
            for old in candidates(self.dir, self.identity)[self.keep :]:
                remove(old)

    def state_dict(self) -> dict:
        # Dropout draws from the global RNG; data loaders use private generators (data.py), so
        # this state at a save is the state the next training batch starts from.
        world = {"world_size": self.topology.world_size} if self.topology else {}
        return {"rng": rng_state(), **world}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.topology is not None:
            check_resume(
                f"the checkpoint of run {self.identity} in {self.dir}", state_dict.get("world_size"), self.topology
            )
        self._rng_to_restore = state_dict.get("rng")

    @property
    def interrupts(self) -> Interrupts | None:
        """The run's Ctrl-C handling (project.training.train.main installs it); None leaves SIGINT alone."""
        return Interrupts.active

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        """Whether any rank got SIGTERM or Ctrl-C; a collective under DDP, so all ranks stop at one step."""
        stop = self._stop_signals.signum is not None or (self.interrupts is not None and self.interrupts.pending)
        if trainer.world_size == 1:
            return stop
        return trainer.strategy.reduce_boolean_decision(stop, all=False)

    def _stop(self) -> SIGTERMException:
        signum = self._stop_signals.signum
        interrupted = self.interrupts is not None and self.interrupts.pending and signum is None
        return Interrupted() if interrupted else Stopped(signum or signal.SIGTERM)

    def on_train_start(self, trainer, pl_module) -> None:
        # Replaces Lightning's SIGTERM handler (it restores the original one at teardown). Under
        # DDP Lightning's broadcasts from inside the handler, which pairs with whatever collective
        # the other rank is in at that moment: training hangs or exchanges the wrong tensors.
        # SIGHUP is ours alone: teardown restores what it was.
        self._stop_signals.install()
        self._training = True
        if self.interrupts is not None:
            self.interrupts.deferring = True
        # All ranks must have resumed from the same checkpoint (every host sees the same synced
        # checkpoint directory); replicas that start from different steps would diverge or hang.
        if trainer.world_size > 1:
            rank0_step = trainer.strategy.broadcast(trainer.global_step, src=0)
            if not trainer.strategy.reduce_boolean_decision(rank0_step == trainer.global_step, all=True):
                raise RuntimeError(
                    f"rank {trainer.global_rank} starts at step {trainer.global_step}, rank 0 at step {rank0_step}: "
                    f"every host must see the same checkpoint files in {self.dir}"
                )

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._stop_signals.restore()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._rng_to_restore is not None:  # the first batch after a resume
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._training = False  # the test pass and the export are not resumable: a Ctrl-C there stops at once
        if self.interrupts is not None:
            self.interrupts.deferring = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stop_requested(trainer):
            raise self._stop()  # on_exception saves this step
        if self.every and trainer.global_step % self.every == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer)
        if self._stop_requested(trainer):  # SIGTERM during this epoch's validation
            raise self._stop()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, Interrupted):
            self._interrupted(trainer, exception)
        elif isinstance(exception, SIGTERMException):
            self._save(trainer)
            if trainer.is_global_zero:
                path = self.dir / checkpoint_name(self.identity, trainer.global_step)
                by = signal.Signals(exception.signum if isinstance(exception, Stopped) else signal.SIGTERM).name
                print(f"sigterm_checkpoint_step={trainer.global_step}", flush=True)  # any stop: `invoke why` reads it
                print(f"stopped by {by}; saved {path}; run again with the same config to resume", flush=True)
            mark_clean_stop(trainer.global_rank)

    def _interrupted(self, trainer: pl.Trainer, exception: Interrupted) -> None:
        """Ctrl-C: a checkpoint at a step boundary of the training loop, else nothing new."""
        exception.reported = True
        if self._training and not exception.forced:
            self._save(trainer)
            line = f"interrupted at step {trainer.global_step}; checkpoint saved; run the same command to resume"
        else:
            newest = next(iter(candidates(self.dir, self.identity)), None)
            kept = f"the newest checkpoint is {newest.name}" if newest else "there is no checkpoint yet"
            line = (
                f"interrupted at step {trainer.global_step}; no new checkpoint ({kept}); run the same command to resume"
            )
        if trainer.is_global_zero:
            print(line, file=sys.stderr, flush=True)
