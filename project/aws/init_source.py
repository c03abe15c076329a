"""trainer.init_from for a SageMaker job: the earlier model as one S3 object the job's `model` channel reads.

What the user names, as `invoke local` takes it (a run folder, a run name, a .ckpt or model.pt) or
as only SageMaker has it (a training job's name, an s3://.../model.tar.gz), becomes a `ModelChannel`:
the object's URI and the parent's run and config hash. A local file is uploaded under
s3://<artifacts>/models/<run>/init-from-<digest>/ just before the launch (its digest in the key: the
same weights, the same URI and so the same run identity); a job's model.tar.gz is read where
SageMaker left it. Before anything is written or launched, the weights are matched against this
config's model on this machine (project/training/init_from.py check): a remote object is downloaded
for that, as the job will find it.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from project.aws import monitor
from project.aws.errors import aws_errors
from project.aws.fit import denied_actions
from project.aws.plan import LaunchError, ModelChannel
from project.core.lineage import (
    ARCHIVE_SUFFIX,
    REMOTE,
    WEIGHTS_SUFFIXES,
    InitFromError,
    Parent,
    find_parent,
    weights_in,
)
from project.core.names import split_s3_uri
from project.core.run_ref import resolve_run
from project.core.sagemaker_names import JOB_NAME

MODELS_PREFIX = "models"  # terraform/main.tf's model_prefix: the launcher writes there, the job's role reads it
DIGEST_LENGTH = 16  # hex digits of the uploaded file's SHA-256 in its key
# Where SageMaker leaves a job's model (OutputDataConfig s3://<artifacts>/jobs/): the job is the parent.
JOB_ARTIFACT = re.compile(r"^jobs/(?P<job>[^/]+)/output/model\.tar\.gz$")


def model_channel(ctx: Any) -> tuple[ModelChannel | None, Path | None]:
    """trainer.init_from as the job's model channel, its weights checked against this config's model;
    and the local file to upload to its URI before the launch (None: in S3 already). (None, None)
    without init_from. Afterwards cfg.trainer.init_from names the URI: the staged config's, which the
    job's run identity holds (project/core/lineage.py)."""
    from project.training import init_from

    cfg = ctx.cfg
    if cfg.trainer.init_from is None:
        return None, None
    spec = str(cfg.trainer.init_from)
    with tempfile.TemporaryDirectory(prefix="init-from-") as tmp:
        channel, parent, upload = _find(ctx, spec, Path(tmp))
        init_from.check(cfg, parent)  # a layer that does not fit: one line, nothing uploaded or launched
    cfg.trainer.init_from = channel.uri  # the plan's summary names the parent (plan.py ModelChannel.line)
    return channel, upload


def _find(ctx: Any, spec: str, tmp: Path) -> tuple[ModelChannel, Parent, Path | None]:
    if spec.startswith(REMOTE):
        return _s3_source(ctx, spec, tmp)
    ref = resolve_run(spec, ctx.cfg.paths.runs_dir)
    if not ref.exists and not ref.as_path and Path(spec).suffix not in WEIGHTS_SUFFIXES and JOB_NAME.match(spec):
        return _job_source(ctx, spec, tmp, missing=f"no run folder {ref.folder} and ")
    parent = find_parent(spec, ctx.cfg.paths.runs_dir)  # one line where there is no such run or file
    digest = hashlib.sha256(parent.weights.read_bytes()).hexdigest()[:DIGEST_LENGTH]
    key = f"{MODELS_PREFIX}/{parent.run}/init-from-{digest}/{parent.weights.name}"
    channel = ModelChannel(f"s3://{ctx.infra.artifacts_bucket}/{key}", parent.run, parent.config_hash)
    return channel, replace(parent, source=channel.uri), parent.weights


def _job_source(ctx: Any, job: str, tmp: Path, missing: str = "") -> tuple[ModelChannel, Parent, None]:
    """A completed training job's model.tar.gz, and the config hash its plan recorded (plan.py's hyperparameters)."""
    try:
        desc = monitor.completed(ctx.clients.sagemaker, job)
    except monitor.JobError:
        raise InitFromError(
            f"trainer.init_from={job}: {missing}no training job {job!r}; give a run, a .ckpt or model.pt, "
            "a job from `invoke status` or an s3:// URI of a model.tar.gz"
        ) from None
    except monitor.NotCompleted as exc:
        raise InitFromError(f"trainer.init_from={job}: {exc}: it has no model to start from") from None
    config_hash = (desc.get("HyperParameters") or {}).get("config_hash")
    channel = ModelChannel(desc["ModelArtifacts"]["S3ModelArtifacts"], job, config_hash)
    return channel, _downloaded(ctx, channel, tmp), None


def _s3_source(ctx: Any, uri: str, tmp: Path) -> tuple[ModelChannel, Parent, None]:
    bucket, key = split_s3_uri(uri)
    if not key.endswith((ARCHIVE_SUFFIX, *WEIGHTS_SUFFIXES)):
        raise InitFromError(
            f"trainer.init_from={uri}: give one object, a job's {ARCHIVE_SUFFIX} or a .pt or .ckpt file, not a prefix"
        )
    match = JOB_ARTIFACT.match(key)
    if match and bucket == ctx.infra.artifacts_bucket:  # a job's own model: the job names the parent's hash
        try:
            channel, parent, _ = _job_source(ctx, match.group("job"), tmp)
            if channel.uri == uri:
                return channel, parent, None
        except InitFromError:  # the job is gone (or not done): its model still is the parent
            pass
    channel = ModelChannel(uri, match.group("job") if match else key.rsplit("/", 1)[-1], None)
    return channel, _downloaded(ctx, channel, tmp), None


def _downloaded(ctx: Any, channel: ModelChannel, tmp: Path) -> Parent:
    """The object as the job's channel will hold it, on this machine for the shape check."""
    bucket, key = split_s3_uri(channel.uri)
    folder = tmp / "channel"
    folder.mkdir(parents=True, exist_ok=True)
    with aws_errors(resource=channel.uri):
        ctx.clients.s3.download_file(bucket, key, str(folder / key.rsplit("/", 1)[-1]))
    return Parent(weights_in(folder, channel.uri), channel.run, channel.config_hash, source=channel.uri)


def check_readable(iam: Any, role_arn: str, channel: ModelChannel) -> None:
    """Refuse when IAM's policy simulator says the job's role may not read the model; quiet where it cannot say."""
    bucket, key = split_s3_uri(channel.uri)
    partition = role_arn.split(":")[1] if role_arn.count(":") >= 5 else "aws"
    denied = denied_actions(iam, role_arn, ["s3:GetObject"], f"arn:{partition}:s3:::{bucket}/{key}")
    if denied:
        raise LaunchError(
            f"the execution role {role_arn} may not read {channel.uri} (s3:GetObject denied): give a job's "
            f"model or a local run (uploaded under {MODELS_PREFIX}/), or allow the read in terraform/iam.tf"
        )


def upload(ctx: Any, channel: ModelChannel, weights: Path, echo: Callable[[str], None] = print) -> None:
    """The local weights to the channel's URI, just before the launch."""
    bucket, key = split_s3_uri(channel.uri)
    with aws_errors(resource=channel.uri):
        ctx.clients.s3.upload_file(str(weights), bucket, key)
    echo(f"uploaded {weights} -> {channel.uri}")
