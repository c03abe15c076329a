"""The Launcher plugins: Hydra's sweeper hands them batches of job overrides, they return JobReturns.

Both compose and validate the whole batch first (project.face.sweep.compose_jobs): one bad combination
refuses the sweep before anything runs. Each JobReturn's return_value is the job's final metrics
(project.face.sweep.FinalMetrics; float() of it is `sweep.objective`), so any sweeper can rank them.
The work itself lives in project.face.sweep (local) and project.aws.sweep (SageMaker); these classes
only hold what Hydra hands them. Registered in Hydra's ConfigStore as hydra/launcher=local and
hydra/launcher=sagemaker, with the settings below as hydra.launcher.<name>. (No `from __future__
import annotations`: Hydra's plugin scan runs this module outside sys.modules, where dataclasses
cannot resolve string annotations.)
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from project.core.sweep_jobs import Job, JobResult
from project.face import sweep
from project.face.sweep_results import write_results


@dataclass
class LocalLauncherConf:
    _target_: str = "hydra_plugins.lightning_sagemaker.launchers.LocalLauncher"
    sweep_id: str = "???"  # runs/<sweep_id>/<n>/; `invoke local -m` sets it


@dataclass
class SageMakerLauncherConf:
    _target_: str = "hydra_plugins.lightning_sagemaker.launchers.SageMakerLauncher"
    sweep_id: str = "???"  # in every job name, <base>-<sweep_id>-<n>; `invoke train -m` sets it
    # Jobs running at once; more wait here. null: project.aws.sweep.parallel_limit decides.
    max_parallel: int | None = None
    yes: bool = False  # launch without asking (the summary is still printed)
    poll_seconds: float = 10.0  # between status checks of the running jobs


ConfigStore.instance().store(group="hydra/launcher", name=sweep.LOCAL_LAUNCHER, node=LocalLauncherConf)
ConfigStore.instance().store(group="hydra/launcher", name=sweep.SAGEMAKER_LAUNCHER, node=SageMakerLauncherConf)


class _SweepLauncher(Launcher):
    """What both launchers share: Hydra's setup, composing a batch, the results so far."""

    def __init__(self, sweep_id: str) -> None:
        self.sweep_id = sweep_id
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.results: list[JobResult] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config  # the task function is never called

    @property
    def sweep_dir(self) -> Path:
        assert self.config is not None
        return Path(str(self.config.hydra.sweep.dir))

    def compose(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Job]:
        assert self.hydra_context is not None and self.config is not None
        return sweep.compose_jobs(self.hydra_context.config_loader, self.config, job_overrides, initial_job_idx)

    def returns(self, jobs: list[Job], results: list[JobResult]) -> list[JobReturn]:
        """Record the batch, rewrite the results table with every job so far, and answer Hydra."""
        self.results += results
        objective, direction = str(jobs[0].cfg.sweep.objective), str(jobs[0].cfg.sweep.direction)
        table = write_results(self.results, self.sweep_dir, objective, direction)
        print(
            f"\nsweep {self.sweep_id}: {len(self.results)} job(s), best first\n{table}\n"
            f"results: {self.sweep_dir}/results.md, .csv, objective.png",
            flush=True,
        )
        by_num = {r.num: r for r in results}
        return [sweep.job_return(job, by_num[job.num], str(self.sweep_dir / str(job.num))) for job in jobs]


class LocalLauncher(_SweepLauncher):
    """The jobs of each batch one after another on this machine, each in runs/<sweep>/<n>/."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = self.compose(job_overrides, initial_job_idx)
        return self.returns(jobs, sweep.run_local_jobs(jobs, self.sweep_dir))


class SageMakerLauncher(_SweepLauncher):
    """Each job a SageMaker training job: one code bundle, its own config, at most max_parallel at once."""

    def __init__(self, sweep_id: str, max_parallel: int | None, yes: bool, poll_seconds: float) -> None:
        super().__init__(sweep_id)
        self.settings: dict[str, Any] = {
            "max_parallel": max_parallel,
            "yes": yes,
            "poll_seconds": float(poll_seconds),
        }
        self.session: Any = None  # project.aws.sweep.SweepSession, made at the first batch

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from project.aws.sweep import SweepSession

        jobs = self.compose(job_overrides, initial_job_idx)
        if self.session is None:
            self.session = SweepSession(self.sweep_id, self.sweep_dir, jobs[0].cfg, **self.settings)
        return self.returns(jobs, self.session.run(jobs))
