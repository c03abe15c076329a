"""What the service leaves when a job ends: archives and checkpoints in S3, metrics, the failure reason.

With several instances, SageMaker uploads what every host left: model.tar.gz and output.tar.gz hold
the union of the hosts' /opt/ml/model and /opt/ml/output/data (a name two hosts wrote: algo-1's copy,
the first host's, here), and every host's checkpoints sync to the one CheckpointConfig.S3Uri. The
project writes its model and metrics on global rank 0 only (project/training/train.py,
`trainer.is_global_zero`), which is on algo-1 (node rank 0), so the other hosts add nothing to them.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from project.core.names import split_s3_uri

FAILURE_FILE = "output/failure"  # under /opt/ml: the first error a job writes, SageMaker's FailureReason


def final_metrics(lines: list[str], definitions: list[dict[str, str]]) -> dict[str, float]:
    """The last value each metric regex captured in the log, as FinalMetricDataList reports."""
    metrics: dict[str, float] = {}
    for definition in definitions:
        pattern = re.compile(definition["Regex"])
        for match in (m for line in lines for m in pattern.finditer(line)):
            try:
                metrics[definition["Name"]] = float(match.group(1))
            except (IndexError, ValueError):
                pass
    return metrics


def failure_reason(tree: Path, returncode: int) -> str:
    failure = tree / FAILURE_FILE
    text = failure.read_text(errors="replace").strip() if failure.is_file() else ""
    return f"AlgorithmError: {text}, exit code: {returncode}" if text else f"AlgorithmError: exit code: {returncode}"


def _tar_folder(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(folder.iterdir()):
            tar.add(entry, arcname=entry.name)


def _union(folders: list[Path], scratch: Path) -> Path:
    """One folder holding every host's files; the first host's copy of a name that several hold."""
    if len(folders) == 1:
        return folders[0]
    for folder in reversed(folders):  # algo-1 last: its files win
        shutil.copytree(folder, scratch, dirs_exist_ok=True)
    return scratch


def _archives(trees: list[Path], status: str, scratch: Path) -> dict[str, Path]:
    """The folders the service tars: model/ unless the job failed, output/data/ if it holds anything."""
    folders = {} if status == "Failed" else {"model": _union([t / "model" for t in trees], scratch / "model")}
    output = _union([t / "output/data" for t in trees], scratch / "output")
    if output.is_dir() and any(output.iterdir()):
        folders["output"] = output
    return folders


def upload_archives(s3: Any, desc: dict[str, Any], trees: list[Path], status: str) -> dict[str, str | None]:
    """<S3OutputPath>/<job>/output/{model,output}.tar.gz of the hosts' trees (algo-1's first);
    returns their URIs (None: not uploaded)."""
    base = desc["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{desc['TrainingJobName']}/output"
    uris: dict[str, str | None] = {"model": None, "output": None}
    with tempfile.TemporaryDirectory() as scratch:
        for name, folder in _archives(trees, status, Path(scratch) / "union").items():
            archive = Path(scratch) / f"{name}.tar.gz"
            _tar_folder(folder, archive)
            bucket, key = split_s3_uri(f"{base}/{name}.tar.gz")
            s3.upload_file(str(archive), bucket, key)
            uris[name] = f"s3://{bucket}/{key}"
    return uris


def sync_checkpoints(s3: Any, desc: dict[str, Any], checkpoints: Path) -> int:
    """The local checkpoint folder back to CheckpointConfig.S3Uri; returns how many files went."""
    checkpoint_uri = (desc.get("CheckpointConfig") or {}).get("S3Uri")
    if not checkpoint_uri:
        return 0
    bucket, prefix = split_s3_uri(checkpoint_uri)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    files = sorted(p for p in checkpoints.rglob("*") if p.is_file())
    for path in files:
        s3.upload_file(str(path), bucket, prefix + path.relative_to(checkpoints).as_posix())
    return len(files)
