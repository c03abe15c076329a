"""Composing conf/ with Hydra into a validated config, and the resolved config file a run carries."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from project.core.config.cache import cache_file, load_cached, store_cached
from project.core.config.messages import ConfigError, one_line
from project.core.config.schema import Config, register_schema
from project.core.config.validate import validate

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"  # project/core/config/ -> the checkout
RESOLVED_CONFIG_NAME = "config.yaml"  # the resolved config file that travels with a job


# Groups newer than some saved run configs (a run's model/config.yaml, which deploy and --config read).
GROUPS_ADDED_LATER = ("logger",)


def default_option(group: str) -> str:
    """The option conf/config.yaml's defaults list picks for `group`."""
    import yaml

    entries = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
    return next(str(e[group]) for e in entries if isinstance(e, dict) and group in e)


def known_instance_types() -> list[str]:
    """The instance types conf/instance/ describes (GPUs, memory, price): the ones a job may name."""
    return sorted(p.stem for p in (CONF_DIR / "instance").glob("*.yaml"))


def compose(overrides: list[str] | tuple[str, ...] = (), conf_dir: Path | None = None, model: bool = True) -> Any:
    """Compose conf/ with Hydra overrides into a validated DictConfig.

    model=False composes no model unless the overrides name one (`invoke upload` moves data only:
    `dataset=mine` needs no matching `model=mine`, nor the default classifier's dataset.num_classes).

    The composed (unresolved) config is cached per command line, keyed by the overrides and the
    bytes of every file that shapes it (project.core.config.cache): a repeated `invoke ...` skips
    Hydra's import and composition (0.2-0.3 s of a task's start), and changing any of those files
    composes afresh.
    """
    conf_dir = Path(conf_dir or CONF_DIR)
    if not model and not any(re.match(r"^[+~]*model[=.@]", o) for o in overrides):
        overrides = ["~model", *overrides]  # drops the defaults list's model: nothing composes one
    cache = cache_file(conf_dir, list(overrides))
    cfg = load_cached(cache) if cache else None
    if cfg is not None:
        validate(cfg)
        return cfg
    cfg = _hydra_compose(conf_dir, list(overrides))
    validate(cfg)
    if cache:
        store_cached(cache, cfg)  # only configs that passed every check
    return cfg


def _hydra_compose(conf_dir: Path, overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_schema()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"bad config override: {one_line(exc)}") from None


def load_resolved(path: Path) -> Any:
    """Load a resolved config file (as written by save_resolved) and validate it against the schema."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        saved = OmegaConf.load(path)
        for group in GROUPS_ADDED_LATER:  # a run saved before the group existed ran with its default option
            if group not in saved and (CONF_DIR / group).is_dir():
                saved[group] = OmegaConf.load(CONF_DIR / group / f"{default_option(group)}.yaml")  # type: ignore[index]  # a config file is a mapping
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved)
    except (OmegaConfBaseException, OSError) as exc:
        raise ConfigError(f"cannot load config {path}: {one_line(exc)}") from None
    OmegaConf.set_struct(cfg, True)
    validate(cfg)
    return cfg


def to_yaml(cfg: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg, resolve=True)


def with_gpus(cfg: Any, gpus: int) -> Any:
    """A copy of the config with trainer.gpus resolved: what a job stages and its run identity hashes."""
    resolved = copy.deepcopy(cfg)
    resolved.trainer.gpus = gpus
    return resolved
