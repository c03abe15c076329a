"""moto's in-process record of a training job, and the status changes SageMaker makes to it.

The API has no call that ends a job, so the sandbox (moto running in this process) writes the
end state on the object DescribeTrainingJob reads, the warm pool a completed job leaves included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from project.sandbox.optml import SandboxError

TERMINAL = ("Completed", "Failed", "Stopped")
FAILURE_REASON_LIMIT = 1024  # SageMaker truncates FailureReason


def backend(arn: str) -> Any:
    """moto's SageMaker backend of the ARN's account and region."""
    from moto.sagemaker.models import sagemaker_backends

    _, _, _, region, account, _ = arn.split(":", 5)
    return sagemaker_backends[account][region]


def moto_job(sagemaker_client: Any, job_name: str) -> Any:
    """moto's in-process record of the job (the object DescribeTrainingJob reads)."""
    arn = sagemaker_client.describe_training_job(TrainingJobName=job_name)["TrainingJobArn"]
    job = backend(arn).training_jobs.get(job_name)
    if job is None:
        raise SandboxError(f"job {job_name} is not in this process's moto: the sandbox must serve the endpoint")
    return job


def now() -> Any:
    from moto.core.utils import utcnow

    return utcnow()


def set_status(job: Any, status: str, secondary: str, message: str) -> None:
    """A SecondaryStatusTransition, as the service records each phase."""
    stamp = now()
    transitions = job.secondary_status_transitions or []
    if transitions and "EndTime" not in transitions[-1]:
        transitions[-1]["EndTime"] = stamp
    transitions.append({"Status": secondary, "StartTime": stamp, "StatusMessage": message})
    job.secondary_status_transitions = transitions
    job.training_job_status, job.secondary_status, job.last_modified_time = status, secondary, stamp


def start_recorded(job: Any) -> None:
    """A new job as the service has it: InProgress/Starting, nothing trained yet."""
    job.training_job_status, job.secondary_status = "InProgress", "Starting"
    job.training_start_time = job.training_end_time = job.model_artifacts = job.final_metric_data_list = None
    job.secondary_status_transitions = [
        {"Status": "Starting", "StartTime": job.creation_time, "StatusMessage": "Launching requested ML instances"}
    ]


@dataclass(frozen=True)
class Outcome:
    """How a job ended, as DescribeTrainingJob reports it."""

    status: str  # Completed, Failed or Stopped
    secondary_status: str | None = None
    model_uri: str | None = None
    failure_reason: str | None = None
    billable_seconds: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def finish(job: Any, outcome: Outcome) -> None:
    """Write the end state on moto's record."""
    if outcome.status not in TERMINAL:
        raise ValueError(f"status must be one of {TERMINAL}, got {outcome.status!r}")
    set_status(
        job, outcome.status, outcome.secondary_status or outcome.status, f"Training job {outcome.status.lower()}"
    )
    stamp = now()
    job.secondary_status_transitions[-1]["EndTime"] = stamp
    job.training_start_time = job.training_start_time or job.creation_time
    job.training_end_time = stamp
    job.training_time_in_seconds = max(1, int((stamp - job.training_start_time).total_seconds()))
    billable = outcome.billable_seconds
    job.billable_time_in_seconds = billable if billable is not None else job.training_time_in_seconds
    job.model_artifacts = {"S3ModelArtifacts": outcome.model_uri} if outcome.model_uri else None
    job.failure_reason = outcome.failure_reason[:FAILURE_REASON_LIMIT] if outcome.failure_reason else None
    job.final_metric_data_list = [
        {"MetricName": name, "Value": float(value), "Timestamp": stamp} for name, value in outcome.metrics.items()
    ] or None
    if outcome.status == "Completed" and keep_alive_seconds(job):
        job.warm_pool_status = {"Status": "Available", "ResourceRetainedBillableTimeInSeconds": 0}


def keep_alive_seconds(job: Any) -> int:
    return int((job.resource_config or {}).get("KeepAlivePeriodInSeconds") or 0)


def update_warm_pool(job: Any) -> None:
    """A completed job with a KeepAlivePeriod keeps its instances as a warm pool, Available (and
    billed) until the period has passed since the job ended; then the pool is Terminated."""
    pool = getattr(job, "warm_pool_status", None)
    if not pool or pool["Status"] != "Available":
        return
    retained = min(int((now() - job.training_end_time).total_seconds()), keep_alive_seconds(job))
    pool["ResourceRetainedBillableTimeInSeconds"] = retained
    if retained >= keep_alive_seconds(job):
        pool["Status"] = "Terminated"


def terminate_warm_pool(job: Any) -> None:
    """The warm pool ends now (the user terminated it)."""
    if getattr(job, "warm_pool_status", None):
        job.warm_pool_status["Status"] = "Terminated"


def finish_job(sagemaker_client: Any, job_name: str, outcome: Outcome) -> dict[str, Any]:
    """End the job as SageMaker would; returns its DescribeTrainingJob."""
    finish(moto_job(sagemaker_client, job_name), outcome)
    return sagemaker_client.describe_training_job(TrainingJobName=job_name)
