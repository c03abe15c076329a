"""Classify photos or scans of handwritten digits with a run's exported TorchScript model.

The model takes MNIST's format (model/README.md states it): 28x28 grey levels in [0, 255], a
light digit on a dark ground, scaled into a 20x20 box and centred by its centre of mass. A
photo is brought into that format the way MNIST itself was built (`mnist_pixels`); `raw=True`
skips that for images already in the model's format (PNGs of the IDX files, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from project.core.errors import UserError
from project.serving.archive import CONTRACT_FILE, TORCHSCRIPT_FILE
from project.serving.preprocess import MNIST_SIZE, ImageError, mnist_pixels
from project.serving.preprocess import load_grey as _load_grey

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Below this top-class probability the answer is printed as unsure, with both candidates. The
# 1-epoch default CNN is above it on ~96% of clean MNIST test digits and ~94% of the photo-like
# renderings of tests/photos.py, and every answer it got wrong there was below 0.75.
MIN_CONFIDENCE = 0.8


class PredictError(UserError):
    pass


@dataclass(frozen=True)
class Prediction:
    path: Path
    ranked: tuple[tuple[int, float], ...]  # (class, probability), best first; empty if no digit
    problem: str | None = None  # why there is no answer, e.g. "flat image"

    @property
    def label(self) -> int | None:
        return self.ranked[0][0] if self.ranked else None

    @property
    def unsure(self) -> bool:
        return not self.ranked or self.ranked[0][1] < MIN_CONFIDENCE

    def __str__(self) -> str:
        if not self.ranked:
            return f"{self.path}: no digit found ({self.problem})"
        (first, p_first), (second, p_second) = self.ranked[:2]
        if self.unsure:
            return f"{self.path}: unsure: {first} (p={p_first:.3f}) or {second} (p={p_second:.3f})"
        return f"{self.path}: {first} (p={p_first:.3f}), next {second} (p={p_second:.3f})"


def run_folder(spec: str, overrides: list[str]) -> Path:
    """The folder of the run `spec` names: a path, or a run's name under paths.runs_dir."""
    from project.core.config import compose
    from project.core.run_ref import resolve_run

    return resolve_run(spec, compose(overrides).paths.runs_dir).folder


def find_model(run_dir: Path) -> Path:
    path = Path(run_dir) / "model" / TORCHSCRIPT_FILE
    if not path.is_file():
        raise PredictError(f"no exported model at {path}: train with `invoke local` or fetch a job with `invoke fetch`")
    if not (path.parent / CONTRACT_FILE).is_file():  # written for the built-in image classifier only
        raise PredictError(
            f"{path.parent} holds no image classifier's contract ({CONTRACT_FILE}): `invoke predict` runs "
            "runs of the built-in classifier (model=cnn, mlp or your own net); load model.ts yourself for other models"
        )
    return path


def expand_images(spec: str) -> list[Path]:
    """A file, a folder of PNG/JPEG images, or a comma-separated list of either."""
    paths: list[Path] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        path = Path(part)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        elif path.is_file():
            paths.append(path)
        else:
            raise PredictError(f"image not found: {path}")
    if not paths:
        raise PredictError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {spec!r}")
    return paths


def load_grey(path: Path, max_side: int | None = None) -> np.ndarray:
    """preprocess.load_grey, its problems as PredictError (one line, exit 2)."""
    try:
        return _load_grey(path, max_side=max_side) if max_side else _load_grey(path)
    except ImageError as exc:
        raise PredictError(str(exc)) from None


def check_images(images: Sequence[Path], raw: bool = False) -> None:
    """Every image readable as the model's input (`raw`: already 28x28), checked before any model
    runs or any transform job is paid for (`invoke predict`, `invoke batch-predict`): the first that
    is not is one line. A readable image with no digit in it is an answer, not an error."""
    for path in images:
        if raw:
            raw_pixels(path)
        else:
            load_grey(path)


def predict(run_dir: Path, images: Sequence[Path], raw: bool = False) -> list[Prediction]:
    """One Prediction per image, in order; `raw`: the images already are 28x28 MNIST-format pixels."""
    import torch

    check_images(images, raw)
    model = torch.jit.load(str(find_model(run_dir)), map_location="cpu").eval()
    prepared = [raw_pixels(path) if raw else mnist_pixels(load_grey(path)) for path in images]
    digits = {i: pixels for i, (pixels, _) in enumerate(prepared) if pixels is not None}
    ranked: dict[int, tuple[tuple[int, float], ...]] = {}
    if digits:
        batch = torch.from_numpy(np.stack(list(digits.values())).astype(np.float32))[:, None]
        with torch.no_grad():
            top = model(batch).topk(2, dim=1)
        for i, values, classes in zip(digits, top.values.tolist(), top.indices.tolist(), strict=True):
            ranked[i] = tuple(zip(classes, values, strict=True))
    return [
        Prediction(path, ranked.get(i, ()), problem or None)
        for i, (path, (_, problem)) in enumerate(zip(images, prepared, strict=True))
    ]


def raw_pixels(path: Path) -> tuple[np.ndarray, str]:
    grey = load_grey(path, max_side=10**9)
    if grey.shape != (MNIST_SIZE, MNIST_SIZE):
        raise PredictError(
            f"{path}: {grey.shape[1]}x{grey.shape[0]} pixels; --raw takes {MNIST_SIZE}x{MNIST_SIZE} images "
            "already in MNIST's format (drop --raw for photos)"
        )
    return grey, ""
