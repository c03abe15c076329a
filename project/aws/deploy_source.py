"""Where a served model comes from: a local run folder (packed into model.tar.gz and uploaded under
s3://<artifacts>/models/<run>/) or a completed training job (its own model.tar.gz, which training
wrote code/inference.py into), checked before anything is created.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Any

from project.aws import monitor
from project.aws.deploy_requests import HASH_TAG, DeployError, Echo, Source
from project.aws.errors import aws_errors
from project.aws.workflow import job_of
from project.core.config import RESOLVED_CONFIG_NAME, load_resolved
from project.core.identity import run_identity
from project.core.names import split_s3_uri
from project.core.run_ref import resolve_run
from project.core.sagemaker_names import JOB_NAME
from project.serving import archive as serving


def resolve_source(ctx: Any, spec: str | None) -> Source:
    """A run folder (a path, or a name under paths.runs_dir) or a training job (default: the latest)."""
    if spec:
        ref = resolve_run(spec, ctx.cfg.paths.runs_dir)
        if ref.exists:
            return _local_source(ref.folder)
        if ref.as_path or not JOB_NAME.match(ref.name):
            raise DeployError(f"no run folder {ref.folder} and not a training job name: give runs/<run> or a job name")
    name = job_of(ctx, spec)
    try:
        desc = monitor.completed(ctx.clients.sagemaker, name)
    except monitor.JobError:
        raise DeployError(
            f"no run folder {Path(ctx.cfg.paths.runs_dir) / name} and no training job {name!r}: "
            "give a run folder or a job from `invoke status`"
        ) from None
    except monitor.NotCompleted as exc:
        raise DeployError(f"{exc}: it has no model to serve") from None
    return job_source(ctx, desc, monitor.job_tags(ctx.clients.sagemaker, desc))


def job_source(ctx: Any, desc: dict[str, Any], tags: dict[str, str]) -> Source:
    """A completed job (its description and tags) as the source served: its own model.tar.gz, checked."""
    name, model_data = desc["TrainingJobName"], desc["ModelArtifacts"]["S3ModelArtifacts"]
    exported = _check_archive(ctx.clients.s3, model_data, name)
    return Source(name, tags.get(HASH_TAG, "unknown"), model_data=model_data, exported_by=exported)


def _local_source(folder: Path) -> Source:
    model_dir = folder / "model"
    if not (model_dir / serving.TORCHSCRIPT_FILE).is_file():
        raise DeployError(
            f"{folder} has no exported model ({model_dir / serving.TORCHSCRIPT_FILE}): "
            "let its training finish, or deploy another run"
        )
    cfg = load_resolved(model_dir / RESOLVED_CONFIG_NAME)
    exported = serving.exported_by(model_dir / serving.TORCHSCRIPT_FILE)
    return Source(folder.name, run_identity(cfg), model_dir=model_dir, cfg=cfg, exported_by=exported)


def _check_archive(s3: Any, uri: str, job: str) -> str | None:
    """Refuse a job's model.tar.gz that cannot be served; else the PyTorch that saved its model.ts."""
    bucket, key = split_s3_uri(uri)
    exported = None
    with tempfile.TemporaryDirectory() as tmp, aws_errors(resource=uri):
        path = Path(tmp) / serving.MODEL_ARCHIVE
        s3.download_file(bucket, key, str(path))
        with tarfile.open(path) as tar:
            problem = serving.archive_problem(tar.getnames())
            for member in tar.getmembers():
                if member.name.removeprefix("./") == serving.TORCHSCRIPT_FILE and member.isfile():
                    with tar.extractfile(member) as model_ts:  # type: ignore[union-attr]  # a file: never None
                        exported = serving.exported_by(model_ts)
    if problem:
        raise DeployError(f"training job {job}'s {uri} cannot be served: {problem}")
    return exported


def model_data_for(ctx: Any, source: Source, echo: Echo) -> str:
    """The S3 model.tar.gz: a job's own, or a local run's packed and uploaded under models/<run>/."""
    if source.model_data:
        return source.model_data
    assert source.model_dir is not None
    key = f"models/{source.name}/{serving.MODEL_ARCHIVE}"
    with tempfile.TemporaryDirectory() as tmp:
        archive = serving.pack_model(source.model_dir, source.cfg, Path(tmp) / serving.MODEL_ARCHIVE)
        with aws_errors(resource=f"s3://{ctx.infra.artifacts_bucket}/{key}"):
            ctx.clients.s3.upload_file(str(archive), ctx.infra.artifacts_bucket, key)
    uri = f"s3://{ctx.infra.artifacts_bucket}/{key}"
    echo(f"packed {source.model_dir} -> {uri}")
    return uri
