"""Typed configuration: the schema Hydra validates every run against, composing conf/ into a
validated config (with an on-disk cache), and the one-line messages for a config that is wrong.

The modules, one concern each: `schema` (the dataclasses, registered in Hydra's ConfigStore),
`compose` (Hydra composition, the resolved config file), `cache` (the composed-config cache),
`validate` (the checks the types cannot express), `messages` (Hydra's and OmegaConf's errors as
one line). This file is the package's face: `from project.core.config import X` for every name below.

Each default has one home: the YAML files under conf/ hold the values, the dataclasses only the
types (every field of a group that has a conf/ file is MISSING). That is the split Hydra's
structured-config docs describe (a schema that validates, config files that hold values), and the
one users meet: they read and edit conf/*.yaml, `invoke local trainer.max_epochs=5` overrides
what conf/trainer/default.yaml says, and a comment there explains each value. The exceptions
have no conf/ file to hold a value: `sweep` (read by `-m` sweeps only) keeps its values in
SweepConfig; the open groups' tool keys (dataset's channels/input_modes/files, model.metrics) keep
what an absent key means; LitClassifier's arguments left out of a model file take its __init__'s
defaults. tests/test_config.py fails if a value is stated twice.

Only the standard library is imported at module level; Hydra and OmegaConf are imported inside
the functions that need them so that `invoke --list` stays instant.
"""

from project.core.config.cache import COMPOSE_CACHE_ENV, COMPOSE_CACHE_KEEP, compose_cache_dir
from project.core.config.compose import (
    CONF_DIR,
    RESOLVED_CONFIG_NAME,
    compose,
    known_instance_types,
    load_resolved,
    to_yaml,
    with_gpus,
)
from project.core.config.messages import MISMATCH_HINT, RENAMED_KEYS, ConfigError, one_line
from project.core.config.schema import (
    CHANNELS,
    CLASSIFIER,
    DEFAULT_METRICS,
    INPUT_MODES,
    LOGGERS,
    MISSING,
    PRECISION_NAMES,
    PRECISIONS,
    SWEEP_DIRECTIONS,
    TOOL_DATASET_KEYS,
    TOOL_METRICS,
    TOOL_MODEL_KEYS,
    AwsConfig,
    ClassifierKeys,
    Config,
    DatasetKeys,
    DeployConfig,
    InstanceConfig,
    JobConfig,
    PathsConfig,
    SweepConfig,
    TrainerConfig,
    is_classifier,
    metric_names,
    register_schema,
)
from project.core.config.validate import MINIMUMS, RUN_NAME, validate
from project.core.topology import per_device_batch  # users' DataModules import it from here too

__all__ = [
    "CLASSIFIER",
    "CHANNELS",
    "COMPOSE_CACHE_ENV",
    "COMPOSE_CACHE_KEEP",
    "CONF_DIR",
    "DEFAULT_METRICS",
    "INPUT_MODES",
    "LOGGERS",
    "MINIMUMS",
    "MISMATCH_HINT",
    "MISSING",
    "PRECISIONS",
    "PRECISION_NAMES",
    "RENAMED_KEYS",
    "RESOLVED_CONFIG_NAME",
    "RUN_NAME",
    "SWEEP_DIRECTIONS",
    "TOOL_METRICS",
    "TOOL_DATASET_KEYS",
    "TOOL_MODEL_KEYS",
    "AwsConfig",
    "ClassifierKeys",
    "Config",
    "ConfigError",
    "DatasetKeys",
    "DeployConfig",
    "InstanceConfig",
    "JobConfig",
    "PathsConfig",
    "SweepConfig",
    "TrainerConfig",
    "compose",
    "compose_cache_dir",
    "is_classifier",
    "known_instance_types",
    "load_resolved",
    "metric_names",
    "one_line",
    "per_device_batch",
    "register_schema",
    "to_yaml",
    "validate",
    "with_gpus",
]
