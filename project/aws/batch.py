"""`invoke batch-predict`: a SageMaker batch transform of a run's model over a prefix of inputs.

The inputs are an s3:// prefix or a local folder (uploaded under s3://<artifacts>/batch/<run>/...):
images for a classifier, or arrays (.npy, .json) for any exported model, one kind per job (a
transform job has one ContentType). The model is made as `invoke deploy` makes it (its request:
deploy_requests.py) and removed once the job is over; the answers come home to
runs/<run>/predictions/, with one CSV of classes for a classifier.
"""

from __future__ import annotations

import csv
import functools
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from project.aws.deploy import wait_until_settled
from project.aws.deploy_image import echo_image, serving_image
from project.aws.deploy_requests import (
    IMAGE_CONTENT_TYPES,
    DeployError,
    Echo,
    Source,
    check_instance,
    model_request,
    resource_tags,
    tag_list,
    versioned_name,
)
from project.aws.deploy_source import model_data_for, resolve_source
from project.aws.endpoints import delete_resources
from project.aws.errors import aws_errors
from project.aws.workflow import aws_task, setup
from project.core.names import split_s3_uri

PREDICTIONS_DIR = "predictions"
PREDICTIONS_CSV = "predictions.csv"
# A transform job has one ContentType for its whole prefix, chosen by the inputs' suffixes: images
# (the handler reads PNG and JPEG alike; classifiers only), or arrays (any exported model).
BATCH_CONTENT_TYPES = {
    **dict.fromkeys(IMAGE_CONTENT_TYPES, "application/x-image"),
    ".npy": "application/x-npy",
    ".json": "application/json",
}
TRANSFORM_BUSY = ("InProgress", "Stopping")


def batch_content_type(names: list[str], where: str) -> str:
    """The one ContentType of a transform job over these inputs (by suffix); a mix is one line."""
    kinds = {
        BATCH_CONTENT_TYPES[suffix] for name in names if (suffix := Path(name).suffix.lower()) in BATCH_CONTENT_TYPES
    }
    if not kinds:
        raise DeployError(f"no images or arrays ({', '.join(BATCH_CONTENT_TYPES)}) in {where}: nothing to predict")
    if len(kinds) > 1:
        raise DeployError(
            f"{where} mixes {' and '.join(sorted(kinds))}: a transform job reads one kind, "
            "put each in a folder of its own"
        )
    return kinds.pop()


def check_role_reads(ctx: Any, bucket: str, key: str, spec: str) -> None:
    """The transform job reads its input as the execution role: one that may not read the prefix
    (by IAM's policy simulator, where it can say) is one line before anything is created."""
    from project.aws.fit import denied_actions

    iam = ctx.clients.client("iam")
    if denied_actions(iam, ctx.infra.role_arn, ["s3:GetObject"], f"arn:aws:s3:::{bucket}/{key}"):
        raise DeployError(
            f"the execution role {ctx.infra.role_arn} may not read {spec} (s3:GetObject denied): give a local "
            "folder (uploaded where the role reads), or allow the role to read that prefix (terraform/iam.tf)"
        )


def batch_input(ctx: Any, source: Source, spec: str, stamp: str, echo: Echo) -> tuple[str, str]:
    """The input prefix and its content type: an s3:// prefix as it is, or a local folder's images
    or arrays (.npy, .json) uploaded first."""
    s3 = ctx.clients.s3
    if spec.startswith("s3://"):
        bucket, prefix = split_s3_uri(spec)
        with aws_errors(resource=spec):
            listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        if not listed:
            raise DeployError(f"no objects under {spec}: nothing to predict")
        content_type = batch_content_type([item["Key"] for item in listed], spec)
        check_role_reads(ctx, bucket, listed[0]["Key"], spec)
        return spec, content_type
    folder = Path(spec)
    if not folder.is_dir():
        raise DeployError(f"{spec} is neither an s3:// prefix nor a folder")
    inputs = sorted(p for p in folder.iterdir() if p.suffix.lower() in BATCH_CONTENT_TYPES and p.is_file())
    content_type = batch_content_type([p.name for p in inputs], str(folder))
    if content_type == BATCH_CONTENT_TYPES[".png"]:
        from project.serving.predict import PredictError, check_images

        try:  # what `invoke predict` refuses, refused before a billable job is made of it
            check_images(inputs)
        except PredictError as exc:
            raise DeployError(f"{exc}: nothing uploaded, no transform job made") from None
    prefix = f"batch/{source.name}/{stamp}/input/"
    with aws_errors(resource=f"s3://{ctx.infra.artifacts_bucket}/{prefix}"):
        for path in inputs:
            s3.upload_file(str(path), ctx.infra.artifacts_bucket, prefix + path.name)
    kind = "images" if content_type == BATCH_CONTENT_TYPES[".png"] else "arrays"
    echo(f"uploaded {len(inputs)} {kind} to s3://{ctx.infra.artifacts_bucket}/{prefix}")
    return f"s3://{ctx.infra.artifacts_bucket}/{prefix}", content_type


def transform_request(
    name: str, model: str, input_uri: str, output_uri: str, dc: Any, tags: dict[str, str], content_type: str
) -> dict:
    return {
        "TransformJobName": name,
        "ModelName": model,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": content_type,
            "SplitType": "None",
        },
        "TransformOutput": {"S3OutputPath": output_uri, "Accept": "application/json", "AssembleWith": "None"},
        "TransformResources": {
            "InstanceType": dc.transform_instance,
            "InstanceCount": int(dc.transform_instance_count),
        },
        "BatchStrategy": "SingleRecord",
        "Tags": tag_list(tags),
    }


def batch_predict(ctx: Any, spec: str | None, inputs: str, echo: Echo = print) -> Path:
    dc, sm = ctx.cfg.deploy, ctx.clients.sagemaker
    price = check_instance(dc.transform_instance, dc, "deploy.transform_instance")
    source = resolve_source(ctx, spec)
    image, why = serving_image(ctx.infra.region, dc, dc.transform_instance, source)
    echo_image(image, why, echo)
    now = datetime.now(UTC)
    name = versioned_name(source.name, now)
    input_uri, content_type = batch_input(ctx, source, inputs, name, echo)
    output_uri = f"s3://{ctx.infra.artifacts_bucket}/batch/{source.name}/{name}/output/"
    tags = resource_tags(source, dc, True, now)
    model_data = model_data_for(ctx, source, echo)
    sm.create_model(**model_request(name, image, model_data, ctx.infra.role_arn, tags))
    try:
        sm.create_transform_job(**transform_request(name, name, input_uri, output_uri, dc, tags, content_type))
        echo(f"transform job {name}: {input_uri} -> {output_uri}")
        desc = wait_transform(sm, name, dc, echo)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"transform job {name} goes on until its inputs are done (billed meanwhile); "
            f"its answers land in {output_uri}, not downloaded"
        ) from None
    finally:
        delete_resources(sm, [("model", name)])  # the job is over (or failed to start): the model serves nothing
    if desc["TransformJobStatus"] != "Completed":
        raise DeployError(f"transform job {name} is {desc['TransformJobStatus']}: {desc.get('FailureReason', '')}")
    dest = Path(ctx.cfg.paths.runs_dir) / source.name / PREDICTIONS_DIR
    rows = download_predictions(ctx.clients.s3, input_uri, output_uri, dest)
    seconds = (desc["TransformEndTime"] - desc["TransformStartTime"]).total_seconds()
    cost = price * int(dc.transform_instance_count) * seconds / 3600
    if rows and all(klass is None for _, klass, _ in rows):  # not a classifier: its raw outputs, one file each
        echo(f"{len(rows)} answers (the model's raw outputs, one <input>.out each) in {dest}")
    else:
        counts = Counter("no digit" if r[1] in ("", None) else r[1] for r in rows)
        summary = ", ".join(f"{label}: {n}" for label, n in sorted(counts.items()))
        echo(f"{len(rows)} predictions ({summary}) in {dest / PREDICTIONS_CSV}")
    echo(f"cost: {seconds:.0f} s of {dc.transform_instance} x {dc.transform_instance_count} = ${cost:.4f}")
    return dest


def wait_transform(sm: Any, name: str, dc: Any, echo: Echo) -> dict[str, Any]:
    describe = functools.partial(sm.describe_transform_job, TransformJobName=name)
    return wait_until_settled(describe, "TransformJobStatus", TRANSFORM_BUSY, f"transform job {name}", dc, echo, "")


def download_predictions(s3: Any, input_uri: str, output_uri: str, dest: Path) -> list[tuple[str, str | None, str]]:
    """Each <key>.out into dest, and dest/predictions.csv: (input key, class, probability) per sample;
    a model that is not a classifier answers its raw outputs: class None, and empty in the CSV."""
    in_prefix = split_s3_uri(input_uri)[1]
    bucket, prefix = split_s3_uri(output_uri)
    dest.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str | None, str]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix) :]
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
            answer = json.loads(target.read_text())
            if "predictions" not in answer:
                rows.append((in_prefix + relative.removesuffix(".out"), None, ""))
                continue
            for one in answer["predictions"]:
                klass = "" if one.get("class") is None else str(one["class"])
                probability = "" if one.get("probability") is None else f"{one['probability']:.6f}"
                rows.append((in_prefix + relative.removesuffix(".out"), klass, probability))
    rows.sort(key=lambda row: row[0])
    with (dest / PREDICTIONS_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input_key", "class", "probability"])
        writer.writerows((key, "" if klass is None else klass, probability) for key, klass, probability in rows)
    return rows


@aws_task
def batch_predict_task(overrides: list[str], spec: str | None, inputs: str) -> None:
    batch_predict(setup(overrides), spec, inputs)
