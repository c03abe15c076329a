"""Runs that hang, written by a test as a user's package (tests/byo.py's, with one more module).

`write_package(root)` writes the byo package and `<package>/stalls.py`: `HangsOnRank1`, whose rank 1
stops in its training step at HANG_STEP (as a rank stuck in a device call or a collective of its own
does) while rank 0 goes on into the step's gradient all_reduce and waits for it; and
`HangingWorkerData`, whose data loader worker stops at the third training batch (a deadlocked
loader). Select them with `model._target_=<package>.stalls.HangsOnRank1` or
`dataset._target_=<package>.stalls.HangingWorkerData`.
"""

from __future__ import annotations

from pathlib import Path

from tests import byo

HANG_STEP = 5
HANG_SECONDS = 3600  # longer than any test: only the watchdog ends it

STALLS = f"""
import time

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from . import Linear, PointsData


class HangsOnRank1(Linear):
    def training_step(self, batch, batch_idx):
        if self.global_step == {HANG_STEP} and self.global_rank == 1:
            time.sleep({HANG_SECONDS})
        return super().training_step(batch, batch_idx)


class HangsInWorker(Dataset):
    def __init__(self, samples, from_index):
        self.samples, self.from_index = samples, from_index

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        if index >= self.from_index and get_worker_info() is not None:
            time.sleep({HANG_SECONDS})
        return self.samples[index]


class HangingWorkerData(PointsData):
    def train_dataloader(self):
        hangs = HangsInWorker(self.train_set, 2 * self.per_device)  # the third batch never comes
        return DataLoader(hangs, self.per_device, num_workers=1)
"""


def write_package(root: Path) -> str:
    """byo's package and configs under `root`, with `stalls.py`; returns the package's name."""
    package = byo.write_package(root)
    (root / package / "stalls.py").write_text(STALLS)
    return package
