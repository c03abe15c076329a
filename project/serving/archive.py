"""What the served model carries besides model.ts: the handler, the preprocessing and its facts.

`model.tar.gz` for SageMaker hosting is the model folder (model.ts at the top) with `code/`:

    code/inference.py   project/serving/inference.py, the toolkit's model_fn/input_fn/predict_fn/output_fn
    code/preprocess.py  project/serving/preprocess.py, MNIST's preprocessing (the one `invoke predict` uses)
    code/serving.json   {"classifier", "input_shape", "top_k"}, from the run's config

Training writes `code/` into the model folder (so a SageMaker job's own model.tar.gz serves as it
is); `invoke deploy` of a local run packs the folder afresh. Both copy the two files from here:
one source of truth. Imports only the standard library and the cheap project.training.modules (no torch).
"""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Any

from project.core.atomic import write_atomically
from project.core.config import is_classifier

PROJECT_DIR = Path(__file__).resolve().parent
CODE_DIR = "code"
CONTRACT_FILE = "README.md"  # beside model.ts: what goes in and what comes out, for callers without this code
HANDLER = "inference.py"  # SAGEMAKER_PROGRAM
SHIPPED = (HANDLER, "preprocess.py")  # project/<name> -> code/<name>
SERVING_FILE = "serving.json"  # the name project/serving/inference.py reads
TORCHSCRIPT_FILE = "model.ts"  # the exported model (project/training/artifacts.py writes it); inference.py names it too
MODEL_ARCHIVE = "model.tar.gz"
# An extra file inside model.ts (TorchScript's _extra_files, stored as <archive>/extra/<name>, which
# torch.jit.load ignores): the PyTorch version that saved it. TorchScript loads in that version or
# a newer one; an older one may not know its operators. `invoke deploy` picks the image by it.
EXPORTED_BY = "torch_version"
TOP_K = 3  # classes per answer: predict prints two, a third shows how far the rest are


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return None
    return node


def serving_facts(cfg: Any, input_shape: list[int] | None = None) -> dict[str, Any]:
    """`input_shape`: one sample's shape as the export saw it (C x H x W); else dataset.image_shape."""
    shape = input_shape or _get(cfg, "dataset.image_shape")
    return {
        "classifier": is_classifier(cfg),
        "input_shape": [int(n) for n in shape] if shape else None,
        "top_k": min(TOP_K, int(_get(cfg, "dataset.num_classes") or TOP_K)),
    }


def write_serving_code(model_dir: Path, cfg: Any, input_shape: list[int] | None = None) -> Path:
    """model_dir/code/ with the handler, the preprocessing and serving.json for this run."""
    code = Path(model_dir) / CODE_DIR
    code.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        shutil.copyfile(PROJECT_DIR / name, code / name)
    write_atomically(code / SERVING_FILE, json.dumps(serving_facts(cfg, input_shape), indent=2) + "\n")
    return code


def pack_model(model_dir: Path, cfg: Any, archive: Path) -> Path:
    """model.tar.gz of model.ts and a fresh code/ (staged beside the archive; the run is not touched)."""
    staging = archive.parent / "model-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(Path(model_dir) / TORCHSCRIPT_FILE, staging / TORCHSCRIPT_FILE)
    written = Path(model_dir) / CODE_DIR / SERVING_FILE  # what training saw of the input, if it wrote it
    shape = json.loads(written.read_text()).get("input_shape") if written.is_file() else None
    write_serving_code(staging, cfg, shape)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(staging.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(staging)), recursive=False)
    shutil.rmtree(staging)
    return archive


def exported_by(model_ts: Path | IO[bytes]) -> str | None:
    """The PyTorch version that saved this TorchScript file, or None (saved without the record)."""
    try:
        with zipfile.ZipFile(model_ts) as archive:
            found = [name for name in archive.namelist() if name.endswith(f"/extra/{EXPORTED_BY}")]
            return archive.read(found[0]).decode().strip() if found else None
    except zipfile.BadZipFile:
        return None


def archive_problem(names: list[str]) -> str | None:
    """Why a model.tar.gz with these member names cannot be served, or None."""
    members = {name.removeprefix("./") for name in names}
    if TORCHSCRIPT_FILE not in members:
        return f"it holds no {TORCHSCRIPT_FILE} (no exported model)"
    if f"{CODE_DIR}/{HANDLER}" not in members:
        return f"it holds no {CODE_DIR}/{HANDLER} (trained before serving existed): fetch it and deploy the run folder"
    return None
