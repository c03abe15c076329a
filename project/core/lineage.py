"""`trainer.init_from`: the earlier model a run starts from, found from what the user wrote.

A run folder, a run name under paths.runs_dir, a Lightning checkpoint (`.ckpt`) or an exported
`model.pt`. `find_parent` says which weights file that is and, where it can be known, the parent
run's name and config hash: the child's run identity holds that hash rather than the path, so a
parent moved or named differently is the same lineage, and a parent trained again is another.
project/training/init_from.py loads the weights; metrics.json records the parent.

Standard library only: `invoke local` decides the run identity before the training process imports torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from project.core.errors import UserError
from project.core.run_ref import is_run_folder, resolve_run
from project.core.sagemaker_names import METRICS_FILE

WEIGHTS_FILE = "model.pt"  # a run's exported weights: the network's state_dict (model/model.pt)
CHECKPOINT_NAME = re.compile(r"^(?P<identity>[0-9a-f]+)-step=(?P<step>\d+)\.ckpt$")  # identity.checkpoint_name's


class InitFromError(UserError):
    pass


@dataclass(frozen=True)
class Parent:
    weights: Path  # the file whose weights the run starts from
    run: str  # the parent run's name (its folder's)
    config_hash: str | None  # its run identity, where its folder or file names it

    def record(self) -> dict[str, str | None]:
        """What metrics.json says of it."""
        return {"run": self.run, "config_hash": self.config_hash, "weights": str(self.weights)}


def find_parent(spec: str, runs_dir: str | Path) -> Parent:
    """The weights `trainer.init_from=spec` names; one line where there are none."""
    given = Path(spec)
    if given.suffix in (".ckpt", ".pt"):
        if not given.is_file():
            raise InitFromError(f"trainer.init_from={spec}: no such file")
        if given.suffix == ".ckpt":
            match = CHECKPOINT_NAME.match(given.name)
            run_dir = given.resolve().parent.parent  # <run>/checkpoints/<identity>-step=N.ckpt
            return Parent(given, run_dir.name, match.group("identity") if match else _hash_of(run_dir))
        run_dir = given.resolve().parent.parent  # <run>/model/model.pt
        return Parent(given, run_dir.name, _hash_of(run_dir) if is_run_folder(run_dir) else None)
    if "://" in spec:
        raise InitFromError(
            f"trainer.init_from={spec}: S3 and training-job sources are not supported yet; "
            "fetch the run first (`invoke fetch <job>`) and give its folder"
        )
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
