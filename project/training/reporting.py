"""What a run reports while it trains: the console lines, the loggers' per-step series, epoch numbers.

The console of `invoke local`, `python -m project.training.train` and a SageMaker job (CloudWatch) shows
one start line, one `name=value` line per epoch (SageMaker's metric regexes scrape it), the final
metrics and the run folder. In a terminal Lightning's progress bar runs; in a log without one a
progress line appears at most every PROGRESS_INTERVAL_SECONDS, so a long epoch is not silence.
Lightning's own info messages (device banners, tips for its cloud products) and the model summary
appear only with LIGHTNING_SAGEMAKER_DEBUG=1 (runtime.DEBUG_ENV).

Epochs are 1-based wherever a user sees them: the progress bar, the metric lines, the `epoch`
column of metrics.csv and TensorBoard's `epoch` series, the plots.

This module is over 300 lines because it is one concern, what a run prints and logs while it trains, in one
line format.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import convert_inf

from project.core import startup
from project.core.config import TOOL_METRICS
from project.core.runtime import debug_enabled, progress_interval
from project.training.profiling import StepClock

PROGRESS_INTERVAL_SECONDS = 30.0  # without a terminal: often enough to show life, rare enough to read
STEP_LOSS = "train_loss_step"  # mean training loss over the steps since the previous point
LEARNING_RATE = "lr"  # the one-cycle schedule's value at the step
FINAL_METRICS = ("test_loss", "test_acc", "val_loss", "val_acc", "train_loss", "train_acc")


def quiet_lightning(debug: bool | None = None) -> None:
    """Lightning's INFO channel off unless debugging: GPU/TPU banners, "Tip: ... litlogger/litmodels"
    advertising, "`Trainer.fit` stopped" and the like (rank_zero_info, all through these loggers).
    The start line says what matters of it. Warnings still show."""
    level = logging.INFO if (debug_enabled() if debug is None else debug) else logging.WARNING
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(level)
    # TensorBoard's folder sits beside metrics.csv in output/: the CSV logger's warning about a
    # non-empty directory is expected there and would only alarm users.
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    # Lightning's own use of a torch API torch deprecated: nothing a user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in sorted(metrics.items())}


def batch_samples(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor (an (inputs, targets) pair, a dict or a tensor)."""
    first = next(iter(batch.values()), None) if isinstance(batch, Mapping) else batch
    first = first[0] if isinstance(first, (list, tuple)) and first else first
    return len(first) if isinstance(first, Sized) else 0


def print_line(text: str) -> None:
    """A line on stdout; in a terminal, above Lightning's progress bar rather than through it."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _epochs(trainer: pl.Trainer) -> str:
    """`N/M` of the epoch running now (1-based); `N` when the run has no epoch limit."""
    epoch = trainer.current_epoch + 1
    return f"{epoch}/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else str(epoch)


def describe_devices(trainer: pl.Trainer) -> str:
    root = trainer.strategy.root_device
    name = torch.cuda.get_device_name(root) if root.type == "cuda" else root.type
    where = f"{trainer.num_devices} x {name}" if trainer.num_devices > 1 else name
    if trainer.num_nodes > 1:
        where += f" on each of {trainer.num_nodes} nodes"
    return f"{where} (world size {trainer.world_size}, precision {trainer.precision})"


def split_sizes(datamodule: Any) -> str:
    """`500 train, 100 val, 200 test` of a datamodule with `splits` (IdxDataModule)."""
    splits = getattr(datamodule, "splits", None)
    if splits is None:
        return "sizes unknown"
    if "test" not in splits:
        datamodule.setup("test")  # loaded now rather than at trainer.test, so this line can count it
    return ", ".join(f"{len(split)} {name}" for name, split in datamodule.splits.items())


class StartLine(pl.Callback):
    """`run <name>: <model>, <epochs> on <devices>; data <source>: <split sizes>` once, on rank 0."""

    def __init__(self, run_name: str):
        self.run_name = run_name
        self._network = ""  # `<class> (<count> parameters)`

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before the strategy wraps the module: under FSDP the network is then a wrapper holding one shard.
        if stage != "fit":
            return
        net = getattr(pl_module, "net", pl_module)
        self._network = f"{type(net).__name__} ({_count(sum(p.numel() for p in net.parameters()))} parameters)"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by fit(datamodule=...)
        source = getattr(datamodule, "source", None) or getattr(datamodule, "data_dir", "?")
        print_line(
            f"run {self.run_name}: {self._network}, {trainer.max_epochs} epochs "
            f"on {describe_devices(trainer)}; data {source}: {split_sizes(datamodule)}"
        )


class MetricLines(pl.Callback):
    """Each epoch's line: `epoch=N/M name=value ... seconds=S` (SageMaker's regexes scrape the values:
    `epoch=2/3` reads as epoch 2). S is the epoch's wall time, validation included.

    `declared`: the names SageMaker's metric definitions scrape (config.metric_names); after the
    first epoch a one-line warning names those it did not log (test_* ones are logged by the test
    pass, later), since their job metrics would stay empty.
    """

    def __init__(self, declared: Sequence[str] = (), clock: StepClock | None = None) -> None:
        self._started = time.perf_counter()
        self.declared, self._checked = list(declared), False
        self.clock = clock  # its step_time_ms and data_wait_ms join the line

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = scalars(trainer.callback_metrics)  # under DDP a collective (metric sync): all ranks
        if trainer.is_global_zero and not trainer.sanity_checking:
            metrics.pop("epoch", None)  # EpochNumbers' value, already the first field
            seconds = round(time.perf_counter() - self._started, 1)
            steps = self.clock.means_ms() if self.clock is not None else {}
            print_line(format_metrics({"epoch": _epochs(trainer), **metrics, **steps, "seconds": seconds}))
            if not self._checked:
                self._checked = True
                warn_unlogged(self.declared, [*metrics, *TOOL_METRICS], skip_prefix="test_")


def warn_unlogged(declared: Sequence[str], logged: Sequence[str], skip_prefix: str | None = None) -> None:
    """One warning line naming the declared metric names that were not logged."""
    never = [n for n in declared if n not in logged and not (skip_prefix and n.startswith(skip_prefix))]
    if never:
        print(
            f"warning: model.metrics declares {', '.join(never)}, which the run did not log; it logged "
            f"{', '.join(sorted(logged))} (SageMaker's job metrics scrape only declared names: fix model.metrics)",
            file=sys.stderr,
            flush=True,
        )


class EpochNumbers(pl.Callback):
    """The `epoch` that Lightning adds to each logged row is trainer.current_epoch, 0-based; logging
    `epoch` ourselves replaces it (the logger connector only sets it by default), so metrics.csv
    and TensorBoard count epochs from 1 like the console. A test row keeps Lightning's value, the
    number of epochs trained, which is the last epoch's number (logging it would also put it among
    trainer.test's results, hence metrics.json)."""

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("epoch", float(trainer.current_epoch + 1), on_step=False, on_epoch=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module)


class StepSeries(pl.Callback):
    """The training loss and learning rate every `every_n_steps` steps, for the plots and
    TensorBoard. Written to the loggers directly rather than by `self.log(on_step=True)`, whose
    bookkeeping runs on every step: here a step costs one tensor add on the device, and reading the
    loss back (a GPU sync) happens once per point. The loss is rank 0's, averaged over the steps
    since the previous point, so no step is skipped; the step numbers are Lightning's (a point
    after k optimizer steps is step k - 1, as in its own rows)."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self._loss_sum: torch.Tensor | None = None
        self._steps = 0
        self._lr = math.nan

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if trainer.is_global_zero and trainer.optimizers:
            self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # the rate this step uses

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        self._loss_sum = loss.detach() if self._loss_sum is None else self._loss_sum + loss.detach()
        self._steps += 1
        if trainer.global_step % self.every_n_steps:
            return
        point = {
            "epoch": float(trainer.current_epoch + 1),  # as Lightning's rows (a float after its reduction)
            STEP_LOSS: float(self._loss_sum) / self._steps,
            LEARNING_RATE: self._lr,
        }
        self._loss_sum, self._steps = None, 0
        for logger in trainer.loggers:
            logger.log_metrics(point, step=trainer.global_step - 1)


class ProgressLines(pl.Callback):
    """Without a terminal (CloudWatch, nohup, CI): `epoch 1/3 step 120/215 (56%): 2,345 samples/s,
    epoch ETA 42 s` at most every `interval` seconds inside an epoch, on rank 0. Not `name=value`,
    so SageMaker's metric regexes leave it alone."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.interval, self._clock = interval, clock
        self._started = self._last = 0.0
        self._batches = self._samples = 0

    def _restart(self) -> None:
        self._started = self._last = self._clock()
        self._batches = self._samples = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed mid-epoch gets no on_train_epoch_start for that epoch: the rate and the ETA
        # count from here, over the steps this process trains, not from the clock's zero.
        self._restart()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restart()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        self._batches += 1
        self._samples += batch_samples(batch) * trainer.world_size
        now = self._clock()
        total = trainer.num_training_batches
        if now - self._last < self.interval or batch_idx + 1 >= total:
            return  # the epoch's own line follows its last step
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        line = f"epoch {_epochs(trainer)} step {batch_idx + 1}"
        if math.isfinite(total):
            eta = (total - batch_idx - 1) * elapsed / self._batches
            line += f"/{int(total)} ({(batch_idx + 1) / total:.0%})"
        line += f": {self._samples / elapsed:,.0f} samples/s"
        if math.isfinite(total):
            line += f", epoch ETA {_duration(eta)}"
        print_line(line)


class EpochBar(TQDMProgressBar):
    """Lightning's bar, saying `Epoch 1/3` where it says `Epoch 0`. Its hook again rather than a call
    to it: that draws `Epoch 0` once before a later description could replace it."""

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=convert_inf(self.total_train_batches))
        self.train_progress_bar.initial = 0
        self.train_progress_bar.set_description(f"Epoch {_epochs(trainer)}")


class StartupMarks(pl.Callback):
    """The phases inside `trainer.fit` up to the first optimizer step, for project.core.startup's trace
    and a job's log."""

    def __init__(self) -> None:
        self.started_at_step: int | None = None  # the global step at the fit's start, until its first step

    def setup(self, trainer, pl_module, stage: str) -> None:
        startup.mark("data_loaded")  # Lightning calls the DataModule's setup first

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        startup.mark("sanity_start")

    def on_train_start(self, trainer, pl_module) -> None:
        startup.mark("train_start")
        self.started_at_step = trainer.global_step  # a resumed run starts past 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (
            self.started_at_step is not None and trainer.global_step > self.started_at_step
        ):  # after this run's first optimizer step
            self.started_at_step = None
            if trainer.local_rank == 0:  # each host's first process (one host: the global zero)
                threads = {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}
                startup.mark("first_step", **threads)


def callbacks(run_name: str, terminal: bool, log_every_n_steps: int, declared: Sequence[str] = ()) -> list[pl.Callback]:
    """The reporting callbacks of a run; `terminal`: stderr is a TTY (the bar) or a log (lines);
    `declared`: the metric names a SageMaker job scrapes."""
    progress: pl.Callback = EpochBar() if terminal else ProgressLines(progress_interval(PROGRESS_INTERVAL_SECONDS))
    marks = [StartupMarks()] if startup.wanted() else []
    clock = StepClock()
    return [
        StartLine(run_name),
        EpochNumbers(),
        StepSeries(log_every_n_steps),
        clock,
        MetricLines(declared, clock),
        progress,
        *marks,
    ]


def format_metrics(metrics: dict[str, Any]) -> str:
    """`name=value` pairs: what SageMaker's metric regexes scrape from the log."""
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def final_line(metrics: Mapping[str, Any]) -> str:
    """`done: test_loss=... test_acc=... (E epochs, S steps, fit T s, R samples/s)`"""
    rate = metrics.get("train_samples_per_second")
    tests = {k: v for k, v in metrics.items() if k.startswith("test_")}  # every test scalar, the loss first
    return (
        f"done: {format_metrics(dict(sorted(tests.items(), key=lambda item: item[0] != 'test_loss')))} "
        f"({metrics.get('epochs')} epochs, {metrics.get('global_steps')} steps, fit {metrics.get('fit_seconds')} s"
        + (f", {rate:,.0f} samples/s)" if rate else ")")
    )


def run_hparams(cfg: Any) -> dict[str, Any]:
    """What TensorBoard's HPARAMS tab compares runs by: the model and trainer config, the dataset."""
    from omegaconf import OmegaConf

    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
        "dataset": {
            "name": cfg.dataset.name,
            **({"val_size": cfg.dataset.val_size} if "val_size" in cfg.dataset else {}),
        },
    }


def log_final_hparams(trainer: pl.Trainer, cfg: Any, metrics: Mapping[str, Any]) -> None:
    """The run's hparams with its final metrics (TensorBoard's HPARAMS tab; no `hp_metric` placeholder:
    the logger is built with default_hp_metric=False). After trainer.test, which closed the writer."""
    from pytorch_lightning.loggers import TensorBoardLogger

    # Under their own names: the curves of the same metrics get no extra point.
    final = {f"final/{name}": float(metrics[name]) for name in FINAL_METRICS if metrics.get(name) is not None}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(run_hparams(cfg), final, step=trainer.global_step)
            logger.finalize("success")
