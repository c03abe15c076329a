"""`dataset=imagefolder`: a class-per-subfolder tree of PNG/JPEG images as a LightningDataModule.

    invoke local dataset=imagefolder dataset.channels.train=path/to/tree dataset.num_classes=3

Each channel folder is either the tree itself (a local run) or the shards `invoke upload` packed it
into (a SageMaker job: the folder holds project.training.imagetree's `shards.json`). Either way every image
is decoded once, converted to `image_shape` (C x H x W: C is 1 for grey, 3 for RGB; resized to
H x W when it differs) and held in memory as uint8
(N x C x H x W: 10,000 28x28 grey images are 7.8 MB); batches are sliced by index as for the IDX
datasets (project.training.data.ResidentDataModule: DDP sharding, GPU residency, resumable position), and
normalised (and, for training, augmented) a whole batch at a time.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from project.training import imagetree
from project.training.data import ResidentDataModule, TensorSplit, split_indices
from project.training.raw import DataError

COLOR_MODES = {1: "L", 3: "RGB"}  # dataset.image_shape[0] (colour channels) -> Pillow's mode
DECODE_WORKERS = 4  # Pillow releases the GIL while decoding: a few threads decode in parallel


def _per_channel(value: float | Sequence[float], channels: int, name: str) -> torch.Tensor:
    values = [float(value)] * channels if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != channels:
        raise DataError(
            f"dataset.{name} has {len(values)} values for {channels} colour channel(s): give one or {channels}"
        )
    return torch.tensor(values).view(1, channels, 1, 1)


class ImageSplit(TensorSplit):
    """uint8 images in memory; `split[idx]` is one normalised float batch (augmented when asked)."""

    def __init__(self, images, labels, mean: torch.Tensor, std: torch.Tensor, augment: bool = False, seed: int = 0):
        super().__init__(images, labels)
        self.mean, self.std, self.augment = mean.to(images.device), std.to(images.device), augment
        self.generator = torch.Generator().manual_seed(seed)  # augmentation draws nothing from the global RNG

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx, device=self.labels.device)
        x = self.images[idx]
        if self.augment:
            x = self._augment(x)
        return (x.float().div_(255.0) - self.mean) / self.std, self.labels[idx]

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop after zero padding by 1/8 of the side, and a random horizontal flip, per image."""
        n, _, h, w = x.shape
        pad = max(1, min(h, w) // 8)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy, dx, flip = (torch.randint(0, 2 * pad + 1, (n,), generator=self.generator) for _ in range(3))
        rows = (dy[:, None] + torch.arange(h)).to(x.device)  # n x h
        cols = (dx[:, None] + torch.arange(w)).to(x.device)  # n x w
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        return torch.where((flip % 2 == 1).to(x.device)[:, None, None, None], x.flip(-1), x)

    def to(self, device: torch.device) -> ImageSplit:
        moved = ImageSplit(self.images.to(device), self.labels.to(device), self.mean, self.std, self.augment)
        moved.generator = self.generator
        return moved


class ImageFolderDataModule(ResidentDataModule):
    """Images in class subfolders (`<channel>/<class>/<image>.png|.jpg`); the class index is the
    position of its folder name in sorted order."""

    def __init__(
        self,
        train_dir: str,
        validation_dir: str | None = None,
        test_dir: str | None = None,
        num_classes: int | None = None,
        image_shape: Sequence[int] = (1, 28, 28),
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
        val_size: float = 0.1,
        augment: bool = False,
        batch_size: int = 256,
        seed: int = 42,
        num_workers: int = 0,
        on_device: bool = True,
        shard_mb: float = imagetree.SHARD_MB,
    ):
        super().__init__(batch_size, seed, num_workers, on_device)
        shape = [int(n) for n in image_shape]
        if len(shape) != 3 or shape[0] not in COLOR_MODES or min(shape) < 1:
            raise DataError(
                f"dataset.image_shape={list(image_shape)} is not [channels, height, width] with 1 (grey) "
                "or 3 (RGB) channels: write e.g. dataset.image_shape=[3,64,64]"
            )
        self.dirs = {"train": train_dir, "val": validation_dir, "test": test_dir}
        self.num_classes, self.augment = num_classes, augment
        self.source = train_dir  # the start line names it
        channels, *size = shape
        self.mode, self.image_size = COLOR_MODES[channels], (size[0], size[1])  # Pillow's mode; height, width
        self.mean, self.std = _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")
        self.val_size = val_size  # held out of train when there is no validation channel: a fraction, or a count
        self.shard_mb = shard_mb  # `invoke upload` packs each channel into shards of about this size
        self.image_shape = shape  # one sample, for the model's example input
        self.classes: list[str] = []

    def _load(self, channel: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A channel's images (N x C x H x W uint8) and labels, from its shards or its tree."""
        folder = self.dirs[channel]
        if folder is None:
            raise DataError(f"the {channel} channel has no folder")
        if imagetree.is_packed(Path(folder)):
            classes, samples = imagetree.read_shards(Path(folder))
        else:
            classes, files = imagetree.scan_tree(Path(folder))
            samples = [imagetree.Sample(f.relpath, f.label, f.path.read_bytes()) for f in files]
        self._check_classes(classes, folder)
        with ThreadPoolExecutor(DECODE_WORKERS) as pool:
            pixels = list(pool.map(lambda sample: self._decode(sample, folder), samples))
        images = torch.from_numpy(np.stack(pixels))
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
        return images.contiguous(), labels

    def _check_classes(self, classes: list[str], folder: str) -> None:
        if not self.classes:
            self.classes = classes
        elif classes != self.classes:
            raise DataError(
                f"{folder} has classes {classes}, the train channel {self.classes}: "
                "give every channel the same class folders"
            )
        if self.num_classes is not None and self.num_classes != len(classes):
            raise DataError(
                f"dataset.num_classes={self.num_classes} but {folder} has {len(classes)} class folders "
                f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}): "
                f"set dataset.num_classes={len(classes)}"
            )

    def _decode(self, sample: imagetree.Sample, folder: str) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(sample.data)) as stored:
                image = stored.convert(self.mode)
            if image.size != self.image_size[::-1]:
                image = image.resize(self.image_size[::-1], Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # what Pillow raises
            reason = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))  # Pillow names its buffer
            raise DataError(
                f"unreadable image {sample.relpath} in {folder} ({reason}): replace or delete the file"
            ) from None

    def _split(self, images: torch.Tensor, labels: torch.Tensor, idx: np.ndarray, augment: bool) -> ImageSplit:
        return ImageSplit(images[idx], labels[idx], self.mean, self.std, augment, self.seed)

    def setup(self, stage: str | None = None) -> None:
        if "train" not in self.splits:
            x, y = self._load("train")
            if self.dirs["val"] is not None:
                train_idx, val_idx = np.arange(len(y)), None
            else:
                count = int(round(self.val_size * len(y))) if 0 < self.val_size < 1 else int(self.val_size)
                train_idx, val_idx = split_indices(len(y), count, self.seed)
            self.splits["train"] = self._split(x, y, train_idx, self.augment)
            if val_idx is None:
                vx, vy = self._load("val")
                val_idx, x, y = np.arange(len(vy)), vx, vy
            self.splits["val"] = self._split(x, y, val_idx, augment=False)
            # No test channel: the test metrics are the validation split's.
            self.splits["test"] = self.splits["val"]
            if self.dirs["test"] is not None:
                tx, ty = self._load("test")
                self.splits["test"] = self._split(tx, ty, np.arange(len(ty)), augment=False)
        self._place_splits(stage)
