"""MNIST's preprocessing of a photo or scan: one home, used by `invoke predict` and by the served model.

The model takes MNIST's format: 28x28 grey levels in [0, 255], a light digit on a dark ground,
scaled into a 20x20 box and centred by its centre of mass. `mnist_pixels` brings a photo into
that format the way MNIST itself was built. This module imports only numpy and Pillow: it is
copied as it is into the served model's `code/` folder (project/serving/archive.py), where nothing else of
this project exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np

MNIST_SIZE = 28  # the field the digit is centred in
DIGIT_BOX = 20  # MNIST scaled each digit, aspect kept, to fit 20x20, leaving a 4-pixel margin

# The decisions, in one place. Grey levels are out of 255.
# A phone photo is analysed at most this large: a digit worth reading is far more than 20 pixels
# tall at this size, and connected-component labelling stays well under a second.
MAX_SIDE = 512
# Ink must stand out from the paper by this many grey levels AND by NOISE_SIGMAS times the
# image's own noise (sensor grain, paper texture, JPEG ringing: a few levels). Pencil or pen
# under a lamp differs from paper by 60 to 200 levels; a smooth gradient, once the background is
# removed, by a few.
MIN_INK_CONTRAST = 24.0
NOISE_SIGMAS = 5.0
# The largest connected stroke must have at least this many pixels, or what stands out is
# speckle (noise, dust), not a digit. Strokes under KEEP_PART of the largest one are speckle too;
# the parts of a broken 4 or 5 are far larger.
MIN_STROKE_PIXELS = 12
KEEP_PART = 0.1
# MNIST's strokes are ~2.8 pixels wide in the 20-pixel box (median of the test set; 5% are under
# 2.1). A ballpoint line on a big digit is far thinner once scaled down, and the model reads a
# thin 7 as a 1: strokes under THIN_STROKE are thickened to MNIST_STROKE.
MNIST_STROKE = 2.8
THIN_STROKE = 2.0
# A digit is a stroke of MIN_STROKE_PIXELS or more with paper around it, and the paper's level is
# estimated per block of a 6x6 grid: an image narrower than this (a 1x1 tracking pixel, an icon,
# a line of pixels) holds nothing to read, and is said to be too small rather than analysed.
MIN_SIDE = 8


class ImageError(ValueError):
    """An input that is no readable image; str(error) is one line."""


def load_grey(source: str | Path | IO[bytes], name: str | None = None, max_side: int = MAX_SIDE) -> np.ndarray:
    """Grey levels in [0, 255] as the photo shows them upright; transparency reads as white paper.

    `source` is a file's path or its bytes as a stream; `name` says which image in errors.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = name or str(source)
    try:
        with Image.open(source) as opened:
            image = ImageOps.exif_transpose(opened)  # phones store portrait shots sideways plus a tag
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
            image = image.convert("L")
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (expected a PNG or JPEG file)") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: cannot read this image ({exc}); is the file complete?") from None
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return np.asarray(image, dtype=np.float64)


def _robust_sigma(values: np.ndarray) -> float:
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _smooth_surface(grey: np.ndarray) -> np.ndarray:
    """A quadratic surface fitted to the paper, not the ink: light falling across the page."""
    height, width = grey.shape
    y, x = np.mgrid[0:height, 0:width]
    y, x = y.ravel() / height - 0.5, x.ravel() / width - 0.5
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
    values = grey.ravel()
    residual = values - np.median(values)  # the paper is most of the page: start from its level
    inliers = np.ones(values.shape, bool)
    for _ in range(4):  # fit to the pixels near the paper's level, refit: the ink stays out
        spread = max(2.5 * _robust_sigma(residual[inliers]), MIN_INK_CONTRAST / 2)
        inliers = np.abs(residual - np.median(residual[inliers])) <= spread
        coeffs = np.linalg.lstsq(basis[inliers], values[inliers], rcond=None)[0]
        residual = values - basis @ coeffs
    return (basis @ coeffs).reshape(grey.shape)


def _interpolate_blocks(blocks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear between block centres, extrapolated linearly past the outer ones (no flat rim)."""

    def weights(n_blocks: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        position = (np.arange(size) + 0.5) / size * n_blocks - 0.5  # in block-centre units
        index = np.clip(np.floor(position).astype(int), 0, max(n_blocks - 2, 0))
        return index, position - index

    rows, fy = weights(blocks.shape[0], height)
    cols, fx = weights(blocks.shape[1], width)
    padded = np.pad(blocks, ((0, 1 if blocks.shape[0] == 1 else 0), (0, 1 if blocks.shape[1] == 1 else 0)), "edge")
    top = padded[rows][:, cols] * (1 - fx) + padded[rows][:, cols + 1] * fx
    bottom = padded[rows + 1][:, cols] * (1 - fx) + padded[rows + 1][:, cols + 1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def _local_background(residual: np.ndarray, ink: np.ndarray, blocks_per_side: int = 6) -> np.ndarray:
    """What the quadratic surface missed (a shadow, a fold): the paper's median per block."""
    height, width = residual.shape
    side = max(height, width) / blocks_per_side
    n_rows, n_cols = max(1, round(height / side)), max(1, round(width / side))
    medians = np.zeros((n_rows, n_cols))
    for i in range(n_rows):
        for j in range(n_cols):
            rows = slice(i * height // n_rows, (i + 1) * height // n_rows)
            cols = slice(j * width // n_cols, (j + 1) * width // n_cols)
            paper = residual[rows, cols][~ink[rows, cols]]
            if paper.size and 4 * paper.size >= residual[rows, cols].size:  # else mostly ink: trust the surface
                medians[i, j] = np.median(paper)
    return _interpolate_blocks(medians, height, width)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of `mask` (-1 outside): minimum propagation with pointer jumping."""
    height, width = mask.shape
    outside = height * width
    labels = np.where(mask, np.arange(outside).reshape(height, width), outside)
    while True:
        padded = np.pad(labels, 1, constant_values=outside)
        neighbours = np.min([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)], axis=0)
        flat = np.append(neighbours.ravel(), outside)
        jumped = np.where(mask, flat[flat[neighbours]], outside)  # follow labels to their own labels
        if np.array_equal(jumped, labels):
            return np.where(mask, labels, -1)
        labels = jumped


def _crossing(labels: np.ndarray) -> np.ndarray:
    """Labels of components that touch two opposite sides: a paper's edge or a shadow, not a digit."""
    top, bottom, left, right = (set(np.unique(edge)) for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]))
    return np.array(sorted(((top & bottom) | (left & right)) - {-1}), dtype=int)


def _ink(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(ink darkness, digit mask or None, why none): the background removed, ink made positive."""
    surface = _smooth_surface(grey)
    residual = grey - surface
    threshold = max(MIN_INK_CONTRAST, NOISE_SIGMAS * _robust_sigma(residual))
    darker = np.clip(-residual - threshold, 0, None).sum()
    lighter = np.clip(residual - threshold, 0, None).sum()
    ink = residual * (-1 if darker > lighter else 1)  # a dark digit on light paper is inverted
    rough_ink = _dilate(ink > threshold, steps=2)
    ink = ink - _local_background(ink, rough_ink)
    noise = NOISE_SIGMAS * _robust_sigma(ink[~rough_ink]) if (~rough_ink).any() else 0.0
    threshold = max(MIN_INK_CONTRAST, noise)
    strokes = _components(ink > threshold)
    sizes = np.bincount(strokes[strokes >= 0], minlength=1)
    if sizes.max() < MIN_STROKE_PIXELS:
        return ink, None, "flat image" if noise < MIN_INK_CONTRAST else "nothing stands out from the background"
    sizes[_crossing(strokes)] = 0
    if sizes.max() < MIN_STROKE_PIXELS:
        return ink, None, "only lines across the whole image: an edge or a shadow?"
    kept = np.flatnonzero(sizes >= max(MIN_STROKE_PIXELS, KEEP_PART * sizes.max()))
    return ink, np.isin(strokes, kept), ""


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Paste into the 28x28 field so that the centre of mass falls on the field's centre."""
    total = digit.sum()
    rows, cols = np.indices(digit.shape)
    cy, cx = (rows * digit).sum() / total, (cols * digit).sum() / total
    centre = (MNIST_SIZE - 1) / 2
    top, left = round(centre - cy), round(centre - cx)
    field = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)
    h, w = digit.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, MNIST_SIZE), min(left + w, MNIST_SIZE)
    field[y0:y1, x0:x1] = digit[y0 - top : y1 - top, x0 - left : x1 - left]
    return field


def _stroke_width(mask: np.ndarray) -> float:
    """Mean width of the strokes: area over half the boundary (a stroke has two sides)."""
    mask = np.pad(mask, 1)  # the crop's edge is a stroke's edge too
    inner = mask & ~_dilate(~mask, 1)
    return float(mask.sum()) / max(1.0, (mask & ~inner).sum() / 2)


def _grey_dilate(pixels: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        padded = np.pad(pixels, 1)
        h, w = pixels.shape
        pixels = np.max([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
    return pixels


def mnist_pixels(grey: np.ndarray) -> tuple[np.ndarray | None, str]:
    """(28x28 pixels in MNIST's format, "") from a photo's grey levels, or (None, why no digit)."""
    from PIL import Image

    if min(grey.shape) < MIN_SIDE:
        return None, f"{grey.shape[1]}x{grey.shape[0]} pixels: too small to hold a digit"
    ink, digit_mask, problem = _ink(grey)
    if digit_mask is None:
        return None, problem
    rows, cols = np.flatnonzero(digit_mask.any(axis=1)), np.flatnonzero(digit_mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    full = np.percentile(ink[digit_mask], 75)  # a stroke's core: full white, like MNIST's 255
    floor = MIN_INK_CONTRAST / 2
    crop = np.clip((ink[box] - floor) / max(full - floor, 1e-6), 0, 1) * _dilate(digit_mask, 1)[box]
    to_box = DIGIT_BOX / max(crop.shape)
    width = _stroke_width(digit_mask[box]) * to_box
    if width < THIN_STROKE:
        grow = max(1, round((MNIST_STROKE - width) / 2 / to_box))
        crop = _grey_dilate(np.pad(crop, grow), grow)
        to_box = DIGIT_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * to_box)), max(1, round(crop.shape[0] * to_box)))
    scaled = Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return _centre_by_mass(np.asarray(scaled) * 255.0), ""
