"""The AWS side of a launch: what only AWS can tell, the SDK v3 ModelTrainer, CreateTrainingJob.

The SageMaker SDK and botocore are imported inside the functions: importing this module stays
cheap, and building a plan never needs them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from project.aws.errors import aws_errors
from project.aws.fit import check_image_pull
from project.aws.image import JOB_REQUIREMENTS, JobImage
from project.aws.plan import JobPlan, LaunchError, entry_command
from project.aws.quotas import check_quotas, usages
from project.aws.staging import CODE_PREFIX
from project.core.names import split_s3_uri
from project.core.sagemaker_names import CHECKPOINT_DIR, MODEL_CHANNEL, MODEL_CONTENT_TYPE


def metric_definitions(names: list[str] | tuple[str, ...]) -> list[dict[str, str]]:
    """Regexes over the `name=value` lines printed by project.training.train, scraped by SageMaker into metrics."""
    return [{"Name": name, "Regex": rf"(?:^|\s){re.escape(name)}=([-+0-9.eE]+)"} for name in names]


# RetryStrategy: SageMaker launches the job again after InsufficientCapacityError (or an internal
# error), up to this many times, all within the one MaxRuntime: the worst-case cost does not grow.
CAPACITY_RETRY_ATTEMPTS = 3


def check_account(plan: JobPlan, service_quotas: Any, sagemaker: Any, iam: Any, warn: Any) -> None:
    """What the account allows: free quota for the instances, and the role's right to pull the image."""
    check_quotas(
        service_quotas,
        sagemaker,
        plan.instance_type,
        plan.instance_count,
        plan.region,
        usages(plan.spot, plan.keep_alive_seconds),
        warn,
    )
    check_image_pull(iam, plan.role_arn, plan.image_uri)


def check_remote(plan: JobPlan, cfg: Any, ecr: Any, s3: Any) -> None:
    """What only AWS can tell: a custom image's tag is pushed and each data channel's prefix holds data."""
    if plan.image.kind == "custom":
        _check_pushed(plan.image, cfg, ecr)
    for channel, uri in plan.channels.items():
        if channel in plan.file_systems:
            continue  # project/aws/vpc.py checks the file system and the way to it
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


def _check_pushed(image: JobImage, cfg: Any, ecr: Any) -> None:
    repository = image.uri.split("/", 1)[1].rsplit(":", 1)[0]  # the URL's form is checked at compose time
    with aws_errors(resource=f"ECR repository {repository}"):
        try:
            ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": image.tag}])
        except ecr.exceptions.ImageNotFoundException:
            same = "".join(f" job.{k}={cfg.job[k]}" for k in ("base_image", "image_tag") if cfg.job[k])
            raise LaunchError(
                f"image tag {image.tag} is not in ECR repository {repository}: "
                f"run `invoke build{same} && invoke push{same}` (or use job.image=aws: no Docker)"
            ) from None
        except ecr.exceptions.RepositoryNotFoundException:
            raise LaunchError(
                f"ECR repository {repository} does not exist: run `terraform apply` in terraform/"
            ) from None


class _HyperparametersAreARecord(logging.Filter):
    """The SDK warns that a `command` gets no hyperparameters as arguments: ours are a record only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Hyperparameters are set but are not passed" not in record.getMessage()


def sagemaker_session(boto_session: Any, bucket: str, prefix: str = CODE_PREFIX) -> Any:
    """The SDK Session a ModelTrainer uses: code uploads to `prefix` in the artifacts `bucket`, telemetry off.

    A sweep builds it once for all its jobs (each build costs ~1 s of CPU in the SDK).
    """
    from sagemaker.core.helper.session_helper import Session

    return Session(
        boto_session=boto_session,
        default_bucket=bucket,  # code uploads go to the artifacts bucket, never a new default bucket
        default_bucket_prefix=prefix,
        sagemaker_config={"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}},
    )


def model_trainer(
    plan: JobPlan,
    source_dir: Path | str,
    boto_session: Any,
    channels: dict[str, str] | None = None,
    session: Any = None,
) -> Any:
    """The SDK v3 ModelTrainer for this plan: torchrun, one process per GPU, one node per instance.

    `source_dir`: a local folder (uploaded under the job's name) or an s3:// prefix ending in "/"
    (a sweep's code, uploaded once); `channels`: more input channels, name -> s3:// prefix;
    `session`: an SDK Session from sagemaker_session() to reuse, else one is built.

    The command (entry_command) does what the SDK's Torchrun driver would, but as PID 1, so a
    stop or spot reclaim reaches the training processes; see project/training/launch.py.
    """
    from sagemaker.core.shapes import StoppingCondition
    from sagemaker.core.training.configs import CheckpointConfig, Compute, OutputDataConfig, SourceCode
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import InputData, Networking, RetryStrategy

    sdk_logger = logging.getLogger("sagemaker.core.utils.utils")
    if not any(isinstance(f, _HyperparametersAreARecord) for f in sdk_logger.filters):
        sdk_logger.addFilter(_HyperparametersAreARecord())
    session = session or sagemaker_session(boto_session, split_s3_uri(plan.output_uri)[0])
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
        # `exec`: PID 1 becomes torchrun, which forwards SIGTERM to the workers (project/training/launch.py).
        # job.image=aws or a tracker: the SDK's sm_train.sh pip-installs the staged requirements before the command.
        source_code=SourceCode(
            source_dir=str(source_dir),
            command=entry_command(plan),
            requirements=JOB_REQUIREMENTS if plan.requirements_file() is not None else None,
        ),
        compute=compute,
        stopping_condition=stopping,
        output_data_config=OutputDataConfig(s3_output_path=plan.output_uri),
        checkpoint_config=CheckpointConfig(s3_uri=plan.checkpoint_uri, local_path=CHECKPOINT_DIR),
        input_data_config=[
            *input_channels(plan),
            *(InputData(channel_name=name, data_source=uri) for name, uri in (channels or {}).items()),
        ],
        environment=plan.environment,
        hyperparameters=plan.hyperparameters,
        tags=[{"key": k, "value": v} for k, v in plan.tags.items()],
        networking=(
            Networking(
                subnets=list(plan.subnets) or None,
                security_group_ids=list(plan.security_groups) or None,
                enable_network_isolation=plan.network_isolation or None,
            )
            if plan.subnets or plan.network_isolation
            else None
        ),
    )
    trainer = trainer.with_retry_strategy(RetryStrategy(maximum_retry_attempts=CAPACITY_RETRY_ATTEMPTS))
    return trainer.with_metric_definitions(_metric_definitions(plan.metrics))


def input_channels(plan: JobPlan) -> list[Any]:
    """One InputDataConfig channel per data channel (SM_CHANNEL_<NAME> in the job), in its input mode."""
    from sagemaker.core.shapes import Channel, DataSource, FileSystemDataSource, S3DataSource

    def source(name: str, uri: str) -> Any:
        if name in plan.file_systems:  # mounted read-only, as the job's VPC reaches it
            fs = plan.file_systems[name]
            return FileSystemDataSource(
                file_system_id=fs.file_system_id,
                file_system_access_mode="ro",
                file_system_type=fs.kind.file_system_type,
                directory_path=fs.directory_path,
            )
        if name in plan.manifests:  # only the objects SageMaker's manifest names (the current shards)
            return S3DataSource(
                s3_data_type="ManifestFile", s3_uri=plan.manifests[name], s3_data_distribution_type="FullyReplicated"
            )
        return S3DataSource(s3_data_type="S3Prefix", s3_uri=uri, s3_data_distribution_type="FullyReplicated")

    data = [
        Channel(
            channel_name=name,
            data_source=(
                DataSource(file_system_data_source=source(name, uri))
                if name in plan.file_systems
                else DataSource(s3_data_source=source(name, uri))
            ),
            input_mode=plan.input_modes[name],
        )
        for name, uri in plan.channels.items()
    ]
    if plan.parent is None:
        return data
    # trainer.init_from: the earlier model, downloaded before training (File mode), as AWS documents
    # incremental training; the prefix is the one object's key.
    model = Channel(
        channel_name=MODEL_CHANNEL,
        data_source=DataSource(
            s3_data_source=S3DataSource(
                s3_data_type="S3Prefix", s3_uri=plan.parent.uri, s3_data_distribution_type="FullyReplicated"
            )
        ),
        input_mode="File",
        content_type=MODEL_CONTENT_TYPE,
    )
    return [*data, model]


def _metric_definitions(names: list[str]) -> list[Any]:
    from sagemaker.core.shapes import MetricDefinition

    return [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in metric_definitions(names)]


def _training_request(trainer: Any, job_name: str, boto3: bool) -> dict[str, Any]:
    """The SDK's own CreateTrainingJob request (it stages the code to S3 to know it), under our job name.

    The one call of ModelTrainer._create_training_job_args, a private SDK method: a test in
    tests/test_jobs.py names it and checks its arguments and the fields we send, so an SDK upgrade
    that changes it fails there.
    """
    request: dict[str, Any] = trainer._create_training_job_args(boto3=boto3)
    request["TrainingJobName" if boto3 else "training_job_name"] = job_name
    # SageMaker Debugger is closed to new customers and its profiler reaches end of support: off,
    # explicitly (no DebugHookConfig or rule configurations is no hook; ProfilerConfig disables the
    # system monitor). trainer.profile (torch.profiler) and the step_time_ms/data_wait_ms metrics replace them.
    request["ProfilerConfig" if boto3 else "profiler_config"] = _profiler_off(boto3)
    return request


def _profiler_off(boto3: bool) -> Any:
    from sagemaker.core.shapes import ProfilerConfig

    return {"DisableProfiler": True} if boto3 else ProfilerConfig(disable_profiler=True)


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
