"""Run identity: what makes two runs the same run, and what a run's checkpoints say of it.

One function decides it, `run_identity`, and everything that asks "is this the same run?" calls
it: the prefix of a run's checkpoint files (project/training/checkpoints.py), resume by default and the
refusal to mix two configs in one folder (`choose_run`, for `invoke local` and project.training.train),
the status `invoke runs` shows of a local run (project/face/catalog.py), and a SageMaker job's
checkpoint prefix and `config-hash` tag, by which a sweep skips the jobs completed before
(project/aws/plan.py, project/aws/sweep.py). Users see it as the "config hash".

In it: what shapes the trained weights, the `dataset`, `model` and `trainer` groups as
resolved, trainer.gpus included as the config holds it (locally usually null, "every GPU here";
a SageMaker job's staged config holds the number its plan decided). The identity cannot hold the
world size itself: the invoke process decides it before anything has counted the GPUs. The world
size decides how the global batch is split and what a checkpoint's loader position means, so each
checkpoint records it and a resume at another world size is refused in one line
(project/core/topology.py, check_resume).
Not in it: where the data is read from (`dataset.channels`, `dataset.input_modes`: the same
bytes from any mirror), the levers of speed and reporting (`UNSHAPING_TRAINER_KEYS`), and every
group outside those three: `run_name`, `paths`, `instance`, `job`, `aws`, `sweep`, `deploy`. So
one config trained under two names, or on two instance types of one GPU count, is one run; a new
trainer.seed is another. A run started from an earlier model (`trainer.init_from`) holds its
parent's config hash in place of the path given (project/core/lineage.py).

Standard library only (OmegaConf inside `run_identity`): the invoke process decides with it
before the training process has imported torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from project.core.errors import UserError
from project.core.lineage import lineage_key
from project.core.sagemaker_names import METRICS_FILE

IDENTITY_LENGTH = 12  # hex digits of SHA-256: collisions are out of reach for one user's runs
# How a run executes or reports, not what it computes: a checkpoint resumes whichever way they are set.
UNSHAPING_TRAINER_KEYS = (
    "resume",
    "data_on_device",
    "channels_last",
    "compile",
    "log_every_n_steps",
    "profile",
    "profile_steps",
    # the watchdog's limits: a run re-started with another limit resumes the run that stalled
    "stall_timeout_minutes",
    "startup_timeout_minutes",
    "job_stall_timeout_minutes",
    "job_startup_timeout_minutes",
)
# Where the data comes from, not what it is (dataset.files names the content); on_device is
# IdxDataModule's copy of trainer.data_on_device, a lever.
UNSHAPING_DATASET_KEYS = ("channels", "input_modes", "on_device")
CHECKPOINT_FILE = re.compile(r"^(?P<identity>[0-9a-f]+)-step=(?P<step>\d+)\.ckpt$")
# trainer.strategy=fsdp: a checkpoint is a folder of that name (project/training/checkpoints.py) holding
# each rank's shard, the loops' state (Lightning's) and the index of the shards (torch.distributed.checkpoint's,
# written last, once every rank's shard is).
SHARDED_STATE, SHARDED_INDEX = "meta.pt", ".metadata"
FINISHED_FILE = re.compile(r"^(?P<identity>[0-9a-f]+)-finished\.json$")


def run_identity(cfg: Any) -> str:
    """A short, stable hash of everything that shapes the training result (the module docstring says what)."""
    from omegaconf import OmegaConf

    shaping: dict[str, dict[str, Any]] = {
        k: OmegaConf.to_container(cfg[k], resolve=True)  # type: ignore[misc]  # a config node is a dict
        for k in ("dataset", "model", "trainer")
    }
    for key in UNSHAPING_TRAINER_KEYS:
        shaping["trainer"].pop(key, None)
    spec = shaping["trainer"].get("init_from")
    if spec is None:  # a run from scratch: the identity it had before these keys
        shaping["trainer"].pop("init_from", None)
        shaping["trainer"].pop("init_strict", None)
    else:  # the parent's identity, not where its file lies (project/core/lineage.py)
        shaping["trainer"]["init_from"] = lineage_key(str(spec), cfg.paths.runs_dir)
    for key in UNSHAPING_DATASET_KEYS:
        shaping["dataset"].pop(key, None)
    blob = json.dumps(shaping, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:IDENTITY_LENGTH]


def default_run_name(cfg: Any) -> str:
    """`<model>-<timestamp>`: a new run's name where the config gives none (UTC: one clock on every machine)."""
    return f"{cfg.model.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def checkpoint_name(identity: str, step: int) -> str:
    return f"{identity}-step={step:08d}.ckpt"


def finished_name(identity: str) -> str:
    """The marker a run leaves beside its checkpoints when it finished (SageMaker syncs it to S3 with them)."""
    return f"{identity}-finished.json"


def tracker_runs_name(identity: str) -> str:
    """Where a run keeps its MLflow and W&B run ids beside its checkpoints: a resumption logs to the same runs."""
    return f"{identity}-trackers.json"


@dataclass(frozen=True)
class Progress:
    """How far one identity's run got, as its checkpoint folder (or S3 prefix) tells."""

    identity: str
    step: int  # the newest checkpoint's step; -1 without one
    finished: bool

    @property
    def status(self) -> str:
        return "Completed" if self.finished else f"interrupted at step {self.step}"


def progress(names: Iterable[str]) -> dict[str, Progress]:
    """identity -> its Progress, from the file names of a checkpoint folder or the keys of an S3 prefix.

    In S3 a sharded checkpoint is no key but the keys of its folder's files (each host syncs its own
    shards there): it counts once its index is among them."""
    steps: dict[str, int] = {}
    finished: set[str] = set()
    for name in names:
        folder, _, base = name.rpartition("/")
        if base == SHARDED_INDEX:
            base = folder.rpartition("/")[2]
        if match := CHECKPOINT_FILE.match(base):
            identity = match.group("identity")
            steps[identity] = max(steps.get(identity, -1), int(match.group("step")))
        elif match := FINISHED_FILE.match(base):
            finished.add(match.group("identity"))
    return {i: Progress(i, steps.get(i, -1), i in finished) for i in sorted({*steps, *finished})}


def run_progress(run_dir: Path) -> dict[str, Progress]:
    """What a local run folder (runs/<name>/) holds: its checkpoints' identities, and the one its
    metrics.json names (a run that finished before runs left a marker) as finished."""
    folder = run_dir / "checkpoints"
    found = progress(p.name for p in folder.iterdir()) if folder.is_dir() else {}
    try:
        recorded = json.loads((run_dir / METRICS_FILE).read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str) and recorded:
        step = found[recorded].step if recorded in found else -1
        found[recorded] = Progress(recorded, step, True)
    return found


class RunNameError(UserError):
    pass


def choose_run(
    identity: str, run_name: str | None, runs_dir: Path, new_name: Callable[[], str], resume: bool = True
) -> str:
    """The run (its folder under runs_dir) a run of this identity trains in, decided before anything is written.

    With `run_name`: that folder, unless it holds another identity's run (one folder, one config).
    Without: the newest unfinished run of this identity under runs_dir, so the same command
    resumes; none, but a finished one: refused, it would train nothing new; else `new_name()`.
    `resume=False` (trainer.resume) always starts a new run.
    """
    if run_name:
        held = run_progress(runs_dir / run_name)
        if held and identity not in held:
            other = max(held.values(), key=lambda p: (not p.finished, p.step))
            raise RunNameError(
                f"run_name={run_name} is taken by another config's run in {runs_dir / run_name} "
                f"(config {other.identity}, {other.status.lower()}; this config is {identity}): "
                "pick a new run_name=, or leave it out"
            )
        return run_name
    if not resume:
        return new_name()
    unfinished: list[tuple[float, str]] = []  # (last written, run name)
    finished: list[tuple[float, str]] = []
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
        mine = run_progress(run_dir).get(identity)
        if mine is not None:
            (finished if mine.finished else unfinished).append((_last_written(run_dir), run_dir.name))
    if unfinished:
        return max(unfinished)[1]
    if finished:
        _, name = max(finished)
        raise RunNameError(
            f"this config already trained as run {name} ({runs_dir / name}, config {identity}, finished): "
            "to train it again pass a new trainer.seed=, or run_name=<new name>"
        )
    return new_name()


def _last_written(run_dir: Path) -> float:
    """When the run last saved: its checkpoint folder changes with every checkpoint, the run folder does not."""
    folder = run_dir / "checkpoints"
    return (folder if folder.is_dir() else run_dir).stat().st_mtime
