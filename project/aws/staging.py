"""The code channel of a job: the project package, the user's packages, the resolved config and the entry script.

A job carries only code: `project/`, the top-level packages (or modules) the config's `_target_`s
name (a user's own LightningModule or DataModule beside the repository, e.g. `mymodels/`), and
those listed in `job.include`. Installed packages (site-packages) are the image's; tests, bench,
runs and data never travel.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import RESOLVED_CONFIG_NAME, to_yaml, with_gpus
from .plan import ENTRY_SCRIPT, JobPlan, LaunchError

PROJECT_DIR = Path(__file__).resolve().parent.parent  # the package folder, project/
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def stage_source(cfg: Any, dest: Path, plan: JobPlan) -> Path:
    """The code channel: the project package, the user's packages, the resolved config and the entry script.

    Its trainer.gpus is the plan's gpus_per_node, resolved when the job was planned: the container
    does not resolve it again.
    """
    if dest.exists():
        shutil.rmtree(dest)
    skipped = shutil.ignore_patterns("__pycache__", "*.pyc", ENTRY_SCRIPT)  # the entry script goes on top
    shutil.copytree(PROJECT_DIR, dest / "project", ignore=skipped)
    for name, origin in user_code(cfg).items():
        if origin.is_dir():
            shutil.copytree(origin, dest / name, ignore=SKIPPED)
        else:
            shutil.copy2(origin, dest / origin.name)
    (dest / RESOLVED_CONFIG_NAME).write_text(to_yaml(with_gpus(cfg, plan.gpus_per_node)))
    shutil.copy2(PROJECT_DIR / ENTRY_SCRIPT, dest / ENTRY_SCRIPT)
    return dest


def _targets(node: Any) -> Iterator[str]:
    """Every `_target_` value in a config subtree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield value
            else:
                yield from _targets(value)
    elif isinstance(node, list):
        for item in node:
            yield from _targets(item)


def _installed(origin: Path) -> bool:
    """Part of Python or of an installed distribution: the image has it."""
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(origin.is_relative_to(root) for root in roots) or "site-packages" in origin.parts


def user_code(cfg: Any) -> dict[str, Path]:
    """Top-level package or module name -> its folder or file, for each one the job needs beyond `project`."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True)
    names = {target.split(".", 1)[0] for target in _targets(tree)} | {str(n) for n in cfg.job.include}
    found: dict[str, Path] = {}
    for name in sorted(names - {"project"}):
        spec = importlib.util.find_spec(name) if name.isidentifier() else None
        if spec is None or not (spec.submodule_search_locations or spec.origin):
            raise LaunchError(
                f"package {name} (named by a _target_ or job.include) is not importable here: "
                "put it beside the repository (e.g. mymodels/ with an __init__.py) or fix the name"
            )
        if name in sys.builtin_module_names or spec.origin in ("built-in", "frozen"):
            continue
        locations = list(spec.submodule_search_locations or [])
        origin = Path(locations[0]) if locations else Path(str(spec.origin))
        if not _installed(origin.resolve()):
            found[name] = origin
    return found
