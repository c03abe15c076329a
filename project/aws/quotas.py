"""SageMaker's Service Quotas for an instance type: what the account may run, what runs now, what is free.

Most accounts start with a quota of 0 for GPU training instances; without this check their first
launch ends in ResourceLimitExceeded after the code upload. Quota codes differ per instance type
and usage, so they are found by name (`<type> for training job usage`, ...). boto3 is imported by
the callers' clients: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from project.core.errors import UserError

SERVICE_CODE = "sagemaker"
# Usage -> the quota's name in Service Quotas (ServiceCode sagemaker).
QUOTA_NAMES = {
    "training": "{type} for training job usage",
    "spot": "{type} for spot training job usage",
    "warm pool": "{type} for training warm pool usage",
}


class QuotaError(UserError):
    """The launch would exceed a quota; nothing was launched."""


class QuotasUnreadable(Exception):
    """The caller may not read quotas, or the service does not answer: the launch goes on, warned."""


@dataclass(frozen=True)
class Quota:
    name: str
    code: str
    value: int  # instances the account may run at once for this usage
    in_use: int  # instances InProgress now (warm pool: kept warm now)

    @property
    def free(self) -> int:
        return max(self.value - self.in_use, 0)

    def increase_command(self, desired: int, region: str) -> str:
        return (
            f"aws service-quotas request-service-quota-increase --service-code {SERVICE_CODE} "
            f"--quota-code {self.code} --desired-value {desired} --region {region}"
        )


def quota_values(service_quotas: Any, names: set[str]) -> dict[str, tuple[str, int]]:
    """Quota name -> (code, value) for the names asked: applied values first, AWS defaults for the rest."""
    from botocore.exceptions import BotoCoreError, ClientError

    found: dict[str, tuple[str, int]] = {}
    try:
        for operation in ("list_service_quotas", "list_aws_default_service_quotas"):
            for page in service_quotas.get_paginator(operation).paginate(ServiceCode=SERVICE_CODE):
                for quota in page.get("Quotas", []):
                    if quota.get("QuotaName") in names and quota["QuotaName"] not in found:
                        found[quota["QuotaName"]] = (quota["QuotaCode"], int(quota["Value"]))
            if names <= found.keys():
                break
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise QuotasUnreadable(f"Service Quotas refused: {code}") from None
    except BotoCoreError as exc:
        raise QuotasUnreadable(f"Service Quotas did not answer: {type(exc).__name__}") from None
    return found


def instances_in_use(sagemaker: Any, instance_type: str) -> dict[str, int]:
    """Instances of `instance_type` now held, per usage: InProgress jobs (on-demand or spot), warm pools."""
    used = {usage: 0 for usage in QUOTA_NAMES}
    pages = sagemaker.get_paginator("list_training_jobs")
    for usage, filters in (
        ("training", {"StatusEquals": "InProgress"}),
        ("warm pool", {"WarmPoolStatusEquals": "Available"}),
    ):
        for page in pages.paginate(**filters):
            for summary in page.get("TrainingJobSummaries", []):
                desc = sagemaker.describe_training_job(TrainingJobName=summary["TrainingJobName"])
                resources = desc.get("ResourceConfig", {})
                if resources.get("InstanceType") != instance_type:
                    continue
                if usage == "warm pool" and desc.get("WarmPoolStatus", {}).get("Status") not in ("Available", "InUse"):
                    continue
                spot = usage == "training" and desc.get("EnableManagedSpotTraining")
                used["spot" if spot else usage] += int(resources.get("InstanceCount", 1))
    return used


def quotas_for(service_quotas: Any, sagemaker: Any, instance_type: str, usages: list[str]) -> list[Quota]:
    """The quotas of `usages` for the type with what is in use now; a name Service Quotas lacks is left out.

    Raises QuotasUnreadable where quotas cannot be read.
    """
    names = {usage: QUOTA_NAMES[usage].format(type=instance_type) for usage in usages}
    from botocore.exceptions import ClientError

    values = quota_values(service_quotas, set(names.values()))
    try:
        used = instances_in_use(sagemaker, instance_type)
    except ClientError as exc:  # e.g. no sagemaker:ListTrainingJobs: what is in use is unknown
        code = exc.response.get("Error", {}).get("Code", "?")
        raise QuotasUnreadable(f"SageMaker {exc.operation_name} refused: {code}") from None
    return [
        Quota(name, values[name][0], values[name][1], used[usage]) for usage, name in names.items() if name in values
    ]


def free_instances(service_quotas: Any, sagemaker: Any, instance_type: str, usage: str = "training") -> int | None:
    """How many more instances of the type can be launched now for `usage`; None where quotas cannot be read."""
    try:
        quotas = quotas_for(service_quotas, sagemaker, instance_type, [usage])
    except QuotasUnreadable:
        return None
    return quotas[0].free if quotas else None


def check_quotas(
    service_quotas: Any,
    sagemaker: Any,
    instance_type: str,
    requested: int,
    region: str,
    usages: list[str],
    warn: Callable[[str], None],
) -> None:
    """Refuse a launch of `requested` instances that a quota would refuse; warn once where quotas are unreadable."""
    try:
        quotas = quotas_for(service_quotas, sagemaker, instance_type, usages)
    except QuotasUnreadable as problem:
        warn(f"warning: cannot read the SageMaker quotas for {instance_type} ({problem}); launching without the check")
        return
    for quota in quotas:
        if quota.in_use + requested > quota.value:
            raise QuotaError(
                f"SageMaker quota '{quota.name}' is {quota.value}, {quota.in_use} in use, {requested} requested: "
                f"run `{quota.increase_command(quota.in_use + requested, region)}` and launch again once it is granted"
            )


def usages(spot: bool, keep_alive_seconds: int) -> list[str]:
    """The quotas a launch draws on: spot or on-demand training, and the warm pool when kept alive."""
    return ["spot" if spot else "training"] + (["warm pool"] if keep_alive_seconds else [])
