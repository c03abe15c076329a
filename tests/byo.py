"""A user's own LightningModule and DataModule, written by a test as a package outside project/.

`write_package(root)` writes `<root>/<package>/__init__.py` (a linear regressor and a DataModule
with a train and a validation channel, each a folder holding points.csv) and
`<root>/conf/{model,dataset}/byo.yaml`; `overrides(...)` selects them with
`hydra.searchpath=[file://<root>/conf] model=byo dataset=byo`. The package is importable with
PYTHONPATH=<root>, as a user's package beside the repository is.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path

MODULE = """
import csv
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from project.core.topology import per_device_batch


def points(folder):
    with open(Path(folder) / "points.csv", newline="") as handle:
        rows = [[float(v) for v in row] for row in csv.reader(handle)]
    data = torch.tensor(rows)
    return TensorDataset(data[:, :-1], data[:, -1:])


class PointsData(pl.LightningDataModule):
    def __init__(self, train_dir: str, validation_dir: str, batch_size: int = 32):
        super().__init__()
        self.train_dir, self.validation_dir, self.batch_size = train_dir, validation_dir, batch_size

    def setup(self, stage=None):
        self.train_set, self.val_set = points(self.train_dir), points(self.validation_dir)
        world = self.trainer.world_size if self.trainer else 1
        self.per_device = per_device_batch(self.batch_size, 1, world)

    def train_dataloader(self):
        return DataLoader(self.train_set, self.per_device, shuffle=True, generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        return DataLoader(self.val_set, self.per_device)

    def test_dataloader(self):
        return DataLoader(self.val_set, self.per_device)


class Linear(pl.LightningModule):
    def __init__(self, features: int, lr: float = 0.1):
        super().__init__()
        self.layer = torch.nn.Linear(features, 1)
        self.lr = lr

    def forward(self, x):
        return self.layer(x)

    def _step(self, batch, split):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Unexportable(Linear):
    # Neither scripted (TorchScript refuses **kwargs) nor traced (a string is no tensor output).

    def forward(self, x, **options):
        return self.layer(x), "not a tensor"

    def _step(self, batch, split):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True)
        return loss


class NotAModule:
    def __init__(self, features: int = 2):
        self.features = features
"""


def write_package(root: Path, package: str | None = None) -> str:
    """The package and its two configs under `root`; returns the package's name."""
    package = package or f"byo_{uuid.uuid4().hex[:8]}"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text(MODULE)
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "dataset").mkdir(parents=True)
    (root / "conf" / "model" / "byo.yaml").write_text(
        f"_target_: {package}.Linear\nname: byo\nmetrics: [train_loss, val_loss, test_loss]\nfeatures: 2\nlr: 0.1\n"
    )
    (root / "conf" / "dataset" / "byo.yaml").write_text(
        f"_target_: {package}.PointsData\nname: byo\ns3_prefix: datasets/byo\n"
        f"channels:\n  train: {root / 'data' / 'train'}\n  validation: {root / 'data' / 'validation'}\n"
        "input_modes:\n  validation: FastFile\nbatch_size: ${trainer.batch_size}\n"
    )
    rng = random.Random(0)
    for channel, n in (("train", 256), ("validation", 64)):
        (root / "data" / channel).mkdir(parents=True)
        lines = []
        for _ in range(n):
            a, b = rng.uniform(-1, 1), rng.uniform(-1, 1)
            lines.append(f"{a},{b},{3 * a - 2 * b + 0.5}")
        (root / "data" / channel / "points.csv").write_text("\n".join(lines) + "\n")
    return package


def overrides(root: Path, runs: Path, **extra: object) -> list[str]:
    return [
        f"hydra.searchpath=[file://{root / 'conf'}]",
        "model=byo",
        "dataset=byo",
        f"paths.runs_dir={runs}",
        f"paths.data_dir={runs.parent / 'cache'}",
        "trainer.max_epochs=2",
        "trainer.batch_size=32",
        "trainer.gpus=0",
        *(f"{k}={v}" for k, v in extra.items()),
    ]
