"""A sweep's jobs and their results, as the launchers share them: the local one (project/face/sweep.py)
and SageMaker's (project/aws/sweep.py). Plain data and wording; no Hydra, no AWS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from project.core.errors import UserError


class SweepError(UserError):
    """A sweep refused before any job ran; one line names the job and what to change."""


@dataclass
class Job:
    """One job of a sweep: its number, the overrides the sweeper chose, its validated config."""

    num: int
    overrides: list[str]  # the swept keys' values only (what tells this job from the others)
    cfg: Any  # the task config (no `hydra` node), validated
    sweep_cfg: Any  # the same with the `hydra` node, for the JobReturn


def refusal(num: int, overrides: Sequence[str], problem: str) -> SweepError:
    return SweepError(f"sweep job {num} ({' '.join(overrides)}): {problem}; nothing was launched")


@dataclass
class JobResult:
    """One row of a sweep's results table."""

    num: int
    overrides: list[str]
    status: str  # Completed, Failed, Stopped, or Skipped (completed by an earlier launch)
    name: str  # the run folder or the training job
    metrics: dict[str, float]
    duration_s: float | None = None
    billable_s: int | None = None
    cost_usd: float | None = None
    reason: str = ""  # why it failed, one line

    @property
    def ok(self) -> bool:
        return self.status in ("Completed", "Skipped")


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The train_/val_/test_ numbers of a metrics.json or a job's final metrics (not its timings)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith(("train_", "val_", "test_"))
        and not k.endswith(("_seconds", "_per_second"))
        and isinstance(v, int | float)
        and not isinstance(v, bool)
    }
