"""The AWS side of a launch: what only AWS can tell, the SDK v3 ModelTrainer, CreateTrainingJob.

The SageMaker SDK and botocore are imported inside the functions: importing this module stays
cheap, and building a plan never needs them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ..config import DEFAULT_METRICS
from ..sagemaker_names import CHECKPOINT_DIR
from .names import split_s3_uri
from .plan import JobPlan, LaunchError, entry_command
from .session import aws_errors


def metric_definitions(names: list[str] | tuple[str, ...]) -> list[dict[str, str]]:
    """Regexes over the `name=value` lines printed by project.train, scraped by SageMaker into metrics."""
    return [{"Name": name, "Regex": rf"(?:^|\s){re.escape(name)}=([-+0-9.eE]+)"} for name in names]


METRIC_DEFINITIONS = metric_definitions(DEFAULT_METRICS)  # what the built-in models log


def check_remote(plan: JobPlan, cfg: Any, ecr: Any, s3: Any) -> None:
    """What only AWS can tell: the image tag is pushed and the data prefix holds the dataset."""
    repository = plan.image_uri.split("/", 1)[1].rsplit(":", 1)[0]  # the URL's form is checked at compose time
    with aws_errors(resource=f"ECR repository {repository}"):
        try:
            ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": plan.image_tag}])
        except ecr.exceptions.ImageNotFoundException:
            raise LaunchError(
                f"image tag {plan.image_tag} is not in ECR repository {repository}: "
                "run `invoke build` and `invoke push`"
            ) from None
        except ecr.exceptions.RepositoryNotFoundException:
            raise LaunchError(
                f"ECR repository {repository} does not exist: run `terraform apply` in terraform/"
            ) from None
    for channel, uri in plan.channels.items():
        bucket, prefix = split_s3_uri(uri)
        with aws_errors(resource=uri):
            listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        names = {obj["Key"][len(prefix) :] for obj in listing.get("Contents", [])}
        if not names:
            raise LaunchError(f"no data under {uri} (channel {channel}): run `invoke upload` first")
        expected = (cfg.dataset.get("files") or {}) if channel == "train" else {}
        missing = [stem for stem in expected if not ({stem, f"{stem}.gz"} & names)]
        if missing:
            raise LaunchError(f"{uri} lacks {', '.join(missing)}: run `invoke upload` again")


class _HyperparametersAreARecord(logging.Filter):
    """The SDK warns that a `command` gets no hyperparameters as arguments: ours are a record only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Hyperparameters are set but are not passed" not in record.getMessage()


def model_trainer(plan: JobPlan, source_dir: Path, boto_session: Any) -> Any:
    """The SDK v3 ModelTrainer for this plan: torchrun, one process per GPU, one node per instance.

    The command (entry_command) does what the SDK's Torchrun driver would, but as PID 1, so a
    stop or spot reclaim reaches the training processes; see project/launch.py.
    """
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.shapes import StoppingCondition
    from sagemaker.core.training.configs import CheckpointConfig, Compute, OutputDataConfig, SourceCode
    from sagemaker.train import ModelTrainer

    sdk_logger = logging.getLogger("sagemaker.core.utils.utils")
    if not any(isinstance(f, _HyperparametersAreARecord) for f in sdk_logger.filters):
        sdk_logger.addFilter(_HyperparametersAreARecord())
    bucket, _ = split_s3_uri(plan.output_uri)
    session = Session(
        boto_session=boto_session,
        default_bucket=bucket,  # code uploads go to the artifacts bucket, never a new default bucket
        default_bucket_prefix="code",
        sagemaker_config={"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}},
    )
    compute = Compute(
        instance_type=plan.instance_type,
        instance_count=plan.instance_count,
        volume_size_in_gb=plan.volume_size_gb,
        enable_managed_spot_training=plan.spot or None,
        keep_alive_period_in_seconds=plan.keep_alive_seconds or None,
    )
    stopping = StoppingCondition(max_runtime_in_seconds=plan.max_run_seconds)
    if plan.max_wait_seconds:
        stopping = StoppingCondition(
            max_runtime_in_seconds=plan.max_run_seconds, max_wait_time_in_seconds=plan.max_wait_seconds
        )
    trainer = ModelTrainer(
        sagemaker_session=session,
        role=plan.role_arn,
        base_job_name=plan.base_name,
        # The code is staged under the job's own name: the SDK's seconds-only names can collide.
        input_s3_key_prefix=plan.job_name,
        training_image=plan.image_uri,
        # `exec`: PID 1 becomes torchrun, which forwards SIGTERM to the workers (project/launch.py).
        source_code=SourceCode(source_dir=str(source_dir), command=entry_command(plan)),
        compute=compute,
        stopping_condition=stopping,
        output_data_config=OutputDataConfig(s3_output_path=plan.output_uri),
        checkpoint_config=CheckpointConfig(s3_uri=plan.checkpoint_uri, local_path=CHECKPOINT_DIR),
        input_data_config=input_channels(plan),
        environment=plan.environment,
        hyperparameters=plan.hyperparameters,
        tags=[{"key": k, "value": v} for k, v in plan.tags.items()],
    )
    return trainer.with_metric_definitions(_metric_definitions(plan.metrics))


def input_channels(plan: JobPlan) -> list[Any]:
    """One InputDataConfig channel per data channel (SM_CHANNEL_<NAME> in the job), in its input mode."""
    from sagemaker.core.shapes import Channel, DataSource, S3DataSource

    return [
        Channel(
            channel_name=name,
            data_source=DataSource(
                s3_data_source=S3DataSource(
                    s3_data_type="S3Prefix", s3_uri=uri, s3_data_distribution_type="FullyReplicated"
                )
            ),
            input_mode=plan.input_modes[name],
        )
        for name, uri in plan.channels.items()
    ]


def _metric_definitions(names: list[str]) -> list[Any]:
    from sagemaker.core.shapes import MetricDefinition

    return [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in metric_definitions(names)]


def _training_request(trainer: Any, job_name: str, boto3: bool) -> dict[str, Any]:
    """The SDK's own CreateTrainingJob request (it stages the code to S3 to know it), under our job name."""
    request: dict[str, Any] = trainer._create_training_job_args(boto3=boto3)
    request["TrainingJobName" if boto3 else "training_job_name"] = job_name
    return request


def create_request(trainer: Any, job_name: str) -> dict[str, Any]:
    """The CreateTrainingJob request `launch` would send, in its boto3 form."""
    # ModelTrainer.train(dry_run=True) validates but returns nothing; this is the request builder
    # train() calls, asked for the boto3 form.
    return _training_request(trainer, job_name, boto3=True)


def launch(trainer: Any, job_name: str) -> str:
    """Create the job named `job_name` without waiting. A request SageMaker refuses is one line.

    What ModelTrainer.train(wait=False) does, but under our name: the SDK names jobs
    <base>-<seconds> and takes no name of ours.
    """
    from botocore.exceptions import ClientError
    from sagemaker.core.resources import TrainingJob

    with aws_errors(resource=f"training job {job_name}"):
        try:
            job = TrainingJob.create(
                session=trainer.sagemaker_session.boto_session, **_training_request(trainer, job_name, boto3=False)
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") in ("ValidationException", "ResourceLimitExceeded", "AccessDeniedException"):
                raise LaunchError(f"SageMaker refused the job ({error['Code']}): {error.get('Message', '')}") from None
            raise
    return str(job.training_job_name)
