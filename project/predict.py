"""Classify images with a run's exported TorchScript model: proof the artifact is usable alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .artifacts import TORCHSCRIPT_FILE
from .errors import UserError


class PredictError(UserError):
    pass


def find_model(run_dir: Path) -> Path:
    path = Path(run_dir) / "model" / TORCHSCRIPT_FILE
    if not path.is_file():
        raise PredictError(f"no exported model at {path}: train with `invoke local` or fetch a job with `invoke fetch`")
    return path


def expand_images(spec: str) -> list[Path]:
    """A file, a directory of PNGs, or a comma-separated list of either."""
    paths: list[Path] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        path = Path(part)
        if path.is_dir():
            paths.extend(sorted(path.glob("*.png")))
        elif path.is_file():
            paths.append(path)
        else:
            raise PredictError(f"image not found: {path}")
    if not paths:
        raise PredictError(f"no images in {spec!r}")
    return paths


def load_pixels(path: Path, height: int, width: int) -> np.ndarray:
    """Grey-scale pixels in [0, 255], light digit on dark ground like the training data."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("L")
    except (UnidentifiedImageError, OSError) as exc:
        raise PredictError(f"{path}: not a readable image ({exc})") from None
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.mean() > 127:  # dark digit on a light page: invert to match MNIST
        pixels = 255.0 - pixels
    return pixels


def predict(run_dir: Path, images: Sequence[Path], height: int = 28, width: int = 28) -> list[tuple[Path, int, float]]:
    model = torch.jit.load(str(find_model(run_dir)), map_location="cpu").eval()
    batch = torch.from_numpy(np.stack([load_pixels(p, height, width) for p in images]))[:, None]
    with torch.no_grad():
        probs = model(batch)
    confidence, label = probs.max(dim=1)
    return [(path, int(lab), float(conf)) for path, lab, conf in zip(images, label, confidence, strict=True)]
