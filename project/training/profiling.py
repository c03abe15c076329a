"""Where a training step's time goes: every run's step clock, and torch.profiler over a window of steps.

`StepClock` (every run): the mean milliseconds of a training step and of the wait for its batch
over each epoch, which reporting.MetricLines prints as `step_time_ms` and `data_wait_ms` and a
SageMaker job's metric definitions scrape (CloudWatch then shows throughput and input stalls).
A step runs from the previous step's end to this one's; its data wait from the previous step's
end to this batch's start, where Lightning fetches the batch. Host clocks, no device sync: on a
GPU a step's mean still shows, as the host waits on the device's queue.

`StepProfiler` (`trainer.profile=true`): torch.profiler over the optimizer steps [start, end)
of `trainer.profile_steps` only, its trace written where TensorBoard's profiler plugin reads it
(output/tensorboard/plugins/profile/<run>/, by torch.profiler.tensorboard_trace_handler), and at
the end a table: per step the wait for data, forward+backward, the optimizer, and the step as
the profiler measured it (its ProfilerStep range), then the top operators. The phases are taken
with the device synchronised at each boundary, inside the window only.

SageMaker Debugger and its profiler are off in every job (project/aws/sdk.py): this replaces them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

PROFILE_FOLDER = Path("tensorboard") / "plugins" / "profile"  # under the run's output/
TOP_OPERATORS = 8


class StepClock(pl.Callback):
    """The epoch's mean step time and data wait, in milliseconds (rank 0's process)."""

    def __init__(self) -> None:
        self._last: float | None = None
        self.steps = 0
        self.step_seconds = self.wait_seconds = 0.0

    def _restart(self) -> None:
        self._last = time.perf_counter()
        self.steps, self.step_seconds, self.wait_seconds = 0, 0.0, 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restart()  # resumed mid-epoch: no on_train_epoch_start for that epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restart()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if self._last is not None:
            self.wait_seconds += time.perf_counter() - self._last

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.step_seconds += now - self._last
            self.steps += 1
        self._last = now

    def means_ms(self) -> dict[str, float]:
        """`step_time_ms` and `data_wait_ms` of the epoch so far (empty before its first step)."""
        if not self.steps:
            return {}
        return {
            "step_time_ms": round(1000 * self.step_seconds / self.steps, 2),
            "data_wait_ms": round(1000 * self.wait_seconds / self.steps, 2),
        }


@dataclass
class StepPhases:
    step: int
    data_ms: float
    forward_backward_ms: float
    optimizer_ms: float
    measured_ms: float | None = None  # the profiler's ProfilerStep range of this step

    @property
    def phases_ms(self) -> float:
        return self.data_ms + self.forward_backward_ms + self.optimizer_ms


class StepProfiler(pl.Callback):
    """torch.profiler over optimizer steps [start, end); the trace in `trace_dir`, the table at the end.

    The profiler starts when step start-1 ends (so step start's batch fetch is inside it) and
    stops after step end-1; `prof.step()` at each step's end marks the ProfilerStep ranges.
    """

    def __init__(
        self, start: int, end: int, trace_dir: Path, say: Callable[[str], None] = print, worker: str = "rank0"
    ) -> None:
        self.start, self.end, self.trace_dir, self.worker = start, end, trace_dir, worker
        self.say = say  # prints the table (reporting.print_line: above a progress bar)
        self.rows: list[StepPhases] = []
        self.operators: list[tuple[str, float, int]] = []  # (name, self ms, calls)
        self.trace_file: Path | None = None
        self._prof: Any = None
        self._marks: dict[str, float] = {}
        self._cuda = False

    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _begin(self, trainer: pl.Trainer) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        self._cuda = trainer.strategy.root_device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self._cuda else [])
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        steps = self.end - self.start
        with warnings.catch_warnings():  # warmup=0: the window is chosen past the first steps' warm-up already
            warnings.filterwarnings("ignore", message=".*[Ww]armup.*")
            self._prof = profile(
                activities=activities,
                schedule=schedule(wait=0, warmup=0, active=steps, repeat=1),
                on_trace_ready=self._ready(tensorboard_trace_handler(str(self.trace_dir), worker_name=self.worker)),
            )
            self._prof.start()
        self._marks = {"end": self._now()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.max_epochs * trainer.num_training_batches if trainer.max_epochs else None
        if last is not None and self.end > last:  # before a step has run or a checkpoint is written
            from project.core.errors import UserError

            raise UserError(
                f"trainer.profile_steps=[{self.start}, {self.end}] ends past the run's last step ({int(last)}: "
                f"{trainer.num_training_batches} steps x {trainer.max_epochs} epochs); choose an earlier window "
                "or train longer"
            )
        if self.start == 0 and trainer.global_step == 0 and trainer.is_global_zero:
            self._begin(trainer)

    def _active(self, trainer: pl.Trainer) -> bool:
        return self._prof is not None and self.start <= trainer.global_step < self.end

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        if self._active(trainer):
            self._marks["batch"] = self._now()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._active(trainer):
            self._marks["optimizer"] = self._now()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        step = trainer.global_step - 1  # the optimizer step that just ended
        if self._prof is None:
            if step == self.start - 1 and not self.rows:
                self._begin(trainer)
            return
        now = self._now()
        m = self._marks
        if "batch" in m and "optimizer" in m:
            self.rows.append(
                StepPhases(
                    step=step,
                    data_ms=1000 * (m["batch"] - m["end"]),
                    forward_backward_ms=1000 * (m["optimizer"] - m["batch"]),
                    optimizer_ms=1000 * (now - m["optimizer"]),
                )
            )
        self._marks = {"end": now}
        self._prof.step()  # closes this step's ProfilerStep range; after the last, the trace is written
        if step + 1 >= self.end:
            self._finish()

    def _ready(self, write: Any) -> Any:
        def ready(prof: Any) -> None:  # the window's end: the trace written, then read for the table
            write(prof)
            self._collect(prof)

        return ready

    def _finish(self) -> None:
        prof, self._prof = self._prof, None
        prof.stop()  # a window cut short: its trace is written and read now
        traces = sorted(self.trace_dir.glob("*.pt.trace.json"), key=lambda p: p.stat().st_mtime)
        self.trace_file = traces[-1] if traces else None

    def _collect(self, prof: Any) -> None:
        # Each step's ProfilerStep range (named "ProfilerStep*" in the events), in the order they ran.
        spans = sorted(
            (e.time_range.start, e.time_range.elapsed_us()) for e in prof.events() if e.name.startswith("ProfilerStep")
        )
        for row, (_, us) in zip(self.rows, spans, strict=False):
            row.measured_ms = us / 1000
        key = "self_cuda_time_total" if self._cuda else "self_cpu_time_total"
        averages = [a for a in prof.key_averages() if not a.key.startswith("ProfilerStep")]
        averages.sort(key=lambda a: getattr(a, key), reverse=True)
        self.operators = [(a.key, getattr(a, key) / 1000, a.count) for a in averages[:TOP_OPERATORS]]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._prof is not None:  # the run ended inside the window (a stop, or fewer steps than planned)
            self._finish()
        if trainer.is_global_zero and self.rows:
            self.say(self.table())

    def table(self) -> str:
        """Per step: data wait, forward+backward, optimizer, their sum and the profiler's step; the top operators."""
        head = f"{'step':>6} {'data ms':>9} {'fwd+bwd ms':>11} {'optim ms':>9} {'sum ms':>9} {'profiler ms':>12}"
        lines = [f"profile of steps {self.start}-{self.end - 1} (trace {self.trace_file or self.trace_dir}):", head]
        for r in self.rows:
            measured = f"{r.measured_ms:12.2f}" if r.measured_ms is not None else f"{'-':>12}"
            lines.append(
                f"{r.step:>6} {r.data_ms:9.2f} {r.forward_backward_ms:11.2f} {r.optimizer_ms:9.2f} "
                f"{r.phases_ms:9.2f} {measured}"
            )
        n = len(self.rows)
        lines.append(
            f"{'mean':>6} {sum(r.data_ms for r in self.rows) / n:9.2f} "
            f"{sum(r.forward_backward_ms for r in self.rows) / n:11.2f} "
            f"{sum(r.optimizer_ms for r in self.rows) / n:9.2f} {sum(r.phases_ms for r in self.rows) / n:9.2f}"
        )
        device = "CUDA" if self._cuda else "CPU"
        lines.append(f"top operators by self {device} time over the window:")
        lines += [f"  {ms:10.2f} ms  {calls:6d} calls  {name}" for name, ms, calls in self.operators]
        return "\n".join(lines)


def callbacks(cfg: Any, output_dir: Path, run_name: str, say: Callable[[str], None] = print) -> list[pl.Callback]:
    """The profiler of a run with trainer.profile=true (none otherwise); `say` prints its table."""
    if not cfg.trainer.profile:
        return []
    start, end = (int(n) for n in cfg.trainer.profile_steps)
    return [StepProfiler(start, end, output_dir / PROFILE_FOLDER / run_name, say)]
