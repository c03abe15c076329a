"""Typed configuration: the schema Hydra validates every run against, and the pure helpers
that turn a composed config into Trainer settings.

Only the standard library is imported at module level; Hydra and OmegaConf are imported inside
the functions that need them so that `invoke --list` stays instant.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from .atomic import write_atomically
from .errors import UserError
from .names import FIELDS, name_problem
from .topology import TopologyError, check_gpus
from .topology import per_device_batch as per_device_batch  # users' DataModules import it from here too

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
RESOLVED_CONFIG_NAME = "config.yaml"  # the resolved config file that travels with a job

MISSING: Any = "???"  # OmegaConf's marker for a value that must be supplied (typed Any, as OmegaConf does)


# Input modes SageMaker offers per channel: File copies the channel to the instance before the
# job starts; FastFile streams each object on its first read (large, sharded datasets).
INPUT_MODES = ("File", "FastFile")
CHANNELS = ("train", "validation", "test")  # the channel names a dataset may declare; train is required


@dataclass
class DatasetKeys:
    """The tool's keys of a `conf/dataset/<name>.yaml`; every other key is a DataModule argument.

    `_target_` names the LightningDataModule class. The tool passes it the other keys and injects
    only where the data is: `data_dir` (the train channel's folder) and `<channel>_dir` for each
    declared channel, where its `__init__` accepts them (project.modules).
    """

    _target_: str = MISSING  # an importable LightningDataModule class, e.g. project.data.IdxDataModule
    name: str = MISSING  # names the local cache folder, paths.data_dir/<name>
    s3_prefix: str = MISSING  # key prefix under the data bucket: channel c is uploaded to <s3_prefix>/<c>/
    # Channel name (train required; validation, test optional) -> where its data is: a local
    # folder, an s3:// prefix (copied into paths.data_dir/<name>/<channel> first), or an https://
    # prefix (fetched into paths.data_dir/<name> first; needs `files`).
    channels: dict[str, str] = field(default_factory=dict)
    input_modes: dict[str, str] = field(default_factory=dict)  # channel -> File (the default) or FastFile
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
    num_classes: int = 10
    lr: float = 1e-3  # peak learning rate of the one-cycle schedule
    weight_decay: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class TrainerConfig:
    # GPUs per node. None: all GPUs of the instance (SageMaker) or all GPUs present (local).
    gpus: int | None = None
    max_epochs: int = 3
    # Global batch size: split evenly over all processes, so the optimisation (and the learning
    # rate that suits it) does not change with the number of GPUs or nodes.
    batch_size: int = 256
    precision: str = "32-true"
    seed: int = 42
    deterministic: bool = False
    num_workers: int = 0  # batches are sliced from in-memory tensors: workers only add overhead
    # A point of the per-step loss and learning-rate curves every this many steps (the default
    # MNIST epoch has 215 steps); each point reads the loss back from the device once.
    log_every_n_steps: int = 10
    limit_train_batches: float | None = None  # for smoke tests: fraction or number of batches
    limit_val_batches: float | None = None
    limit_test_batches: float | None = None
    # Periodic checkpoints (besides end of epoch and SIGTERM); 0 disables them.
    checkpoint_every_n_steps: int = 200
    resume: bool = True  # resume from the newest valid checkpoint of the same run identity
    # CPU: subnormal floats flushed to zero in every thread (project.train sets it before any
    # work in torch's thread pool, whose threads copy the flag when they start). In the first
    # epochs tiny gradients and Adam moments go subnormal, and every CPU kernel meeting them runs
    # several times slower. GPUs handle subnormals at full speed; there the flag changes nothing.
    flush_denormal: bool = True
    # GPU levers; on the CPU only channels_last and compile apply (and rarely pay there).
    data_on_device: bool = True  # GPU: the whole dataset sits in GPU memory, batches are sliced there
    channels_last: bool = False  # NHWC network and inputs (tensor cores under bf16/fp16)
    compile: bool = False  # torch.compile the network: seconds of compiling, pays on long runs only


@dataclass
class InstanceConfig:
    type: str = MISSING  # SageMaker instance type, e.g. ml.p3.8xlarge
    gpus: int = 0
    gpu_model: str | None = None
    gpu_memory_gib: int = 0  # per GPU
    # CUDA compute capability (V100 7.0, T4 7.5, A100 8.0, A10G 8.6, L4/L40S 8.9, H100 9.0):
    # bf16 needs 8.0 (Ampere) or newer. None on CPU instances.
    gpu_compute_capability: float | None = None
    vcpus: int = MISSING
    memory_gib: int = MISSING
    count: int = 1  # number of instances (nodes)
    volume_size_gb: int = 30
    price_per_hour: float = MISSING  # on-demand training USD per instance-hour in price_region
    price_region: str = "us-east-1"
    price_date: str | None = None  # YYYY-MM-DD the price was read (`invoke prices`); None: hand-typed, date unknown
    price_source: str | None = None  # where the price came from


@dataclass
class PathsConfig:
    runs_dir: str = "runs"  # runs/<run-name>/ holds model/, output/, checkpoints/, metrics.json
    data_dir: str = "data"  # cache of raw dataset files for local runs


@dataclass
class AwsConfig:
    region: str | None = None  # None: Terraform output, else the AWS profile's region
    endpoint_url: str | None = None  # a local AWS endpoint (LocalStack/moto), else real AWS
    terraform_dir: str = "terraform"
    # Existing resources instead of the Terraform outputs (all optional).
    data_bucket: str | None = None
    artifacts_bucket: str | None = None
    repository_url: str | None = None
    role_arn: str | None = None


@dataclass
class JobConfig:
    base_name: str = "lightning"  # SageMaker job name prefix
    image: str = "aws"  # aws: the AWS PyTorch container, pip at start; custom: ours (invoke build/push)
    pytorch_version: str | None = None  # image=aws; None: the newest the pinned SageMaker SDK lists
    base_image: str | None = None  # image=custom: what the Dockerfile builds FROM; None: project.aws.image's
    image_tag: str | None = None  # image=custom; None: the hash of what goes into the image
    max_run_minutes: int = 120
    spot: bool = False
    max_wait_minutes: int | None = None  # spot only; None: twice max_run
    spot_discount: float = 0.7  # typical managed-spot saving, for the cost estimate only
    keep_alive_minutes: int = 0  # warm pool; 0 disables it
    max_cost_usd: float | None = None  # refuse a launch whose worst-case cost exceeds this; None: no budget
    environment: dict[str, str] = field(default_factory=dict)
    # Top-level packages or modules the job's code channel carries besides project/ and those the
    # config's _target_s name (e.g. a helper package your module imports).
    include: list[str] = field(default_factory=list)


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
class DeployConfig:
    """`invoke deploy` / `batch-predict`: where the model is served and what that costs."""

    instance: str = "ml.m5.large"  # real-time endpoint instance type (a key of prices_per_hour)
    instance_count: int = 1
    serverless_memory_mb: int = 2048  # --serverless: 1024-6144 in steps of 1024
    serverless_max_concurrency: int = 5  # --serverless: concurrent invocations before throttling
    # Instance-backed endpoints older than this are marked EXPIRED by `invoke endpoints` and removed
    # by `invoke undeploy --expired`: an endpoint bills every hour it is up, used or not.
    ttl_hours: float = 8.0
    endpoint_name: str | None = None  # None: the run's (or job's) name
    # The AWS PyTorch inference image's version (major.minor). None: the newest the SageMaker SDK knows,
    # if that is at least the PyTorch that saved model.ts (else deploy says what to do); set, it is used.
    framework_version: str | None = None
    transform_instance: str = "ml.m5.large"  # batch-predict's instance type
    transform_instance_count: int = 1
    wait_minutes: int = 30  # give up waiting (the endpoint or job goes on; undeploy/stop it)
    poll_seconds: float = 10.0
    # USD, us-east-1 on-demand; the source and date are in conf/deploy/default.yaml.
    prices_per_hour: dict[str, float] = field(default_factory=dict)
    serverless_price_per_gb_second: float = 0.0
    serverless_price_per_million_requests: float = 0.0


@dataclass
class Config:
    # Open mappings checked by validate(): their tool-owned keys against DatasetKeys and
    # ClassifierKeys, every other key against the target class's __init__ (project.modules).
    dataset: Any = MISSING
    model: Any = MISSING
    trainer: TrainerConfig = MISSING
    instance: InstanceConfig = MISSING
    paths: PathsConfig = MISSING
    aws: AwsConfig = MISSING
    job: JobConfig = MISSING
    sweep: SweepConfig = field(default_factory=SweepConfig)  # only `-m` sweeps read it
    deploy: DeployConfig = MISSING
    run_name: str | None = None  # None: <model>-<timestamp> locally, the job name on SageMaker


class ConfigError(UserError, ValueError):
    """A config that cannot be composed; its message is one actionable line."""


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=Config)


def _valid_keys(full_key: str) -> list[str]:
    """The keys the schema allows next to `full_key` (for 'did you mean' style errors)."""
    node: Any = Config
    for part in full_key.split(".")[:-1]:
        match = [f.type for f in fields(node) if f.name == part] if is_dataclass(node) else []
        node = globals().get(str(match[0])) if match else None
    return sorted(f.name for f in fields(node)) if is_dataclass(node) else []


# A model config that interpolates a key its dataset lacks (a classifier with a regression dataset).
MISMATCH_HINT = (
    "this model config does not fit the others (e.g. a classifier needs dataset.num_classes); "
    "pick a matching pair, as in model=mlp_regressor dataset=csv_regression"
)
# Keys that moved, old -> new: an old command line gets one line naming the new spelling.
RENAMED_KEYS = {"dataset.source": "dataset.channels.train"}


def _one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines and a chained cause; keep what names the problem."""
    text = str(exc).strip()
    if "Could not find '" in text and "Available options" in text:
        missing = text.split("Could not find '", 1)[1].split("'", 1)[0]
        group, option = missing.rsplit("/", 1) if "/" in missing else ("config", missing)
        listing = text.split("Available options", 1)[1].split("Config search path", 1)[0]
        options = [line.strip() for line in listing.splitlines()[1:] if line.strip()]
        close = difflib.get_close_matches(option, options, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown {group} '{option}'{hint}; choose one of: {', '.join(options)}"
    cause = exc.__cause__ or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    if key in RENAMED_KEYS:
        return f"{key} is now {RENAMED_KEYS[key]}: write {RENAMED_KEYS[key]}=..."
    if key and re.match(r"Key '.*' not in", lines[0]):
        return f"unknown key '{key}'; valid keys there: {', '.join(_valid_keys(key))}"
    if key and re.match(r"Key '.*' is not in struct", lines[0]):
        # An open mapping: dataset and model (their keys are the target class's arguments), job.environment.
        if key.startswith("dataset.channels."):
            return f"unknown key '{key}'; a channel the dataset config does not declare is added with +{key}=<folder>"
        if key == "dataset.input_modes" or key.startswith("dataset.input_modes."):
            return f"unknown key '{key}'; set a channel's input mode with +dataset.input_modes.<channel>=FastFile"
        if key.split(".", 1)[0] in ("dataset", "model"):
            return f"unknown key '{key}'; to give the class a new argument, write +{key}=..."
        return f"unknown key '{key}'; to add it, write +{key}=..."
    head = lines[0] if lines else type(exc).__name__
    if head.startswith("Interpolation key") and "not found" in head:  # e.g. cnn's ${dataset.num_classes}
        head += f": {MISMATCH_HINT}"
    return f"{key}: {head}" if key else head


def compose(overrides: list[str] | tuple[str, ...] = (), conf_dir: Path | None = None, model: bool = True) -> Any:
    """Compose conf/ with Hydra overrides into a validated DictConfig.

    model=False composes no model unless the overrides name one (`invoke upload` moves data only:
    `dataset=mine` needs no matching `model=mine`, nor the default classifier's dataset.num_classes).

    The composed (unresolved) config is cached per command line, keyed by the overrides and the
    bytes of every file that shapes it (see _compose_key): a repeated `invoke ...` skips Hydra's
    import and composition (0.2-0.3 s of a task's start), and changing any of those files composes
    afresh.
    """
    conf_dir = Path(conf_dir or CONF_DIR)
    if not model and not any(re.match(r"^[+~]*model[=.@]", o) for o in overrides):
        overrides = ["~model", *overrides]  # drops the defaults list's model: nothing composes one
    cache = _compose_cache_file(conf_dir, list(overrides))
    cfg = _load_cached(cache) if cache else None
    if cfg is not None:
        validate(cfg)
        return cfg
    cfg = _hydra_compose(conf_dir, list(overrides))
    validate(cfg)
    if cache:
        _store_cached(cache, cfg)  # only configs that passed every check
    return cfg


def _hydra_compose(conf_dir: Path, overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register_schema()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"bad config override: {_one_line(exc)}") from None


COMPOSE_CACHE_ENV = "LIGHTNING_SAGEMAKER_CACHE"  # a folder, or "off"
COMPOSE_CACHE_KEEP = 256  # newest entries kept; an entry is a few KiB


def compose_cache_dir() -> Path | None:
    """Where composed configs are cached: $LIGHTNING_SAGEMAKER_CACHE, else the user cache dir."""
    chosen = os.environ.get(COMPOSE_CACHE_ENV)
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen) / "compose"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightning-sagemaker" / "compose"


def _package_stamp(name: str) -> str:
    """Hydra's or OmegaConf's installed files (an upgrade rewrites them) without importing them."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return "-"
    st = os.stat(spec.origin)
    return f"{spec.origin}:{st.st_mtime_ns}:{st.st_size}"


def _compose_key(conf_dir: Path, overrides: list[str]) -> str:
    """Everything composition depends on: overrides, conf/ files, the schema, Hydra, OmegaConf."""
    h = hashlib.sha256()
    h.update(json.dumps(overrides).encode())
    for path in sorted(p for p in conf_dir.rglob("*") if p.is_file()):
        h.update(f"\0{path.relative_to(conf_dir).as_posix()}\0".encode())
        h.update(path.read_bytes())
    for extra in _search_path_dirs(overrides):  # config folders added by hydra.searchpath=[file://...]
        for path in sorted(p for p in extra.rglob("*") if p.is_file()):
            h.update(f"\0{path.as_posix()}\0".encode())
            h.update(path.read_bytes())
    h.update(Path(__file__).read_bytes())  # the schema's dataclasses
    h.update(f"{conf_dir.resolve()}|{_package_stamp('hydra')}|{_package_stamp('omegaconf')}".encode())
    return h.hexdigest()


def _search_path_dirs(overrides: list[str]) -> list[Path]:
    """The local folders an override `hydra.searchpath=[file://a,file://b]` adds to conf/."""
    dirs: list[Path] = []
    for override in overrides:
        if override.startswith("hydra.searchpath="):
            items = override.split("=", 1)[1].strip("[]").split(",")
            dirs += [Path(item.strip()[len("file://") :]) for item in items if item.strip().startswith("file://")]
    return [d for d in dirs if d.is_dir()]


def _compose_cache_file(conf_dir: Path, overrides: list[str]) -> Path | None:
    folder = compose_cache_dir()
    if folder is None:
        return None
    try:
        return folder / f"{_compose_key(conf_dir, overrides)}.json"
    except OSError:
        return None  # an unreadable conf file: let Hydra report it


def _load_cached(path: Path) -> Any:
    """The cached config, typed by the schema as Hydra's would be; None when absent or unusable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), data)
    except OmegaConfBaseException:
        return None
    OmegaConf.set_struct(cfg, True)
    return cfg


def _store_cached(path: Path, cfg: Any) -> None:
    """Write atomically (a reader never sees half a file); a cache that cannot be written is skipped."""
    from omegaconf import OmegaConf

    try:
        write_atomically(path, json.dumps(OmegaConf.to_container(cfg, resolve=False)))
        entries = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in entries[:-COMPOSE_CACHE_KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def load_resolved(path: Path) -> Any:
    """Load a resolved config file (as written by save_resolved) and validate it against the schema."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    except (OmegaConfBaseException, OSError) as exc:
        raise ConfigError(f"cannot load config {path}: {_one_line(exc)}") from None
    OmegaConf.set_struct(cfg, True)
    validate(cfg)
    return cfg


def to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg, resolve=True)


# The least value of each numeric key that has one (a None, where the schema allows it, is not checked).
MINIMUMS = {  # job.max_run_minutes has a range, SageMaker's: aws/plan.validate_plan checks it
    "trainer.max_epochs": 1,
    "trainer.batch_size": 1,
    "trainer.num_workers": 0,
    "trainer.log_every_n_steps": 1,
    "trainer.checkpoint_every_n_steps": 0,  # 0 = no periodic checkpoints
    "trainer.limit_train_batches": 0,
    "trainer.limit_val_batches": 0,
    "trainer.limit_test_batches": 0,
    "instance.count": 1,
    "instance.gpus": 0,
    "instance.volume_size_gb": 1,
    "job.keep_alive_minutes": 0,
}
# A run's folder is runs_dir/<run_name>: one plain folder name, never a path out of runs_dir.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+,@-]{0,199}")


def validate(cfg: Any) -> None:
    """The checks the schema's types cannot express: ranges, names, unknown keys, several keys together."""
    from omegaconf import OmegaConf

    _reject_added_keys(cfg)
    try:  # the rest of trainer.gpus is decided with the hardware, by project.topology too
        check_gpus(cfg.trainer.gpus)
    except TopologyError as exc:
        raise ConfigError(str(exc)) from None  # compose's one kind of refusal
    for key, least in MINIMUMS.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value < least:
            raise ConfigError(f"{key} must be >= {least}, got {value}")
    if str(cfg.trainer.precision) not in PRECISIONS:
        close = difflib.get_close_matches(str(cfg.trainer.precision), PRECISION_NAMES, n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"trainer.precision={cfg.trainer.precision} is not a Lightning precision{hint}; "
            f"choose one of: {', '.join(PRECISION_NAMES)}"
        )
    if cfg.run_name is not None and not RUN_NAME.fullmatch(str(cfg.run_name)):
        raise ConfigError(
            f"run_name={cfg.run_name!r} is not a plain folder name (the run is written to "
            f"paths.runs_dir/<run_name>): use letters, digits and . _ - = + , @, e.g. run_name=my-run"
        )
    if cfg.job.max_cost_usd is not None and cfg.job.max_cost_usd <= 0:
        raise ConfigError(f"job.max_cost_usd must be a positive number (null: no budget), got {cfg.job.max_cost_usd}")
    if cfg.sweep.direction not in SWEEP_DIRECTIONS:
        raise ConfigError(f"sweep.direction must be one of {', '.join(SWEEP_DIRECTIONS)}, got {cfg.sweep.direction!r}")
    _validate_dataset(cfg.dataset)
    if "model" in cfg:  # composed without one (compose(model=False)): the key is missing
        _validate_model(cfg.model)
    _validate_resource_names(cfg.aws)


def _reject_added_keys(cfg: Any) -> None:
    """`+trainer.foo=1` adds a key Hydra lets through a schema'd group; nothing would read it."""
    for group in fields(Config):
        schema = globals().get(str(group.type))
        node = cfg.get(group.name)
        if not is_dataclass(schema) or node is None:
            continue
        allowed = {f.name for f in fields(schema)}
        added = sorted(str(k) for k in node if k not in allowed)
        if added:
            raise ConfigError(f"unknown key '{group.name}.{added[0]}'; valid keys there: {', '.join(sorted(allowed))}")


def _typed(schema: type, group: str, node: Any, keys: tuple[str, ...]) -> Any:
    """The tool-owned `keys` of a config group, typed by `schema`; a wrong type is one line."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    given = {}
    for k in keys:
        try:
            if k in node:
                given[k] = node[k]
        except OmegaConfBaseException as exc:  # an interpolation into another group that lacks the key
            line, where = _one_line(exc), f"{group}.{k}"
            # OmegaConf names the key in some versions and not in others: name it once, always.
            raise ConfigError(line if line.startswith(f"{where}: ") else f"{where}: {line}") from None
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(given))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{group}.{_one_line(exc)}") from None


def _validate_dataset(node: Any) -> None:
    d = _typed(DatasetKeys, "dataset", node, tuple(f.name for f in fields(DatasetKeys)))
    for key in ("_target_", "name", "s3_prefix"):
        if d[key] in (MISSING, ""):
            raise ConfigError(f"dataset.{key} is missing: every conf/dataset/*.yaml sets _target_, name, s3_prefix")
    unknown = sorted(set(d.channels) - set(CHANNELS))
    if "train" not in d.channels or unknown:
        raise ConfigError(
            f"dataset.channels must name a train channel and only {', '.join(CHANNELS)}; got {sorted(d.channels)}"
        )
    for channel, mode in d.input_modes.items():
        if channel not in d.channels or mode not in INPUT_MODES:
            raise ConfigError(
                f"dataset.input_modes.{channel}={mode}: name a declared channel ({', '.join(d.channels)}) "
                f"and one of {', '.join(INPUT_MODES)}"
            )


def _validate_model(node: Any) -> None:
    if "_target_" in node:
        if not str(node["_target_"] or "") or not str(node.get("name") or ""):
            raise ConfigError("model._target_ and model.name must be set: name the LightningModule class and the model")
        _typed(ClassifierKeys, "model", node, ("name", "metrics"))
        return
    model = _typed(ClassifierKeys, "model", node, tuple(f.name for f in fields(ClassifierKeys)))
    if not model.lr > 0:
        raise ConfigError(f"model.lr must be > 0 (the peak learning rate), got {model.lr}")
    if model.weight_decay < 0:
        raise ConfigError(f"model.weight_decay must be >= 0, got {model.weight_decay}")
    if not 0 <= model.label_smoothing < 1:
        raise ConfigError(f"model.label_smoothing must be in [0, 1), got {model.label_smoothing}")
    if model.num_classes < 2:
        raise ConfigError(f"model.num_classes must be >= 2 (a classifier), got {model.num_classes}")
    if not str(model.net.get("_target_", "")):
        raise ConfigError(
            "model.net._target_ is empty: name the nn.Module class to build, or set model._target_ to a LightningModule"
        )


def _validate_resource_names(aws: Any) -> None:
    """Bucket, repository, role and region names given in the config, by AWS's naming rules."""
    for key in FIELDS:
        value = aws.get(key)
        rule = name_problem(key, str(value)) if value else None
        if rule:
            raise ConfigError(f"aws.{key}={str(value)!r}: {rule}")


def with_gpus(cfg: Any, gpus: int) -> Any:
    """A copy of the config with trainer.gpus resolved: what a job stages and its run identity hashes."""
    resolved = copy.deepcopy(cfg)
    resolved.trainer.gpus = gpus
    return resolved


def metric_names(cfg: Any) -> list[str]:
    """The scalars a job's metric definitions scrape: model.metrics, else the default list; always `epoch`."""
    names = list(cfg.model.get("metrics") or DEFAULT_METRICS)
    return names if "epoch" in names else [*names, "epoch"]
