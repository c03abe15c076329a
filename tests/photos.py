"""Photo-like renderings of digits for the prediction tests: what a phone photo or a scan of a
handwritten digit looks like to `invoke predict`, made from a 28x28 light-on-dark digit.

Dark ink on off-white paper, uneven lighting (a gradient and a vignette), sensor noise, JPEG
compression, and a canvas larger than the digit with the digit off-centre.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

CANVAS = (200, 150)  # width, height: a cropped phone photo, far from MNIST's 28x28


def paper(rng: np.random.Generator, size: tuple[int, int] = CANVAS) -> np.ndarray:
    """Off-white paper (slightly warm, a little textured), float RGB in [0, 255], H x W x 3."""
    width, height = size
    tint = np.array([236.0, 230.0, 214.0]) + rng.uniform(-12, 8, size=3)
    texture = rng.normal(0, 2.5, size=(height, width, 1))
    return np.clip(tint + texture, 0, 255)


def uneven_lighting(rng: np.random.Generator, size: tuple[int, int] = CANVAS) -> np.ndarray:
    """A factor in about [0.55, 1]: light from one side plus a vignette, as under a desk lamp."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    along = (np.cos(angle) * (x / width - 0.5) + np.sin(angle) * (y / height - 0.5)) + 0.5
    gradient = 1.0 - rng.uniform(0.2, 0.35) * along
    radius = np.hypot(x / width - 0.5, y / height - 0.5) / np.hypot(0.5, 0.5)
    vignette = 1.0 - rng.uniform(0.05, 0.15) * radius**2
    return (gradient * vignette)[..., None]


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def digit_photo(digit: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = CANVAS) -> Image.Image:
    """`digit` (28x28, light on dark, like MNIST) written in dark ink on paper, photographed."""
    width, height = size
    side = int(rng.integers(70, 110))  # the 28x28 field, scaled: the digit itself is ~5/7 of it
    ink_alpha = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float64)
    ink_alpha = np.clip(ink_alpha / 255.0, 0, 1)[..., None]
    top = int(rng.integers(0, height - side + 1))
    left = int(
        rng.choice([rng.integers(0, (width - side) // 3 + 1), rng.integers(2 * (width - side) // 3, width - side + 1)])
    )
    alpha = np.zeros((height, width, 1))
    alpha[top : top + side, left : left + side] = ink_alpha
    ink = np.array([35.0, 38.0, 70.0]) + rng.uniform(-15, 15, size=3)  # blue-black ballpoint
    rgb = paper(rng, size) * (1 - alpha) + ink * alpha
    rgb = rgb * uneven_lighting(rng, size) + rng.normal(0, 4, size=rgb.shape)
    return jpeg_roundtrip(rgb, quality=int(rng.integers(40, 80)))


def blank_paper(rng: np.random.Generator, size: tuple[int, int] = CANVAS) -> Image.Image:
    return jpeg_roundtrip(paper(rng, size) * uneven_lighting(rng, size) + rng.normal(0, 4, (size[1], size[0], 3)), 70)


def colour_gradient(size: tuple[int, int] = CANVAS) -> Image.Image:
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack([255 * x / width, 255 * y / height, 255 * (1 - x / width) * 0.8 + 30], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def random_noise(rng: np.random.Generator, size: tuple[int, int] = CANVAS) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
