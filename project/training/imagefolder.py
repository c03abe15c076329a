"""`dataset=imagefolder`: a class-per-subfolder tree of PNG/JPEG images as a LightningDataModule.

    invoke local dataset=imagefolder dataset.channels.train=path/to/tree dataset.num_classes=3

Each channel folder is either the tree itself (a local run) or the shards `invoke upload` packed it
into (a SageMaker job: the folder holds project.training.imagetree's `shards.json`). Either way every image
is decoded once, converted to `image_shape` (C x H x W: C is 1 for grey, 3 for RGB; resized to
H x W when it differs) and held in memory as uint8
(N x C x H x W: 10,000 28x28 grey images are 7.8 MB); batches are sliced by index as for the IDX
datasets (project.training.data.ResidentDataModule: DDP sharding, GPU residency, resumable position), and
normalised (and, for training, augmented) a whole batch at a time.

This module is over 300 lines because it is one concern, an image tree as a DataModule, in File
mode and in Pipe mode (PipedBatches: the stream's batches, resumable mid-epoch like File mode's).
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from project.training import imagetree, pipe
from project.training.data import ResidentDataModule, ResumableLoader, TensorSplit, epoch_order, split_indices
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
        shuffle_buffer: int = pipe.SHUFFLE_BUFFER,
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
        self.shuffle_buffer = shuffle_buffer  # Pipe mode: samples a rank holds to shuffle the stream
        self.streams: pipe.EpochStreams | None = None  # the train channel's FIFOs, in Pipe mode
        self._augment_generator = torch.Generator().manual_seed(seed)  # Pipe mode's batches' augmentation

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
        return self._decoded(samples, folder)

    def _decoded(self, samples: list[imagetree.Sample], folder: str) -> tuple[torch.Tensor, torch.Tensor]:
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
        if not self.splits and pipe.is_piped(Path(self.dirs["train"] or "")):
            self._setup_piped()
        if not self.splits:
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

    # --- Pipe mode (project.training.pipe): the train channel streamed, one FIFO per epoch ----------

    def _setup_piped(self) -> None:
        """The first FIFO's manifest (classes, sample count; the FIFO stays open for the first epoch),
        then the validation and test channels, read once as in File mode."""
        if self.dirs["val"] is None:
            raise DataError(
                "the train channel is in Pipe mode, so nothing of it can be held out: add a validation channel"
            )
        self.streams = pipe.EpochStreams(Path(str(self.dirs["train"])))
        self._check_classes(list(self.streams.head()["classes"]), str(self.dirs["train"]))
        vx, vy = self._load("val")
        self.splits["val"] = self.splits["test"] = self._split(vx, vy, np.arange(len(vy)), augment=False)
        if self.dirs["test"] is not None:
            tx, ty = self._load("test")
            self.splits["test"] = self._split(tx, ty, np.arange(len(ty)), augment=False)

    def _train_samples(self) -> int:
        if self.streams is not None and self.streams.first is not None:
            return int(self.streams.first["samples"])
        return super()._train_samples()

    def train_dataloader(self):
        if self.streams is None:
            return super().train_dataloader()
        trainer = getattr(self, "trainer", None)
        rank, world = self._rank_world()
        batches = PipedBatches(
            self, self.streams, self._per_device_batch(), rank, world, lambda: trainer.current_epoch if trainer else 0
        )
        # One reader per FIFO: no workers. A private generator, as File mode's: the global RNG (dropout) is not drawn.
        # Resumable as File mode's: a run stopped mid-epoch goes on with the first batch it had not trained on.
        generator = torch.Generator().manual_seed(self.seed)
        self._train_loader = ResumableLoader(batches, batch_size=None, num_workers=0, generator=generator)
        if self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)
        return self._train_loader

    def piped_batch(self, samples: list[imagetree.Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples of the stream as one normalised (and, when asked, augmented) batch."""
        images, labels = self._decoded(samples, str(self.dirs["train"]))
        split = ImageSplit(images, labels, self.mean, self.std, self.augment)
        split.generator = self._augment_generator  # one random stream over the epochs, as File mode's
        return split[torch.arange(len(samples))]

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self.streams is not None:
            self.streams.close()


class PipedBatches(torch.utils.data.IterableDataset):
    """The train channel in Pipe mode: each pass (one per epoch) reads the next FIFO, keeps this
    rank's share, shuffles it within `shuffle_buffer` samples, seeded by (seed, epoch, rank), and
    yields batches. Every rank yields as many batches (pipe.share).

    Resumable (data.ResumableLoader): a pass's order depends only on the stream, the seed, the
    epoch and the rank, so a job resumed mid-epoch (spot, a re-run: it reads `train_0` again) reads
    the pass from its head and skips the `skip` batches it had trained on, undecoded.
    """

    def __init__(
        self,
        module: ImageFolderDataModule,
        streams: pipe.EpochStreams,
        batch_size: int,
        rank: int,
        world: int,
        epoch: Callable[[], int],
    ):
        self.module, self.streams, self.batch_size = module, streams, batch_size
        self.rank, self.world, self._epoch = rank, world, epoch
        self.count = int((streams.first or streams.head())["samples"])  # the first pass's: opens no FIFO early
        self.skip = 0  # batches of this epoch already trained on (a resumed run): read, not yielded

    @property
    def epoch(self) -> int:
        return self._epoch()

    def set_epoch(self, epoch: int) -> None:
        """Nothing to set: a pass's epoch is the trainer's (restored from the checkpoint with its loops)."""

    def __len__(self) -> int:
        return -(-(self.count // self.world) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, skipped = self.epoch, self.skip * self.batch_size
        self.skip = 0
        seed, buffer, share = self.module.seed, self.module.shuffle_buffer, self.count // self.world
        stream = self.streams.next_pass()
        path = pipe.fifo_path(self.streams.channel_dir, self.streams.opened - 1).name
        samples = pipe.share(stream, self.rank, self.world, self.count)
        if buffer >= share:
            # The whole share fits the buffer: File mode's own order of it (data.epoch_order), so a
            # one-process run trains on the same batches in either mode.
            held = list(samples)
            mine: Iterable[imagetree.Sample] = [held[i] for i in epoch_order(len(held), seed, epoch)]
        else:
            mine = pipe.shuffled(samples, buffer, random.Random(f"{seed}-{epoch}-{self.rank}"))
        batch: list[imagetree.Sample] = []
        fingerprint = pipe.Fingerprint()
        for kept, sample in enumerate(mine, start=1):
            if kept > skipped:  # else trained on before the run was stopped: read (the stream goes on), not decoded
                batch.append(sample)
            fingerprint.add(sample.relpath)
            if kept == share:  # before the last batch: Lightning asks for no batch after len(self)
                # What this rank read of the pass, in a line per epoch (its share: count // world samples).
                print(
                    f"pipe: {path} epoch {epoch} rank {self.rank}/{self.world}: {kept} of {self.count} samples, "
                    f"fingerprint {fingerprint}",
                    flush=True,
                )
            if batch and (len(batch) == self.batch_size or kept == share):
                yield self.module.piped_batch(batch)
                batch = []
