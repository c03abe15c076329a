"""Networks and the LightningModule that trains any of them.

The network is injected: `LitClassifier(net=...)` trains whatever nn.Module maps a batch of
images to class logits, so a user's own model needs only a `model/<name>.yaml` naming it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import nn

from project.core.runtime import debug_enabled


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Three conv blocks (28 -> 14 -> 7), global average pool, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            _block(in_channels, width),
            nn.MaxPool2d(2),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            _block(4 * width, 4 * width),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class MLP(nn.Module):
    def __init__(self, in_features: int = 784, num_classes: int = 10, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _channel_stat(value: float | list[float]) -> torch.Tensor:
    values = torch.tensor(value, dtype=torch.float32)
    return values.view(1, -1, 1, 1) if values.numel() > 1 else values.reshape(())


class Exported(nn.Module):
    """What ships: raw pixels in [0, 255], N x C x H x W, to class probabilities.

    Normalisation is baked in so a consumer needs nothing but this file.
    """

    mean: torch.Tensor  # buffers, registered below
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: float | list[float], std: float | list[float]):
        super().__init__()
        self.net = net
        # One value, or one per colour channel (broadcast over N x C x H x W).
        self.register_buffer("mean", _channel_stat(mean))
        self.register_buffer("std", _channel_stat(std))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.float() / 255.0 - self.mean) / self.std
        return torch.softmax(self.net(x), dim=1)


class LitClassifier(pl.LightningModule):
    _compiled: Callable[[torch.Tensor], torch.Tensor] | None  # set with object.__setattr__ (below)

    def __init__(
        self,
        net: nn.Module,
        num_classes: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])  # recorded in checkpoints and TensorBoard
        self.net = net
        self.lr, self.weight_decay, self.label_smoothing = lr, weight_decay, label_smoothing
        self.channels_last, self.compile_net = channels_last, compile
        # torch.compile's wrapper, kept off the module tree so state_dict keys, checkpoints and
        # the export are the plain network's.
        object.__setattr__(self, "_compiled", None)
        # Epoch metrics are torchmetrics states, reduced over all ranks: over an unpadded sharded
        # split they count each sample exactly once, whatever the world size. Their per-step input
        # checks are off: each one reads a value back from the GPU (a sync every step), and the
        # labels were range-checked once when loaded (IdxDataModule); a NaN loss still shows as nan.
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{kind}": (
                    torchmetrics.MeanMetric(nan_strategy="disable")
                    if kind == "loss"
                    else torchmetrics.Accuracy(task="multiclass", num_classes=num_classes, validate_args=False)
                )
                for split in ("train", "val", "test")
                for kind in ("loss", "acc")
            }
        )
        self._unlogged = {"train", "val", "test"}  # splits whose metrics this epoch has not passed to self.log
        # Counted during the test pass and summed over ranks like the metrics above, so the
        # exported confusion matrix costs no second pass over the test set.
        self.test_confusion_counts = torchmetrics.ConfusionMatrix(
            task="multiclass", num_classes=num_classes, validate_args=False
        )
        self.test_confusion: torch.Tensor | None = None  # [true, predicted] counts of the last test run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self.net if self._compiled is None else self._compiled)(x)

    def setup(self, stage: str) -> None:
        if self.channels_last:
            # torch's stub of Module.to lists no memory_format, which it accepts
            self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # kept when Lightning moves it to the GPU
        if self.compile_net and self._compiled is None:
            object.__setattr__(self, "_compiled", torch.compile(self.net))

    def _metric(self, name: str) -> torchmetrics.Metric:
        metric: torchmetrics.Metric = self.metrics[name]  # type: ignore[assignment]  # a ModuleDict of Metrics
        return metric

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if split == "train" else 0.0)
        # One value per sample (a view, no copy): the epoch mean weights each batch by its size.
        # Not `weight=`: with nan_strategy="disable" MeanMetric replaces weights by ones.
        self._metric(f"{split}_loss").update(loss.detach().expand(len(y)))
        self._metric(f"{split}_acc").update(logits.detach(), y)
        if split == "test":
            self.test_confusion_counts.update(logits.detach(), y)
        if split in self._unlogged:
            # Logged once per epoch: Lightning keeps the Metric objects, and computes, logs and
            # resets them at the epoch's end. `self.log` on every step only repeated that
            # bookkeeping (~0.9 ms a step, ~2% of a CPU epoch of the default CNN).
            self._unlogged.discard(split)
            for kind in ("loss", "acc"):
                name = f"{split}_{kind}"
                self.log(name, self._metric(name), on_step=False, on_epoch=True, prog_bar=split != "test")
        return loss

    # A new epoch of a loop (a resumed one too) registers its metrics again at its first step.
    def on_train_epoch_start(self) -> None:
        self._unlogged.add("train")

    def on_validation_epoch_start(self) -> None:
        self._unlogged.add("val")

    def on_test_epoch_start(self) -> None:
        self._unlogged.add("test")

    def on_test_epoch_end(self) -> None:
        self.test_confusion = self.test_confusion_counts.compute().cpu()  # under DDP a collective: all ranks
        self.test_confusion_counts.reset()

    def _share_rank0_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm running statistics (the ones that get exported).

        Each rank updates its own during a training forward. DDP broadcasts rank 0's before the
        next forward through its wrapper, so evaluation after training usually sees them already;
        doing it here does not depend on that, so the sharded val/test metrics describe exactly
        the shipped model and, with validation off too, all ranks end fit with identical state.
        Training is unchanged: DDP broadcasts them before the next training forward anyway.
        """
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.net.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def on_validation_start(self) -> None:
        self._share_rank0_buffers()

    def on_test_start(self) -> None:
        self._share_rank0_buffers()

    def on_fit_end(self) -> None:
        self._share_rank0_buffers()
        if debug_enabled():
            # One line per rank: under DDP all ranks must end with identical weights (tests compare them).
            print(f"rank={self.global_rank} weights_sha256={state_digest(self.net.state_dict())}", flush=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        # One-cycle: warm up then anneal; reaches high accuracy in few epochs at a high peak lr.
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=max(1, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and bytes of a state_dict (parameters and buffers)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_net(spec: dict[str, Any], overrides: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate the `model.net` config (a `_target_` class path and its arguments)."""
    from hydra.utils import instantiate

    return instantiate({**spec, **(overrides or {})})
