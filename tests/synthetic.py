"""Tiny synthetic datasets in the real IDX format, made by the tests: nothing is downloaded.

Each class lights a different 6x6 patch of a noisy 28x28 image, so a network learns it in a
few steps and a test can tell a trained model from an untrained one.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        images[i, 2 + row * 12 : 8 + row * 12, 1 + col * 5 : 7 + col * 5] = 250
    return images, labels


def write_dataset(
    folder: Path, n_train: int = 600, n_test: int = 200, gz: bool = True, seed: int = 0
) -> dict[str, str]:
    """Write the four IDX files; return stem -> sha256 of the decompressed content."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = make_images(n, s)
        for kind, array in (("images", images), ("labels", labels)):
            stem = STEMS[(split, kind)]
            content = idx_bytes(array)
            files[stem] = hashlib.sha256(content).hexdigest()
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(content))
            else:
                (folder / stem).write_bytes(content)
    return files


def tiny_overrides(data_dir: Path, files: dict[str, str], runs_dir: Path, **extra) -> list[str]:
    """Overrides that shrink the default run to seconds on CPU, on the synthetic data."""
    overrides = [
        f"dataset.source={data_dir}",
        f"paths.runs_dir={runs_dir}",
        f"paths.data_dir={runs_dir.parent / 'cache'}",
        "dataset.val_size=100",
        "trainer.max_epochs=2",
        "trainer.batch_size=64",
        "trainer.gpus=0",
        "model.net.width=8",
        "model.lr=0.03",
    ]
    overrides += [f"dataset.files.{stem}={sha}" for stem, sha in files.items()]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return overrides
