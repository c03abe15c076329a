"""What `invoke deploy` and `invoke batch-predict` send: names, tags, the model and endpoint config
requests, the instance and serverless checks and the price line. Pure: plain values in, plain values out.

Every model, endpoint config and endpoint carries the tags run, config-hash and project;
instance-backed endpoints also expires-at (deploy.ttl_hours), so that `invoke endpoints` can say
which are expired or idle and `invoke undeploy --expired` can end them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from project.aws.names import tag_value
from project.core.errors import UserError
from project.core.sagemaker_names import PROJECT_TAG
from project.serving import archive as serving

Echo = Callable[[str], None]
NAME_LIMIT = 63  # SageMaker model, endpoint config and endpoint names
EXPIRES_TAG = "expires-at"
RUN_TAG = "run"
HASH_TAG = "config-hash"
VERSION_TAG = "model-version"  # an endpoint deployed from the registry: GROUP/VERSION
IMAGE_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


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
    image: str | None = None  # a registered version: the inference image it was registered with
    version: str | None = None  # a registered version: GROUP/VERSION (project/aws/registry.py)


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
    if source.version:
        tags[VERSION_TAG] = source.version
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


def endpoint_config_request(
    name: str, model: str, dc: Any, serverless: bool, tags: dict[str, str], variant_name: str = "AllTraffic"
) -> dict[str, Any]:
    """One production variant, named after its run where deploy gives the name (A/B: variants.py)."""
    variant: dict[str, Any] = {"VariantName": variant_name, "ModelName": model}
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
