"""Lightning overhead: our LightningModule + IdxDataModule, built by project.training.train.build_run exactly as
`invoke local` builds them (TensorBoard + CSV loggers, the reporting callbacks, RunCheckpoints, torchmetrics),
against a hand-written PyTorch loop over the same tensors: same SmallCNN, batch size, AdamW +
one-cycle schedule, validation pass and torch thread count. Both train the same model the same
way; their final validation accuracies are reported and agree.

Lockstep: one Lightning `fit` of reps + 2 epochs runs, and a callback drives the plain loop from
inside it, one plain step at each Lightning batch start and the plain validation pass (and next
shuffle) at each Lightning epoch start. The plain work is timed on its own and taken out of
Lightning's time, so a burst of load from other processes hits both sides of a pair alike. A
Lightning epoch runs from one epoch start to the next: training batches, validation, the
end-of-epoch checkpoint, metric lines and log writes. A plain epoch is its shuffle, steps and
validation. Epoch 0 is the warm-up; the last Lightning epoch has no next start and is not
counted; Lightning's one-time start-up (Trainer set-up, data verification, sanity check) is
reported apart.

Fits: the product as it is; the product with its loggers removed. The product fit also counts
its `self.log` calls: the LightningModule registers each split's metric objects once per epoch
(Lightning computes and resets them at the epoch's end), not at every step. Then a diagnostic:
the same lockstep with a tiny MLP, where the framework is most of a step, gives Lightning's
cost per step in ms for those variants and for `bare` (Lightning's loop alone).

Both sides run with denormals flushed to zero (`torch.set_flush_denormal(True)`): in this regime
subnormal floats appear in the first epochs and make every kernel of both sides up to ~9x slower
(identically: the arithmetic is the same), burying the framework's share in noise. The product
sets the flag itself (trainer.flush_denormal, first thing in project.training.train.train); bench/README.md
("Denormals") says what it saves `invoke local`. Here it is set before any work, so every thread
of torch's pool has it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .common import MNIST_STEMS, median, row, train_arrays

N_TRAIN = 10_000  # 40 batches of 256: an epoch of a few seconds on a 2-core CPU
N_VAL = 1_000
N_TEST = 1_000  # only verified by prepare_data, never evaluated here


def _subset_dataset(folder: Path) -> tuple[dict[str, str], str]:
    """Write an IDX dataset of N_TRAIN + N_VAL training and N_TEST test images; stem -> sha256."""
    import hashlib
    import struct

    import numpy as np

    images, labels, source = train_arrays(N_TRAIN + N_VAL + N_TEST)

    def idx(array: np.ndarray) -> bytes:
        return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()

    split = N_TRAIN + N_VAL
    parts = dict(zip(MNIST_STEMS, (images[:split], labels[:split], images[split:], labels[split:]), strict=True))
    files = {}
    for stem, array in parts.items():
        content = idx(np.ascontiguousarray(array))
        (folder / stem).write_bytes(content)
        files[stem] = hashlib.sha256(content).hexdigest()
    return files, source


def _compose(folder: Path, files: dict[str, str], runs: Path, epochs: int):
    from project.core.config import compose

    overrides = [
        f"dataset.channels.train={folder}",
        f"dataset.val_size={N_VAL}",
        f"paths.runs_dir={runs}",
        f"paths.data_dir={runs / 'cache'}",
        f"trainer.max_epochs={epochs}",
        "trainer.gpus=0",
        *[f"dataset.files.{stem}={sha}" for stem, sha in files.items()],
    ]
    return compose(overrides)


def _tensors(cfg, folder: Path, runs: Path):
    """The train and val tensors exactly as IdxDataModule makes them."""
    from project.training.data import IdxDataModule

    d = cfg.dataset
    dm = IdxDataModule(
        str(folder),
        dict(d.files),
        str(runs / "cache"),
        cfg.trainer.batch_size,
        d.val_size,
        d.mean,
        d.std,
        cfg.trainer.seed,
    )
    dm.setup("fit")
    return dm.splits["train"], dm.splits["val"]


class PlainLoop:
    """The same training written by hand, driven a step at a time: no framework between it and PyTorch.

    `begin_epoch`, `train_step` and `end_epoch` (the validation pass) each time themselves; an
    epoch's time is the sum of its parts.
    """

    def __init__(self, cfg, train_split, val_split):
        import pytorch_lightning as pl
        import torch

        from project.training.models import build_net

        pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # the Lightning side seeds the same
        self.net = build_net(dict(cfg.model.net))
        self.x, self.y = train_split.images, train_split.labels
        self.vx, self.vy = val_split.images, val_split.labels
        self.batch, self.seed, self.epoch = cfg.trainer.batch_size, cfg.trainer.seed, -1
        total = cfg.trainer.max_epochs * -(-len(self.y) // self.batch)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.model.lr, weight_decay=cfg.model.weight_decay)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=cfg.model.lr, total_steps=total)
        self.seconds, self.steps, self.val_acc = 0.0, [], None

    def begin_epoch(self) -> float:
        import torch

        started = time.perf_counter()
        self.epoch += 1
        self.seconds, self.steps = 0.0, []
        self.net.train()
        # The order IndexBatches draws: same seed, same epoch, same permutation.
        self.order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.loss_sum, self.correct, self.next = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        return self._spent(started)

    def train_step(self) -> float:
        import torch.nn.functional as F

        started = time.perf_counter()
        idx = self.order[self.next : self.next + self.batch]
        self.next += self.batch
        xb, yb = self.x[idx], self.y[idx]
        logits = self.net(xb)
        loss = F.cross_entropy(logits, yb)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        self.loss_sum += loss.detach() * len(yb)
        self.correct += (logits.detach().argmax(1) == yb).sum()
        spent = self._spent(started)
        self.steps.append(spent)
        return spent

    def end_epoch(self) -> float:
        import torch
        import torch.nn.functional as F

        started = time.perf_counter()
        self.net.eval()
        vx, vy, batch = self.vx, self.vy, self.batch
        val_loss, val_correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        with torch.no_grad():
            for start in range(0, len(vy), batch):
                logits, yb = self.net(vx[start : start + batch]), vy[start : start + batch]
                val_loss += F.cross_entropy(logits, yb) * len(yb)
                val_correct += (logits.argmax(1) == yb).sum()
        self.val_acc = float(val_correct) / len(vy)
        n = len(self.y)
        print(
            f"plain epoch={self.epoch + 1} train_acc={float(self.correct) / n:.4f} "
            f"train_loss={float(self.loss_sum) / n:.6g} "
            f"val_acc={self.val_acc:.4g} val_loss={float(val_loss) / len(vy):.6g}",
            flush=True,
        )
        return self._spent(started)

    def _spent(self, started: float) -> float:
        spent = time.perf_counter() - started
        self.seconds += spent
        return spent


def _alternating_fit(cfg, folder: Path, runs: Path, plain: PlainLoop, variant: str = "product") -> dict[str, object]:
    """One product fit with the plain loop driven in lockstep from a callback.

    At each Lightning batch start, the plain loop takes one step; at each epoch start it validates
    the epoch it finished and begins the next. Lightning's times leave out the plain work.
    """
    import pytorch_lightning as pl

    from project.core.runtime import local_layout
    from project.core.topology import decide
    from project.training.resolve import resolve
    from project.training.train import build_run

    pairs: list[dict[str, float]] = []
    clock: dict[str, object] = {"epoch_start": None, "plain_inside": 0.0, "step_start": None, "steps": []}

    def close_plain_epoch() -> None:
        if plain.epoch >= 0:
            plain.end_epoch()

    class Lockstep(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            now = time.perf_counter()
            if clock["epoch_start"] is None:
                clock["startup"] = now - clock["fit_start"]
            else:
                lightning = now - clock["epoch_start"] - clock["plain_inside"]
                plain_steps = plain.steps
                close_plain_epoch()
                pairs.append(
                    {
                        "lightning": lightning,
                        "plain": plain.seconds,
                        "lightning_step": median(clock["steps"]),
                        "plain_step": median(plain_steps),
                    }
                )
            plain.begin_epoch()
            clock.update(plain_inside=0.0, step_start=None, steps=[], epoch_start=time.perf_counter())

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            now = time.perf_counter()
            if clock["step_start"] is not None:
                clock["steps"].append(now - clock["step_start"])
            plain.train_step()
            clock["step_start"] = time.perf_counter()
            clock["plain_inside"] += clock["step_start"] - now

        def on_train_end(self, trainer, pl_module) -> None:
            close_plain_epoch()  # the last epochs are not timed; both sides still finish training

    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # as project.training.train.train does
    layout = local_layout(Path(tempfile.mkdtemp(dir=runs)))
    layout.create()
    data = resolve(cfg, {"train": folder}, remember=False, keep=True)  # as project.training.train.train does
    trainer, module, datamodule = build_run(cfg, layout, data, decide(cfg.trainer, available=0))
    VARIANTS[variant](trainer, module)
    trainer.callbacks.append(Lockstep())  # last: the product's own hooks run before it
    clock["fit_start"] = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    pairs = pairs[1:]  # epoch 0 of both sides: warm-up
    return {
        "lightning": [{"epoch": p["lightning"], "step": p["lightning_step"]} for p in pairs],
        "plain": [{"epoch": p["plain"], "step": p["plain_step"]} for p in pairs],
        "startup": clock["startup"],
        "log_calls": getattr(module, "log_calls", 0),
        "val_acc": {
            "lightning": round(float(trainer.callback_metrics.get("val_acc", float("nan"))), 4),
            "plain": round(plain.val_acc, 4),
        },
    }


def _no_loggers(trainer, module) -> None:
    trainer.loggers = []


def _count_logs(trainer, module) -> None:
    """The product as it is; its `self.log` calls are counted (a check that it logs once per epoch)."""
    log = module.log

    def counted(*args, **kwargs):
        module.log_calls = getattr(module, "log_calls", 0) + 1
        return log(*args, **kwargs)

    module.log = counted


def _bare(trainer, module) -> None:
    """Lightning's own loop alone: no loggers, none of our callbacks, no metrics or self.log."""
    import torch.nn.functional as F

    from project.training import reporting
    from project.training.checkpoints import RunCheckpoints

    ours = (
        reporting.MetricLines,
        reporting.StepSeries,
        reporting.EpochNumbers,
        reporting.ProgressLines,
        RunCheckpoints,
    )
    trainer.loggers = []
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ours)]

    def loss_only(batch, batch_idx: int):
        return F.cross_entropy(module(batch[0]), batch[1])

    module.training_step = module.validation_step = module.test_step = loss_only


VARIANTS = {"product": _count_logs, "no_loggers": _no_loggers, "bare": _bare}


def _framework_cost(cfg, folder: Path, runs: Path, train_split, val_split) -> dict[str, float]:
    """Lightning's cost per training step in ms (its step minus the plain step, medians), with a
    model so small (an MLP with 8 hidden units) that the framework is most of each step."""
    import copy

    tiny = copy.deepcopy(cfg)
    tiny.model.net = {
        "_target_": "project.training.models.MLP",
        "in_features": 784,
        "num_classes": 10,
        "hidden": 8,
        "dropout": 0.0,
    }
    cost = {}
    for variant in VARIANTS:
        result = _alternating_fit(tiny, folder, runs, PlainLoop(tiny, train_split, val_split), variant)
        lightning, plain = (median([r["step"] for r in result[side]]) for side in ("lightning", "plain"))
        cost[variant] = round((lightning - plain) * 1000, 2)
    return cost


def run(reps: int) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # explicit: both sides run in this process, with this many
    flushed = torch.set_flush_denormal(True)  # False where the CPU cannot (then reported as such)
    epochs = reps + 2  # + the warm-up epoch, + the last Lightning epoch (no next start to time it by)
    with tempfile.TemporaryDirectory(prefix="bench-lightning-") as tmp:
        folder, runs = Path(tmp) / "data", Path(tmp) / "runs"
        folder.mkdir()
        runs.mkdir()
        files, source = _subset_dataset(folder)
        cfg = _compose(folder, files, runs, epochs)
        train_split, val_split = _tensors(cfg, folder, runs)
        product = _alternating_fit(cfg, folder, runs, PlainLoop(cfg, train_split, val_split), "product")
        quiet = _alternating_fit(cfg, folder, runs, PlainLoop(cfg, train_split, val_split), "no_loggers")
        framework_ms = _framework_cost(cfg, folder, runs, train_split, val_split)
    torch.set_flush_denormal(False)

    def sides(result, key):
        return [r[key] for r in result["lightning"]], [r[key] for r in result["plain"]]

    epoch, step = sides(product, "epoch"), sides(product, "step")
    epoch_quiet = sides(quiet, "epoch")
    return {
        "data": (
            f"{source}: {N_TRAIN} train / {N_VAL} val images, batch {cfg.trainer.batch_size}, {epochs} epochs per fit"
        ),
        "torch_threads": threads,
        "flush_denormal": flushed,
        "lightning_startup_s": round(product["startup"], 3),  # fit() start -> first epoch start, paid once per run
        "final_val_acc": product["val_acc"],
        "final_val_acc_loggers_off": quiet["val_acc"],
        # Train and val metrics (2 each) per epoch, plus the sanity check's val pair: ~4 when
        # logging once per epoch, ~2 x (steps + val batches) when logging every step.
        "product_self_log_calls_per_epoch": round(product["log_calls"] / epochs, 2),
        # Diagnostic, not a ratio: where Lightning's per-step cost goes (see _framework_cost).
        "framework_ms_per_step_tiny_model": framework_ms,
        "rows": [
            row(
                "lightning_overhead: s/epoch, product config",
                "Lightning (invoke local)",
                epoch[0],
                "plain loop",
                epoch[1],
                1.02,  # issue 19; its in-process baseline hides process-wide costs: see time_to_accuracy loop row
            ),
            row(
                "lightning_overhead: median step, product config",
                "Lightning (invoke local)",
                step[0],
                "plain loop",
                step[1],
                None,
            ),
            row(
                "lightning_overhead: s/epoch, loggers off",
                "Lightning, no loggers",
                epoch_quiet[0],
                "plain loop",
                epoch_quiet[1],
                None,
            ),
        ],
    }
