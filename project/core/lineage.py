"""`trainer.init_from`: the earlier model a run starts from, found from what the user wrote.

A run folder, a run name under paths.runs_dir, a Lightning checkpoint (`.ckpt`) or an exported
`model.pt`. `find_parent` says which weights file that is and, where it can be known, the parent
run's name and config hash: the child's run identity holds that hash rather than the path, so a
parent moved or named differently is the same lineage, and a parent trained again is another.
project/training/init_from.py loads the weights; metrics.json records the parent.

In a SageMaker job the staged config names an S3 object (`invoke train` put it there,
project/aws/init_source.py): the job's `model` channel holds it, and the job's environment names
the parent. Such a run's identity holds the object's URI: a job's model.tar.gz is the job's own
(another job, another URI), an uploaded file's key holds its content's digest.

Standard library only: `invoke local` decides the run identity before the training process imports torch.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from project.core.errors import UserError
from project.core.run_ref import is_run_folder, resolve_run
from project.core.sagemaker_names import METRICS_FILE, MODEL_CHANNEL, PARENT_HASH_ENV, PARENT_RUN_ENV

WEIGHTS_FILE = "model.pt"  # a run's exported weights: the network's state_dict (model/model.pt)
CHECKPOINT_NAME = re.compile(r"^(?P<identity>[0-9a-f]+)-step=(?P<step>\d+)\.ckpt$")  # identity.checkpoint_name's
WEIGHTS_SUFFIXES = (".pt", ".ckpt")
ARCHIVE_SUFFIX = ".tar.gz"  # a job's model.tar.gz: its model.pt inside
REMOTE = "s3://"


class InitFromError(UserError):
    pass


@dataclass(frozen=True)
class Parent:
    weights: Path  # the file whose weights the run starts from
    run: str  # the parent run's name (its folder's)
    config_hash: str | None  # its run identity, where its folder or file names it
    source: str | None = None  # where the weights came from when not a local file: the S3 object

    def record(self) -> dict[str, str | None]:
        """What metrics.json says of it."""
        return {"run": self.run, "config_hash": self.config_hash, "weights": self.source or str(self.weights)}


def lineage_key(spec: str, runs_dir: str | Path) -> str:
    """What a child's run identity holds of its parent: its config hash where known, else where its
    weights are (an S3 object's URI as given: the laptop and the job hash the same string)."""
    if spec.startswith(REMOTE):
        return spec
    parent = find_parent(spec, runs_dir)
    return parent.config_hash or str(parent.weights.resolve())


def find_parent(spec: str, runs_dir: str | Path) -> Parent:
    """The weights `trainer.init_from=spec` names; one line where there are none."""
    if spec.startswith(REMOTE):
        return channel_parent(spec)
    if "://" in spec:
        raise InitFromError(f"trainer.init_from={spec}: give a run, a .ckpt, a {WEIGHTS_FILE} or an s3:// URI")
    given = Path(spec)
    if given.suffix in (".ckpt", ".pt"):
        if given.suffix == ".ckpt" and given.is_dir():
            raise InitFromError(
                f"trainer.init_from={spec}: a sharded checkpoint (a folder: trainer.strategy=fsdp) holds each "
                f"rank's shard only; give its run once it finished (the {WEIGHTS_FILE} its export gathered)"
            )
        if not given.is_file():
            raise InitFromError(f"trainer.init_from={spec}: no such file")
        if given.suffix == ".ckpt":
            match = CHECKPOINT_NAME.match(given.name)
            run_dir = given.resolve().parent.parent  # <run>/checkpoints/<identity>-step=N.ckpt
            return Parent(given, run_dir.name, match.group("identity") if match else _hash_of(run_dir))
        run_dir = given.resolve().parent.parent  # <run>/model/model.pt
        return Parent(given, run_dir.name, _hash_of(run_dir) if is_run_folder(run_dir) else None)
    ref = resolve_run(spec, runs_dir)
    if not is_run_folder(ref.folder):
        raise InitFromError(
            f"trainer.init_from={spec}: no run folder {ref.folder}; give a run under paths.runs_dir, "
            f"its folder, a .ckpt or a {WEIGHTS_FILE}"
        )
    weights = ref.folder / "model" / WEIGHTS_FILE
    if not weights.is_file():
        raise InitFromError(
            f"trainer.init_from={spec}: run {ref.name} has no model/{WEIGHTS_FILE} (it did not finish); "
            "give one of its checkpoints/*.ckpt instead"
        )
    return Parent(weights, ref.folder.resolve().name, _hash_of(ref.folder))


def _hash_of(run_dir: Path) -> str | None:
    """A finished run's config hash, from its metrics.json."""
    try:
        value = json.loads((run_dir / METRICS_FILE).read_text()).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def channel_parent(spec: str, environ: Mapping[str, str] = os.environ) -> Parent:
    """An S3 source inside a SageMaker job: the weights in its `model` channel, the parent its environment names."""
    channel = environ.get(f"SM_CHANNEL_{MODEL_CHANNEL.upper()}")
    if not channel:
        raise InitFromError(
            f"trainer.init_from={spec}: an S3 model is read by a SageMaker job (`invoke train`); to train here, "
            "fetch its run first (`invoke fetch <job>`) and give its folder"
        )
    run = environ.get(PARENT_RUN_ENV) or spec.rsplit("/", 1)[-1]
    return Parent(weights_in(Path(channel), spec), run, environ.get(PARENT_HASH_ENV) or None, source=spec)


def weights_in(folder: Path, spec: str) -> Path:
    """The weights file a model channel's folder holds: a model.tar.gz's model.pt (unpacked to a
    temporary folder: the channel may be read-only), or the one .pt or .ckpt file uploaded there."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    archives = [p for p in files if p.name.endswith(ARCHIVE_SUFFIX)]
    weights = [p for p in files if p.suffix in WEIGHTS_SUFFIXES]
    if len(archives) == 1 and not weights:
        return _unpacked(archives[0], spec)
    if len(weights) == 1 and not archives:
        return weights[0]
    raise InitFromError(
        f"trainer.init_from={spec}: the model channel ({folder}) holds "
        f"{', '.join(p.name for p in files) or 'nothing'}; expected one {ARCHIVE_SUFFIX} with a {WEIGHTS_FILE} "
        "in it, or one .pt or .ckpt file"
    )


def _unpacked(archive: Path, spec: str) -> Path:
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers() if m.isfile() and m.name.removeprefix("./") == WEIGHTS_FILE), None)
        if member is None:
            raise InitFromError(
                f"trainer.init_from={spec}: {archive.name} has no {WEIGHTS_FILE} (not a model this project trained?)"
            )
        into = Path(tempfile.mkdtemp(prefix="init-from-"))
        with tar.extractfile(member) as source:  # type: ignore[union-attr]  # a file: never None
            (into / WEIGHTS_FILE).write_bytes(source.read())
    return into / WEIGHTS_FILE
