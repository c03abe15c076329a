"""Serving a run on SageMaker: deploy, predict --endpoint, endpoints, undeploy (batch-predict: batch.py).

A run is a local run folder (runs/<run>, packed into model.tar.gz and uploaded under
s3://<artifacts>/models/<run>/) or a completed training job (its own model.tar.gz, which training
wrote code/inference.py into). Every model, endpoint config and endpoint carries the tags run,
config-hash and project; instance-backed endpoints also expires-at (deploy.ttl_hours), so that
`invoke endpoints` can say which are expired or idle and `invoke undeploy --expired` can end them.
The requests are built by pure functions (tested as plain values) and sent by a few lines each.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .. import serving
from ..config import RESOLVED_CONFIG_NAME, load_resolved
from ..errors import UserError
from ..identity import run_identity
from ..names import split_s3_uri
from ..run_ref import resolve_run
from ..sagemaker_names import JOB_NAME, PROJECT_TAG
from . import monitor
from .names import tag_value
from .session import aws_errors
from .workflow import aws_task, job_of, setup

Echo = Callable[[str], None]
NAME_LIMIT = 63  # SageMaker model, endpoint config and endpoint names
EXPIRES_TAG = "expires-at"
RUN_TAG = "run"
HASH_TAG = "config-hash"
IMAGE_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
ENDPOINT_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")


class DeployError(UserError):
    pass


@dataclass(frozen=True)
class Source:
    """A run to serve: its name, config hash, and its model as a local folder or an S3 archive."""

    name: str
    config_hash: str
    model_dir: Path | None = None  # a local run: packed on deploy
    model_data: str | None = None  # a job: its model.tar.gz
    cfg: Any = None
    exported_by: str | None = None  # the PyTorch that saved its model.ts (None: not recorded)


# --- pure: names, requests, prices -------------------------------------------------------------


def safe_name(text: str, limit: int = NAME_LIMIT) -> str:
    """text as a SageMaker resource name: letters, digits and single hyphens, at most `limit`."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit].strip("-")
    if not name:
        raise DeployError(f"cannot make a SageMaker name of {text!r}: set deploy.endpoint_name")
    return name


def versioned_name(base: str, now: datetime) -> str:
    """base-YYYYmmdd-HHMMSS-mmm: each deploy's own model and endpoint config, so an update is a new config."""
    stamp = now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"
    return f"{safe_name(base, NAME_LIMIT - len(stamp) - 1)}-{stamp}"


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def resource_tags(source: Source, dc: Any, serverless: bool, now: datetime) -> dict[str, str]:
    # A run folder's name may hold what a tag value may not (`invoke endpoints` reads it back as is).
    tags = {PROJECT_TAG[0]: PROJECT_TAG[1], RUN_TAG: tag_value(source.name), HASH_TAG: source.config_hash}
    if not serverless:
        tags[EXPIRES_TAG] = (now + timedelta(hours=float(dc.ttl_hours))).strftime("%Y-%m-%dT%H:%M:%SZ")
    return tags


def model_request(name: str, image: str, model_data: str, role_arn: str, tags: dict[str, str]) -> dict[str, Any]:
    return {
        "ModelName": name,
        "ExecutionRoleArn": role_arn,
        "PrimaryContainer": {
            "Image": image,
            "ModelDataUrl": model_data,
            # The PyTorch inference toolkit loads the handler from the unpacked archive's code/.
            "Environment": {
                "SAGEMAKER_PROGRAM": serving.HANDLER,
                "SAGEMAKER_SUBMIT_DIRECTORY": f"/opt/ml/model/{serving.CODE_DIR}",
                "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
            },
        },
        "Tags": tag_list(tags),
    }


def endpoint_config_request(name: str, model: str, dc: Any, serverless: bool, tags: dict[str, str]) -> dict[str, Any]:
    variant: dict[str, Any] = {"VariantName": "AllTraffic", "ModelName": model}
    if serverless:
        variant["ServerlessConfig"] = {
            "MemorySizeInMB": int(dc.serverless_memory_mb),
            "MaxConcurrency": int(dc.serverless_max_concurrency),
        }
    else:
        variant.update(InstanceType=dc.instance, InitialInstanceCount=int(dc.instance_count), InitialVariantWeight=1.0)
    return {"EndpointConfigName": name, "ProductionVariants": [variant], "Tags": tag_list(tags)}


def check_instance(instance: str, dc: Any, key: str = "deploy.instance") -> float:
    prices = dict(dc.prices_per_hour)
    if instance not in prices:
        raise DeployError(
            f"unknown instance type {key}={instance}; known: {', '.join(sorted(prices))} "
            "(add it with its price to conf/deploy/default.yaml)"
        )
    return float(prices[instance])


def check_serverless(dc: Any) -> None:
    memory = int(dc.serverless_memory_mb)
    if memory not in range(1024, 6145, 1024):
        raise DeployError(f"deploy.serverless_memory_mb={memory}: SageMaker takes 1024, 2048, ... 6144")
    if not 1 <= int(dc.serverless_max_concurrency) <= 200:
        raise DeployError("deploy.serverless_max_concurrency must be 1-200")


def price_line(dc: Any, serverless: bool) -> str:
    if serverless:
        gb = int(dc.serverless_memory_mb) / 1024
        return (
            f"serverless, {gb:g} GB: ${float(dc.serverless_price_per_gb_second) * gb:.6f} per second of compute "
            f"+ ${float(dc.serverless_price_per_million_requests):.2f} per million requests; nothing while idle"
        )
    price = check_instance(dc.instance, dc)
    count = int(dc.instance_count)
    return (
        f"{dc.instance} x {count}: ${price * count:.3f}/hour (${price * count * 24:.2f}/day) while it is up, "
        f"used or not; marked expired after {float(dc.ttl_hours):g} h"
    )


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a PyTorch version ('2.13.0+cpu' -> (2, 13)): what TorchScript compatibility follows."""
    major, minor = (re.findall(r"\d+", version) + ["0", "0"])[:2]
    return int(major), int(minor)


def inference_version(exported: str | None, requested: str | None, known: list[str], what: str) -> tuple[str, str]:
    """The PyTorch inference image version for a model.ts saved by `exported`, and why (a `warning: `
    line when it is older than `exported`).

    TorchScript loads in the PyTorch that saved it or a newer one; an older one may not know a newer
    operator, and the endpoint would fail only after minutes of Creating. By default the newest image
    the SageMaker SDK knows (`known`: its major.minor versions) serves it. An export newer than every
    image is served there too, with a warning that says what to do if it fails: the models of the
    standard layers load in older versions (the built-in CNN's model.ts saved by 2.13 gives the same
    answers under 2.6), and refusing them would block every model trained with a current PyTorch.
    deploy.framework_version (`requested`) chooses the image.
    """
    newest = max(known, key=_release)
    if requested is not None:
        if _release(requested) not in {_release(v) for v in known}:
            raise DeployError(
                f"deploy.framework_version={requested}: the SageMaker SDK has no PyTorch inference image of that "
                f"version (newest: {newest}); pick one it has, or null to choose by the export"
            )
        if exported is not None and _release(requested) < _release(exported):
            return requested, (
                f"warning: {what} was saved by PyTorch {exported} and is served on PyTorch {requested} "
                "(deploy.framework_version): if the endpoint fails to load it, train it with that PyTorch"
            )
        return requested, f"PyTorch {requested} (deploy.framework_version)"
    if exported is None:
        return newest, f"PyTorch {newest}, the newest image; {what} does not record which PyTorch saved it"
    if _release(exported) > _release(newest):
        return newest, (
            f"warning: {what} was saved by PyTorch {exported}, newer than every PyTorch inference image the "
            f"SageMaker SDK knows; it is served on the newest, {newest}, where standard layers load: if the "
            f"endpoint fails to load it, train the model with PyTorch <= {newest} (job.pytorch_version={newest})"
        )
    return newest, f"PyTorch {newest}, the newest image (>= PyTorch {exported}, which saved {what})"


def known_inference_versions() -> list[str]:
    """The PyTorch inference images the pinned SageMaker SDK knows, as major.minor (its version aliases)."""
    from sagemaker.core import image_uris

    config = image_uris.config_for_framework("pytorch")["inference"]
    return list(config.get("version_aliases") or config["versions"])


def serving_image(region: str, dc: Any, instance: str | None, source: Source) -> tuple[str, str]:
    """The region's AWS PyTorch inference image for this source's model.ts (as the SageMaker SDK looks
    it up), and the line that says which PyTorch it has and why."""
    from sagemaker.core import image_uris

    requested = None if dc.framework_version is None else str(dc.framework_version)
    what = f"{source.name}'s {serving.TORCHSCRIPT_FILE}"
    version, why = inference_version(source.exported_by, requested, known_inference_versions(), what)
    uri = image_uris.retrieve(
        "pytorch",
        region=region,
        version=version,
        instance_type=instance or "ml.m5.large",  # serverless runs on CPU
        image_scope="inference",
    )
    return uri, why


def echo_image(image: str, why: str, echo: Echo) -> None:
    echo(f"image: {image}" + (f"\n{why}" if why.startswith("warning: ") else f" ({why})"))


# --- where the model comes from ----------------------------------------------------------------


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
        desc = monitor.describe(ctx.clients.sagemaker, name)
    except monitor.JobError:
        raise DeployError(
            f"no run folder {Path(ctx.cfg.paths.runs_dir) / name} and no training job {name!r}: "
            "give a run folder or a job from `invoke status`"
        ) from None
    if desc["TrainingJobStatus"] != "Completed":
        raise DeployError(
            f"training job {name} is {desc['TrainingJobStatus']}, not Completed: it has no model to serve"
        )
    model_data = desc["ModelArtifacts"]["S3ModelArtifacts"]
    exported = _check_archive(ctx.clients.s3, model_data, name)
    tags = {t["Key"]: t["Value"] for t in ctx.clients.sagemaker.list_tags(ResourceArn=desc["TrainingJobArn"])["Tags"]}
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


# --- deploy ------------------------------------------------------------------------------------


def _confirm(yes: bool, question: str, confirm: Callable[[str], str], echo: Echo) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise DeployError("not a terminal, so no one to confirm the cost: pass --yes")
    if confirm(f"{question} [y/N] ").strip().lower() in ("y", "yes"):
        return True
    echo("nothing created")
    return False


def endpoint_status(sm: Any, name: str) -> dict[str, Any] | None:
    try:
        return sm.describe_endpoint(EndpointName=name)
    except sm.exceptions.ClientError as exc:
        if "Could not find" in str(exc):
            return None
        raise


def deploy(
    ctx: Any,
    spec: str | None,
    serverless: bool = False,
    update: bool = False,
    yes: bool = False,
    confirm: Callable[[str], str] = input,
    echo: Echo = print,
) -> str | None:
    dc, sm = ctx.cfg.deploy, ctx.clients.sagemaker
    if serverless:
        check_serverless(dc)
    else:
        check_instance(dc.instance, dc)
    source = resolve_source(ctx, spec)
    image, why = serving_image(ctx.infra.region, dc, None if serverless else dc.instance, source)
    endpoint = safe_name(dc.endpoint_name or source.name)
    existing = endpoint_status(sm, endpoint)
    if existing and not update:
        raise DeployError(
            f"endpoint {endpoint} exists ({existing['EndpointStatus']}): pass --update to move it to {source.name} "
            "with no downtime, or name a new one with deploy.endpoint_name=..."
        )
    if update and not existing:
        raise DeployError(f"no endpoint {endpoint} to update: drop --update to create it")
    echo(f"{'update' if existing else 'deploy'} {source.name} (config {source.config_hash}) as endpoint {endpoint}")
    echo_image(image, why, echo)
    echo(f"cost: {price_line(dc, serverless)}")
    if not _confirm(yes, "Deploy?", confirm, echo):
        return None
    now = datetime.now(UTC)
    tags = resource_tags(source, dc, serverless, now)
    model_data = model_data_for(ctx, source, echo)
    name = versioned_name(endpoint, now)
    created: list[tuple[str, str]] = []
    try:
        sm.create_model(**model_request(name, image, model_data, ctx.infra.role_arn, tags))
        created.append(("model", name))
        sm.create_endpoint_config(**endpoint_config_request(name, name, dc, serverless, tags))
        created.append(("config", name))
        if existing:
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=name)
        else:
            sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=name, Tags=tag_list(tags))
            created.append(("endpoint", endpoint))
    except BaseException:
        delete_resources(sm, created)
        raise
    try:
        desc = wait_endpoint(sm, endpoint, dc, echo)
    except KeyboardInterrupt:
        if existing:
            raise KeyboardInterrupt(
                f"endpoint {endpoint} goes on updating to {source.name} (endpoint config {name}); "
                f"its previous config {existing['EndpointConfigName']} and model stay (they cost nothing): "
                f"`invoke endpoints` shows it"
            ) from None
        raise KeyboardInterrupt(
            f"endpoint {endpoint} goes on being created and bills once InService: "
            f"`invoke undeploy {endpoint}` removes it"
        ) from None
    if desc["EndpointStatus"] != "InService":
        delete_resources(sm, created)
        raise DeployError(
            f"endpoint {endpoint} is {desc['EndpointStatus']}: {desc.get('FailureReason', 'no reason given')}"
        )
    if existing:  # the old config and model serve nothing now
        _remove_config(sm, existing["EndpointConfigName"])
        sm.add_tags(ResourceArn=desc["EndpointArn"], Tags=tag_list(tags))
    echo(f"endpoint {endpoint} is InService ({source.name})")
    echo(f"cost: {price_line(dc, serverless)}")
    echo(f"try it: invoke predict --endpoint {endpoint} examples/digits")
    echo(f"remove it: invoke undeploy {endpoint}")
    return endpoint


def wait_until_settled(
    describe: Callable[[], dict[str, Any]], status_key: str, busy: Any, what: str, dc: Any, echo: Echo, give_up: str
) -> dict[str, Any]:
    """Poll `describe` until its status leaves `busy`, printing each change; after deploy.wait_minutes
    give up with `give_up` (the resource goes on)."""
    start, last = time.monotonic(), None
    while True:
        desc = describe()
        status, elapsed = desc[status_key], time.monotonic() - start
        if status != last:
            echo(f"{what}: {status} ({elapsed:.0f} s)")
            last = status
        if status not in busy:
            return desc
        if elapsed > float(dc.wait_minutes) * 60:
            raise DeployError(f"{what} still {status} after {dc.wait_minutes} min{give_up}")
        time.sleep(float(dc.poll_seconds))


def wait_endpoint(sm: Any, name: str, dc: Any, echo: Echo) -> dict[str, Any]:
    hint = f": see `invoke endpoints`; `invoke undeploy {name}` removes it"
    describe = functools.partial(sm.describe_endpoint, EndpointName=name)
    return wait_until_settled(describe, "EndpointStatus", ENDPOINT_BUSY, f"endpoint {name}", dc, echo, hint)


# --- undeploy ----------------------------------------------------------------------------------


def _gone(exc: Exception) -> bool:
    return "Could not find" in str(exc) or "does not exist" in str(exc)


def delete_resources(sm: Any, created: Iterable[tuple[str, str]]) -> None:
    for kind, name in reversed(list(created)):
        delete = {"model": sm.delete_model, "config": sm.delete_endpoint_config, "endpoint": sm.delete_endpoint}[kind]
        key = {"model": "ModelName", "config": "EndpointConfigName", "endpoint": "EndpointName"}[kind]
        try:
            delete(**{key: name})
        except sm.exceptions.ClientError as exc:
            if not _gone(exc):
                raise


def _remove_config(sm: Any, config: str) -> None:
    """An endpoint config and the models it names."""
    try:
        models = [v["ModelName"] for v in sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]]
    except sm.exceptions.ClientError as exc:
        if not _gone(exc):
            raise
        return
    delete_resources(sm, [*(("model", m) for m in models), ("config", config)])


def undeploy_one(sm: Any, name: str, echo: Echo) -> None:
    desc = endpoint_status(sm, name)
    if desc is None:
        echo(f"{name}: no such endpoint (nothing to remove)")
        return
    delete_resources(sm, [("endpoint", name)])
    _remove_config(sm, desc["EndpointConfigName"])
    echo(f"{name}: endpoint, endpoint config and model deleted")


# --- endpoints ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointRow:
    name: str
    status: str
    kind: str  # "ml.m5.large x 1" or "serverless 2 GB"
    run: str
    uptime_hours: float
    cost_so_far: float | None  # None: serverless, billed per request
    expired: bool
    idle: bool

    def line(self) -> str:
        cost = "per request" if self.cost_so_far is None else f"${self.cost_so_far:.2f}"
        flags = " ".join(f for f, on in (("EXPIRED", self.expired), ("IDLE", self.idle)) if on)
        return (
            f"{self.name:<40} {self.status:<10} {self.kind:<18} {self.run:<30} "
            f"{self.uptime_hours:>7.2f} h {cost:>11} {flags}".rstrip()
        )


HEADER = f"{'endpoint':<40} {'status':<10} {'serving on':<18} {'run':<30} {'uptime':>9} {'cost so far':>11} flags"


def endpoint_row(ctx: Any, desc: dict[str, Any], tags: dict[str, str], now: datetime) -> EndpointRow:
    sm, dc = ctx.clients.sagemaker, ctx.cfg.deploy
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    hours = (now - desc["CreationTime"]).total_seconds() / 3600
    if "ServerlessConfig" in variant:
        kind, cost = f"serverless {variant['ServerlessConfig']['MemorySizeInMB'] / 1024:g} GB", None
    else:
        count = int(variant.get("InitialInstanceCount", 1))
        kind = f"{variant['InstanceType']} x {count}"
        cost = float(dict(dc.prices_per_hour).get(variant["InstanceType"], 0.0)) * count * hours
    expires = tags.get(EXPIRES_TAG)
    expired = expires is not None and now >= datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return EndpointRow(
        desc["EndpointName"],
        desc["EndpointStatus"],
        kind,
        tags.get(RUN_TAG, "?"),
        hours,
        cost,
        expired,
        invocations_last_hour(ctx.clients.client("cloudwatch"), desc["EndpointName"], now) == 0,
    )


def invocations_last_hour(cloudwatch: Any, endpoint: str, now: datetime) -> float:
    points = cloudwatch.get_metric_statistics(
        Namespace="AWS/SageMaker",
        MetricName="Invocations",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "AllTraffic"}],
        StartTime=now - timedelta(hours=1),
        EndTime=now,
        Period=3600,
        Statistics=["Sum"],
    )["Datapoints"]
    return sum(p["Sum"] for p in points)


def project_endpoints(ctx: Any) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(DescribeEndpoint, tags) of every endpoint tagged with this project."""
    sm, found = ctx.clients.sagemaker, []
    for page in sm.get_paginator("list_endpoints").paginate():
        for summary in page["Endpoints"]:
            tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=summary["EndpointArn"])["Tags"]}
            if tags.get(PROJECT_TAG[0]) == PROJECT_TAG[1]:
                desc = endpoint_status(sm, summary["EndpointName"])
                if desc is not None:
                    found.append((desc, tags))
    return found


def endpoint_rows(ctx: Any) -> list[EndpointRow]:
    now = datetime.now(UTC)
    return [endpoint_row(ctx, desc, tags, now) for desc, tags in project_endpoints(ctx)]


# --- predict --endpoint ------------------------------------------------------------------------


def invoke_endpoint(ctx: Any, endpoint: str, body: bytes, content_type: str, what: str) -> dict[str, Any]:
    runtime = ctx.clients.client("sagemaker-runtime")
    try:
        response = runtime.invoke_endpoint(
            EndpointName=endpoint, Body=body, ContentType=content_type, Accept="application/json"
        )
    except runtime.exceptions.ModelError as exc:
        message = exc.response.get("OriginalMessage") or exc.response["Error"].get("Message", "")
        raise DeployError(f"{what}: endpoint {endpoint} refused it: {message.splitlines()[0]}") from None
    except runtime.exceptions.ClientError as exc:
        if "Could not find" in str(exc) or "not found" in str(exc).lower():
            raise DeployError(f"no endpoint {endpoint}: `invoke endpoints` lists them") from None
        raise
    return json.loads(response["Body"].read())


def endpoint_predictions(ctx: Any, endpoint: str, images: list[Path], raw: bool) -> list[Any]:
    """One Prediction per image (as `invoke predict` prints them), answered by the endpoint."""
    import io

    import numpy as np

    from ..predict import Prediction, raw_pixels

    results: list[Any] = []
    for path in images:
        if raw:
            buffer = io.BytesIO()
            np.save(buffer, raw_pixels(path)[0].astype(np.float32))
            body, kind = buffer.getvalue(), "application/x-npy"
        else:
            body, kind = path.read_bytes(), IMAGE_CONTENT_TYPES.get(path.suffix.lower(), "image/png")
        answer = invoke_endpoint(ctx, endpoint, body, kind, str(path))
        if "outputs" in answer:
            results.append(f"{path}: {json.dumps(answer)}")  # not a classifier: its raw outputs
            continue
        if "predictions" not in answer:  # the handler answers one or the other (project/inference.py)
            reason = str(answer.get("OriginalMessage") or answer.get("Message") or json.dumps(answer)[:200])
            raise DeployError(f"{path}: endpoint {endpoint} answered no prediction: {reason.splitlines()[0]}")
        (one,) = answer["predictions"]
        ranked = tuple((a["class"], a["probability"]) for a in one["top_k"][:2])
        results.append(Prediction(path, ranked, one.get("problem")))
    return results


# --- the tasks ---------------------------------------------------------------------------------


@aws_task
def deploy_task(overrides: list[str], spec: str | None, serverless: bool, update: bool, yes: bool) -> None:
    deploy(setup(overrides), spec, serverless=serverless, update=update, yes=yes)


@aws_task
def predict_task(overrides: list[str], endpoint: str, images: list[Path], raw: bool) -> None:
    for prediction in endpoint_predictions(setup(overrides), endpoint, images, raw):
        print(prediction)


@aws_task
def endpoints_task(overrides: list[str]) -> None:
    rows = endpoint_rows(setup(overrides))
    if not rows:
        print("no endpoints of this project are up")
        return
    print(HEADER)
    for row in rows:
        print(row.line())
    if any(row.expired or row.idle for row in rows):
        print(
            "EXPIRED: older than deploy.ttl_hours (`invoke undeploy --expired`); IDLE: no invocations in the last hour"
        )


@aws_task
def undeploy_task(overrides: list[str], names: list[str], everything: bool, expired: bool) -> None:
    if not (names or everything or expired):
        raise DeployError("name the endpoint(s) to remove, or pass --all or --expired; `invoke endpoints` lists them")
    ctx = setup(overrides)
    chosen = list(names)
    if everything or expired:
        chosen += [row.name for row in endpoint_rows(ctx) if everything or row.expired]
        if not chosen:
            print("no endpoints to remove")
    for name in dict.fromkeys(chosen):
        undeploy_one(ctx.clients.sagemaker, name, print)
