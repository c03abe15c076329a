"""A worked "your own model and data" example that is not an image classifier: regression on a CSV.

`CsvDataModule` reads `train.csv` (and `test.csv` if there is one) from the folder the tool injects
as `data_dir`: numeric feature columns and one target column, with a header row. `MLPRegressor`
is a small LightningModule that logs `train_loss`, `val_loss`, `val_mae`, `test_loss`, `test_mae`.
conf/model/mlp_regressor.yaml and conf/dataset/csv_regression.yaml name them;
`invoke local model=mlp_regressor dataset=csv_regression dataset.channels.train=<folder>` trains.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

from project.core.topology import per_device_batch


def read_csv(path: Path, target: str) -> TensorDataset:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    features = [name for name in rows[0] if name != target]
    x = torch.tensor([[float(row[name]) for name in features] for row in rows])
    y = torch.tensor([[float(row[target])] for row in rows])
    return TensorDataset(x, y)


class CsvDataModule(pl.LightningDataModule):
    def __init__(
        self, data_dir: str, target: str = "y", batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0
    ):
        super().__init__()
        self.data_dir, self.target, self.batch_size = Path(data_dir), target, batch_size  # batch_size: global
        self.val_fraction, self.seed = val_fraction, seed

    def setup(self, stage: str | None = None) -> None:
        data = read_csv(self.data_dir / "train.csv", self.target)
        n_val = int(len(data) * self.val_fraction)
        generator = torch.Generator().manual_seed(self.seed)
        self.train_set, self.val_set = random_split(data, [len(data) - n_val, n_val], generator=generator)
        test = self.data_dir / "test.csv"
        self.test_set = read_csv(test, self.target) if test.exists() else self.val_set
        world = self.trainer.world_size if self.trainer else 1
        nodes = self.trainer.num_nodes if self.trainer else 1
        self.per_device = per_device_batch(self.batch_size, nodes, world // nodes)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set, self.per_device, shuffle=True, generator=torch.Generator().manual_seed(self.seed)
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.per_device)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, self.per_device)


class MLPRegressor(pl.LightningModule):
    def __init__(self, in_features: int, hidden: int = 32, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, split: str) -> torch.Tensor:
        x, y = batch
        prediction = self(x)
        loss = nn.functional.mse_loss(prediction, y)
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        if split != "train":
            self.log(f"{split}_mae", (prediction - y).abs().mean(), on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
