"""Sweeps: `invoke local -m ...` and `invoke train -m ...` through Hydra's multirun.

Hydra's sweeper (the basic grid sweeper, or Optuna's with `hydra/sweeper=optuna`) expands the
overrides (`a,b`, `choice()`, `range()`, `interval()`) into jobs and hands them in batches to a
launcher: ours, from the `hydra_plugins` package of this repository (`hydra/launcher=local` runs
them here one after the other, `hydra/launcher=sagemaker` as SageMaker jobs). Both launchers
compose and validate every job of a batch before they run any (`compose_jobs`), so one bad
combination refuses the whole sweep, naming it.

Each job's final metrics come back as a `FinalMetrics` dict whose float() is the sweep's
objective (`sweep.objective`): Hydra's sweepers read the dict, Optuna reads the float.
Hydra and OmegaConf are imported inside the functions: tasks.py imports nothing from here at
module level, and this module never imports torch.
"""

from __future__ import annotations

import copy
import functools
import json
import secrets
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from project.core.config import CONF_DIR, ConfigError, one_line, register_schema, to_yaml, validate
from project.core.errors import UserError
from project.core.sagemaker_names import METRICS_FILE
from project.core.sweep_jobs import Job, JobResult, SweepError, refusal, scalar_metrics

Echo = Callable[[str], None]
LOCAL_LAUNCHER = "local"  # hydra/launcher=local: the jobs one after another on this machine
SAGEMAKER_LAUNCHER = "sagemaker"  # hydra/launcher=sagemaker: each job a SageMaker training job
# Overrides that give a sweep its search space without a swept value on the command line.
OPTUNA_SWEEPER = "hydra/sweeper=optuna"
SEARCH_SPACE_PREFIXES = ("hydra/sweeper=", "hydra.sweeper.", "+hydra.sweeper.")


def new_sweep_id(now: datetime | None = None) -> str:
    """`YYmmdd-HHMMSS-xxxx`: 18 characters, unique per launch (two sweeps in one second differ)."""
    now = now or datetime.now(UTC)
    return f"{now:%y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def check_multirun(overrides: Sequence[str]) -> None:
    """`-m` needs something to sweep: a swept value (a,b / choice / range / interval) or a search space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"bad config override: {one_line(exc)}") from None
    if any(o.is_sweep_override() for o in parsed) or any(o.startswith(SEARCH_SPACE_PREFIXES) for o in overrides):
        return
    raise SweepError(
        "-m (multirun) needs at least one swept key, e.g. model.lr=1e-3,3e-3 or "
        "'trainer.batch_size=choice(128,256)'; drop -m to run this single config"
    )


def sweeper_direction(overrides: Sequence[str]) -> list[str]:
    """Optuna's direction is sweep.direction, the one the results table ranks by (Optuna's own default,
    minimize, would chase the worst val_acc). One setting, so hydra.sweeper.direction is refused."""
    given = [o for o in overrides if o.lstrip("+").startswith("hydra.sweeper.direction=")]
    if given:
        value = given[-1].split("=", 1)[1]
        raise SweepError(f"{given[-1]}: write sweep.direction={value} instead (Optuna and the results table use it)")
    return ["hydra.sweeper.direction=${sweep.direction}"] if OPTUNA_SWEEPER in overrides else []


def multirun(
    overrides: Sequence[str], launcher: str, settings: dict[str, Any], conf_dir: Path | None = None
) -> list[Any]:
    """Run Hydra's multirun over conf/ with our launcher; the basic sweeper's JobReturns (batches of them)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_multirun(overrides)
    sweep_id = str(settings["sweep_id"])
    hydra_overrides = [
        f"hydra/launcher={launcher}",
        *(f"hydra.launcher.{k}={v}" for k, v in settings.items()),
        f"hydra.sweep.dir=${{paths.runs_dir}}/{sweep_id}",
        "hydra.sweep.subdir=${hydra.job.num}",
        "hydra.output_subdir=null",  # no .hydra/ in the run folders: each run has model/config.yaml
        *sweeper_direction(overrides),
    ]
    register_schema()
    try:
        with initialize_config_dir(config_dir=str(conf_dir or CONF_DIR), version_base="1.3"):
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            returns = hydra.multirun(
                config_name="config",
                task_function=_never_called,
                overrides=[*hydra_overrides, *overrides],
                with_log_configuration=False,
            )
            return list(returns or [])  # Optuna's sweeper returns nothing (its results are in the sweep dir)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"bad config override: {one_line(exc)}") from None


def _never_called(cfg: Any) -> None:
    raise RuntimeError("our launchers run each job themselves; Hydra's task function is not used")


def swept_keys(config: Any) -> set[str]:
    """The keys a sweep varies: swept on the command line, or in the sweeper's `params` (Optuna's space)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()}
    params = config.hydra.sweeper.get("params") or {}
    return keys | {str(k) for k in params}


def compose_jobs(config_loader: Any, config: Any, job_overrides: Sequence[Sequence[str]], first: int) -> list[Job]:
    """Compose and validate every job of a batch; the first bad one refuses them all, by name."""
    from hydra.errors import HydraException
    from omegaconf import open_dict, read_write
    from omegaconf.errors import OmegaConfBaseException

    swept = swept_keys(config)
    jobs = []
    for num, overrides in enumerate(job_overrides, start=first):
        shown = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept] or list(overrides)
        try:
            sweep_cfg = config_loader.load_sweep_config(config, list(overrides))
            with open_dict(sweep_cfg):
                sweep_cfg.hydra.job.id = sweep_cfg.hydra.job.num = num
            cfg = copy.deepcopy(sweep_cfg)
            with read_write(cfg), open_dict(cfg):
                del cfg["hydra"]
            validate(cfg)
        except (HydraException, OmegaConfBaseException) as exc:
            raise refusal(num, shown, one_line(exc)) from None
        except UserError as exc:
            raise refusal(num, shown, str(exc)) from None
        jobs.append(Job(num, shown, cfg, sweep_cfg))
    return jobs


class FinalMetrics(dict):
    """A job's final metrics; float() of it is the sweep's objective (what Optuna's sweeper reads)."""

    def __init__(self, metrics: dict[str, Any], objective: str):
        super().__init__(metrics)
        self.objective = objective

    def __float__(self) -> float:
        if self.objective not in self:
            raise ValueError(f"the job reported no {self.objective!r} (sweep.objective); it has {sorted(self)}")
        return float(self[self.objective])


def job_return(job: Job, result: JobResult, working_dir: str) -> Any:
    """Hydra's JobReturn for a result: completed with its FinalMetrics, or failed with its reason."""
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn(
        overrides=job.overrides,
        cfg=job.cfg,
        hydra_cfg=job.sweep_cfg,
        working_dir=working_dir,
        task_name=result.name,
        status=JobStatus.COMPLETED if result.ok else JobStatus.FAILED,
    )
    objective = str(job.cfg.sweep.objective)
    ret.return_value = FinalMetrics(result.metrics, objective) if result.ok else JobFailed(result)
    return ret


class JobFailed(UserError):
    def __init__(self, result: JobResult):
        super().__init__(f"sweep job {result.num} ({result.name}) {result.status}: {result.reason or '-'}")


# --- the local launcher's work ----------------------------------------------------------------


def run_local_jobs(jobs: list[Job], sweep_dir: Path, echo: Echo = print) -> list[JobResult]:
    """Each job in turn as `python -m project.training.train --config <its resolved config>`, in sweep_dir/<n>/,
    on the data resolved here and handed to it (an s3:// channel's copy: the training process reads no S3)."""
    from project.aws import source  # noqa: F401 (registers s3:// with project.training.fetch)
    from project.training import local
    from project.training.resolve import resolve
    from project.training.stalls import Limits

    # every job's data present and verified before the first trains
    data = {job.num: resolve(job.cfg) for job in jobs}
    results = []
    with tempfile.TemporaryDirectory(prefix="sweep-configs-") as tmp:
        for job in jobs:
            cfg = copy.deepcopy(job.cfg)
            cfg.paths.runs_dir, cfg.run_name = str(sweep_dir), str(job.num)
            config_file = Path(tmp) / f"{job.num}.yaml"
            config_file.write_text(to_yaml(cfg))
            echo(f"[sweep job {job.num}] {' '.join(job.overrides)}")
            # a job that stalls (trainer.stall_timeout_minutes) fails, and the sweep goes on with the next
            limits = Limits.of(cfg.trainer, in_container=False)
            checked = functools.partial(local.Checked, data=data[job.num], limits=limits)
            code = local.train_in_child(["--config", str(config_file)], check_first=checked)
            if code == local.INTERRUPTED_EXIT:
                raise KeyboardInterrupt
            if code in (local.TERMINATED_EXIT, local.HANGUP_EXIT):
                raise SystemExit(code)  # the job said where it saved; the sweep stops as `invoke local` does
            run_dir = sweep_dir / str(job.num)
            metrics_file = run_dir / METRICS_FILE
            if code or not metrics_file.is_file():
                results.append(JobResult(job.num, job.overrides, "Failed", str(run_dir), {}, reason=f"exit {code}"))
                continue
            metrics = json.loads(metrics_file.read_text())
            duration = metrics.get("fit_seconds")
            results.append(
                JobResult(job.num, job.overrides, "Completed", str(run_dir), scalar_metrics(metrics), duration)
            )
    return results


def discard_if_empty(sweep_dir: Path) -> None:
    """A refused sweep leaves no folder: Hydra's sweeper writes multirun.yaml before the launcher refuses."""
    if sweep_dir.is_dir() and not any(p.name != "multirun.yaml" for p in sweep_dir.iterdir()):
        shutil.rmtree(sweep_dir, ignore_errors=True)


def local_sweep(overrides: Sequence[str], echo: Echo = print) -> list[Any]:
    """`invoke local -m ...`: the sweep's jobs one after another here, each in runs/<sweep>/<n>/."""
    sweep_id = new_sweep_id()
    try:
        returns = multirun(overrides, LOCAL_LAUNCHER, {"sweep_id": sweep_id})
    except UserError:
        for runs_dir in _runs_dirs(overrides):
            discard_if_empty(runs_dir / sweep_id)
        raise
    return returns


def sagemaker_sweep(overrides: Sequence[str], yes: bool = False, poll_seconds: float = 10.0) -> list[Any]:
    """`invoke train -m ...`: every job a SageMaker training job, through hydra/launcher=sagemaker."""
    settings = {"sweep_id": new_sweep_id(), "yes": yes, "poll_seconds": poll_seconds}
    try:
        return multirun(overrides, SAGEMAKER_LAUNCHER, settings)
    except UserError:
        for runs_dir in _runs_dirs(overrides):
            discard_if_empty(runs_dir / str(settings["sweep_id"]))
        raise


def _runs_dirs(overrides: Sequence[str]) -> list[Path]:
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("paths.runs_dir=")]
    return [Path(given[-1])] if given else [Path("runs")]
