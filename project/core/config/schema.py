"""The schema: one dataclass per config group, registered in Hydra's ConfigStore, and the names
the tool reserves in the open groups (dataset, model).

Only the standard library is imported here; Hydra's ConfigStore is imported by register_schema.

This module is over 300 lines because it is the one typed home of every config key: a dataclass per group,
each key with the comment that docs/reference/config.md shows; the values live in conf/*.yaml only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

MISSING: Any = "???"  # OmegaConf's marker for a value that must be supplied (typed Any, as OmegaConf does)


# Input modes SageMaker offers per channel: File copies the channel to the instance before the
# job starts; FastFile streams each object on its first read (large, sharded datasets); Pipe streams
# the whole channel through a FIFO each epoch, nothing on disk (image-folder shards' train channel:
# project/training/pipe.py).
INPUT_MODES = ("File", "FastFile", "Pipe")
CHANNELS = ("train", "validation", "test")  # the channel names a dataset may declare; train is required


@dataclass
class DatasetKeys:
    """The tool's keys of a `conf/dataset/<name>.yaml`; every other key is a DataModule argument.

    `_target_` names the LightningDataModule class. The tool passes it the other keys and injects
    only where the data is: `data_dir` (the train channel's folder) and `<channel>_dir` for each
    declared channel, where its `__init__` accepts them (project.training.modules).
    """

    _target_: str = MISSING  # an importable LightningDataModule class, e.g. project.training.data.IdxDataModule
    name: str = MISSING  # names the local cache folder, paths.data_dir/<name>
    s3_prefix: str = MISSING  # key prefix under the data bucket: channel c is uploaded to <s3_prefix>/<c>/
    # Channel name (train required; validation, test optional) -> where its data is: a local
    # folder, an s3:// prefix (copied into paths.data_dir/<name>/<channel> first), or an https://
    # prefix (fetched into paths.data_dir/<name> first; needs `files`).
    channels: dict[str, str] = field(default_factory=dict)
    input_modes: dict[str, str] = field(default_factory=dict)  # channel -> File (the default), FastFile or Pipe
    # Optional, and passed on to the DataModule too: raw file stem -> SHA256 of its decompressed
    # content (mirrors re-compress .gz files, so only the content hash identifies the data). With
    # it the train channel's files are verified, and fetched when the channel is remote.
    files: dict[str, str] = field(default_factory=dict)
    # Optional: one sample's shape (C x H x W) where it is known before the data is read; `invoke
    # train` estimates a classifier's GPU memory from it, and a served model's input from it; the
    # default CNN takes its input channels from it; a DataModule whose __init__ takes `image_shape`
    # gets it (imagefolder converts every image to it).
    image_shape: list[int] | None = None


# Never DataModule arguments.
TOOL_DATASET_KEYS = ("_target_", "name", "s3_prefix", "channels", "input_modes", "image_shape")
# The scalars a SageMaker job scrapes from the `name=value` lines when a model config names none.
DEFAULT_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "epoch")
# What every run prints with its epoch line whatever its module logs (project/training/reporting.py
# MetricLines): scraped into every job's metrics, so CloudWatch shows throughput and input stalls.
TOOL_METRICS = ("epoch", "step_time_ms", "data_wait_ms")
TOOL_MODEL_KEYS = ("_target_", "name", "metrics")  # never LightningModule arguments


@dataclass
class ClassifierKeys:
    """A `conf/model/<name>.yaml` without `_target_`: an nn.Module (`net`) trained by LitClassifier.

    With a `_target_` (any LightningModule) only `name` and `metrics` are the tool's; every other
    key is an argument of that class, instantiated by hydra.utils.instantiate.
    """

    name: str = MISSING
    # What the module logs (self.log names) that SageMaker should scrape into job metrics; checked
    # against the first epoch's logged names (a warning names any never logged). `epoch` is the tool's.
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    # The network, built with hydra.utils.instantiate: any nn.Module importable by path.
    net: dict[str, Any] = field(default_factory=dict)
    # LitClassifier's arguments: a key the model file leaves out takes the default of
    # project.training.models.LitClassifier's __init__, their one home (none is stated here).
    num_classes: int = MISSING
    lr: float = MISSING  # peak learning rate of the one-cycle schedule
    weight_decay: float = MISSING
    label_smoothing: float = MISSING


@dataclass
class FsdpConfig:
    # Layer classes (import paths) each wrapped as one FSDP unit: its full parameters exist only
    # while it computes. The rest of the network is one unit (project/training/sharding.py).
    blocks: list[str] = MISSING
    activation_checkpointing: bool = MISSING  # the blocks' activations recomputed in backward (needs blocks)


@dataclass
class TrainerConfig:
    # GPUs per node. None: all GPUs of the instance (SageMaker) or all GPUs present (local).
    gpus: int | None = MISSING
    max_epochs: int = MISSING
    # Global batch size: split evenly over all processes, so the optimisation (and the learning
    # rate that suits it) does not change with the number of GPUs or nodes.
    batch_size: int = MISSING
    precision: str = MISSING  # under fsdp too: FSDP's mixed precision follows it
    # ddp or fsdp (project.core.topology.STRATEGIES): replicate the model, or shard it over all processes.
    strategy: str = MISSING
    fsdp: FsdpConfig = MISSING  # strategy=fsdp's settings (project/training/sharding.py)
    seed: int = MISSING
    deterministic: bool = MISSING
    num_workers: int = MISSING  # batches are sliced from in-memory tensors: workers only add overhead
    # A point of the per-step loss and learning-rate curves every this many steps (the default
    # MNIST epoch has 215 steps); each point reads the loss back from the device once.
    log_every_n_steps: int = MISSING
    limit_train_batches: float | None = MISSING  # for smoke tests: fraction or number of batches
    limit_val_batches: float | None = MISSING
    limit_test_batches: float | None = MISSING
    # Periodic checkpoints (besides end of epoch and SIGTERM); 0 disables them.
    checkpoint_every_n_steps: int = MISSING
    resume: bool = MISSING  # resume from the newest valid checkpoint of the same run identity
    # CPU: subnormal floats flushed to zero in every thread (project.training.train sets it before any
    # work in torch's thread pool, whose threads copy the flag when they start). In the first
    # epochs tiny gradients and Adam moments go subnormal, and every CPU kernel meeting them runs
    # several times slower. GPUs handle subnormals at full speed; there the flag changes nothing.
    flush_denormal: bool = MISSING
    # GPU levers; on the CPU only channels_last and compile apply (and rarely pay there).
    data_on_device: bool = MISSING  # GPU: the whole dataset sits in GPU memory, batches are sliced there
    channels_last: bool = MISSING  # NHWC network and inputs (tensor cores under bf16/fp16)
    compile: bool = MISSING  # torch.compile the network: seconds of compiling, pays on long runs only
    # torch.profiler over the optimizer steps [start, end) of profile_steps only: a trace for
    # TensorBoard's profiler plugin under output/tensorboard/ and a table at the end (project/training/profiling.py).
    profile: bool = MISSING
    profile_steps: list[int] = MISSING
    # Start from an earlier model's weights: a run folder, a run name under paths.runs_dir, a .ckpt
    # or a model.pt (project/training/init_from.py); for `invoke train` also a training job or an
    # s3:// model.tar.gz (project/aws/init_source.py); a fresh optimizer and schedule, a new run identity.
    init_from: str | None = MISSING
    init_strict: bool = MISSING  # false: load the layers whose shapes match, list the others
    # The watchdog (project/training/watchdog.py): minutes without progress before a run fails with
    # its stacks; None: off locally, the job_ value in a SageMaker job; 0: off.
    stall_timeout_minutes: float | None = MISSING
    startup_timeout_minutes: float | None = MISSING  # before training: start-up, data set-up, rendezvous
    job_stall_timeout_minutes: float = MISSING
    job_startup_timeout_minutes: float = MISSING


@dataclass
class InstanceConfig:
    type: str = MISSING  # SageMaker instance type, e.g. ml.p3.8xlarge
    gpus: int = MISSING
    gpu_model: str | None = MISSING
    gpu_memory_gib: int = MISSING  # per GPU
    # CUDA compute capability (V100 7.0, T4 7.5, A100 8.0, A10G 8.6, L4/L40S 8.9, H100 9.0):
    # bf16 needs 8.0 (Ampere) or newer. None on CPU instances.
    gpu_compute_capability: float | None = MISSING
    vcpus: int = MISSING
    memory_gib: int = MISSING
    count: int = MISSING  # number of instances (nodes)
    volume_size_gb: int = MISSING
    price_per_hour: float = MISSING  # on-demand training USD per instance-hour in price_region
    price_region: str = MISSING
    price_date: str | None = MISSING  # YYYY-MM-DD the price was read (`invoke prices`); None: hand-typed, date unknown
    price_source: str | None = MISSING  # where the price came from


@dataclass
class PathsConfig:
    runs_dir: str = MISSING  # runs/<run-name>/ holds model/, output/, checkpoints/, metrics.json
    data_dir: str = MISSING  # cache of raw dataset files for local runs
    # file-system id -> the folder where this machine mounts it: what `invoke local` reads for an
    # fsx:// or efs:// channel (docs/guides/file-systems.md)
    mounts: dict[str, str] = MISSING


@dataclass
class AwsConfig:
    region: str | None = MISSING  # None: Terraform output, else the AWS profile's region
    endpoint_url: str | None = MISSING  # a local AWS endpoint (LocalStack/moto), else real AWS
    terraform_dir: str = MISSING
    # Existing resources instead of the Terraform outputs (all optional).
    data_bucket: str | None = MISSING
    artifacts_bucket: str | None = MISSING
    repository_url: str | None = MISSING
    role_arn: str | None = MISSING
    # The VPC a job with an fsx:// or efs:// channel runs in; None: the Terraform outputs subnets
    # and security_groups (subnet_ids set in terraform/).
    subnets: list[str] | None = MISSING
    security_groups: list[str] | None = MISSING


@dataclass
class JobConfig:
    base_name: str = MISSING  # SageMaker job name prefix
    image: str = MISSING  # aws: the AWS PyTorch container, pip at start; custom: ours (invoke build/push)
    pytorch_version: str | None = MISSING  # image=aws; None: the newest the pinned SageMaker SDK lists
    base_image: str | None = MISSING  # image=custom: what the Dockerfile builds FROM; None: project.aws.image's
    image_tag: str | None = MISSING  # image=custom; None: the hash of what goes into the image
    max_run_minutes: int = MISSING
    spot: bool = MISSING
    max_wait_minutes: int | None = MISSING  # spot only; None: twice max_run
    spot_discount: float = MISSING  # typical managed-spot saving, for the cost estimate only
    keep_alive_minutes: int = MISSING  # warm pool; 0 disables it
    max_cost_usd: float | None = MISSING  # refuse a launch whose worst-case cost exceeds this; None: no budget
    network_isolation: bool = MISSING  # EnableNetworkIsolation: the container reaches no network (needs image=custom)
    environment: dict[str, str] = MISSING
    # Top-level packages or modules the job's code channel carries besides project/ and those the
    # config's _target_s name (e.g. a helper package your module imports).
    include: list[str] = MISSING


@dataclass
class TensorBoardLoggerKeys:
    name: str = MISSING  # the folder under output/


@dataclass
class MlflowLoggerKeys:
    tracking_uri: str | None = MISSING  # a folder, an MLflow server's URL or a SageMaker MLflow ARN; None: mlruns/
    experiment_name: str = MISSING


@dataclass
class WandbLoggerKeys:
    project: str = MISSING
    mode: str = MISSING  # WANDB_MODES


# The loggers conf/logger/ offers (the group's option `none` adds no key), and the keys of each.
LOGGERS: dict[str, type] = {"tensorboard": TensorBoardLoggerKeys, "mlflow": MlflowLoggerKeys, "wandb": WandbLoggerKeys}
WANDB_MODES = ("offline", "online", "disabled")


SWEEP_DIRECTIONS = ("maximize", "minimize")

# Lightning's `Trainer(precision=...)` names (lightning_fabric.connector's _PRECISION_INPUT): the
# canonical ones, then the short aliases it still accepts. Kept here because importing Lightning
# to ask costs seconds and torch; tests/test_config.py checks this list against Lightning's own.
PRECISION_NAMES = (
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
)
PRECISIONS = (*PRECISION_NAMES, "32", "16", "bf16", "64")


@dataclass
class SweepConfig:
    # The metric a sweep ranks its jobs by (results table, Optuna's objective): a final metric
    # every job reports (val_acc, val_loss, test_acc, ...).
    objective: str = "val_acc"
    direction: str = "maximize"  # or minimize


@dataclass
class GateConfig:
    """`invoke register`'s evaluation gate (docs/guides/deploy.md, "Registry and evaluation gate")."""

    # A metric the run logged (metrics.json: test_acc, test_loss, ...); lower is better when it ends in
    # "loss". The serving code path measures test_acc itself on the held-out test set; others are as logged.
    metric: str = MISSING
    # How much worse than the newest Approved version a new one may be before it is refused.
    tolerance: float = MISSING


@dataclass
class AsyncInferenceConfig:
    """`invoke deploy --async`: the endpoint's queue and its scaling between 0 and max_instances."""

    max_concurrent_invocations: int = MISSING  # per instance (MaxConcurrentInvocationsPerInstance, 1-1000)
    max_instances: int = MISSING  # the scaling target's MaxCapacity; MinCapacity is 0
    backlog_per_instance: float = MISSING  # target tracking's ApproximateBacklogSizePerInstance
    scale_in_cooldown_seconds: int = MISSING
    scale_out_cooldown_seconds: int = MISSING
    cold_start_minutes: float = MISSING  # said in the cost line: what a request at zero instances waits


@dataclass
class RolloutConfig:
    """`invoke deploy --update --canary/--linear`: the bake and the alarms that roll it back (guarded rollouts)."""

    canary_percent: int = MISSING  # `invoke ship`'s --canary default (1-50)
    bake_minutes: int = MISSING  # --bake's default (1-60: SageMaker waits at most an hour per step)
    alarm_prefix: str = MISSING  # alarms are named <prefix><endpoint>-5xx / -latency (Terraform grants the prefix)
    max_5xx_errors: int | None = MISSING  # None: no 5XX alarm
    max_latency_ms: float | None = MISSING  # None: no latency alarm
    alarm_period_seconds: int = MISSING
    alarm_evaluation_periods: int = MISSING


@dataclass
class DeployConfig:
    """`invoke deploy` / `batch-predict`: where the model is served and what that costs."""

    instance: str = MISSING  # real-time endpoint instance type (a key of prices_per_hour)
    instance_count: int = MISSING
    serverless_memory_mb: int = MISSING  # --serverless: 1024-6144 in steps of 1024
    serverless_max_concurrency: int = MISSING  # --serverless: concurrent invocations before throttling
    # Instance-backed endpoints older than this are marked EXPIRED by `invoke endpoints` and removed
    # by `invoke undeploy --expired`: an endpoint bills every hour it is up, used or not.
    ttl_hours: float = MISSING
    endpoint_name: str | None = MISSING  # None: the run's (or job's) name
    # The AWS PyTorch inference image's version (major.minor). None: the newest the SageMaker SDK knows,
    # if that is at least the PyTorch that saved model.ts (else deploy says what to do); set, it is used.
    framework_version: str | None = MISSING
    transform_instance: str = MISSING  # batch-predict's instance type
    transform_instance_count: int = MISSING
    wait_minutes: int = MISSING  # give up waiting (the endpoint or job goes on; undeploy/stop it)
    poll_seconds: float = MISSING
    # USD, us-east-1 on-demand; the source and date are in conf/deploy/default.yaml.
    prices_per_hour: dict[str, float] = MISSING
    serverless_price_per_gb_second: float = MISSING
    serverless_price_per_million_requests: float = MISSING
    model_group: str = MISSING  # `invoke register`: the model package group (created on first use)
    gate: GateConfig = MISSING
    async_inference: AsyncInferenceConfig = MISSING
    rollout: RolloutConfig = MISSING


@dataclass
class Config:
    # Open mappings checked by validate(): their tool-owned keys against DatasetKeys and
    # ClassifierKeys, every other key against the target class's __init__ (project.training.modules).
    dataset: Any = MISSING
    model: Any = MISSING
    trainer: TrainerConfig = MISSING
    instance: InstanceConfig = MISSING
    paths: PathsConfig = MISSING
    aws: AwsConfig = MISSING
    job: JobConfig = MISSING
    sweep: SweepConfig = field(default_factory=SweepConfig)  # only `-m` sweeps read it
    deploy: DeployConfig = MISSING
    # Experiment trackers, one key per logger chosen (conf/logger/; logger=[tensorboard,mlflow]): an open
    # mapping whose keys validate() checks against LOGGERS. Not part of the run identity.
    logger: Any = MISSING
    run_name: str | None = MISSING  # None: <model>-<timestamp> locally, the job name on SageMaker


def register_schema() -> None:
    """Store Config as `config_schema`, the first entry of conf/config.yaml's defaults list."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=Config)


# The schema'd groups by name (the types of Config's fields are strings under `from __future__
# import annotations`); dataset and model are open mappings, typed Any.
GROUP_SCHEMAS: dict[str, type] = {
    cls.__name__: cls
    for cls in (TrainerConfig, FsdpConfig, InstanceConfig, PathsConfig, AwsConfig, JobConfig, SweepConfig, DeployConfig)
}


def schema_of(key: str) -> type | None:
    """The dataclass that types the node at dotted `key` ("" is Config itself); None for open or leaf nodes."""
    node: type | None = Config
    for part in key.split(".") if key else []:
        match = [f.type for f in fields(node) if f.name == part] if node is not None and is_dataclass(node) else []
        node = GROUP_SCHEMAS.get(str(match[0])) if match else None
    return node


def valid_keys(full_key: str) -> list[str]:
    """The keys the schema allows next to `full_key` (for 'did you mean' style errors)."""
    node = schema_of(full_key.rpartition(".")[0])
    return sorted(f.name for f in fields(node)) if node is not None and is_dataclass(node) else []


def metric_names(cfg: Any) -> list[str]:
    """The scalars a job's metric definitions scrape: model.metrics, else the default list; always TOOL_METRICS."""
    names = list(cfg.model.get("metrics") or DEFAULT_METRICS)
    return [*names, *(n for n in TOOL_METRICS if n not in names)]


# The module that trains a model config's `net` when it names no _target_ (project/training/models.py).
CLASSIFIER = "project.training.models.LitClassifier"


def is_classifier(cfg: Any) -> bool:
    """The one decision: a model config without `_target_` (a `net` trained by LitClassifier) is a
    classifier. Only its runs get the confusion matrix, the pixel-space export and `invoke predict`,
    and only its served answers classes, probabilities and the photo preprocessing; any other
    module's exported model gets its raw outputs back."""
    return str(cfg.model.get("_target_") or CLASSIFIER) == CLASSIFIER
