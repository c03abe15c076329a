"""Experiment trackers: the Lightning loggers a run's `logger` group chooses (conf/logger/).

Whatever is chosen, the run also writes output/metrics.csv (CSVLogger): the learning-curve plot and
`invoke runs` read it. TensorBoard writes under output/tensorboard/; MLflow gets the resolved config as
params, every scalar Lightning logs (per step and per epoch), the final metrics and, once the run is
written, model.ts and the plots as artifacts; its run id goes into metrics.json (`mlflow_run_id`).
W&B (offline by default) writes under output/wandb/.

`check` runs before anything is built: a tracker package that is not installed, or an MLflow tracking
URI that no server answers, is one line and no run folder. mlflow and wandb are imported only here,
inside the functions, and only when chosen.
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

MLFLOW_INSTALL = "pip install -r requirements-tracking.txt"
# A SageMaker managed MLflow tracking server, as Terraform outputs it (mlflow_tracking_server_arn).
SAGEMAKER_MLFLOW_ARN = re.compile(r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:mlflow-tracking-server/[A-Za-z0-9-]+$")
LOCAL_MLRUNS = "mlruns"  # logger.mlflow.tracking_uri=null: this folder where the run starts
STORE_FILE = "mlflow.db"  # a folder's MLflow store: SQLite, its artifacts beside it
ANSWER_SECONDS = 10  # an MLflow server that has not answered /health by then is taken as absent
RUN_ID_KEY = "mlflow_run_id"  # metrics.json's key for the run's MLflow run


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
        need("wandb", "logger=wandb", "pip install wandb")


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


def build(cfg: Any, output_dir: Path, run_name: str, tags: Mapping[str, str], in_container: bool) -> list[Any]:
    """The run's Lightning loggers: the chosen trackers, and the CSV the plots read, always."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    loggers = chosen(cfg)
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
        from pytorch_lightning.loggers import MLFlowLogger

        settings = loggers["mlflow"]
        uri = tracking_uri(settings["tracking_uri"], output_dir, in_container)
        folder = local_store(settings["tracking_uri"], output_dir, in_container)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        if not uri.startswith("arn:"):  # sagemaker-mlflow's header plugin warns on every request to any other URI
            logging.getLogger("mlflow.tracking.request_header.registry").setLevel(logging.ERROR)
        built.append(
            MLFlowLogger(
                experiment_name=settings["experiment_name"],
                run_name=run_name,
                tracking_uri=uri,
                tags=dict(tags),
                artifact_location=artifact_location(settings["tracking_uri"], output_dir, in_container),
            )
        )
    if "wandb" in loggers:
        from pytorch_lightning.loggers import WandbLogger

        settings = loggers["wandb"]
        built.append(
            WandbLogger(
                name=run_name, project=settings["project"], mode=settings["mode"], save_dir=str(output_dir), tags=[]
            )
        )
    return built


def run_tags(config_hash: str, job_name: str | None) -> dict[str, str]:
    """What an MLflow run carries to find it again: the config hash, and a SageMaker job's name and code commit."""
    tags = {"config-hash": config_hash}
    if job_name:
        tags["sagemaker-job"] = job_name
    if os.environ.get(GIT_SHA_ENV):
        tags["git-sha"] = os.environ[GIT_SHA_ENV]
    return tags


def log_config(trainer: Any, cfg: Any) -> None:
    """The resolved config as params (nested keys joined by '/'), before fitting."""
    from omegaconf import OmegaConf
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger | WandbLogger):
            logger.log_hyperparams({"config": params})


def finish(trainer: Any, metrics: Mapping[str, Any], files: list[Path]) -> dict[str, str]:
    """The final metrics and the run's files (model.ts, plots) to MLflow; returns {mlflow_run_id: ...} if it logged."""
    from pytorch_lightning.loggers import MLFlowLogger

    recorded: dict[str, str] = {}
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            final = {
                f"final/{k}": float(v)
                for k, v in metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            logger.log_metrics(final, step=trainer.global_step)
            for path in files:
                if path.is_file():
                    logger.experiment.log_artifact(logger.run_id, str(path))
            logger.finalize("success")
            recorded[RUN_ID_KEY] = str(logger.run_id)
    return recorded
