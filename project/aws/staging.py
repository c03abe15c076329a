"""The code channel of a job: the project package, the resolved config, the entry script and,
for job.image=aws, the requirements the job installs at start.

A sweep stages the code once (stage_code) and gives each job its config in a channel of its own.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..config import RESOLVED_CONFIG_NAME, to_yaml, with_gpus
from .image import JOB_REQUIREMENTS, job_requirements
from .plan import ENTRY_SCRIPT, JobPlan

PROJECT_DIR = Path(__file__).resolve().parent.parent  # the package folder, project/


def stage_source(cfg: Any, dest: Path, plan: JobPlan) -> Path:
    """The code channel: the project package, the resolved config and the torchrun entry script.

    Its trainer.gpus is the plan's gpus_per_node, resolved when the job was planned: the container
    does not resolve it again.
    """
    stage_code(dest, install=plan.image.install is not None)
    (dest / RESOLVED_CONFIG_NAME).write_text(staged_config(cfg, plan))
    return dest


def stage_code(dest: Path, install: bool = False) -> Path:
    """The project package and the torchrun entry script on top: the code of any job.

    `install`: job.image=aws, whose sm_train.sh pip-installs the job's requirements before the command.
    """
    if dest.exists():
        shutil.rmtree(dest)
    skipped = shutil.ignore_patterns("__pycache__", "*.pyc", ENTRY_SCRIPT)  # the entry script goes on top
    shutil.copytree(PROJECT_DIR, dest / "project", ignore=skipped)
    shutil.copy2(PROJECT_DIR / ENTRY_SCRIPT, dest / ENTRY_SCRIPT)
    if install:
        (dest / JOB_REQUIREMENTS).write_text(job_requirements())
    return dest


def staged_config(cfg: Any, plan: JobPlan) -> str:
    """The config.yaml a job trains from: resolved, with trainer.gpus as planned."""
    return to_yaml(with_gpus(cfg, plan.gpus_per_node))


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
