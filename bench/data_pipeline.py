"""Data pipeline: one full pass over 60,000 training images with our loader against the usual one.

Ours: IdxDataModule's training loader, built by the product code (a DataLoader over TensorSplit,
sampled by IndexBatches with batch_size=None: each batch is one indexing op on tensors that were
normalised once at setup). The usual one: a map-style Dataset whose __getitem__ normalises one
uint8 image into a tensor, batched by DataLoader(batch_size=256, shuffle=True), with 0 and with 2
worker processes (workers start afresh each pass, DataLoader's default). A pass only draws the
batches; nothing is trained. Our one-time setup (read, verify, normalise) is reported apart.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import MNIST_STEMS, interleaved, median, row, train_arrays

BATCH = 256
MEAN, STD = 0.1307, 0.3081  # conf/dataset/mnist.yaml


class PerSampleDataset(torch.utils.data.Dataset):
    """The textbook dataset: one normalised image tensor and its label per index."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = torch.from_numpy(self.images[index]).float().div_(255.0).sub_(self.mean).div_(self.std)
        return x.unsqueeze(0), int(self.labels[index])


def _write_idx(folder: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """The 60,000 images as IDX files (test files: a token 10 images); stem -> sha256."""

    def idx(array: np.ndarray) -> bytes:
        return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()

    files = {}
    for stem, array in zip(MNIST_STEMS, (images, labels, images[:10], labels[:10]), strict=True):
        content = idx(np.ascontiguousarray(array))
        (folder / stem).write_bytes(content)
        files[stem] = hashlib.sha256(content).hexdigest()
    return files


def _ours(folder: Path, files: dict[str, str]):
    from project.training.data import IdxDataModule

    started = time.perf_counter()
    dm = IdxDataModule(str(folder), files, str(folder / "cache"), batch_size=BATCH, val_size=0, mean=MEAN, std=STD)
    dm.setup("fit")
    return dm, time.perf_counter() - started


def _one_pass(loader) -> int:
    n = 0
    for _, labels in loader:
        n += len(labels)
    return n


def run(reps: int) -> dict:
    images, labels, source = train_arrays()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        files = _write_idx(Path(tmp), images, labels)
        setups = []
        dm = None
        for _ in range(3):
            dm, seconds = _ours(Path(tmp), files)
            setups.append(seconds)
        dataset = PerSampleDataset(images, labels, MEAN, STD)
        counts = {}

        def counted(name, make_loader):
            def call():
                counts[name] = _one_pass(make_loader())

            return call

        times = interleaved(
            {
                "ours": counted("ours", dm.train_dataloader),
                "per_sample_w0": counted(
                    "per_sample_w0",
                    lambda: torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0),
                ),
                "per_sample_w2": counted(
                    "per_sample_w2",
                    lambda: torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2),
                ),
            },
            reps,
        )
    assert len(set(counts.values())) == 1, f"the loaders disagree on the number of samples: {counts}"
    return {
        "data": f"{source}: {len(labels)} images per pass",
        "samples_per_pass": counts["ours"],
        "ours_setup_s": round(median(setups), 3),  # read + verify + normalise all 60,000 once, before any pass
        "rows": [
            row(
                "data_pipeline: 1 pass, 60k images",
                "ours (IndexBatches)",
                times["ours"],
                "per-sample, 0 workers",
                times["per_sample_w0"],
                None,
            ),
            row(
                "data_pipeline: 1 pass, 60k images",
                "ours (IndexBatches)",
                times["ours"],
                "per-sample, 2 workers",
                times["per_sample_w2"],
                None,
            ),
        ],
    }
