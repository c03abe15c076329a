"""Tiny synthetic datasets in the real IDX format, made by the tests: nothing is downloaded.

Each class lights a different 6x6 patch of a noisy 28x28 image, so a network learns it in a
few steps and a test can tell a trained model from an untrained one. `make_glyphs` draws
seven-segment digits instead, in MNIST's format, for tests whose classes must survive MNIST's
preprocessing (cropping and centring erase a patch's position).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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


# Segments lit per digit: a top, b top right, c bottom right, d bottom, e bottom left, f top left, g middle.
SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]


def _glyph(label: int, rng: np.random.Generator, supersample: int = 4) -> np.ndarray:
    """A seven-segment digit, slanted, in MNIST's format: ink and all in a 20x20 box, 28x28 field."""
    stroke = rng.uniform(2.0, 3.0)
    width, height, slant = rng.uniform(9, 12), 20.0 - stroke, rng.uniform(-0.25, 0.1)
    corner = {"tl": (0, 0), "tr": (width, 0), "ml": (0, height / 2), "mr": (width, height / 2)}
    corner |= {"bl": (0, height), "br": (width, height)}
    ends = {"a": "tl tr", "b": "tr mr", "c": "mr br", "d": "bl br", "e": "ml bl", "f": "tl ml", "g": "ml mr"}
    lines = [[corner[end] for end in ends[segment].split()] for segment in SEGMENTS[label]]
    points = np.array([point for line in lines for point in line], dtype=np.float64)
    points[:, 0] += slant * (height / 2 - points[:, 1])
    points += 14 - (points.min(0) + points.max(0)) / 2
    canvas = Image.new("L", (28 * supersample, 28 * supersample), 0)
    draw = ImageDraw.Draw(canvas)
    pen = stroke * supersample
    for start, end in points.reshape(-1, 2, 2) * supersample:
        draw.line([tuple(start), tuple(end)], fill=255, width=round(pen))
        for x, y in (start, end):  # round joints, as a pen makes
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.5) * supersample))  # ink bleeds, lenses blur
    glyph = np.asarray(canvas.resize((28, 28), Image.Resampling.BOX))
    rows, cols = np.indices(glyph.shape)
    mass = glyph.sum()
    shift = [round(13.5 - (rows * glyph).sum() / mass), round(13.5 - (cols * glyph).sum() / mass)]
    return np.roll(glyph, shift, axis=(0, 1))  # centred by centre of mass, as MNIST's digits are


def make_glyphs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    return np.stack([_glyph(int(label), rng) for label in labels]), labels


def write_dataset(
    folder: Path,
    n_train: int = 600,
    n_test: int = 200,
    gz: bool = True,
    seed: int = 0,
    make: Callable[[int, int], tuple[np.ndarray, np.ndarray]] = make_images,
) -> dict[str, str]:
    """Write the four IDX files; return stem -> sha256 of the decompressed content."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = make(n, s)
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
        f"dataset.channels.train={data_dir}",
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
