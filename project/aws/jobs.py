"""SageMaker training jobs: plan (pure), validate (pure), check AWS, launch with ModelTrainer.

`plan_job` turns a composed config and the Terraform outputs into a `JobPlan`; `validate_plan`
refuses anything SageMaker would reject or that wastes money, before any call is made;
`launch` stages the code with the resolved config and calls `ModelTrainer.train`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import (
    CONF_DIR,
    RESOLVED_CONFIG_NAME,
    ConfigError,
    config_hash,
    per_device_batch,
    resolve_gpus,
    to_yaml,
    with_gpus,
)
from ..errors import UserError
from ..infra import Infra
from .cost import Cost, estimate
from .session import aws_errors

PROJECT_DIR = Path(__file__).resolve().parent.parent
DATA_CHANNEL = "train"
ENTRY_SCRIPT = "sm_entry.py"
MAX_RUNTIME_SECONDS = 28 * 24 * 3600  # SageMaker's limit on MaxRuntimeInSeconds/MaxWaitTimeInSeconds
MAX_KEEP_ALIVE_SECONDS = 3600  # warm pools keep instances at most an hour
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker's TrainingJobName pattern
# <base>-YYYYmmdd-HHMMSS-mmm-xxxx: milliseconds and a random suffix, so launches in the same
# second (two terminals, a script) never collide as the SDK's seconds-only names do.
JOB_NAME_SUFFIX_LENGTH = len("-20260101-000000-000-0000")
MAX_BASE_NAME_LENGTH = 63 - JOB_NAME_SUFFIX_LENGTH
HYPERPARAMETER_LIMITS = {"count": 100, "key": 256, "value": 2500}
LOG_GROUP = "/aws/sagemaker/TrainingJobs"

# `name=value` lines printed by project.train, scraped by SageMaker into CloudWatch metrics.
METRIC_NAMES = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "epoch")
METRIC_DEFINITIONS = [{"Name": name, "Regex": rf"(?:^|\s){name}=([-+0-9.eE]+)"} for name in METRIC_NAMES]

ENTRY_SOURCE = '''"""SageMaker entry point, staged beside the project package and the resolved config.

The job runs `exec python3 sm_entry.py --launch N`: this process is the container's PID 1 and
becomes torchrun with N processes per node (project/launch.py says why). torchrun runs this file
again in each worker, which trains from config.yaml. `python3 sm_entry.py` trains in-process.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    if sys.argv[1:2] == ["--launch"]:
        from project.launch import launch

        launch(int(sys.argv[2]), str(HERE / "sm_entry.py"))
    from project.train import main

    sys.exit(main(["--config", str(HERE / "config.yaml")]))
'''


class LaunchError(UserError):
    """Refused before anything was launched; the message is one actionable line."""


@dataclass(frozen=True)
class JobPlan:
    base_name: str
    job_name: str  # the TrainingJobName, chosen when planning so the summary names the job launched
    image_uri: str
    image_tag: str
    role_arn: str
    region: str
    instance_type: str
    instance_count: int
    gpus_per_node: int
    processes_per_node: int
    world_size: int
    per_device_batch: int
    volume_size_gb: int
    max_run_seconds: int
    max_wait_seconds: int | None
    spot: bool
    keep_alive_seconds: int
    data_uri: str
    output_uri: str
    checkpoint_uri: str
    config_hash: str
    tags: dict[str, str]
    environment: dict[str, str]
    hyperparameters: dict[str, str] = field(default_factory=dict)
    cost: Cost | None = None

    def summary(self) -> str:
        rows = [
            ("job", self.job_name),
            ("image", self.image_uri),
            ("command", f"{entry_command(self)}  (torchrun as PID 1: SIGTERM reaches training)"),
            ("instance", f"{self.instance_count} x {self.instance_type}"),
            ("processes", f"{self.processes_per_node} per node, world size {self.world_size}"),
            ("batch", f"{self.per_device_batch} per device, {self.per_device_batch * self.world_size} global"),
            ("data", self.data_uri),
            ("output", self.output_uri),
            ("checkpoints", self.checkpoint_uri),
            (
                "max runtime",
                f"{self.max_run_seconds // 60} min"
                + (f", max wait {self.max_wait_seconds // 60} min (spot)" if self.max_wait_seconds else ""),
            ),
            ("warm pool", f"{self.keep_alive_seconds // 60} min" if self.keep_alive_seconds else "off"),
            ("cost", self.cost.line(self.spot) if self.cost else "?"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def known_instance_types() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "instance").glob("*.yaml"))


def job_name(base_name: str, now: datetime | None = None) -> str:
    """A training job name no other launch gets, even in the same second: see JOB_NAME_SUFFIX_LENGTH."""
    now = now or datetime.now(UTC)  # UTC: one clock for every launcher, whatever its time zone
    return f"{base_name}-{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"


def plan_job(cfg: Any, infra: Infra, image_tag: str, now: datetime | None = None) -> JobPlan:
    """Everything the job will be, derived from the config and the Terraform outputs (pure but for its name)."""
    inst, job = cfg.instance, cfg.job
    if inst.type not in known_instance_types():
        raise LaunchError(
            f"unknown instance type {inst.type!r}; choose one of: {', '.join(known_instance_types())} "
            "(or add conf/instance/<type>.yaml)"
        )
    try:
        gpus = resolve_gpus(cfg.trainer.gpus, inst.gpus)
    except ConfigError:
        raise LaunchError(
            f"trainer.gpus={cfg.trainer.gpus} but {inst.type} has {inst.gpus} GPU(s); "
            f"use trainer.gpus<={inst.gpus} or a larger instance"
        ) from None
    processes = max(gpus, 1)
    max_run = job.max_run_minutes * 60
    max_wait = (job.max_wait_minutes * 60 if job.max_wait_minutes else 2 * max_run) if job.spot else None
    digest = config_hash(with_gpus(cfg, gpus))  # the staged config's identity, as the container computes it
    data_bucket, artifacts = infra.data_bucket, infra.artifacts_bucket
    return JobPlan(
        base_name=job.base_name,
        job_name=job_name(job.base_name, now),
        image_uri=f"{infra.repository_url}:{image_tag}",
        image_tag=image_tag,
        role_arn=infra.role_arn,
        region=infra.region,
        instance_type=inst.type,
        instance_count=inst.count,
        gpus_per_node=gpus,
        processes_per_node=processes,
        world_size=processes * inst.count,
        per_device_batch=per_device_batch(cfg.trainer.batch_size, inst.count, processes),
        volume_size_gb=inst.volume_size_gb,
        max_run_seconds=max_run,
        max_wait_seconds=max_wait,
        spot=job.spot,
        keep_alive_seconds=job.keep_alive_minutes * 60,
        data_uri=f"s3://{data_bucket}/{cfg.dataset.s3_prefix.strip('/')}/",
        output_uri=f"s3://{artifacts}/jobs/",
        # Keyed by config hash: a re-run of the same config resumes from these checkpoints.
        checkpoint_uri=f"s3://{artifacts}/checkpoints/{job.base_name}-{digest}/",
        config_hash=digest,
        tags={"project": "lightning-sagemaker", "git-sha": image_tag, "config-hash": digest},
        environment={"PYTHONUNBUFFERED": "1", **{str(k): str(v) for k, v in job.environment.items()}},
        # For the record (console, DescribeTrainingJob): the container reads config.yaml, not these.
        hyperparameters={"config_hash": digest, "processes_per_node": str(processes), "nodes": str(inst.count)},
        cost=estimate(inst.price_per_hour, inst.count, max_run, job.spot_discount, max_wait),
    )


def validate_plan(plan: JobPlan, cfg: Any) -> None:
    """Refuse what SageMaker would reject, or what would silently train something else (pure)."""
    if not JOB_NAME.match(plan.job_name) or len(plan.base_name) > MAX_BASE_NAME_LENGTH:
        raise LaunchError(
            f"job.base_name={plan.base_name!r}: letters, digits and '-', at most {MAX_BASE_NAME_LENGTH} characters "
            "(SageMaker adds the launch time and a random suffix, 63 in all)"
        )
    if not 60 <= plan.max_run_seconds <= MAX_RUNTIME_SECONDS:
        raise LaunchError(f"job.max_run_minutes must be between 1 and {MAX_RUNTIME_SECONDS // 60}")
    if plan.spot:
        if plan.max_wait_seconds is None or plan.max_wait_seconds < plan.max_run_seconds:
            raise LaunchError(
                f"spot needs job.max_wait_minutes >= job.max_run_minutes ({plan.max_run_seconds // 60}); "
                f"got {cfg.job.max_wait_minutes}"
            )
        if plan.max_wait_seconds > MAX_RUNTIME_SECONDS:
            raise LaunchError(f"job.max_wait_minutes must be at most {MAX_RUNTIME_SECONDS // 60}")
    elif cfg.job.max_wait_minutes is not None:
        raise LaunchError("job.max_wait_minutes applies to spot only: add job.spot=true or drop it")
    if not 0 <= plan.keep_alive_seconds <= MAX_KEEP_ALIVE_SECONDS:
        raise LaunchError(f"job.keep_alive_minutes must be between 0 and {MAX_KEEP_ALIVE_SECONDS // 60}")
    if plan.spot and plan.keep_alive_seconds:
        raise LaunchError("warm pools (job.keep_alive_minutes) cannot be used with managed spot")
    limits = HYPERPARAMETER_LIMITS
    if len(plan.hyperparameters) > limits["count"]:
        raise LaunchError(f"{len(plan.hyperparameters)} hyperparameters; SageMaker allows {limits['count']}")
    for key, value in plan.hyperparameters.items():
        if len(key) > limits["key"] or len(value) > limits["value"]:
            raise LaunchError(f"hyperparameter {key!r} exceeds SageMaker's length limits")
    if plan.gpus_per_node == 0 and cfg.instance.gpus > 0:
        raise LaunchError(
            f"trainer.gpus=0 on {plan.instance_type} pays for {cfg.instance.gpus} idle GPU(s); pick a CPU instance"
        )


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
    bucket, _, prefix = plan.data_uri[len("s3://") :].partition("/")
    with aws_errors(resource=plan.data_uri):
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    names = {obj["Key"][len(prefix) :] for obj in listing.get("Contents", [])}
    if not names:
        raise LaunchError(f"no data under {plan.data_uri}: run `invoke upload` first")
    missing = [stem for stem in cfg.dataset.files if not ({stem, f"{stem}.gz"} & names)]
    if missing:
        raise LaunchError(f"{plan.data_uri} lacks {', '.join(missing)}: run `invoke upload` again")


def stage_source(cfg: Any, dest: Path, plan: JobPlan) -> Path:
    """The code channel: the project package, the resolved config and the torchrun entry script.

    Its trainer.gpus is the plan's gpus_per_node, resolved when the job was planned: the container
    does not resolve it again.
    """
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(PROJECT_DIR, dest / "project", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / RESOLVED_CONFIG_NAME).write_text(to_yaml(with_gpus(cfg, plan.gpus_per_node)))
    (dest / ENTRY_SCRIPT).write_text(ENTRY_SOURCE)
    return dest


def entry_command(plan: JobPlan) -> str:
    """The job's command: torchrun with one process per GPU (one on CPU), one node per instance."""
    return f"exec python3 {ENTRY_SCRIPT} --launch {plan.processes_per_node}"


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
    from sagemaker.train.configs import InputData

    sdk_logger = logging.getLogger("sagemaker.core.utils.utils")
    if not any(isinstance(f, _HyperparametersAreARecord) for f in sdk_logger.filters):
        sdk_logger.addFilter(_HyperparametersAreARecord())
    bucket = plan.output_uri[len("s3://") :].split("/", 1)[0]
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
        checkpoint_config=CheckpointConfig(s3_uri=plan.checkpoint_uri, local_path="/opt/ml/checkpoints"),
        input_data_config=[InputData(channel_name=DATA_CHANNEL, data_source=plan.data_uri)],
        environment=plan.environment,
        hyperparameters=plan.hyperparameters,
        tags=[{"key": k, "value": v} for k, v in plan.tags.items()],
    )
    return trainer.with_metric_definitions(_metric_definitions())


def _metric_definitions() -> list[Any]:
    from sagemaker.core.shapes import MetricDefinition

    return [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in METRIC_DEFINITIONS]


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


def plan_as_dict(plan: JobPlan) -> dict[str, Any]:
    as_dict: dict[str, Any] = json.loads(json.dumps(asdict(plan), default=str))
    return as_dict
