"""Where a run reads and writes: a laptop/bare-metal layout or the SageMaker container's.

Pure functions of the environment mapping, so both are unit-tested without a container.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from project.core.errors import UserError
from project.core.sagemaker_names import CHECKPOINT_DIR, METRICS_FILE

# A folder where each worker marks that it checkpointed after SIGTERM: the launcher (PID 1) then
# exits 0 (project/training/launch.py, project/training/checkpoints.py).
CLEAN_STOP_ENV = "LIGHTNING_SAGEMAKER_CLEAN_STOP_DIR"
MASTER_PORT = "7777"  # the SageMaker SDK's SM_MASTER_PORT, which its torchrun driver passes on
# The sandbox's instances share this machine's loopback, where 7777 may be taken (by another job): it
# names a free port for the rendezvous in this variable, which wins over SM_MASTER_PORT (the SDK's
# driver sets that to 7777 in the container). SageMaker never sets it.
MASTER_PORT_ENV = "LIGHTNING_SAGEMAKER_MASTER_PORT"
# Set to 1: Lightning's own info messages and model summary, and each rank's weights digest at the
# end of fit (tests compare them across ranks). An environment variable reaches every rank a
# launcher (torchrun, Lightning) starts.
DEBUG_ENV = "LIGHTNING_SAGEMAKER_DEBUG"
# Seconds between progress lines in a log without a terminal (project/training/reporting.py), where the
# default suits neither a quick look at a short run nor a test.
PROGRESS_ENV = "LIGHTNING_SAGEMAKER_PROGRESS_SECONDS"


@dataclass(frozen=True)
class SageMakerEnv:
    model_dir: Path
    output_data_dir: Path
    channels: dict[str, Path]
    hosts: list[str]
    current_host: str
    job_name: str | None
    checkpoint_dir: Path
    master_addr: str | None = None  # SM_MASTER_ADDR where the SDK sets it, else the first host
    master_port: str = MASTER_PORT

    @property
    def node_rank(self) -> int:
        # The SDK ranks hosts in sorted order (SM_CURRENT_HOST_RANK); so does this, whatever
        # order SM_HOSTS lists them in, so torchrun's node 0 is the SDK's rank 0.
        return sorted(self.hosts).index(self.current_host)

    @property
    def master(self) -> str:
        return self.master_addr or sorted(self.hosts)[0]


def sagemaker_env(environ: Mapping[str, str] = os.environ) -> SageMakerEnv | None:
    """The SageMaker training environment, or None when not running in a training container."""
    if "SM_MODEL_DIR" not in environ:
        return None
    channels = {
        key[len("SM_CHANNEL_") :].lower(): Path(value)
        for key, value in environ.items()
        if key.startswith("SM_CHANNEL_")
    }
    hosts = json.loads(environ.get("SM_HOSTS", '["algo-1"]'))
    return SageMakerEnv(
        model_dir=Path(environ["SM_MODEL_DIR"]),
        output_data_dir=Path(environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")),
        channels=channels,
        hosts=hosts,
        current_host=environ.get("SM_CURRENT_HOST", hosts[0]),
        job_name=environ.get("TRAINING_JOB_NAME") or environ.get("SM_TRAINING_JOB_NAME"),
        checkpoint_dir=Path(environ.get("SM_CHECKPOINT_DIR", CHECKPOINT_DIR)),
        master_addr=environ.get("SM_MASTER_ADDR"),
        master_port=environ.get(MASTER_PORT_ENV) or environ.get("SM_MASTER_PORT", MASTER_PORT),
    )


@dataclass(frozen=True)
class RunLayout:
    """The artifact layout; `invoke fetch` recreates exactly this under runs/<job-name>/."""

    model_dir: Path  # weights, TorchScript export, resolved config
    output_dir: Path  # TensorBoard logs, metrics CSV, plots, metrics.json
    checkpoint_dir: Path
    metrics_files: list[Path] = field(default_factory=list)  # where metrics.json is written

    def create(self) -> None:
        for path in (self.model_dir, self.output_dir, self.checkpoint_dir):
            path.mkdir(parents=True, exist_ok=True)


def discard_unless_resumable(run_dir: Path) -> None:
    """Remove a run folder that holds no checkpoint: a failed run leaves nothing a re-run could use."""
    if not any((run_dir / "checkpoints").glob("*.ckpt")):
        shutil.rmtree(run_dir, ignore_errors=True)


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: Path, key: str) -> None:
    """A folder can be made at `folder` and written in, or a UserError naming `key`.

    Tried, not inferred from permission bits: root passes every mode check yet cannot write to a
    read-only mount or to /proc. The probe is a temporary folder in the nearest folder that
    exists, removed at once: nothing is left behind.
    """
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(f"{key}={folder}: {existing} is a file, not a folder; choose a folder, e.g. {key}=runs")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".write-check-").cleanup()
    except OSError as exc:
        # /proc answers a new folder with ENOENT, which would read as if the folder were missing
        why = "no folder can be made there" if exc.errno == errno.ENOENT else exc.strerror or type(exc).__name__
        raise UserError(
            f"{key}={folder}: cannot write under {existing} ({why}); choose a writable folder, e.g. {key}=runs"
        ) from None


def check_room(folder: Path, needed: int, what: str, fix: str) -> None:
    """At least `needed` bytes free where `folder` is (or will be), or a UserError saying `fix`."""
    free = shutil.disk_usage(_nearest_existing(folder)).free
    if free < needed:
        raise UserError(f"{folder}: {_mib(free)} free, but this run needs about {_mib(needed)} ({what}); {fix}")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def local_layout(run_dir: Path) -> RunLayout:
    return RunLayout(
        model_dir=run_dir / "model",
        output_dir=run_dir / "output",
        checkpoint_dir=run_dir / "checkpoints",
        metrics_files=[run_dir / METRICS_FILE, run_dir / "output" / METRICS_FILE],
    )


def container_layout(sm: SageMakerEnv) -> RunLayout:
    # SageMaker tars model_dir to model.tar.gz and output_data_dir to output.tar.gz; fetch puts
    # output/metrics.json back at the run root.
    return RunLayout(
        model_dir=sm.model_dir,
        output_dir=sm.output_data_dir,
        checkpoint_dir=sm.checkpoint_dir,
        metrics_files=[sm.output_data_dir / METRICS_FILE],
    )


def debug_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(DEBUG_ENV, "") not in ("", "0")


def progress_interval(default: float, environ: Mapping[str, str] = os.environ) -> float:
    """PROGRESS_ENV's seconds if set (a number >= 0), else `default`."""
    try:
        return max(float(environ[PROGRESS_ENV]), 0.0)
    except (KeyError, ValueError):
        return default


def launched_processes(environ: Mapping[str, str] = os.environ) -> int | None:
    """Processes per node started by an external launcher (torchrun sets LOCAL_WORLD_SIZE); None without one.

    Every SageMaker job runs under torchrun (project/training/launch.py), so in a container this is where
    the Trainer's devices come from.
    """
    launched = environ.get("LOCAL_WORLD_SIZE")
    return int(launched) if launched else None


# Instance types with EFA for NCCL, as the SageMaker SDK's torchrun driver lists them.
EFA_NCCL_INSTANCES = (
    "ml.g4dn.8xlarge",
    "ml.g4dn.12xlarge",
    "ml.g5.48xlarge",
    "ml.p3dn.24xlarge",
    "ml.p4d.24xlarge",
    "ml.p4de.24xlarge",
    "ml.p5.48xlarge",
    "ml.p5e.48xlarge",
    "ml.trn1.32xlarge",
)


def network_env(environ: MutableMapping[str, str], interface: str | None, instance_type: str | None = None) -> None:
    """The collectives' socket interface (SageMaker's, e.g. eth0) and EFA where the instance has it."""
    if interface:
        environ.setdefault("NCCL_SOCKET_IFNAME", interface)
        environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    if instance_type in EFA_NCCL_INSTANCES:
        environ.setdefault("FI_PROVIDER", "efa")


def whole_lines() -> None:
    """Each line of stdout and stderr leaves this process in one write, as soon as it ends.

    Jobs run with PYTHONUNBUFFERED=1 so their logs reach CloudWatch at once, and then print()
    sends its text, separators and newline as separate writes: the ranks of a job share one log
    and their lines interleaved mid-line. Line buffering keeps the promptness.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True, write_through=False)
