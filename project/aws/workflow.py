"""The SageMaker workflow behind the invoke tasks: upload, build/push, train, logs, status, stop, fetch.

Each function composes the config, reads the Terraform outputs, makes its AWS clients (real AWS
or the endpoint in aws.endpoint_url / AWS_ENDPOINT_URL) and does one thing. Mistakes raise
UserError subclasses with one actionable line; tasks.py turns them into exit code 2.

This module is over 300 lines because it holds one short function per task on one Context (config, infra and
clients set up once).
"""

from __future__ import annotations

import functools
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from project.aws import (
    init_source,
    joblogs,
    monitor,
    sdk,
    source,  # noqa: F401 (registers s3:// data with project.training.fetch)
    startup_history,
    triage,
    vpc,
)
from project.aws.channels import channel_uris, manifest_uri
from project.aws.errors import aws_errors
from project.aws.fetch import fetch_job
from project.aws.filesystems import file_system_channel
from project.aws.fit import InstanceFitError, check_memory, estimate_memory
from project.aws.image import ImageError, base_image, custom_image, job_image
from project.aws.image_build import ImageRef, build_command, ecr_password, push_commands, tag_exists
from project.aws.infra import Infra, load_infra
from project.aws.plan import JobPlan, LaunchError, plan_job, validate_plan
from project.aws.prices import PRICING_REGION, PriceError
from project.aws.prices import refresh as refresh_prices
from project.aws.quotas import QuotaError
from project.aws.session import aws_clients
from project.aws.staging import DRY_RUN_CODE_PREFIX, DRY_RUN_EXPIRY_DAYS, source_revision, stage_source, user_code
from project.aws.upload import UploadItem, folder_files, plan_packed_upload, plan_upload
from project.aws.upload import upload as upload_items
from project.core.config import CONF_DIR, compose
from project.core.identity import Progress, progress
from project.core.names import name_problem, split_s3_uri
from project.core.run_ref import resolve_run
from project.core.sagemaker_names import METRICS_FILE
from project.training.imagetree import pack_channel, write_sagemaker_manifest
from project.training.pipe import check_input_modes
from project.training.resolve import resolve

INFRA_KEYS = ("data_bucket", "artifacts_bucket", "repository_url", "role_arn", "region")


def aws_task(function):
    """Missing or expired credentials, no region, an unreachable endpoint: one line, not a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with aws_errors():
            return function(*args, **kwargs)

    return wrapper


@dataclass
class Context:
    cfg: Any
    infra: Infra
    clients: Any


def setup(overrides: list[str]) -> Context:
    return context(compose(overrides))


def context(cfg: Any) -> Context:
    """The Terraform outputs and AWS clients for a composed config."""
    given = {key: cfg.aws.get(key) for key in INFRA_KEYS}
    infra = load_infra(Path(cfg.aws.terraform_dir), given)
    clients = aws_clients(cfg.aws.region or infra.region, cfg.aws.endpoint_url)
    return Context(cfg, infra, clients)


@aws_task
def upload(overrides: list[str], dry_run: bool = False, echo: Callable[[str], None] = print) -> None:
    """Each data channel to s3://<data bucket>/<s3_prefix>/<channel>/, where the job reads it."""
    from omegaconf import open_dict  # composing needs it; importing this module does not

    ctx = context(compose(overrides, model=False))  # data only: a dataset needs no model to match it
    d, s3 = ctx.cfg.dataset, ctx.clients.s3
    for channel, uri in list(d.channels.items()):
        if file_system_channel(str(uri)) is not None:  # the job mounts it (FileSystemDataSource)
            echo(f"{channel}: {uri} is a file system the job mounts: nothing to upload")
            with open_dict(d.channels):
                del d.channels[channel]
    if not d.channels:
        return
    data = resolve(ctx.cfg, client=s3)  # every channel checked before anything moves
    folders = data.folders
    # An image-folder channel goes as a few tar shards (project.training.imagetree); all are packed (every
    # image checked) before anything moves.
    packed = {
        channel: pack_channel(d, channel, folder, Path(ctx.cfg.paths.data_dir)) for channel, folder in folders.items()
    }
    items: list[UploadItem] = []
    manifests: list[UploadItem] = []
    for channel, uri in channel_uris(ctx.infra.data_bucket, d.s3_prefix, list(folders)).items():
        prefix = split_s3_uri(uri)[1]
        if channel == "train" and d.get("files"):
            # Verified raw files, each where it was verified: the source folder or the local cache.
            verified = {stem: file.path for stem, file in data.files.items()}
            digests = {file.path: file.stored_sha256 for file in data.files.values()}
            items += plan_upload(verified, ctx.infra.data_bucket, prefix, s3, digests=digests)
        elif (shards := packed[channel]) is not None:
            channel_shards, manifest = plan_packed_upload(shards, ctx.infra.data_bucket, prefix, s3)
            # SageMaker's manifest, beside the prefix: what a File-mode job downloads (the current shards).
            listing_key = split_s3_uri(manifest_uri(uri))[1]
            listing = write_sagemaker_manifest(shards, uri, listing_key.rpartition("/")[2])
            listed = plan_upload({listing.name: listing}, ctx.infra.data_bucket, listing_key.rpartition("/")[0], s3)
            items, manifests = items + channel_shards, manifests + manifest + listed
        else:
            folder = folders[channel]
            items += plan_upload(folder_files(folder), ctx.infra.data_bucket, prefix, s3, root=folder)
    upload_items(items, s3, dry_run=dry_run, echo=echo, then=manifests)  # manifests last, in order


def image_ref(ctx: Context) -> ImageRef:
    """job.image=custom's tag in the Terraform repository: the hash of what goes into the image."""
    image = custom_image(ctx.cfg, ctx.infra.repository_url, ctx.infra.region)
    return ImageRef(ctx.infra.repository_url, image.tag)


@aws_task
def build(overrides: list[str], dry_run: bool, run, echo: Callable[[str], None] = print) -> None:
    ctx = setup(overrides)
    ref = image_ref(ctx)
    if tag_exists(ctx.clients.ecr, ref.repository, ref.tag):
        echo(f"{ref.uri} is already in ECR (same Dockerfile, requirements and base image): nothing to build")
        return
    run(build_command(ref, base_image(ctx.cfg, ctx.infra.region)), dry_run=dry_run)


@aws_task
def push(overrides: list[str], dry_run: bool, run, echo: Callable[[str], None] = print) -> None:
    ctx = setup(overrides)
    ref = image_ref(ctx)
    if tag_exists(ctx.clients.ecr, ref.repository, ref.tag):
        echo(f"{ref.uri} is already in ECR (tags are immutable): nothing to push")
        return
    login, push_image = push_commands(ref)
    password = "<from ecr:GetAuthorizationToken>" if dry_run else ecr_password(ctx.clients.ecr)
    run(login, dry_run=dry_run, stdin=password)
    run(push_image, dry_run=dry_run)


def check_job(cfg: Any, plan: JobPlan, echo: Callable[[str], None] = print, budget: bool = True) -> dict[str, Path]:
    """What a job would fail on, checked before anything is paid for (one line each): the plan's
    rules (and its budget, unless a sweep sums it with the others), the classes its `_target_`s name
    and their arguments, the packages it carries, whether the network takes the data's samples, and
    whether its batch fits the GPUs' memory. `invoke train` checks its job; a sweep, every job.
    Returns the user packages the job carries (staging.user_code)."""
    from project.training import modules  # imports torch and the user's classes: only when a job is launched

    validate_plan(plan, cfg, budget)
    modules.check(cfg)
    packages = user_code(cfg)  # every package a _target_ names must be importable here to be staged
    # The network on one sample of the data's shape (meta device): a mismatch is one line; on GPUs,
    # the memory estimate comes from the same pass.
    if plan.gpus_per_node:
        estimate = estimate_memory(cfg, plan.per_device_batch, plan.topology.shards)
        check_memory(estimate, cfg.instance, plan.gpus_per_node, echo, plan.world_size)
    else:
        modules.sample_pass(cfg)
    return packages


@aws_task
def train(
    overrides: list[str],
    yes: bool = False,
    dry_run: bool = False,
    wait: bool = True,
    confirm: Callable[[str], str] = input,
    echo: Callable[[str], None] = print,
    poll_seconds: float = 10.0,
) -> str | None:
    ctx = setup(overrides)
    cfg = ctx.cfg
    check_input_modes(cfg.dataset)  # Pipe on the MNIST family: one line before the first AWS call
    image = job_image(cfg, ctx.infra.repository_url, ctx.infra.region)
    # trainer.init_from: found and its shapes checked; cfg now names the S3 object the job reads
    parent, weights = init_source.model_channel(ctx)
    plan = plan_job(cfg, ctx.infra, image, revision=source_revision(), parent=parent)
    check_job(cfg, plan, echo)
    try:
        clients = ctx.clients
        vpc.check_network(plan, clients.client)
        sdk.check_remote(plan, cfg, ctx.clients.ecr, ctx.clients.s3)
        sdk.check_account(plan, clients.client("service-quotas"), clients.sagemaker, clients.client("iam"), echo)
        if parent is not None:
            init_source.check_readable(clients.client("iam"), plan.role_arn, parent)
    except (LaunchError, QuotaError, InstanceFitError) as problem:
        if not dry_run:
            raise
        echo(f"warning: {problem}")
    plan = replace(
        plan,
        earlier=earlier_run(ctx.clients.s3, plan),
        startup=startup_history.prediction(ctx.clients.sagemaker, ctx.clients.logs, plan),
    )
    echo(f"SageMaker training job\n{plan.summary()}")
    with tempfile.TemporaryDirectory(prefix="sm-source-") as tmp:
        source = stage_source(cfg, Path(tmp) / "source", plan)
        if dry_run:
            # The SDK uploads the bundle to build the request; a dry run's goes where it expires.
            session = sdk.sagemaker_session(ctx.clients.session, ctx.infra.artifacts_bucket, DRY_RUN_CODE_PREFIX)
            request = sdk.create_request(
                sdk.model_trainer(plan, source, ctx.clients.session, session=session), plan.job_name
            )
            echo(dry_run_staged(ctx.clients.s3, ctx.infra.artifacts_bucket, f"{DRY_RUN_CODE_PREFIX}/{plan.job_name}/"))
            if parent is not None and weights is not None:
                echo(f"dry run: {weights} not uploaded; a launch puts it at {parent.uri}")
            echo("CreateTrainingJob request (dry run: nothing launched):")
            echo(json.dumps(request, indent=2, sort_keys=True, default=str))
            return None
        trainer = sdk.model_trainer(plan, source, ctx.clients.session)
        if not yes:
            if not sys.stdin.isatty():
                raise LaunchError("not a terminal, so no one to confirm the cost: pass --yes to launch")
            if confirm("Launch this job? [y/N] ").strip().lower() not in ("y", "yes"):
                echo("not launched")
                return None
        if parent is not None and weights is not None:
            init_source.upload(ctx, parent, weights, echo)
        job_name = sdk.launch(trainer, plan.job_name)
    echo(f"launched {job_name}")
    if not wait:
        echo(f"follow it with `invoke logs {job_name} --follow`; `invoke status`; `invoke fetch {job_name}` when done")
        return job_name
    return finish(ctx, job_name, echo, poll_seconds)


def _objects(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under an S3 prefix (ListObjectsV2, page by page)."""
    return [
        obj
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]


def earlier_run(s3: Any, plan: JobPlan) -> Progress | None:
    """What the job's checkpoint prefix holds of its identity (SageMaker restores it into the job):
    an interrupted run it resumes, or a finished one it would only test again (identity.progress)."""
    bucket, prefix = split_s3_uri(plan.checkpoint_uri)
    return progress(obj["Key"] for obj in _objects(s3, bucket, prefix)).get(plan.config_hash)


def dry_run_staged(s3: Any, bucket: str, prefix: str) -> str:
    """What a dry run left in S3: the code bundle the request names, and when it goes."""
    objects = _objects(s3, bucket, prefix)
    size = sum(obj["Size"] for obj in objects)
    days = f"{DRY_RUN_EXPIRY_DAYS} day{'s' if DRY_RUN_EXPIRY_DAYS != 1 else ''}"
    return (
        f"dry run: uploaded the code bundle ({len(objects)} objects, {size / 1e6:.1f} MB) to s3://{bucket}/{prefix}, "
        f"where it expires after {days} (the bucket's lifecycle rule); no job was created"
    )


@aws_task
def prices(
    overrides: list[str], region: str | None = None, catalog: str | None = None, echo: Callable[[str], None] = print
) -> None:
    """Refresh the catalog's training prices for `region` (default: aws.region, else the profile's, else us-east-1)."""
    import boto3

    cfg = compose(overrides)
    region = region or cfg.aws.region or boto3.Session().region_name or "us-east-1"
    rule = name_problem("region", region)
    if rule:
        raise PriceError(f"--region {region!r}: {rule}")
    folder = Path(catalog) if catalog else CONF_DIR / "instance"
    if not any(folder.glob("*.yaml")):
        raise PriceError(f"no instance files (*.yaml) in {folder}: point --catalog at conf/instance")
    pricing = aws_clients(PRICING_REGION, cfg.aws.endpoint_url).client("pricing")
    with aws_errors(resource=f"the AWS Price List API in {PRICING_REGION}"):
        refresh_prices(pricing, folder, region, echo=echo)


def finish(ctx: Context, job_name: str, echo: Callable[[str], None], poll_seconds: float) -> str:
    desc, _ = monitor.wait(ctx.clients.sagemaker, ctx.clients.logs, job_name, poll_seconds, echo)
    echo(startup_history.job_report(ctx.clients.logs, desc))
    if desc["TrainingJobStatus"] != "Completed":
        raise monitor.JobError(diagnose(ctx, desc).report())
    echo(monitor.final_report(desc))
    echo(f"bring the artifacts home with `invoke fetch {job_name}`")
    return job_name


def job_of(ctx: Context, spec: str | None) -> str:
    """The training job a task's argument names (a job name, or its folder runs/<job>); default: the latest."""
    if spec:
        return resolve_run(spec, ctx.cfg.paths.runs_dir).job_name()
    return monitor.latest_job(ctx.clients.sagemaker, ctx.cfg.job.base_name)


@aws_task
def logs(overrides: list[str], job_name: str | None, follow: bool, echo=print) -> None:
    ctx = setup(overrides)
    name = job_of(ctx, job_name)
    desc = monitor.describe(ctx.clients.sagemaker, name)
    if follow:
        finish(ctx, name, echo, poll_seconds=10.0)
        return
    printed = 0
    for line in joblogs.LogTail(ctx.clients.logs, name).poll():
        echo(line)
        printed += 1
    if not printed:
        echo(monitor.no_log_stream(desc))


def diagnose(ctx: Context, desc: dict[str, Any]) -> triage.Triage:
    """The job's triage from its description and the last lines of each host's log."""
    hosts = joblogs.last_lines(ctx.clients.logs, desc["TrainingJobName"], triage.LOG_TAIL_LINES)
    return triage.classify(triage.JobFacts.of(desc, hosts))


@aws_task
def why(overrides: list[str], job_name: str | None, echo=print) -> triage.Triage:
    ctx = setup(overrides)
    desc = monitor.describe(ctx.clients.sagemaker, job_of(ctx, job_name))
    result = diagnose(ctx, desc)
    echo(result.report())
    echo(startup_history.job_report(ctx.clients.logs, desc))
    return result


@aws_task
def status(overrides: list[str], job_name: str | None, limit: int, echo=print) -> None:
    ctx = setup(overrides)
    sm = ctx.clients.sagemaker
    names = [job_of(ctx, job_name)] if job_name else monitor.recent_jobs(sm, ctx.cfg.job.base_name, limit)
    if not names:
        echo(f"no training jobs named {ctx.cfg.job.base_name}-* yet")
        return
    descs = [monitor.describe(sm, name) for name in names]
    echo(monitor.status_table([monitor.StatusRow.of(desc) for desc in descs]))
    if job_name:  # one job: where its start-up went
        echo(startup_history.job_report(ctx.clients.logs, descs[0]))


@aws_task
def stop(overrides: list[str], job_name: str, echo=print) -> None:
    ctx = setup(overrides)
    echo(monitor.stop(ctx.clients.sagemaker, job_of(ctx, job_name)))


@aws_task
def fetch(overrides: list[str], job_name: str | None, echo=print) -> Path:
    ctx = setup(overrides)
    name = job_of(ctx, job_name)
    try:
        desc = monitor.completed(ctx.clients.sagemaker, name)
    except monitor.NotCompleted as exc:
        raise monitor.JobError(f"{exc}: nothing to fetch yet") from None
    dest = Path(ctx.cfg.paths.runs_dir) / name
    fetch_completed(ctx, desc, dest, echo)
    metrics = json.loads((dest / METRICS_FILE).read_text())
    echo(" ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items()) if k.startswith("test_")))
    echo(f"run_dir={dest}")
    return dest


def fetch_completed(ctx: Context, desc: dict[str, Any], dest: Path, echo: Callable[[str], None]) -> Path:
    """A completed job's model, output and checkpoints into dest/, in the layout `invoke local` writes."""
    model_uri = desc["ModelArtifacts"]["S3ModelArtifacts"]
    output_uri = model_uri.rsplit("/", 1)[0] + "/output.tar.gz"
    checkpoints = desc.get("CheckpointConfig", {}).get("S3Uri")
    return fetch_job(ctx.clients.s3, model_uri, output_uri, checkpoints, dest, echo=echo)


def run_command(argv: list[str], dry_run: bool = False, stdin: str | None = None) -> None:
    """Run (or, dry, print) one external command; a missing docker is a clear error."""
    print("$ " + shlex.join(argv))
    if dry_run:
        return
    try:
        subprocess.run(argv, input=stdin, text=True, check=True)
    except FileNotFoundError:
        raise ImageError(
            f"{argv[0]} is not installed or not on PATH: install Docker to build and push images"
        ) from None
    except subprocess.CalledProcessError as exc:
        raise ImageError(
            f"`{shlex.join(argv[:2])}` failed with exit code {exc.returncode}; see its output above"
        ) from None
