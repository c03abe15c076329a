"""A class-per-subfolder tree of small images for dataset=imagefolder tests: three classes of simple
shapes (a horizontal bar, a vertical bar, a square) at jittered places, in a few sizes, one JPEG
per class (with a dot in its name), so a tiny CNN learns them in a few epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("hbar", "square", "vbar")


def shape_image(kind: str, rng: np.random.Generator, size: int) -> Image.Image:
    pixels = rng.integers(0, 40, (size, size), dtype=np.uint8)  # dark noise
    r, c = rng.integers(size // 4, 3 * size // 4, 2)
    half = size // 6
    if kind == "hbar":
        pixels[r - 1 : r + 2, c - 2 * half : c + 2 * half] = 255
    elif kind == "vbar":
        pixels[r - 2 * half : r + 2 * half, c - 1 : c + 2] = 255
    else:
        pixels[r - half : r + half, c - half : c + half] = 255
    return Image.fromarray(pixels, mode="L")


def write_tree(root: Path, per_class: int = 80, seed: int = 0, classes=CLASSES) -> Path:
    rng = np.random.default_rng(seed)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (28, 32, 40)[i % 3]  # any size: the DataModule resizes
            image = shape_image(kind, rng, size)
            if i == 0:
                image.convert("RGB").save(root / kind / f"img.{i:03d}.jpg", quality=95)  # a dot in the stem
            else:
                image.save(root / kind / f"img_{i:03d}.png")
    return root
