"""Hydra's and OmegaConf's errors as one actionable line: what is wrong and how to fix it."""

from __future__ import annotations

import difflib
import re

from project.core.config.schema import valid_keys
from project.core.errors import UserError


class ConfigError(UserError, ValueError):
    """A config that cannot be composed; its message is one actionable line."""


# A model config that interpolates a key its dataset lacks (a classifier with a regression dataset).
MISMATCH_HINT = (
    "this model config does not fit the others (e.g. a classifier needs dataset.num_classes); "
    "pick a matching pair, as in model=mlp_regressor dataset=csv_regression"
)
# Keys that moved, old -> new: an old command line gets one line naming the new spelling.
RENAMED_KEYS = {"dataset.source": "dataset.channels.train"}


def one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines and a chained cause; keep what names the problem."""
    text = str(exc).strip()
    if "Could not find '" in text and "Available options" in text:
        return _unknown_option(text)
    lines = [line.strip() for line in str(exc.__cause__ or exc).splitlines() if line.strip()]
    head = _hinted(lines[0] if lines else type(exc).__name__)
    key = _full_key(lines)
    if key is None:
        return head
    return _about_key(key, head) or f"{key}: {head}"


def _full_key(lines: list[str]) -> str | None:
    """The key OmegaConf names on a `full_key: ...` line of its message, if any."""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)


def _hinted(head: str) -> str:
    """An interpolation into a key another group lacks, e.g. cnn's ${dataset.num_classes}: say why."""
    return f"{head}: {MISMATCH_HINT}" if head.startswith("Interpolation key") and "not found" in head else head


def _unknown_option(text: str) -> str:
    """A group option with no file, e.g. instance=ml.bogus: the options there, the closest first."""
    missing = text.split("Could not find '", 1)[1].split("'", 1)[0]
    group, option = missing.rsplit("/", 1) if "/" in missing else ("config", missing)
    listing = text.split("Available options", 1)[1].split("Config search path", 1)[0]
    options = [line.strip() for line in listing.splitlines()[1:] if line.strip()]
    close = difflib.get_close_matches(option, options, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown {group} '{option}'{hint}; choose one of: {', '.join(options)}"


def _about_key(key: str, head: str) -> str | None:
    """A key that moved or that the config does not have; None for any other problem with `key`."""
    if key in RENAMED_KEYS:
        return f"{key} is now {RENAMED_KEYS[key]}: write {RENAMED_KEYS[key]}=..."
    if re.match(r"Key '.*' not in", head):
        return f"unknown key '{key}'; valid keys there: {', '.join(valid_keys(key))}"
    if re.match(r"Key '.*' is not in struct", head):
        return f"unknown key '{key}'; {_how_to_add(key)}"
    return None


def _how_to_add(key: str) -> str:
    """An open mapping (dataset and model: their keys are the target class's arguments; job.environment)."""
    if key.startswith("dataset.channels."):
        return f"a channel the dataset config does not declare is added with +{key}=<folder>"
    if f"{key}.".startswith("dataset.input_modes."):
        return "set a channel's input mode with +dataset.input_modes.<channel>=FastFile"
    if key.split(".", 1)[0] in ("dataset", "model"):
        return f"to give the class a new argument, write +{key}=..."
    return f"to add it, write +{key}=..."
