"""A SageMaker training job as a plan: derived from the config (pure), validated before any call.

`plan_job` turns a composed config and the Terraform outputs into a `JobPlan`; `validate_plan`
refuses anything SageMaker would reject or that wastes money. Nothing here talks to AWS: the
launch itself is project.aws.sdk's, the code channel project.aws.staging's.

This module is over 300 lines because JobPlan is one record of all a training job is, with the summary a user
confirms before the launch, and `plan_job`, which fills it from the config, is as long as the record; where a
job reads its channels is project.aws.channels's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from project.aws.channels import channel_manifests, job_channels
from project.aws.cost import Cost, budget_line, check_budget, estimate, price_age_note
from project.aws.filesystems import FileSystemChannel
from project.aws.fit import check_precision
from project.aws.image import JobImage, job_requirements, tracking_requirements
from project.aws.infra import Infra
from project.core.config import known_instance_types, metric_names, with_gpus
from project.core.errors import UserError
from project.core.identity import Progress, run_identity
from project.core.sagemaker_names import (
    GIT_SHA_ENV,
    JOB_NAME,
    MODEL_CHANNEL,
    PARENT_HASH_ENV,
    PARENT_HASH_TAG,
    PARENT_RUN_ENV,
    PARENT_RUN_TAG,
    PROJECT_TAG,
)
from project.core.topology import Topology, decide
from project.training.launch import trains_in_pid_1
from project.training.pipe import PIPE, check_input_modes
from project.training.tracking import SAGEMAKER_MLFLOW_ARN

ENTRY_SCRIPT = "sm_entry.py"  # project/training/sm_entry.py, staged at the top of the code channel
MAX_RUNTIME_SECONDS = 28 * 24 * 3600  # SageMaker's limit on MaxRuntimeInSeconds/MaxWaitTimeInSeconds
MAX_KEEP_ALIVE_SECONDS = 3600  # warm pools keep instances at most an hour
# <base>-YYYYmmdd-HHMMSS-mmm-xxxx: milliseconds and a random suffix, so launches in the same
# second (two terminals, a script) never collide as the SDK's seconds-only names do.
JOB_NAME_SUFFIX_LENGTH = len("-20260101-000000-000-0000")
MAX_BASE_NAME_LENGTH = 63 - JOB_NAME_SUFFIX_LENGTH
HYPERPARAMETER_LIMITS = {"count": 100, "key": 256, "value": 2500}


class LaunchError(UserError):
    """Refused before anything was launched; the message is one actionable line."""


@dataclass(frozen=True)
class ModelChannel:
    """trainer.init_from on SageMaker: the earlier model's S3 object, read by the job's `model` channel
    (project/aws/init_source.py finds it), and the parent it came from."""

    uri: str  # s3://.../model.tar.gz (a job's), or a .pt/.ckpt uploaded from this machine
    run: str  # the parent run or job
    config_hash: str | None  # its identity, where known

    def line(self) -> str:
        return f"{self.run} ({self.config_hash or 'hash unknown'}): {self.uri}  (File: the `{MODEL_CHANNEL}` channel)"

    def tags(self) -> dict[str, str]:
        return {PARENT_RUN_TAG: self.run, **({PARENT_HASH_TAG: self.config_hash} if self.config_hash else {})}

    def environment(self) -> dict[str, str]:
        """What the container records in metrics.json (project/core/lineage.py channel_parent)."""
        return {PARENT_RUN_ENV: self.run, **({PARENT_HASH_ENV: self.config_hash} if self.config_hash else {})}


@dataclass(frozen=True)
class JobPlan:
    base_name: str
    job_name: str  # the TrainingJobName, chosen when planning so the summary names the job launched
    image: JobImage
    role_arn: str
    region: str
    instance_type: str
    instance_count: int
    topology: Topology  # decided with the instance type's GPUs: the container decides it again with its own
    volume_size_gb: int
    max_run_seconds: int
    max_wait_seconds: int | None
    spot: bool
    keep_alive_seconds: int
    channels: dict[str, str]  # data channel -> its S3 prefix or file system (one InputDataConfig channel each)
    input_modes: dict[str, str]  # data channel -> File, FastFile or Pipe
    output_uri: str
    checkpoint_uri: str
    config_hash: str
    tags: dict[str, str]
    environment: dict[str, str]
    hyperparameters: dict[str, str] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)  # the names the metric definitions scrape
    cost: Cost | None = None
    max_cost_usd: float | None = None  # job.max_cost_usd: the budget of this launch
    price_note: str = ""  # the catalog price is stale, hand-typed or another region's
    # data channel -> SageMaker's manifest of it (S3DataType ManifestFile): a File-mode channel of
    # shards downloads only the ones its last upload named (imagetree.write_sagemaker_manifest)
    manifests: dict[str, str] = field(default_factory=dict)
    # What checkpoint_uri already holds of this identity (workflow.earlier_run): the job resumes it.
    earlier: Progress | None = None
    parent: ModelChannel | None = None  # trainer.init_from: the model channel
    # The start-up predicted from this project's earlier jobs, and what would shorten it
    # (project/aws/startup_history.py prediction): the summary's `start-up` lines.
    startup: tuple[str, ...] = ()
    # logger=mlflow/wandb: the packages the job installs for them (image.tracking_requirements), and
    # where MLflow logs: logger.mlflow.tracking_uri, else Terraform's tracking server (enable_mlflow),
    # else None (mlruns/ in the job's output.tar.gz).
    tracking: tuple[str, ...] = ()
    mlflow_uri: str | None = None
    # data channel -> the file system it reads (fsx://, efs://: a FileSystemDataSource); such a job
    # runs in the VPC of `subnets` (aws.subnets, else Terraform's), with `security_groups`.
    file_systems: dict[str, FileSystemChannel] = field(default_factory=dict)
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    network_isolation: bool = False  # job.network_isolation: EnableNetworkIsolation

    @property
    def image_uri(self) -> str:
        return self.image.uri

    def _tracking_line(self) -> str:
        where = self.mlflow_uri or "mlruns/ in the job's output.tar.gz (no tracking server: enable_mlflow)"
        mlflow = f"MLflow: {where}; " if any(line.startswith("mlflow") for line in self.tracking) else ""
        return f"{mlflow}pip installs {', '.join(self.tracking)} at start"

    def requirements_file(self) -> str | None:
        """What the job pip-installs at start (sm_train.sh): job.image=aws's requirements, a tracker's; None: none."""
        if self.image.install:
            return job_requirements(self.tracking)
        return "\n".join(self.tracking) + "\n" if self.tracking else None

    @property
    def gpus_per_node(self) -> int:
        return self.topology.gpus_per_node

    @property
    def processes_per_node(self) -> int:
        return self.topology.processes_per_node

    @property
    def world_size(self) -> int:
        return self.topology.world_size

    @property
    def per_device_batch(self) -> int:
        return self.topology.per_device_batch

    def _channel_line(self, name: str, uri: str) -> str:
        if name in self.file_systems:
            fs = self.file_systems[name]
            return f"{uri}  ({fs.kind.file_system_type} {fs.file_system_id}:{fs.directory_path}, read-only)"
        if name in self.manifests:
            shards = f"the shards {self.manifests[name].rsplit('/', 1)[1]} names"
            if self.input_modes[name] == PIPE and self.processes_per_node > 1:  # project/training/pipe_relay.py
                shards += f", relayed to {self.processes_per_node} processes per instance"
            return f"{uri}  ({self.input_modes[name]}: {shards})"
        return f"{uri}  ({self.input_modes[name]})"

    def _sharding(self) -> str:
        return f"; fsdp: the model sharded over all {self.world_size}" if self.topology.sharded else ""

    def _network_line(self) -> str:
        where = f"VPC subnets {', '.join(self.subnets)}; security groups {', '.join(self.security_groups)}"
        if not self.subnets:
            where = "no VPC"
        return where + ("; network isolation (no internet, no AWS APIs)" if self.network_isolation else "")

    def summary(self) -> str:
        rows = [
            ("job", self.job_name),
            ("image", self.image.line()),
            *([("start-up", self.image.install.line())] if self.image.install else []),
            *(("start-up" if i == 0 else "", line) for i, line in enumerate(self.startup)),
            *([("tracking", self._tracking_line())] if self.tracking else []),
            ("command", f"{entry_command(self)}  ({pid_1(self)})"),
            ("instance", f"{self.instance_count} x {self.instance_type}"),
            ("processes", f"{self.processes_per_node} per node, world size {self.world_size}{self._sharding()}"),
            ("batch", f"{self.per_device_batch} per device, {self.per_device_batch * self.world_size} global"),
            *((f"data {name}", self._channel_line(name, uri)) for name, uri in self.channels.items()),
            *([("start from", self.parent.line())] if self.parent else []),
            *([("network", self._network_line())] if self.subnets or self.network_isolation else []),
            ("output", self.output_uri),
            ("checkpoints", self.checkpoint_uri),
            *([("earlier run", earlier_line(self.earlier))] if self.earlier else []),
            (
                "max runtime",
                f"{self.max_run_seconds // 60} min"
                + (f", max wait {self.max_wait_seconds // 60} min (spot)" if self.max_wait_seconds else ""),
            ),
            ("warm pool", f"{self.keep_alive_seconds // 60} min" if self.keep_alive_seconds else "off"),
            ("cost", self.cost.line(self.spot) if self.cost else "?"),
            ("budget", budget_line(self.cost.worst_case_usd, self.max_cost_usd) if self.cost else "?"),
        ]
        if self.price_note:
            rows.insert(-1, ("price", self.price_note))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def earlier_line(earlier: Progress) -> str:
    """What the job does with the checkpoints an earlier job of its identity left in its prefix."""
    if earlier.finished:
        return (
            f"finished already (config {earlier.identity}): this job would only test and export it again, "
            "billed; to train anew pass a new trainer.seed= or job.base_name="
        )
    return f"interrupted at step {earlier.step}: this job resumes from there"


def job_name(base_name: str, now: datetime | None = None) -> str:
    """A training job name no other launch gets, even in the same second: see JOB_NAME_SUFFIX_LENGTH."""
    now = now or datetime.now(UTC)  # UTC: one clock for every launcher, whatever its time zone
    return f"{base_name}-{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"


def plan_job(
    cfg: Any,
    infra: Infra,
    image: JobImage,
    now: datetime | None = None,
    revision: str = "-",
    parent: ModelChannel | None = None,
) -> JobPlan:
    """Everything the job will be, derived from the config and the Terraform outputs (pure but for its name).

    `revision`: the commit of the staged code (staging.source_revision), recorded as the `git-sha` tag.
    `parent`: trainer.init_from's model as init_source.model_channel found it; cfg.trainer.init_from names its URI.
    """
    inst, job = cfg.instance, cfg.job
    if cfg.trainer.init_from is not None and (parent is None or cfg.trainer.init_from != parent.uri):
        # init_source.model_channel finds the channel and points the config at its URI: not done here
        raise ValueError(f"trainer.init_from={cfg.trainer.init_from} is planned without its model channel")
    if inst.type not in known_instance_types():
        raise LaunchError(
            f"unknown instance type {inst.type!r}; choose one of: {', '.join(known_instance_types())} "
            "(or add conf/instance/<type>.yaml)"
        )
    check_input_modes(cfg.dataset)  # Pipe on the MNIST family's files: one line, nothing launched
    topology = decide(cfg.trainer, inst.gpus, nodes=inst.count, where=inst.type)
    max_run = job.max_run_minutes * 60
    max_wait = (job.max_wait_minutes * 60 if job.max_wait_minutes else 2 * max_run) if job.spot else None
    # The staged config's identity, as the container computes it.
    digest = run_identity(with_gpus(cfg, topology.gpus_per_node))
    data_bucket, artifacts = infra.data_bucket, infra.artifacts_bucket
    channels, file_systems = job_channels(cfg, data_bucket)
    input_modes = {name: str((cfg.dataset.get("input_modes") or {}).get(name, "File")) for name in cfg.dataset.channels}
    tracked = "mlflow" in (cfg.get("logger") or {})
    wandb = "wandb" in (cfg.get("logger") or {})
    mlflow_uri = (cfg.logger.mlflow.tracking_uri or infra.mlflow_tracking_server_arn) if tracked else None
    if str(mlflow_uri).startswith("arn:") and not SAGEMAKER_MLFLOW_ARN.match(str(mlflow_uri)):
        raise LaunchError(  # the container would say so only after the instance started
            f"logger.mlflow.tracking_uri={mlflow_uri} is not a SageMaker MLflow tracking server's ARN "
            "(arn:aws:sagemaker:<region>:<account>:mlflow-tracking-server/<name>): check `terraform output`"
        )
    return JobPlan(
        base_name=job.base_name,
        job_name=job_name(job.base_name, now),
        image=image,
        role_arn=infra.role_arn,
        region=infra.region,
        instance_type=inst.type,
        instance_count=inst.count,
        topology=topology,
        volume_size_gb=inst.volume_size_gb,
        max_run_seconds=max_run,
        max_wait_seconds=max_wait,
        spot=job.spot,
        keep_alive_seconds=job.keep_alive_minutes * 60,
        channels=channels,
        input_modes=input_modes,
        manifests=channel_manifests(cfg, channels, input_modes),
        output_uri=f"s3://{artifacts}/jobs/",
        # Keyed by config hash: a re-run of the same config resumes from these checkpoints.
        checkpoint_uri=f"s3://{artifacts}/checkpoints/{job.base_name}-{digest}/",
        config_hash=digest,
        tags={
            PROJECT_TAG[0]: PROJECT_TAG[1],
            "image": image.tag,
            "git-sha": revision,
            "config-hash": digest,
            **(parent.tags() if parent else {}),
        },
        environment={
            "PYTHONUNBUFFERED": "1",
            **({GIT_SHA_ENV: revision} if tracked else {}),  # the MLflow run's git-sha tag
            **(parent.environment() if parent else {}),
            **{str(k): str(v) for k, v in job.environment.items()},
        },
        # For the record (console, DescribeTrainingJob): the container reads config.yaml, not these.
        hyperparameters={
            "config_hash": digest,
            "processes_per_node": str(topology.processes_per_node),
            "nodes": str(inst.count),
        },
        metrics=metric_names(cfg),
        tracking=tracking_requirements(tracked, str(mlflow_uri).startswith("arn:"), wandb),
        mlflow_uri=mlflow_uri,
        cost=estimate(
            inst.price_per_hour, inst.count, max_run, job.spot_discount, max_wait, job.keep_alive_minutes * 60
        ),
        max_cost_usd=job.max_cost_usd,
        price_note=price_age_note(inst.price_date, inst.price_region, infra.region),
        parent=parent,
        file_systems=file_systems,
        subnets=tuple(cfg.aws.subnets or infra.subnets),
        security_groups=tuple(cfg.aws.security_groups or infra.security_groups),
        network_isolation=job.network_isolation,
    )


def validate_plan(plan: JobPlan, cfg: Any, budget: bool = True) -> None:
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
    check_precision(cfg.trainer.precision, cfg.instance, plan.gpus_per_node)
    check_network_plan(plan)
    if budget and plan.cost is not None:  # a sweep checks the sum of the jobs it launches instead
        check_budget(plan.cost.worst_case_usd, plan.max_cost_usd)


VPC_FIX = (
    "set subnet_ids (and vpc_id) in terraform/ and `terraform apply`, or give "
    "aws.subnets=[subnet-...] aws.security_groups=[sg-...]"
)


def check_network_plan(plan: JobPlan) -> None:
    """What a job's network must be for its file-system channels and job.network_isolation (pure;
    project/aws/vpc.py asks AWS the rest)."""
    for name, fs in plan.file_systems.items():
        if plan.input_modes[name] != "File":
            raise LaunchError(
                f"dataset.input_modes.{name}={plan.input_modes[name]}: a file-system channel ({fs.uri}) is mounted, "
                f"File mode only: drop dataset.input_modes.{name}"
            )
    if plan.file_systems and not plan.subnets:
        first = next(iter(plan.file_systems.values()))
        raise LaunchError(f"{first.uri}: a job reads a file system inside its VPC, and it has no subnets: {VPC_FIX}")
    if bool(plan.subnets) != bool(plan.security_groups):
        missing = "security groups" if plan.subnets else "subnets"
        raise LaunchError(f"a job in a VPC needs subnets and security groups; it has no {missing}: {VPC_FIX}")
    if plan.network_isolation and plan.requirements_file() is not None:
        needs = "job.image=aws pip-installs the requirements" if plan.image.install else "the tracker is pip-installed"
        raise LaunchError(
            f"job.network_isolation=true: the container reaches no network, but {needs} at start: "
            "use job.image=custom (`invoke build && invoke push`)"
            + (" and logger=tensorboard" if plan.tracking else "")
        )


def pid_1(plan: JobPlan) -> str:
    """What runs as the container's PID 1 (as project/training/launch.py decides it)."""
    if trains_in_pid_1(plan.processes_per_node, plan.instance_count):
        return "training in PID 1: SIGTERM reaches it"
    return "torchrun as PID 1: SIGTERM reaches training"


def entry_command(plan: JobPlan) -> str:
    """The job's command: torchrun with one process per GPU (one on CPU), one node per instance; the
    launcher reads the GPUs from the staged config (project/training/launch.py), so no second copy travels here."""
    return f"exec python3 {ENTRY_SCRIPT} --launch"
