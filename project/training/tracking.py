"""Experiment trackers: the Lightning loggers a run's `logger` group chooses (conf/logger/).

Whatever is chosen, the run also writes output/metrics.csv (CSVLogger): the learning-curve plot and
`invoke runs` read it. TensorBoard writes under output/tensorboard/; MLflow gets the resolved config as
params, every scalar Lightning logs (per step and per epoch), the final metrics and, once the run is
written, model.ts and the plots as artifacts; its run id goes into metrics.json (`mlflow_run_id`).
W&B (offline by default: no account) gets the same under output/wandb/; its run id goes in as `wandb_run_id`.

A resumed run (the same config started again after an interruption) goes on logging to the tracker
runs it began: their ids are kept beside its checkpoints (`remember`, `earlier_runs`), which a
SageMaker job syncs to S3, so a spot job started again continues the same MLflow and W&B runs.

`check` runs before anything is built: a tracker package that is not installed, or an MLflow tracking
URI that no server answers, is one line and no run folder. mlflow and wandb are imported only here,
inside the functions, and only when chosen.

This module is over 300 lines because it is one concern, the experiment trackers: each is checked, built, kept
across a resume and finished here, the one place mlflow and wandb are imported.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from project.core.errors import UserError
from project.core.sagemaker_names import GIT_SHA_ENV

MLFLOW_INSTALL = "pip install -r requirements-tracking.txt"  # mlflow, sagemaker-mlflow and wandb, pinned
# A SageMaker managed MLflow tracking server, as Terraform outputs it (mlflow_tracking_server_arn).
SAGEMAKER_MLFLOW_ARN = re.compile(r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:mlflow-tracking-server/[A-Za-z0-9-]+$")
LOCAL_MLRUNS = "mlruns"  # logger.mlflow.tracking_uri=null: this folder where the run starts
STORE_FILE = "mlflow.db"  # a folder's MLflow store: SQLite, its artifacts beside it
ANSWER_SECONDS = 10  # an MLflow server that has not answered /health by then is taken as absent
RUN_ID_KEY = "mlflow_run_id"  # metrics.json's key for the run's MLflow run
WANDB_RUN_ID_KEY = "wandb_run_id"  # and for its W&B run
MLFLOW_URI_KEY = "mlflow_tracking_uri"  # the server a remembered MLflow run lives on


def chosen(cfg: Any) -> dict[str, Any]:
    """logger name -> its settings, for the loggers the config chooses (a config older than the group: TensorBoard)."""
    from omegaconf import OmegaConf

    node = cfg.get("logger") if "logger" in cfg else None
    if node is None:
        return {"tensorboard": {"name": "tensorboard"}}
    return dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]  # a mapping node


def local_store(setting: str | None, output_dir: Path, in_container: bool) -> Path | None:
    """The folder a folder setting names (null: mlruns/ where the run starts; in a SageMaker job under
    its output, so it comes back in output.tar.gz); None for a URI or an ARN."""
    if setting and (":" in setting.split("/", 1)[0] or setting.startswith("arn:")):
        return None
    folder = Path(setting or LOCAL_MLRUNS)
    if in_container and not folder.is_absolute():
        folder = output_dir / folder
    return folder.resolve()


def tracking_uri(setting: str | None, output_dir: Path, in_container: bool) -> str:
    """The URI MLflow is given: a server's URL, an ARN or another URI as written; a folder as a SQLite
    store in it (MLflow 3 refuses its plain-folder store), `mlflow ui --backend-store-uri sqlite:///<folder>/mlflow.db`."""
    folder = local_store(setting, output_dir, in_container)
    return str(setting) if folder is None else f"sqlite:///{folder / STORE_FILE}"


def artifact_location(setting: str | None, output_dir: Path, in_container: bool) -> str | None:
    """Where a new experiment of a folder store keeps its artifacts: artifacts/ beside mlflow.db; a
    server or an ARN decides its own (None)."""
    folder = local_store(setting, output_dir, in_container)
    return None if folder is None else (folder / "artifacts").as_uri()


def check(cfg: Any, output_dir: Path, in_container: bool) -> None:
    """What can fail before training starts, as one line: a tracker not installed, an unreachable MLflow URI."""
    loggers = chosen(cfg)
    if "mlflow" in loggers:
        need("mlflow", "logger=mlflow", MLFLOW_INSTALL)
        check_mlflow_uri(loggers["mlflow"]["tracking_uri"], output_dir, in_container)
    if "wandb" in loggers:
        need("wandb", "logger=wandb", MLFLOW_INSTALL)


def need(module: str, what: str, fix: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"{what} needs the {module} package, which is not installed here: {fix}")


def check_mlflow_uri(setting: str | None, output_dir: Path, in_container: bool) -> None:
    """A URI MLflow can log to: a well-formed ARN (its plugin installed), a server that answers, a folder."""
    uri = tracking_uri(setting, output_dir, in_container)
    where = f"logger.mlflow.tracking_uri={setting}"
    if uri.startswith("arn:"):
        if not SAGEMAKER_MLFLOW_ARN.match(uri):
            raise UserError(
                f"{where} is not a SageMaker MLflow tracking server's ARN "
                "(arn:aws:sagemaker:<region>:<account>:mlflow-tracking-server/<name>): check `terraform output`"
            )
        need("sagemaker_mlflow", where, MLFLOW_INSTALL)
    elif uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=ANSWER_SECONDS) as answer:
                answer.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(
                f"{where}: no MLflow server answers there ({reason}); start it (mlflow server) or fix the URI"
            ) from None
    elif not uri.startswith("sqlite:"):
        raise UserError(
            f"{where}: give a folder, an MLflow server's http(s):// URL or a SageMaker MLflow tracking server's ARN"
        )


def build(
    cfg: Any,
    output_dir: Path,
    run_name: str,
    tags: Mapping[str, str],
    in_container: bool,
    earlier: Mapping[str, str] | None = None,
) -> list[Any]:
    """The run's Lightning loggers: the chosen trackers, and the CSV the plots read, always.

    `earlier`: a resumed run's tracker runs (earlier_runs): MLflow and W&B go on logging to those."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    loggers, earlier = chosen(cfg), earlier or {}
    built: list[Any] = []
    if "tensorboard" in loggers:
        # hparams go in with the final metrics (reporting.log_final_hparams), not with a -1 placeholder
        built.append(
            TensorBoardLogger(
                save_dir=str(output_dir), name=loggers["tensorboard"]["name"], version="", default_hp_metric=False
            )
        )
    built.append(CSVLogger(save_dir=str(output_dir), name="", version=""))
    if "mlflow" in loggers:
        built.append(_mlflow_logger(loggers["mlflow"], output_dir, run_name, tags, in_container, earlier))
    if "wandb" in loggers:
        from pytorch_lightning.loggers import WandbLogger

        settings = loggers["wandb"]
        resumed = earlier.get(WANDB_RUN_ID_KEY)
        built.append(
            WandbLogger(
                name=run_name,
                project=settings["project"],
                mode=settings["mode"],
                save_dir=str(output_dir),
                tags=list(tags.values()),  # W&B tags are labels of at most 64 characters, not key=value pairs
                settings={"quiet": True},  # where the run is saved; not a chart of every metric at exit
                id=resumed,  # None: a new run
                resume="allow" if resumed else None,
            )
        )
    return built


def _mlflow_logger(
    settings: Mapping[str, Any],
    output_dir: Path,
    run_name: str,
    tags: Mapping[str, str],
    in_container: bool,
    earlier: Mapping[str, str],
) -> Any:
    from pytorch_lightning.loggers import MLFlowLogger

    uri = tracking_uri(settings["tracking_uri"], output_dir, in_container)
    folder = local_store(settings["tracking_uri"], output_dir, in_container)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    if not uri.startswith("arn:"):  # sagemaker-mlflow's header plugin warns on every request to any other URI
        logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)
    # the run this one resumes began an MLflow run on this very server: go on logging to it, if it
    # is still there (a spot job's mlruns/ in its output did not survive the instance)
    resumed = earlier.get(RUN_ID_KEY) if earlier.get(MLFLOW_URI_KEY) == uri else None
    if resumed is not None and not _mlflow_run_exists(uri, resumed):
        resumed = None
    return MLFlowLogger(
        experiment_name=settings["experiment_name"],
        run_name=run_name,
        tracking_uri=uri,
        tags=dict(tags),
        artifact_location=artifact_location(settings["tracking_uri"], output_dir, in_container),
        run_id=resumed,
    )


def _mlflow_run_exists(uri: str, run_id: str) -> bool:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)  # as the logger does when it starts: the ARN plugin signs for this URI
    try:
        MlflowClient(uri).get_run(run_id)
    except MlflowException:
        return False
    return True


def earlier_runs(checkpoint_dir: Path, identity: str) -> dict[str, str]:
    """The tracker runs a run of this identity began (remember), for its resumption; {} if none."""
    import json

    from project.core.identity import tracker_runs_name

    path = checkpoint_dir / tracker_runs_name(identity)
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):  # none kept, or half-written: the resumed run starts new tracker runs
        return {}


def remember(trainer: Any, checkpoint_dir: Path, identity: str) -> None:
    """Keep this run's MLflow and W&B run ids beside its checkpoints, for a resumption (earlier_runs)."""
    import json

    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    from project.core.atomic import write_atomically
    from project.core.identity import tracker_runs_name

    ids: dict[str, str] = {}
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            ids |= {RUN_ID_KEY: str(logger.run_id), MLFLOW_URI_KEY: str(logger.experiment.tracking_uri)}
        elif isinstance(logger, WandbLogger):
            ids[WANDB_RUN_ID_KEY] = str(logger.experiment.id)
    if ids:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(checkpoint_dir / tracker_runs_name(identity), json.dumps(ids))


def run_tags(config_hash: str, job_name: str | None) -> dict[str, str]:
    """What an MLflow run carries to find it again: the config hash, and a SageMaker job's name and code commit."""
    tags = {"config-hash": config_hash}
    if job_name:
        tags["sagemaker-job"] = job_name
    if os.environ.get(GIT_SHA_ENV):
        tags["git-sha"] = os.environ[GIT_SHA_ENV]
    return tags


def log_config(trainer: Any, cfg: Any, earlier: Mapping[str, str] | None = None) -> None:
    """The resolved config as params (nested keys joined by '/'), before fitting. An MLflow run resumed
    (`earlier`) has them from its start: MLflow refuses a param's value changed, and what is not part
    of the run's identity (its loggers, its paths) may have."""
    from omegaconf import OmegaConf
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger) and logger.run_id == (earlier or {}).get(RUN_ID_KEY):
            logger.experiment.update_run(logger.run_id, status="RUNNING")  # it was left FAILED or KILLED
        elif isinstance(logger, MLFlowLogger | WandbLogger):
            logger.log_hyperparams({"config": params})


def finish(trainer: Any, metrics: Mapping[str, Any], files: list[Path]) -> dict[str, str]:
    """The final metrics and the run's files (model.ts, plots) to MLflow and W&B; returns their run ids
    ({mlflow_run_id: ..., wandb_run_id: ...}) for the trackers that logged."""
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    final = {f"final/{k}": float(v) for k, v in numbers.items()}
    recorded: dict[str, str] = {}
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            logger.log_metrics(final, step=trainer.global_step)
            for path in files:
                if path.is_file():
                    logger.experiment.log_artifact(logger.run_id, str(path))
            logger.finalize("success")
            recorded[RUN_ID_KEY] = str(logger.run_id)
        elif isinstance(logger, WandbLogger):
            recorded[WANDB_RUN_ID_KEY] = _finish_wandb(logger.experiment, final, files)
    return recorded


def _finish_wandb(run: Any, final: Mapping[str, float], files: list[Path]) -> str:
    """The final metrics into the W&B run's summary, the files as one artifact of type `model`; the run ends."""
    import wandb

    run.summary.update(dict(final))
    artifact = wandb.Artifact(f"{run.name or run.id}-model", type="model")
    for path in files:
        if path.is_file():
            artifact.add_file(str(path))
    run.log_artifact(artifact)
    run_id = str(run.id)
    run.finish()
    # finish() returns before W&B's service has written the offline run's file out; teardown waits for
    # it, so the run folder is complete when metrics.json says the run is (and a sync may read it).
    wandb.teardown()
    return run_id
