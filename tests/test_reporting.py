"""What a run shows its user: the console of `invoke local` (in a log and in a terminal), the
progress lines of a long epoch, TensorBoard's event files, metrics.csv and the learning curves."""

import contextlib
import csv
import io
import itertools
import json
import os
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl

from project.core import config as C
from project.core.runtime import DEBUG_ENV, PROGRESS_ENV
from project.training.train import run_composed
from tests.synthetic import tiny_overrides
from tests.test_tasks import invoke

ROOT = Path(__file__).resolve().parent.parent
# Lightning's advertising and banners, debug output, the model summary table, a progress bar.
NOISE = ("Tip", "litlogger", "litmodels", "weights_sha256", "GPU available", "TPU available", "Trainable params")
NOISE += ("`Trainer.fit` stopped", "LeafSpec", "it/s")


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "output" / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_invoke_local_prints_a_start_line_a_line_per_epoch_the_result_and_the_run_folder(tiny_run, tiny_data, tmp_path):
    """In a log (stdout and stderr not a terminal), as CloudWatch, nohup and CI see it. No progress
    line between epochs however slow the machine (they come every 30 s: a test below counts them)."""
    quiet = {**os.environ, PROGRESS_ENV: "3600"}
    result = invoke("local", *tiny_run(run_name="cli", **{"trainer.log_every_n_steps": 2}), env=quiet)
    assert result.returncode == 0, result.stderr[-2000:]
    for noise in NOISE:
        assert noise not in result.stdout + result.stderr, noise
    lines = result.stdout.splitlines()
    assert len(lines) == 5, lines  # start, epoch 1, epoch 2, done, run_dir: nothing else
    start, *epoch_lines, done, run_dir = lines
    folder, _ = tiny_data
    assert start.startswith("run cli: SmallCNN (")
    assert f"2 epochs on cpu (world size 1, precision 32-true); data {folder}: 500 train, 100 val, 200 test" in start
    # One line per epoch, numbered from 1 like metrics.csv's epoch column, with the same values.
    val_rows = {float(row["epoch"]): row for row in csv_rows(tmp_path / "runs" / "cli") if row["val_acc"]}
    assert sorted(val_rows) == [1.0, 2.0]
    for number, line in enumerate(epoch_lines, start=1):
        assert re.fullmatch(
            rf"epoch={number}/2 train_acc=\S+ train_loss=\S+ val_acc=\S+ val_loss=\S+ "
            r"step_time_ms=[\d.]+ data_wait_ms=[\d.]+ seconds=[\d.]+",
            line,
        )
        assert f"val_acc={float(val_rows[number]['val_acc']):.6g} " in line
    metrics = json.loads((tmp_path / "runs" / "cli" / "metrics.json").read_text())
    assert done.startswith(f"done: test_loss={metrics['test_loss']:.6g} test_acc={metrics['test_acc']:.6g} (2 epochs")
    assert run_dir == f"run_dir={tmp_path / 'runs' / 'cli'}"


def read_terminal(command: list[str], timeout: float = 300) -> str:
    """Everything a command writes to a terminal (a pseudo-terminal as its stdin, stdout and stderr)."""
    import fcntl
    import pty
    import termios

    controller, terminal = pty.openpty()
    # 24 x 80, as a terminal window has a size (a bare pseudo-terminal is 0 x 0: tqdm draws nothing there)
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))

    def controlling_terminal() -> None:  # as a terminal's shell has it (invoke asks it for its size)
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        command, cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal, preexec_fn=controlling_terminal
    )
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([controller], [], [], 1.0)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the command closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif process.poll() is not None:
                break
    finally:
        os.close(controller)
        process.wait(timeout=30)
    assert process.returncode == 0, b"".join(chunks)[-2000:]
    return b"".join(chunks).decode(errors="replace")


def test_in_a_terminal_the_progress_bar_counts_epochs_from_one(tiny_run):
    shown = read_terminal([sys.executable, "-m", "invoke", "local", *tiny_run(run_name="tty")])
    assert "Epoch 1/2" in shown and "Epoch 2/2" in shown  # Lightning's bar says "Epoch 0" for the first
    assert not re.search(r"Epoch 0\b", shown)
    assert "epoch=1/2 " in shown and "Tip" not in shown


def tiny_fit(datamodule_args: dict, callbacks: list, epochs: int = 1) -> None:
    from project.training.data import IdxDataModule
    from project.training.models import LitClassifier, SmallCNN

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(LitClassifier(SmallCNN(width=4)), datamodule=IdxDataModule(**datamodule_args))


def test_progress_lines_come_at_most_every_interval(tiny_data, tmp_path, capsys):
    """A clock that advances 10 s a reading and a 25 s interval: a line every third step, none at the
    epoch's last step (its metric line follows)."""
    from project.training.reporting import ProgressLines

    folder, files = tiny_data
    ticks = itertools.count(step=10.0)
    data = {"data_dir": str(folder), "files": files, "cache_dir": str(tmp_path / "cache"), "batch_size": 50}
    tiny_fit({**data, "val_size": 100}, [ProgressLines(interval=25, clock=lambda: next(ticks))])
    assert capsys.readouterr().out.splitlines() == [  # 10 batches of 50 images, 30 s per 3 batches
        "epoch 1/1 step 3/10 (30%): 5 samples/s, epoch ETA 1:10",
        "epoch 1/1 step 6/10 (60%): 5 samples/s, epoch ETA 40 s",
        "epoch 1/1 step 9/10 (90%): 5 samples/s, epoch ETA 10 s",
    ]


def test_a_run_without_a_terminal_gets_progress_lines_and_no_bar(composed, tiny_run, tmp_path):
    from project.core.runtime import local_layout
    from project.core.topology import decide
    from project.training.reporting import EpochBar, ProgressLines
    from project.training.resolve import resolve
    from project.training.train import build_run

    assert not sys.stderr.isatty()  # pytest captures it
    cfg = composed(*tiny_run(run_name="wired"))
    layout = local_layout(tmp_path / "runs" / "wired")
    trainer, _, _ = build_run(cfg, layout, resolve(cfg), decide(cfg.trainer, available=0))
    kinds = [type(callback) for callback in trainer.callbacks]
    assert ProgressLines in kinds and EpochBar not in kinds and trainer.progress_bar_callback is None
    assert [c.interval for c in trainer.callbacks if isinstance(c, ProgressLines)] == [30.0]


@pytest.fixture(scope="module")
def debug_run(tiny_data, tmp_path_factory):
    """A tiny run with LIGHTNING_SAGEMAKER_DEBUG=1 and a loss/lr point every 2 of its 16 steps:
    (run folder, metrics, what it printed)."""
    folder, files = tiny_data
    runs = tmp_path_factory.mktemp("debug") / "runs"
    cfg = C.compose(tiny_overrides(folder, files, runs, run_name="tb", **{"trainer.log_every_n_steps": 2}))
    os.environ[DEBUG_ENV] = "1"
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            metrics = run_composed(cfg)
    finally:
        del os.environ[DEBUG_ENV]
    return runs / "tb", metrics, printed.getvalue()


def test_the_debug_switch_prints_the_weights_digest(debug_run):
    *_, printed = debug_run
    assert re.search(r"^rank=0 weights_sha256=[0-9a-f]{64}$", printed, re.MULTILINE)


def test_tensorboard_has_the_step_loss_the_learning_rate_epoch_metrics_and_the_real_hparams(debug_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir, metrics, _ = debug_run
    events = EventAccumulator(str(run_dir / "output" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss_step", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "epoch"} <= tags
    assert "hp_metric" not in tags
    # A point every 2 steps; a point after k optimizer steps has Lightning's step number k - 1.
    assert [e.step for e in events.Scalars("train_loss_step")] == list(range(1, 16, 2))
    lr = [e.value for e in events.Scalars("lr")]
    assert len(lr) == 8 and 0 < lr.index(max(lr)) < 7 and lr[-1] < lr[0]  # one cycle: up, then down
    assert [e.step for e in events.Scalars("val_acc")] == [7, 15]  # once per epoch, at its last step
    assert min(e.value for e in events.Scalars("epoch")) == 1.0
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["model/lr"].number_value == pytest.approx(0.03)
    assert hparams["trainer/max_epochs"].number_value == 2 and hparams["dataset/name"].string_value == "mnist"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    final = {f"final/{name}" for name in ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss")}
    assert {info.name.tag for info in experiment.metric_infos} == final
    assert events.Scalars("final/test_acc")[-1].value == pytest.approx(metrics["test_acc"])


@pytest.mark.slow
def test_a_training_process_ends_with_everything_written(tiny_run, tmp_path):
    """The training process leaves its objects out of the interpreter's last garbage collections
    (project.training.train.main): what it wrote last, TensorBoard's final metrics after the test pass,
    metrics.csv's test row and metrics.json, is whole once `invoke local` returns."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = invoke("local", *tiny_run(run_name="ends"))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "ends"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    events = EventAccumulator(str(run_dir / "output" / "tensorboard"))
    events.Reload()
    assert events.Scalars("final/test_acc")[-1].value == pytest.approx(metrics["test_acc"])
    assert [float(row["test_acc"]) for row in csv_rows(run_dir) if row["test_acc"]] == [
        pytest.approx(metrics["test_acc"])
    ]
    assert f"run_dir={run_dir}" in result.stdout


def test_metrics_csv_counts_epochs_from_one(debug_run):
    run_dir, _, _ = debug_run
    rows = csv_rows(run_dir)
    steps = [(float(row["epoch"]), int(row["step"])) for row in rows if row["train_loss_step"]]
    assert steps == [(1.0, 1), (1.0, 3), (1.0, 5), (1.0, 7), (2.0, 9), (2.0, 11), (2.0, 13), (2.0, 15)]
    assert [float(row["epoch"]) for row in rows if row["val_acc"] or row["train_acc"]] == [1.0, 1.0, 2.0, 2.0]
    assert [float(row["epoch"]) for row in rows if row["test_acc"]] == [2.0]  # after 2 epochs


def test_learning_curves_are_in_epochs_with_labelled_axes(debug_run):
    from project.training.artifacts import learning_curves_figure, read_curves

    run_dir, _, _ = debug_run
    curves, unit = read_curves(run_dir / "output" / "metrics.csv")
    assert unit == "epoch"
    assert [x for x, _ in curves["train_loss_step"]] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert [x for x, _ in curves["val_loss"]] == [x for x, _ in curves["train_acc"]] == [1.0, 2.0]
    figure = learning_curves_figure(run_dir / "output" / "metrics.csv")
    loss, accuracy, lr = figure.axes
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss (cross-entropy)", "accuracy", "learning rate"]
    assert lr.get_xlabel() == "epoch"
    figure.canvas.draw()
    ticks = [t for t in lr.get_xticks() if lr.get_xlim()[0] <= t <= lr.get_xlim()[1]]
    assert ticks == [0.0, 1.0, 2.0]
    assert len(loss.lines) == 3 and len(accuracy.lines) == 2 and len(lr.lines[0].get_xdata()) == 8
    assert (run_dir / "output" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
