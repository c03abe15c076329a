"""The checks a composed config passes before anything runs: what the schema's types cannot say."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any

from project.core.config.messages import ConfigError, one_line
from project.core.config.schema import (
    CHANNELS,
    INPUT_MODES,
    LOGGERS,
    MISSING,
    PRECISION_NAMES,
    PRECISIONS,
    SWEEP_DIRECTIONS,
    WANDB_MODES,
    ClassifierKeys,
    Config,
    DatasetKeys,
    schema_of,
)
from project.core.names import FIELDS, name_problem
from project.core.topology import TopologyError, check_gpus, check_strategy

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
    "trainer.stall_timeout_minutes": 0,  # 0 = no watchdog
    "trainer.startup_timeout_minutes": 0,
    "trainer.job_stall_timeout_minutes": 0,
    "trainer.job_startup_timeout_minutes": 0,
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
    _reject_missing_values(cfg)
    try:  # the rest of trainer.gpus is decided with the hardware, by project.core.topology too
        check_gpus(cfg.trainer.gpus)
        check_strategy(cfg.trainer.strategy)
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
    _validate_profile(cfg.trainer)
    if cfg.trainer.fsdp.activation_checkpointing and not cfg.trainer.fsdp.blocks:
        raise ConfigError(
            "trainer.fsdp.activation_checkpointing=true recomputes the blocks' activations, but "
            "trainer.fsdp.blocks is empty: name the layer classes, "
            "e.g. trainer.fsdp.blocks=[torch.nn.TransformerEncoderLayer]"
        )
    _validate_dataset(cfg.dataset)
    if "model" in cfg:  # composed without one (compose(model=False)): the key is missing
        _validate_model(cfg.model)
    _validate_resource_names(cfg.aws)
    _validate_loggers(cfg.logger)


def _validate_profile(t: Any) -> None:
    """trainer.profile_steps: [start, end), two increasing optimizer steps inside the run (where the
    config alone bounds the run: limit_train_batches as a number of batches; else the profiler checks at the start)."""
    steps = list(t.profile_steps) if t.profile_steps is not None else []
    if len(steps) != 2 or not all(type(n) is int for n in steps) or not 0 <= steps[0] < steps[1]:
        raise ConfigError(
            f"trainer.profile_steps={steps}: give two optimizer steps [start, end) with 0 <= start < end, "
            "e.g. trainer.profile_steps=[20,40]"
        )
    # Lightning reads a limit above 1 as a number of batches (the schema makes every limit a float)
    limit = t.limit_train_batches
    batches = int(limit) if limit is not None and limit > 1 and float(limit).is_integer() else None
    if t.profile and batches is not None and steps[1] > batches * t.max_epochs:
        raise ConfigError(
            f"trainer.profile_steps={steps} ends past the run's last step ({batches * t.max_epochs}: "
            f"limit_train_batches={batches} x max_epochs={t.max_epochs}); choose an earlier window or train longer"
        )


def _validate_loggers(loggers: Any) -> None:
    """logger: only the loggers conf/logger/ offers, each with its own keys (an open group, so checked here)."""
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(
                f"unknown logger {name!r}; choose from {', '.join(LOGGERS)} or none, e.g. logger=[tensorboard,mlflow]"
            )
        allowed = {f.name for f in fields(LOGGERS[name])}
        added = sorted(str(k) for k in loggers[name] if k not in allowed)
        if added:
            raise ConfigError(f"unknown key 'logger.{name}.{added[0]}'; valid keys there: {', '.join(sorted(allowed))}")
    if "wandb" in loggers and loggers.wandb.mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode must be one of {', '.join(WANDB_MODES)}, got {loggers.wandb.mode!r}")


def _reject_added_keys(cfg: Any) -> None:
    """`+trainer.foo=1` adds a key Hydra lets through a schema'd group; nothing would read it."""
    for group in fields(Config):
        schema = schema_of(group.name)
        node = cfg.get(group.name)
        if schema is None or not is_dataclass(schema) or node is None:
            continue
        allowed = {f.name for f in fields(schema)}
        added = sorted(str(k) for k in node if k not in allowed)
        if added:
            raise ConfigError(f"unknown key '{group.name}.{added[0]}'; valid keys there: {', '.join(sorted(allowed))}")


def _reject_missing_values(cfg: Any) -> None:
    """The schema states no values, conf/ does: a key its conf/ file leaves out has none (`???`)."""
    from omegaconf import OmegaConf

    for group in fields(Config):
        if group.name in ("dataset", "model"):  # open groups: their tool keys are checked below
            continue
        schema = schema_of(group.name)
        if OmegaConf.is_missing(cfg, group.name) and schema is None:  # run_name: conf/config.yaml's
            raise ConfigError(f"{group.name} has no value: state it in conf/config.yaml or write {group.name}=...")
        if OmegaConf.is_missing(cfg, group.name):  # ~trainer, or a group a resolved file lacks
            raise ConfigError(f"{group.name} has no value: choose an option, e.g. {group.name}=default")
        for key in [f.name for f in fields(schema)] if schema is not None else []:
            if OmegaConf.is_missing(cfg[group.name], key):
                raise ConfigError(
                    f"{group.name}.{key} has no value: state it in conf/{group.name}/ (or the run's "
                    f"{group.name} section of config.yaml) or write {group.name}.{key}=..."
                )


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
            line, where = one_line(exc), f"{group}.{k}"
            # OmegaConf names the key in some versions and not in others: name it once, always.
            raise ConfigError(line if line.startswith(f"{where}: ") else f"{where}: {line}") from None
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(given))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{group}.{one_line(exc)}") from None


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


# LitClassifier's arguments the config can get wrong: the rule, and the words of its refusal.
CLASSIFIER_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "must be > 0 (the peak learning rate)"),
    "weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "num_classes": (lambda v: v >= 2, "must be >= 2 (a classifier)"),
}


def _validate_model(node: Any) -> None:
    from omegaconf import OmegaConf

    if "_target_" in node:
        if not str(node["_target_"] or "") or not str(node.get("name") or ""):
            raise ConfigError("model._target_ and model.name must be set: name the LightningModule class and the model")
        _typed(ClassifierKeys, "model", node, ("name", "metrics"))
        return
    model = _typed(ClassifierKeys, "model", node, tuple(f.name for f in fields(ClassifierKeys)))
    for key, (holds, rule) in CLASSIFIER_RULES.items():  # a key left out takes LitClassifier's default
        if not OmegaConf.is_missing(model, key) and not holds(model[key]):
            raise ConfigError(f"model.{key} {rule}, got {model[key]}")
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
