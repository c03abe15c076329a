"""A run or a SageMaker training job as a user names it: a bare name, or a path to the run's folder.

Every task that takes a run or a job (predict, deploy, batch-predict, compare, fetch, logs,
status, why, stop) resolves its argument with `resolve_run`, so `tiny`, `runs/tiny` and
`runs/tiny/` (as tab completion writes it) name the same run everywhere; the task parser
(project.face.cli) takes such a token positionally by `is_run_token`. A fetched job's folder is
runs/<job>, so a path names a job by its folder's name. Pure: paths and names only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from project.core.errors import UserError
from project.core.sagemaker_names import JOB_NAME, METRICS_FILE

# What a run folder holds (paths.runs_dir's layout): any one of them marks a folder as a run's.
RUN_PARTS = ("model", "output", "checkpoints", METRICS_FILE)


class RunRefError(UserError):
    pass


def is_path(spec: str) -> bool:
    """Written as a path (runs/tiny, ./tiny, runs/tiny/), not a bare name; URIs are not paths."""
    return "://" not in spec and ("/" in spec or os.sep in spec or spec in (".", ".."))


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / part).exists() for part in RUN_PARTS)


@dataclass(frozen=True)
class RunRef:
    given: str  # as the user wrote it
    name: str  # the run's name: its folder's (a fetched job's folder is named after the job)
    folder: Path  # its folder, or where it would be once fetched (<runs_dir>/<name>)
    as_path: bool  # given as a path: it names a folder, never only a job

    @property
    def exists(self) -> bool:
        return self.folder.is_dir()

    def job_name(self) -> str:
        """The SageMaker training job it names; a name SageMaker cannot have is one line."""
        if not JOB_NAME.match(self.name):
            raise RunRefError(
                f"{self.given!r} names no training job (job names are 1-63 letters, digits and hyphens): "
                "give a job from `invoke status`, or its folder runs/<job>"
            )
        return self.name


def resolve_run(spec: str, runs_dir: str | Path) -> RunRef:
    """A run/job name or a path, as a RunRef. A bare name is the run under runs_dir (else a folder
    of that name here, else a job to be fetched to runs_dir); a path is that folder."""
    if not spec.strip():
        raise RunRefError("empty run name: give a run under runs/, its folder, or a training job name")
    if is_path(spec):
        folder = Path(spec)
        return RunRef(spec, Path(os.path.abspath(folder)).name, folder, as_path=True)
    under = Path(runs_dir) / spec
    folder = Path(spec) if not under.is_dir() and Path(spec).is_dir() else under
    return RunRef(spec, spec, folder, as_path=False)


MODEL_SPEC = "model:"  # a registered version instead of a run: `invoke deploy model:latest` (project/aws/registry.py)


def is_run_token(token: str, positionals_pending: bool) -> bool:
    """Whether a bare command-line token names the run or job of a task whose run is optional.

    A job name always does (the tasks' old rule), and so does a registered version (model:latest).
    A path does too, unless the task still waits for a required positional argument (batch-predict's
    inputs folder or s3:// prefix): then only a run folder, or a path to nothing (the task says there
    is no such run), is the run.
    """
    if JOB_NAME.match(token) or token.startswith(MODEL_SPEC):
        return True
    if not is_path(token):
        return False
    return not positionals_pending or is_run_folder(Path(token)) or not Path(token).exists()
