"""The code channel of a job: the project package, the user's packages, the resolved config, the
entry script and, for job.image=aws, the requirements the job installs at start.

A job carries only code: `project/` less the platforms and the Face (NOT_STAGED: a job trains
with the pure and training storeys, which import neither; pyproject.toml's import contracts check
that), the top-level packages (or modules) the config's `_target_`s
name (a user's own LightningModule or DataModule beside the repository, e.g. `mymodels/`), and
those listed in `job.include`. Installed packages (site-packages) are the image's; tests, bench,
runs and data never travel. A sweep stages the code once for all its jobs (stage_code with the
union of their packages) and gives each job its config in a channel of its own.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from project.aws.image import JOB_REQUIREMENTS
from project.aws.plan import ENTRY_SCRIPT, JobPlan, LaunchError
from project.core.config import RESOLVED_CONFIG_NAME, to_yaml, with_gpus

PROJECT_DIR = Path(__file__).resolve().parent.parent  # the package folder, project/
# What a job runs: the storeys below the platforms (project/core, training, serving), never aws/,
# the sandbox (a dev tool) or the Face. pyproject.toml's contracts keep them from importing those.
STAGED = ("core", "training", "serving")
ENTRY_SOURCE = PROJECT_DIR / "training" / ENTRY_SCRIPT  # staged at the top of the bundle, not in project/
# Where the SDK stages each job's code in the artifacts bucket (terraform/main.tf: local.code_prefix;
# its lifecycle rule expires bundles after code_retention_days).
CODE_PREFIX = "code"
# A dry run stages its bundle too (the SDK builds the request from the uploaded URIs): under a
# prefix of its own, which terraform/s3.tf expires after DRY_RUN_EXPIRY_DAYS (local.dry_run_prefix).
DRY_RUN_CODE_PREFIX = f"{CODE_PREFIX}/dry-run"
DRY_RUN_EXPIRY_DAYS = 1
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def stage_source(cfg: Any, dest: Path, plan: JobPlan) -> Path:
    """The code channel: the project package, the user's packages, the resolved config and the entry script.

    Its trainer.gpus is the plan's gpus_per_node, resolved when the job was planned: the container
    does not resolve it again.
    """
    stage_code(dest, user_code(cfg), requirements=plan.requirements_file())
    (dest / RESOLVED_CONFIG_NAME).write_text(staged_config(cfg, plan))
    return dest


def stage_code(dest: Path, packages: Mapping[str, Path], requirements: str | None = None) -> Path:
    """The project package's staged part, the user's packages (user_code) and the entry script on top.

    `requirements`: what the SDK's sm_train.sh pip-installs before the command (JobPlan.requirements_file).
    """
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "project").mkdir(parents=True)
    shutil.copy2(PROJECT_DIR / "__init__.py", dest / "project" / "__init__.py")
    for storey in STAGED:
        shutil.copytree(PROJECT_DIR / storey, dest / "project" / storey, ignore=_skipped)
    for name, origin in sorted(packages.items()):
        if origin.is_dir():
            shutil.copytree(origin, dest / name, ignore=SKIPPED)
        else:
            shutil.copy2(origin, dest / origin.name)
    shutil.copy2(ENTRY_SOURCE, dest / ENTRY_SCRIPT)
    if requirements is not None:
        (dest / JOB_REQUIREMENTS).write_text(requirements)
    return dest


def _skipped(folder: str, names: list[str]) -> set[str]:
    """Caches and dotfiles everywhere; the entry script where it lives (it goes on top)."""
    skipped = set(SKIPPED(folder, names))
    return skipped | {ENTRY_SCRIPT} if Path(folder) == ENTRY_SOURCE.parent else skipped


def staged_config(cfg: Any, plan: JobPlan) -> str:
    """The config.yaml a job trains from: resolved, with trainer.gpus as planned (and logger=mlflow's
    tracking URI as planned: Terraform's tracking server where the config names none)."""
    staged = with_gpus(cfg, plan.gpus_per_node)
    if plan.mlflow_uri is not None:
        staged.logger.mlflow.tracking_uri = plan.mlflow_uri
    return to_yaml(staged)


def source_revision() -> str:
    """The commit the code bundle is staged from, for the job's `git-sha` tag (`invoke runs` shows it).

    The short sha, with `-dirty` when tracked files differ from it; `-` outside a git checkout.
    """
    try:
        sha, changes = (
            subprocess.run(args, cwd=PROJECT_DIR, capture_output=True, text=True, check=True).stdout.strip()
            for args in (
                ["git", "rev-parse", "--short", "HEAD"],
                ["git", "status", "--porcelain", "--untracked-files=no"],
            )
        )
    except (OSError, subprocess.CalledProcessError):
        return "-"
    return sha + ("-dirty" if changes else "")


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
