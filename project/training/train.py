"""Train a Lightning model from a Hydra config, on a laptop, a bare-metal GPU box or SageMaker.

Run it:
    python -m project.training.train trainer.max_epochs=1 dataset.channels.train=../shared/data/mnist
    python -m project.training.train --config runs/<run>/model/config.yaml      # rebuild a composed run

Inside a SageMaker training container (SM_* variables set) it reads the resolved config that
travelled with the job, the data channel, SM_MODEL_DIR, SM_OUTPUT_DATA_DIR and
/opt/ml/checkpoints; everything else is identical.

This module is over 300 lines because it is one run's whole path, from the Trainer built to the artifacts
written, and the three ways a process enters it (a SageMaker job, a saved config, overrides); its process
plumbing is project/core/process.py.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from project.core import config as config_lib
from project.core import process, startup
from project.core.atomic import write_atomically
from project.core.errors import INTERRUPTED_EXIT, USER_ERROR_EXIT, UserError
from project.core.identity import CHECKPOINT_FILE, choose_run, default_run_name, finished_name, run_identity
from project.core.runtime import (
    RunLayout,
    SageMakerEnv,
    check_room,
    check_writable,
    container_layout,
    debug_enabled,
    discard_unless_resumable,
    launched_processes,
    local_layout,
    sagemaker_env,
    whole_lines,
)
from project.core.topology import Topology, decide
from project.serving import archive as serving
from project.training import (
    artifacts,
    heartbeat,
    init_from,
    local,
    modules,
    profiling,
    reporting,
    sharding,
    stalls,
    tracking,
)
from project.training.checkpoints import RunCheckpoints, newest_valid, run_bytes
from project.training.reporting import scalars as _scalars
from project.training.resolve import Resolved, resolve
from project.training.stops import Interrupted, Interrupts, stop_exit

log = logging.getLogger(__name__)


class LoopTimer(pl.Callback):
    """Seconds of the training loop proper and the samples it trained on (this process's epochs).

    An epoch's clock runs from its start to its validation (or its end): the optimizer steps,
    batch slicing and periodic checkpoints, not start-up, the sanity check, validation or the
    end-of-epoch checkpoint. On a GPU the clock waits for the device's queued work.
    """

    def __init__(self):
        self.seconds, self.samples = 0.0, 0
        self._started: float | None = None

    @staticmethod
    def _now(trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def _stop(self, trainer) -> None:
        if self._started is not None:
            self.seconds += self._now(trainer) - self._started
            self._started = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = self._now(trainer)  # resumed mid-epoch, that epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started = self._now(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples += reporting.batch_samples(batch) * trainer.world_size

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop(trainer)


def build_run(
    cfg: Any,
    layout: RunLayout,
    data: Resolved,
    topology: Topology,
    run_name: str = "",
    earlier_trackers: Mapping[str, str] | None = None,
):
    """The Trainer, LightningModule and DataModule of one run, as train() builds them before fitting.

    `data`: the run's data as resolved (project.training.resolve.resolve); `topology` the run's devices and
    nodes (project.core.topology.decide); `earlier_trackers`: the MLflow and W&B runs a resumed run
    goes on logging to (tracking.earlier_runs). Public for the benchmarks, which drive the very
    objects a run trains with.
    """
    t, sm = cfg.trainer, sagemaker_env()
    module, datamodule = modules.build(cfg, data)
    debug = debug_enabled()
    reporting.quiet_lightning(debug)
    terminal = sys.stderr.isatty()  # a bar in a terminal; in logs and CloudWatch, a line every ~30 s
    devices = topology.trainer_kwargs()
    if topology.sharded:  # the name "fsdp" becomes the configured strategy object
        devices["strategy"] = sharding.strategy(t.fsdp)
    trainer = pl.Trainer(
        **devices,
        max_epochs=t.max_epochs,
        precision=t.precision,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        # IdxDataModule's IndexBatches shard by rank themselves, without padding eval sets; any other
        # DataModule's loaders get Lightning's DistributedSampler under DDP.
        use_distributed_sampler=not getattr(datamodule, "shards_by_rank", False),
        enable_progress_bar=terminal,
        enable_model_summary=debug,  # the start line gives the parameter count
        enable_checkpointing=False,  # RunCheckpoints below, keyed by run identity
        default_root_dir=str(layout.output_dir),
        # the chosen trackers (conf/logger/) and the CSV the plots read
        logger=tracking.build(
            cfg,
            layout.output_dir,
            run_name or cfg.run_name or cfg.model.name,
            tracking.run_tags(run_identity(cfg), sm.job_name if sm else None),
            in_container=sm is not None,
            earlier=earlier_trackers,
        ),
        callbacks=[
            LoopTimer(),
            *reporting.callbacks(
                run_name or cfg.run_name or cfg.model.name, terminal, t.log_every_n_steps, config_lib.metric_names(cfg)
            ),
            RunCheckpoints(layout.checkpoint_dir, run_identity(cfg), t.checkpoint_every_n_steps, topology),
            heartbeat.Progress(),  # each batch and phase, for the watchdog (project/training/watchdog.py)
            *profiling.callbacks(
                cfg, layout.output_dir, run_name or cfg.run_name or cfg.model.name, reporting.print_line
            ),
        ],
    )
    return trainer, module, datamodule


def train(
    cfg: Any,
    layout: RunLayout,
    run_name: str,
    sources: Mapping[str, Path] | None = None,
    num_nodes: int = 1,
    data: Resolved | None = None,
) -> dict[str, Any]:
    """Fit, test and export one run; returns the metrics also written to metrics.json.

    `data`: the run's data as a process before this one resolved it (`invoke local`'s check, a local
    sweep's): trusted, not resolved again. Without it the data is resolved here, from `sources`
    (a SageMaker job's channels) or the config."""
    startup.mark("config")  # composed, loaded or rebuilt: the run's config is known
    # First, before anything runs in torch's thread pool: a pool thread copies the flag when it
    # starts, and one started earlier keeps computing with subnormals (half of each CPU kernel's
    # work, at 2 threads) however often the flag is set afterwards.
    torch.set_flush_denormal(bool(cfg.trainer.flush_denormal))
    # A job's staged config holds the number decided when it was planned: here it is checked
    # against the GPUs present, and the processes using them are the launcher's (LOCAL_WORLD_SIZE).
    topology = decide(cfg.trainer, torch.cuda.device_count(), nodes=num_nodes, launched=launched_processes())
    # The data first: a missing folder or a damaged file is one line before anything is built or
    # written. A SageMaker job's cache must stay empty when its channel holds every file. A file
    # verified here (not recorded by an earlier check) is decompressed once, for the check and the parse.
    handed = data is not None
    heartbeat.phase(stalls.DATA)
    if data is None:
        data = resolve(cfg, sources, remember=sagemaker_env() is None, keep=True)
    startup.mark("data_verified", resolved_here=not handed)
    modules.check(cfg)  # a _target_ that does not import, or a wrong argument: one line, nothing written
    modules.sample_pass(cfg)  # a network that cannot take the data's samples: the same
    # logger=mlflow without mlflow installed, or a tracking URI no server answers: the same
    tracking.check(cfg, layout.output_dir, in_container=sagemaker_env() is not None)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    identity = run_identity(cfg)
    resume_from = newest_valid(layout.checkpoint_dir, identity) if cfg.trainer.resume else None
    # resumed: the MLflow and W&B runs it began, which it goes on logging to
    earlier = tracking.earlier_runs(layout.checkpoint_dir, identity) if resume_from else {}
    trainer, module, datamodule = build_run(cfg, layout, data, topology, run_name, earlier)
    parent = init_from.apply(
        cfg, module, say=trainer.is_global_zero
    )  # trainer.init_from: a layer that does not fit is one line, nothing written
    # A disk that fills up fails at the first checkpoint, an epoch in: refused before a folder is made.
    check_room(layout.checkpoint_dir, run_bytes(module), ROOM_ASSUMED, _room_fix())
    layout.create()
    startup.mark("built")
    if trainer.is_global_zero:
        write_atomically(layout.model_dir / config_lib.RESOLVED_CONFIG_NAME, config_lib.to_yaml(cfg))
        tracking.log_config(trainer, cfg, earlier)
        tracking.remember(trainer, layout.checkpoint_dir, identity)  # for a resumption of this run

    if resume_from is not None and trainer.is_global_zero:
        step = int(CHECKPOINT_FILE.match(resume_from.name).group("step"))  # type: ignore[union-attr]  # a candidate's name
        print(f"resuming run {run_name} from step {step} ({resume_from.name})", flush=True)
    started = time.perf_counter()
    heartbeat.phase(stalls.RENDEZVOUS)  # fit joins the other ranks first (Progress takes over)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    fit_seconds = time.perf_counter() - started
    startup.mark("fit_end")
    loop = next(c for c in trainer.callbacks if isinstance(c, LoopTimer))
    fit_metrics = _scalars(trainer.callback_metrics)  # trainer.test replaces callback_metrics
    (test_results,) = trainer.test(module, datamodule=datamodule, verbose=False)
    startup.mark("tested")

    metrics = {
        "run_name": run_name,
        "config_hash": identity,
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "world_size": trainer.world_size,
        "fit_seconds": round(fit_seconds, 3),
        "train_loop_seconds": round(loop.seconds, 4),
        "train_samples_per_second": round(loop.samples / loop.seconds, 1) if loop.seconds else None,
        "resumed_from": resume_from.name if resume_from else None,
        "parent": parent.record() if parent else None,  # trainer.init_from's run and config hash
        **{k: v for k, v in fit_metrics.items() if k != "epoch"},  # whatever the module logged
        **_scalars(test_results),
    }
    heartbeat.phase(stalls.EXPORT)
    whole = sharding.whole_module(trainer, module, cfg)  # fsdp: the shards gathered on rank 0 (every rank takes part)
    if trainer.is_global_zero:
        reporting.warn_unlogged([n for n in config_lib.metric_names(cfg) if n.startswith("test_")], list(metrics))
        reporting.print_line(reporting.final_line(metrics))
        reporting.log_final_hparams(trainer, cfg, metrics)
        _write_artifacts(cfg, layout, trainer, module, whole, datamodule, metrics)
        # Last, beside the checkpoints (SageMaker syncs it to S3 with them): this identity's run
        # finished, so `invoke local` and `invoke train` need not start it again (project/core/identity.py).
        finished = {"run_name": run_name, "global_steps": trainer.global_step, "epochs": trainer.current_epoch}
        write_atomically(layout.checkpoint_dir / finished_name(identity), json.dumps(finished))
    startup.mark("written")
    return metrics


ROOM_ASSUMED = "checkpoints of the weights and an Adam-style optimizer's state, the exported model, logs"


def _room_fix() -> str:
    if sagemaker_env() is not None:
        return "give the job a larger volume with instance.volume_size_gb=..."
    return "free some space, or choose another folder with paths.runs_dir=..."


def _write_artifacts(cfg: Any, layout: RunLayout, trainer, module, whole, datamodule, metrics: dict[str, Any]) -> None:
    """`module` as trained (its test metrics), `whole` its weights unsharded (sharding.whole_module)."""
    example = artifacts.example_input(datamodule)
    if config_lib.is_classifier(cfg) and example is not None and example.dim() == 4:
        # Pixels in, probabilities out, normalisation inside: what `invoke predict` runs.
        mean, std = (
            artifacts.plain_stat(getattr(datamodule, "mean", 0.0)),
            artifacts.plain_stat(getattr(datamodule, "std", 1.0)),
        )
        artifacts.export_model(whole.net, layout.model_dir, list(example.shape[1:]), mean, std)
        matrix = module.test_confusion  # counted during trainer.test: no second pass over the test set
        artifacts.plot_confusion(matrix, layout.output_dir / artifacts.CONFUSION_FILE)
    else:
        artifacts.export_module(whole, layout.model_dir, example)
    # model.tar.gz serves as it is (SageMaker hosting): the handler and what it needs to know.
    shape = [int(n) for n in example.shape[1:]] if example is not None else None
    serving.write_serving_code(layout.model_dir, cfg, shape)
    artifacts.plot_learning_curves(layout.output_dir / "metrics.csv", layout.output_dir / artifacts.CURVES_FILE)
    tracked = [layout.model_dir / serving.TORCHSCRIPT_FILE, *(layout.output_dir / name for name in artifacts.PLOTS)]
    metrics.update(tracking.finish(trainer, metrics, tracked))  # the MLflow and W&B runs' ids, if they logged
    artifacts.write_metrics(metrics, layout.metrics_files)


def run_local(overrides: list[str]) -> dict[str, Any]:
    """What `invoke local` runs: compose, then train under runs/<run-name>/ (the run invoke chose, if it did)
    on the data as invoke's check resolved it (if it did)."""
    cfg = config_lib.compose(overrides)
    return run_composed(cfg, local.chosen_run_name(), local.checked_data())


def run_composed(cfg: Any, run_name: str | None = None, data: Resolved | None = None) -> dict[str, Any]:
    """Train under runs/<run-name>/: `run_name` as chosen already, else as identity.choose_run decides
    (cfg.run_name; without one, the unfinished run of this config, so the same command resumes).
    `data`: the data as a check resolved it (an s3:// channel's copy), else resolved in train()."""
    if not run_name:  # no check chose the run (python -m project.training.train): check what invoke local's check does
        check_writable(Path(cfg.paths.runs_dir), "paths.runs_dir")
        run_name = choose_run(
            run_identity(cfg), cfg.run_name, Path(cfg.paths.runs_dir), lambda: default_run_name(cfg), cfg.trainer.resume
        )
    run_dir = Path(cfg.paths.runs_dir) / run_name
    new = not run_dir.exists()
    try:
        metrics = train(cfg, local_layout(run_dir), run_name, data=data)
    except BaseException:
        if new:
            discard_unless_resumable(run_dir)  # a failed run leaves nothing but its checkpoints
        raise
    print(f"run_dir={run_dir}", flush=True)
    return metrics


def run_in_container(sm: SageMakerEnv, config_path: Path) -> dict[str, Any]:
    """What the SageMaker job runs: the resolved config, channels and /opt/ml paths."""
    cfg = config_lib.load_resolved(config_path)
    cfg.paths.data_dir = str(sm.output_data_dir.parent / "cache")  # only if the channel lacks a file
    return train(
        cfg,
        container_layout(sm),
        run_name=sm.job_name or cfg.run_name or default_run_name(cfg),
        sources=sm.channels,
        num_nodes=len(sm.hosts),
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    startup.mark_process_start()
    if not local.wait_for_go():  # `invoke local`'s check failed while this process imported: it said why
        return 0
    whole_lines()  # every rank of a run enters here
    heartbeat.start()  # progress for the watchdog that started this process, if one did
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config_path = None
    if argv[:1] == ["--config"] and len(argv) > 1:
        config_path, argv = Path(argv[1]), argv[2:]
    try:
        with Interrupts().installed():
            _dispatch(argv, config_path)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        process.record_failure(process.failure_text(exc))
        return USER_ERROR_EXIT
    except Interrupted as stop:
        if not stop.reported:
            print("interrupted before training began; nothing was saved", file=sys.stderr, flush=True)
        return INTERRUPTED_EXIT
    except SIGTERMException as stop:  # it said where it saved (RunCheckpoints)
        return stop_exit(stop, in_container=sagemaker_env() is not None)
    except Exception as exc:
        process.record_failure(process.failure_text(exc))
        raise
    finally:
        process.freeze_for_exit()  # what it wrote was closed already
    return 0


def _dispatch(argv: list[str], config_path: Path | None) -> None:
    """The run this process was started for: a SageMaker job's, a saved config's, or overrides'."""
    sm = sagemaker_env()
    if sm is not None:
        path = config_path or Path(__file__).resolve().parents[2] / config_lib.RESOLVED_CONFIG_NAME  # the bundle's top
        run_in_container(sm, path)
    elif config_path is not None:
        cfg = config_lib.load_resolved(config_path)
        from omegaconf import OmegaConf

        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(argv)) if argv else cfg
        run_composed(cfg, local.chosen_run_name(), local.checked_data())
    else:
        run_local(argv)


if __name__ == "__main__":
    sys.exit(main())
