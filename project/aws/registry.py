"""The model registry: `invoke register`, `models`, `approve`, `reject`, and `invoke deploy model:...`.

A run becomes a version of the model package group deploy.model_group (created by the first
register, so that `terraform destroy` never meets a group that still holds versions, and a
project that never registers has none). Before anything is created, register measures the model
on the run's held-out test set through the serving code path: the model.tar.gz that deploy would
upload is packed, and its own code/inference.py (the handler the endpoint runs, with its
preprocessing) answers the test images in this process. The gate compares deploy.gate.metric with
the newest Approved version's and refuses a version worse by more than deploy.gate.tolerance
(exit 2); --force registers it anyway and the version records that it was forced.

A version carries: the inference image and model.tar.gz (InferenceSpecification), the
evaluation as a JSON object beside the archive (ModelMetrics, ModelQuality), and in
CustomerMetadataProperties the run, config hash, git sha, dataset, the run's logged metrics, the
served ones (served_<metric>) and the gate's verdict.

This module is over 300 lines because the registry's four tasks share one reading of a version (its
properties, its gate value) and the gate's one decision; split, each half would import the other's helpers.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from project.aws.deploy_requests import DeployError, Echo, Source, tag_list
from project.aws.errors import aws_errors
from project.aws.workflow import aws_task, setup
from project.core.config import RESOLVED_CONFIG_NAME, load_resolved
from project.core.run_ref import MODEL_SPEC, resolve_run
from project.core.sagemaker_names import JOB_NAME, METRICS_FILE, PROJECT_TAG

LATEST = "latest"
APPROVED, REJECTED, PENDING = "Approved", "Rejected", "PendingManualApproval"
SERVED = "served_"  # a metric measured through the serving code path, beside the run's logged one
GROUP_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker's ModelPackageGroupName
PROPERTY_VALUE = re.compile(r"[^\w\s.:/=+\-@]")  # what a CustomerMetadataProperties value may not hold
EVALUATION_FILE = "evaluation.json"
IDX_MODULE = "project.training.data.IdxDataModule"


class RegistryError(DeployError):
    pass


def lower_is_better(metric: str) -> bool:
    return metric.endswith("loss")


def check_group(name: str) -> str:
    if not GROUP_NAME.match(name):
        raise RegistryError(
            f"deploy.model_group={name!r}: a model package group name is 1-63 letters, digits and hyphens"
        )
    return name


# --- the evaluation: the served handler, in this process ----------------------------------------


def _handler(code_dir: Path) -> Any:
    """code/inference.py of an unpacked model.tar.gz as a module, its `import preprocess` from beside it."""
    sys.path.insert(0, str(code_dir))
    saved = sys.modules.pop("preprocess", None)
    try:
        spec = importlib.util.spec_from_file_location("registry_served_handler", code_dir / "inference.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(code_dir))
        sys.modules.pop("preprocess", None)
        if saved is not None:
            sys.modules["preprocess"] = saved


def test_set(cfg: Any, given: str | None = None) -> tuple[Any, Any]:
    """The run's held-out test images (as stored: the model's input format) and labels: from the
    run's own data folder, else from `given` (this command's dataset.channels.train; a SageMaker
    job's channel was its container's). dataset.files' checksums make sure it is the run's data."""
    target = str(cfg.dataset.get("_target_", ""))
    if target != IDX_MODULE:
        raise RegistryError(
            f"the gate reads IDX test sets ({IDX_MODULE}); this run's dataset is {target}: "
            "evaluate it yourself and register with --force"
        )
    local = [str(c) for c in (cfg.dataset.channels.train, given) if c and Path(str(c)).is_dir()]
    if not local:
        raise RegistryError(
            f"the run's test set is not on this machine (its dataset.channels.train={cfg.dataset.channels.train}): "
            "give dataset.channels.train=<folder with its IDX files>"
        )
    channel = local[0]
    from project.training.data import IdxDataModule

    data = IdxDataModule(channel, dict(cfg.dataset.files), cache_dir=str(Path(cfg.paths.data_dir)))
    images, labels = data._tensors("test")
    return images.numpy(), labels.numpy()


def evaluate(archive: Path, cfg: Any, channel: str | None = None) -> dict[str, float]:
    """served_test_acc (and the sample count) of the model.tar.gz on the run's test set, each image
    answered by the archive's own handler as the endpoint answers an application/x-npy request."""
    import numpy as np

    images, labels = test_set(cfg, channel)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        handler = _handler(Path(tmp) / "code")
        model = handler.model_fn(tmp)
        if not model["classifier"]:
            raise RegistryError("the gate measures a classifier's accuracy; this model is not one: use --force")
        predicted: list[int] = []
        for start in range(0, len(images), handler.MAX_BATCH):
            body = io.BytesIO()
            np.save(body, images[start : start + handler.MAX_BATCH].astype(np.float32))
            batch = handler.input_fn(body.getvalue(), "application/x-npy")
            answer = json.loads(handler.output_fn(handler.predict_fn(batch, model), "application/json"))
            predicted += [p["class"] for p in answer["predictions"]]
    correct = int((np.asarray(predicted) == labels).sum())
    return {f"{SERVED}test_acc": correct / len(labels), "test_samples": float(len(labels))}


# --- versions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    group: str
    number: int
    arn: str
    status: str
    properties: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.group}/{self.number}"

    def value(self, metric: str) -> float | None:
        """The gate's value of metric: the served measurement when there is one, else the logged one."""
        for key in (SERVED + metric, metric):
            if key in self.properties:
                return float(self.properties[key])
        return None


def group_exists(sm: Any, group: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        sm.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
            return False
        raise
    return True


def versions(sm: Any, group: str, status: str | None = None) -> list[Version]:
    """The group's versions, newest first (none when the group does not exist yet)."""
    if not group_exists(sm, group):
        return []
    found: list[Version] = []
    kwargs: dict[str, Any] = {"ModelPackageGroupName": group, "SortBy": "CreationTime", "SortOrder": "Descending"}
    if status:
        kwargs["ModelApprovalStatus"] = status
    for page in sm.get_paginator("list_model_packages").paginate(**kwargs):
        for summary in page["ModelPackageSummaryList"]:
            desc = sm.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
            found.append(
                Version(
                    group,
                    int(desc["ModelPackageVersion"]),
                    desc["ModelPackageArn"],
                    desc["ModelApprovalStatus"],
                    dict(desc.get("CustomerMetadataProperties") or {}),
                )
            )
    return sorted(found, key=lambda v: v.number, reverse=True)


def parse_ref(ref: str, default_group: str) -> tuple[str, int]:
    """GROUP/VERSION (or VERSION alone, in deploy.model_group) as (group, number)."""
    group, _, number = ref.rpartition("/")
    if not number.isdigit():
        raise RegistryError(f"{ref!r} is not GROUP/VERSION (e.g. {default_group}/1): `invoke models` lists them")
    return check_group(group or default_group), int(number)


def find_version(sm: Any, group: str, number: int) -> Version:
    known = versions(sm, group)
    for version in known:
        if version.number == number:
            return version
    listed = ", ".join(str(v.number) for v in reversed(known)) or "none yet"
    raise RegistryError(
        f"no version {number} in model group {group} (its versions: {listed}): `invoke models` lists them"
    )


# --- the gate ----------------------------------------------------------------------------------


def gate(metric: str, value: float, approved: Version | None, tolerance: float) -> tuple[bool, str]:
    """(passes, the verdict as a line) of a candidate's value against the newest Approved version."""
    if approved is None:
        return True, f"no Approved version to compare {metric} with"
    theirs = approved.value(metric)
    if theirs is None:
        return True, f"version {approved.number} (Approved) recorded no {metric}"
    worse = (value - theirs) if lower_is_better(metric) else (theirs - value)
    verdict = f"{metric} {value:.4g} against {theirs:.4g} of version {approved.number} (Approved)"
    return worse <= tolerance, verdict


def _property(text: str) -> str:
    return PROPERTY_VALUE.sub("_", text)[:256]


def _run_folder(ctx: Any, spec: str, echo: Echo) -> tuple[Path, str, Source | None]:
    """The run's folder (a SageMaker job is fetched into paths.runs_dir first), its git sha, and for a
    job the job itself as the source served (its own model.tar.gz, not a re-packed copy)."""
    from project.aws import monitor
    from project.aws.deploy_source import job_source
    from project.aws.staging import source_revision
    from project.aws.workflow import fetch_completed

    ref = resolve_run(spec, ctx.cfg.paths.runs_dir)
    if ref.exists:
        if not (ref.folder / METRICS_FILE).is_file():
            raise RegistryError(f"{ref.folder} has no {METRICS_FILE}: let its training finish, or register another run")
        return ref.folder, source_revision(), None
    if ref.as_path or not JOB_NAME.match(ref.name):
        raise RegistryError(f"no run folder {ref.folder} and not a training job name: give runs/<run> or a job name")
    sm = ctx.clients.sagemaker
    try:
        desc = monitor.completed(sm, ref.name)
    except monitor.JobError:
        raise RegistryError(
            f"no run folder {ref.folder} and no training job {ref.name!r}: "
            "give a run folder or a job from `invoke status`"
        ) from None
    except monitor.NotCompleted as exc:
        raise RegistryError(f"{exc}: nothing to register") from None
    tags = monitor.job_tags(sm, desc)
    job = job_source(ctx, desc, tags)  # the job's own archive, checked before the fetch
    fetch_completed(ctx, desc, ref.folder, echo)
    return ref.folder, tags.get("git-sha", "-"), job


def register(ctx: Any, spec: str, force: bool = False, echo: Echo = print) -> str:
    """Evaluate a run through the serving code path, gate it, and register it; its GROUP/VERSION."""
    from project.aws.deploy_image import serving_image
    from project.aws.deploy_source import model_data_for, resolve_source
    from project.serving import archive as serving

    dc, sm = ctx.cfg.deploy, ctx.clients.sagemaker
    group, metric, tolerance = check_group(str(dc.model_group)), str(dc.gate.metric), float(dc.gate.tolerance)
    run, git_sha, job = _run_folder(ctx, spec, echo)
    logged = {k: float(v) for k, v in json.loads((run / METRICS_FILE).read_text()).items() if _is_metric(k, v)}
    if metric not in logged:
        raise RegistryError(
            f"deploy.gate.metric={metric}: run {run.name} never logged it (it logged {', '.join(sorted(logged))}); "
            "pick one of those"
        )
    source = job or resolve_source(ctx, str(run))
    approved = next(iter(versions(sm, group, APPROVED)), None)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_resolved(run / "model" / RESOLVED_CONFIG_NAME)
        packed = serving.pack_model(run / "model", cfg, Path(tmp) / serving.MODEL_ARCHIVE)
        measured = evaluate(packed, cfg, str(ctx.cfg.dataset.channels.train))
    value = measured.get(SERVED + metric, logged[metric])
    echo(
        f"evaluated {run.name} through the serving code path on {int(measured['test_samples'])} test images: "
        f"{SERVED}test_acc={measured[SERVED + 'test_acc']:.4g} "
        f"(logged test_acc={logged.get('test_acc', float('nan')):.4g})"
    )
    passes, verdict = gate(metric, value, approved, tolerance)
    if not passes and not force:
        raise RegistryError(
            f"gate: {run.name} is worse than the newest Approved version, {verdict}, by more than "
            f"deploy.gate.tolerance={tolerance:g}: nothing registered (--force registers it anyway)"
        )
    verdict = ("passed: " if passes else "forced past the gate: ") + verdict
    image, _ = serving_image(ctx.infra.region, dc, dc.instance, source)
    if not group_exists(sm, group):
        sm.create_model_package_group(
            ModelPackageGroupName=group,
            ModelPackageGroupDescription=f"{PROJECT_TAG[1]}: runs registered by invoke register",
            Tags=tag_list({PROJECT_TAG[0]: PROJECT_TAG[1]}),
        )
        echo(f"created model package group {group}")
    model_data = model_data_for(ctx, source, echo)
    # Under models/<run>/ (beside a local run's archive; a job's own output prefix is SageMaker's, not ours).
    bucket, key = ctx.infra.artifacts_bucket, f"models/{run.name}/{EVALUATION_FILE}"
    evaluation_uri = f"s3://{bucket}/{key}"
    evaluation = {"run": run.name, "metrics": logged, "served": measured, "gate": verdict, "forced": not passes}
    with aws_errors(resource=evaluation_uri):
        ctx.clients.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(evaluation, indent=2).encode())
    properties = {
        "run": _property(run.name),
        "config-hash": source.config_hash,
        "git-sha": _property(git_sha),
        "dataset": _property(str(cfg.dataset.get("name", "-"))),
        "gate": _property(verdict),
        "forced": "true" if not passes else "false",
        **{k: f"{v:.6g}" for k, v in {**logged, **measured}.items() if k.startswith(("test_", "val_", SERVED))},
    }
    made = sm.create_model_package(
        ModelPackageGroupName=group,
        ModelPackageDescription=_property(f"run {run.name}, config {source.config_hash}")[:1024],
        InferenceSpecification={
            "Containers": [{"Image": image, "ModelDataUrl": model_data}],
            "SupportedContentTypes": ["image/png", "image/jpeg", "application/x-npy", "application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
            "SupportedRealtimeInferenceInstanceTypes": [str(dc.instance)],
        },
        ModelApprovalStatus=PENDING,
        ModelMetrics={"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": evaluation_uri}}},
        CustomerMetadataProperties=properties,
        Tags=tag_list({PROJECT_TAG[0]: PROJECT_TAG[1]}),
    )
    number = int(made["ModelPackageArn"].rsplit("/", 1)[1])
    echo(f"gate {verdict}")
    echo(f"registered {run.name} as {group}/{number} ({PENDING}); approve it: invoke approve {group}/{number}")
    return f"{group}/{number}"


def _is_metric(key: str, value: Any) -> bool:
    return (
        key.startswith(("test_", "val_", "train_")) and isinstance(value, int | float) and not isinstance(value, bool)
    )


# --- listing, approving, deploying ---------------------------------------------------------------


def list_models(ctx: Any, echo: Echo = print) -> None:
    dc, sm = ctx.cfg.deploy, ctx.clients.sagemaker
    group, metric = check_group(str(dc.model_group)), str(dc.gate.metric)
    found = versions(sm, group)
    if not found:
        echo(f"no versions in model group {group} yet: invoke register <run>")
        return
    rows = [("VERSION", "STATUS", "RUN", "CONFIG", metric, f"{SERVED}test_acc", "GATE")]
    for v in found:
        shown = v.properties.get(metric, "-")
        served = v.properties.get(f"{SERVED}test_acc", "-")
        gate_word = "forced" if v.properties.get("forced") == "true" else "passed"
        rows.append(
            (
                v.ref,
                v.status,
                v.properties.get("run", "-"),
                v.properties.get("config-hash", "-"),
                shown,
                served,
                gate_word,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def set_status(ctx: Any, ref: str, status: str, echo: Echo = print) -> None:
    sm = ctx.clients.sagemaker
    group, number = parse_ref(ref, str(ctx.cfg.deploy.model_group))
    version = find_version(sm, group, number)
    if version.status == status:
        raise RegistryError(f"{version.ref} is already {status}: nothing changed")
    sm.update_model_package(ModelPackageArn=version.arn, ModelApprovalStatus=status)
    echo(f"{version.ref} ({version.properties.get('run', '-')}): {version.status} -> {status}")
    if status == APPROVED:
        echo(f"deploy it: invoke deploy model:{LATEST if _is_newest_approved(sm, version) else number}")


def _is_newest_approved(sm: Any, version: Version) -> bool:
    newest = next(iter(versions(sm, version.group, APPROVED)), None)
    return newest is not None and newest.number == version.number


def registry_source(ctx: Any, spec: str) -> Source:
    """`model:latest` (the newest Approved version) or `model:N` of deploy.model_group, as a Source
    (`invoke deploy` serves it with the image and model.tar.gz it was registered with)."""
    sm, group = ctx.clients.sagemaker, check_group(str(ctx.cfg.deploy.model_group))
    wanted = spec.removeprefix(MODEL_SPEC)
    if wanted == LATEST:
        version = next(iter(versions(sm, group, APPROVED)), None)
        if version is None:
            raise RegistryError(f"no Approved version in model group {group}: `invoke models`, then invoke approve")
    elif wanted.isdigit():
        version = find_version(sm, group, int(wanted))
        if version.status != APPROVED:
            raise RegistryError(f"{version.ref} is {version.status}, not Approved: invoke approve {version.ref} first")
    else:
        raise RegistryError(f"{spec!r}: give model:latest or model:<version> (`invoke models` lists them)")
    return version_source(sm, version)


def version_source(sm: Any, version: Version) -> Source:
    """A version, whatever its status, as the Source `invoke deploy` serves: its registered image and
    model.tar.gz (`invoke ship` serves a PendingManualApproval version as the canary it approves after)."""
    desc = sm.describe_model_package(ModelPackageName=version.arn)
    (container,) = desc["InferenceSpecification"]["Containers"]
    return Source(
        version.properties.get("run", version.ref.replace("/", "-")),
        version.properties.get("config-hash", "unknown"),
        model_data=container["ModelDataUrl"],
        image=container["Image"],
        version=version.ref,
    )


@aws_task
def register_task(overrides: list[str], spec: str, force: bool) -> None:
    register(setup(overrides), spec, force=force)


@aws_task
def models_task(overrides: list[str]) -> None:
    list_models(setup(overrides))


@aws_task
def status_task(overrides: list[str], ref: str, status: str) -> None:
    set_status(setup(overrides), ref, status)
