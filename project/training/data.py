"""Raw IDX files -> verified in-memory tensors -> batches sliced by index.

Fetching and verifying the raw files is project.training.fetch's and project.training.raw's job (torch-free,
shared with `invoke upload`); their names are re-exported here. The run hands the DataModule its data as resolved once
(project/training/resolve.py), and the DataModule reads the files through that, verifying nothing again.
The DataModule holds the whole dataset as tensors and slices batches with one indexing op, so
there is no per-sample Python work and no 70,000 image files.

The training loader is resumable: its position within the epoch travels in every checkpoint, so a
run stopped mid-epoch (spot reclaim, SIGTERM) continues with the first batch it had not trained on.

This module is over 300 lines because it is one concern, the in-memory DataModules and their resumable
loaders.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from project.core.topology import per_device_batch
from project.training.fetch import fetch_raw, fetch_verified  # noqa: F401 (re-exported)
from project.training.raw import Contents, DataError, read_bytes, read_verified, sha256  # noqa: F401 (re-exported)
from project.training.resolve import Resolved

IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}  # IDX codes: big-endian


def parse_idx(content: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the IDX format: 2 zero bytes, a dtype code, the rank, big-endian dims, then data."""
    if len(content) < 4 or content[:2] != b"\x00\x00" or content[2] not in IDX_DTYPES:
        raise DataError(f"{name}: not an IDX file (bad magic number)")
    rank = content[3]
    header = 4 + 4 * rank
    if len(content) < header:
        raise DataError(f"{name}: IDX header truncated")
    dims = struct.unpack(f">{rank}I", content[4:header])
    dtype = np.dtype(IDX_DTYPES[content[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(content) - header != expected:
        raise DataError(f"{name}: IDX body has {len(content) - header} bytes, header promises {expected}")
    return np.frombuffer(content, dtype=dtype, offset=header).reshape(dims)


def load_verified(path: Path, expected_sha256: str) -> np.ndarray:
    """The file as an array, after checking its content against the expected SHA256."""
    return parse_idx(read_verified(path, expected_sha256), str(path))


def _pixels(images: np.ndarray) -> torch.Tensor:
    """IDX images as a tensor: uint8 (MNIST's) shared as they are, any other type as float32.

    The float32 copy is made by torch, not numpy: numpy asks the kernel for huge pages on large
    arrays, and where it compacts memory to find them (transparent_hugepage defrag=madvise) the
    first touch of MNIST's 188 MB cost 0.6-1.1 s against torch's 0.15 s on the benchmark machine.
    """
    if images.dtype == np.uint8:
        with warnings.catch_warnings():  # read-only (the decompressed bytes): only ever read here
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(images)
    return torch.from_numpy(images.astype(np.float32))


def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic train/val split: the same seed gives the same split on every machine."""
    if not 0 <= val_size < n:
        raise DataError(f"dataset.val_size={val_size} must be in [0, {n})")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def shard(indices: Sequence[int] | np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Contiguous, unpadded share of an evaluation split: every sample counted exactly once."""
    return np.array_split(np.asarray(indices), world_size)[rank]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order a training epoch visits n samples in: drawn from (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).numpy()


class IndexBatches:
    """Yields index batches; reshuffled per epoch by (seed, epoch), sharded over ranks for DDP.

    Training shards are padded by wrap-around to equal length, as DistributedSampler does, so all
    ranks take the same number of optimizer steps. Rank r's j-th batch is a slice of the j-th
    batch of a single-process run, so the global batch (the union over ranks) is the same
    samples whatever the world size.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.skip = 0  # batches of this epoch already trained on: the next pass starts after them
        # Where the data lives when it is resident on a GPU: the epoch's order is copied there
        # once and each batch is a slice of it, so no step waits on a host-to-device copy.
        self.device: torch.device | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> np.ndarray:
        order = epoch_order(self.n, self.seed, self.epoch) if self.shuffle else np.arange(self.n)
        per_rank = -(-self.n // self.world_size)
        order = np.resize(order, per_rank * self.world_size)  # wrap-around padding
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Any]:  # numpy index arrays, or device tensors (see device)
        # A generator: the order is drawn at the first batch, after Lightning's set_epoch().
        order: np.ndarray | torch.Tensor = self._indices()
        if self.device is not None:
            order = torch.as_tensor(order, device=self.device)
        first, self.skip = self.skip, 0
        for start in range(first * self.batch_size, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def __len__(self) -> int:
        per_rank = -(-self.n // self.world_size)
        return -(-per_rank // self.batch_size)


class EvalBatches(IndexBatches):
    def _indices(self) -> np.ndarray:
        return shard(np.arange(self.n), self.rank, self.world_size)

    def __len__(self) -> int:
        return -(-len(self._indices()) // self.batch_size)


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader whose position within the epoch survives a restart: over IndexBatches (its
    sampler), or over an iterable dataset that yields the epoch's batches itself and can skip the
    first ones in the same way (Pipe mode's imagefolder.PipedBatches: `epoch`, `skip`, `set_epoch`).

    `state_dict()` goes into every checkpoint (ResidentDataModule.state_dict) and `load_state_dict()`
    is applied before the resumed run's first batch. The position counts batches handed to the
    training loop (after any worker prefetch), so it is exact at every checkpoint; it applies
    only to the epoch it was taken in (a checkpoint from an epoch's end starts the next epoch
    from its first batch). `len()` stays the full epoch: Lightning counts the batches already
    done itself.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._epoch, self._delivered = 0, 0
        self._resume: dict[str, int] = {}

    def _batches(self) -> Any:
        """What orders the epoch's batches and skips the ones already trained on."""
        return self.dataset if isinstance(self.dataset, torch.utils.data.IterableDataset) else self.sampler

    def __iter__(self):
        batches = self._batches()
        if self._resume.get("epoch") == batches.epoch:
            batches.skip = min(self._resume["batches"], len(batches))
        self._resume = {}
        self._epoch, self._delivered = batches.epoch, batches.skip
        for batch in super().__iter__():
            self._delivered += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._delivered}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
        self._batches().set_epoch(self._resume["epoch"])  # Lightning sets it again, to the same value


class TensorSplit(torch.utils.data.Dataset):
    """Images and labels as tensors; `split[idx_array]` is one batch, sliced in one op."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx, device=self.labels.device)
        return self.images[idx], self.labels[idx]

    def to(self, device: torch.device) -> TensorSplit:
        return TensorSplit(self.images.to(device), self.labels.to(device))


class ResidentDataModule(pl.LightningDataModule):
    """The loaders of a dataset held whole in memory as TensorSplits (`self.splits`: train, val, test).

    A subclass fills `self.splits` in setup() and then calls `_place_splits(stage)`; batching by
    index, DDP sharding, GPU residency and the resumable training position are all here.
    """

    shards_by_rank = True  # its loaders shard over DDP ranks themselves: no DistributedSampler (train.build_run)

    def __init__(self, batch_size: int, seed: int, num_workers: int, on_device: bool):
        super().__init__()
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.on_device = on_device  # on a GPU run: keep the splits in GPU memory
        self.splits: dict[str, TensorSplit] = {}
        self._loaders: dict[str, IndexBatches] = {}
        self._train_loader: ResumableLoader | None = None
        self._train_position: dict[str, int] | None = None  # from a checkpoint, until applied

    def _place_splits(self, stage: str | None) -> None:
        device = self._resident_device()
        if device is not None:
            # Copied once; then each batch is one indexing op on the GPU and nothing crosses PCIe
            # (MNIST: 220 MB as float32). Loader workers would have to share CUDA tensors: not then.
            moved: dict[int, TensorSplit] = {}  # a split that serves twice (val as test) is copied once
            for name, split in self.splits.items():
                self.splits[name] = moved[id(split)] = moved.get(id(split)) or split.to(device)
        if stage == "fit":
            self._per_device_batch()  # an uneven split is refused before the first step
            samples = self._train_samples()
            if self.batch_size > samples:  # one short batch an epoch, not the batch asked for
                raise DataError(
                    f"trainer.batch_size={self.batch_size} is larger than the training set ({samples} samples "
                    f"after dataset.val_size): use trainer.batch_size={samples} or less"
                )

    def _train_samples(self) -> int:
        """The samples an epoch trains on."""
        return len(self.splits["train"])

    def _resident_device(self) -> torch.device | None:
        trainer = getattr(self, "trainer", None)
        if not self.on_device or self.num_workers or trainer is None:
            return None
        device = trainer.strategy.root_device
        return device if device.type == "cuda" else None

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _per_device_batch(self) -> int:
        trainer = getattr(self, "trainer", None)
        nodes = trainer.num_nodes if trainer is not None else 1
        return per_device_batch(self.batch_size, nodes, self._rank_world()[1] // nodes)

    def _loader(self, split: str, shuffle: bool):
        rank, world = self._rank_world()
        batches_cls = IndexBatches if shuffle else EvalBatches
        batches = batches_cls(len(self.splits[split]), self._per_device_batch(), shuffle, self.seed, rank, world)
        batches.device = self._resident_device()
        self._loaders[split] = batches
        loader_cls = ResumableLoader if shuffle else torch.utils.data.DataLoader
        # batch_size=None: the sampler yields whole index arrays, the dataset slices them at once.
        # A private generator: iterating a loader draws no number from the global RNG, so a
        # resumed run's dropout sees the same random stream as an uninterrupted one.
        return loader_cls(
            self.splits[split],
            sampler=batches,
            batch_size=None,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self):
        self._train_loader = self._loader("train", shuffle=True)
        if self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)
        return self._train_loader

    # The training loader's position travels in each checkpoint through these two hooks. Lightning
    # also saves a stateful loader's state itself, but restores it only into a loader built after
    # the checkpoint was loaded; the one-cycle schedule's `estimated_stepping_batches` builds it
    # before, so that copy would be ignored.
    def state_dict(self) -> dict[str, Any]:
        return {"train_position": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_position = state_dict.get("train_position")
        if self._train_loader is not None and self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)


class IdxDataModule(ResidentDataModule):
    """Any dataset shipped as four IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST splits).

    `data_dir`: the folder holding the files (the tool injects the train channel's; see
    project.training.modules). `resolved`: the files as the run verified them (the tool injects it); without
    it (the class used on its own) they are fetched and verified once, here. `cache_dir`: where a
    verified good copy may stand in for a damaged file of `data_dir`; by default `data_dir` itself.
    `batch_size` is the global batch: each process takes its share (topology.per_device_batch).
    """

    def __init__(
        self,
        data_dir: str,
        files: dict[str, str],
        cache_dir: str | None = None,
        batch_size: int = 256,
        val_size: int = 5000,
        mean: float = 0.0,
        std: float = 1.0,
        seed: int = 42,
        num_workers: int = 0,
        on_device: bool = True,
        num_classes: int | None = None,
        image_shape: list[int] | None = None,
        resolved: Resolved | None = None,
    ):
        super().__init__(batch_size, seed, num_workers, on_device)
        self.source, self.files = data_dir, dict(files)  # `source`: what the start line names
        self.resolved = resolved
        self.cache_dir = Path(cache_dir if cache_dir is not None else data_dir)
        self.val_size, self.mean, self.std = val_size, mean, std
        self.num_classes = num_classes  # labels must lie in [0, num_classes): checked once here
        # The config's sample shape (the network's input follows it): checked against the files once here.
        self.image_shape = list(image_shape) if image_shape is not None else None

    def _stem(self, kind: str, split: str) -> str:
        prefix = "train" if split == "train" else "t10k"
        matches = [s for s in self.files if s.startswith(prefix) and kind in s]
        if len(matches) != 1:
            raise DataError(f"dataset.files must name exactly one {prefix}*{kind}* file, found {matches}")
        return matches[0]

    def prepare_data(self) -> None:
        self._verified()

    def _verified(self) -> Resolved:
        """The files as the run resolved them, else fetched and verified once, by this DataModule.

        remember=False: in a SageMaker job the cache dir must stay empty when the data channel holds
        every file (what invoke's check recorded there is still used). Contents: a file verified here
        is decompressed once, for the check and the parse.
        """
        if self.resolved is None:
            contents = Contents()
            files = fetch_verified(self.source, self.cache_dir, self.files, remember=False, contents=contents)
            self.resolved = Resolved({"train": Path(self.source)}, files, contents)
        return self.resolved

    def _load(self, stem: str) -> np.ndarray:
        return parse_idx(self._verified().read(stem), str(self._verified().files[stem].path))

    def _tensors(self, split: str):
        images, labels = self._load(self._stem("images", split)), self._load(self._stem("labels", split))
        if len(images) != len(labels):
            raise DataError(f"{split}: {len(images)} images but {len(labels)} labels")
        sample = [1, *images.shape[1:]] if images.ndim == 3 else list(images.shape[1:])  # grey: one channel
        if self.image_shape is not None and sample != self.image_shape:
            given, found = (f"[{','.join(map(str, shape))}]" for shape in (self.image_shape, sample))
            raise DataError(
                f"dataset.image_shape={given} but the {split} images are {found} (C x H x W): "
                f"set dataset.image_shape={found}, the shape the network is built for"
            )
        if self.num_classes is not None and len(labels) and not 0 <= labels.min() <= labels.max() < self.num_classes:
            raise DataError(
                f"{split} labels run from {labels.min()} to {labels.max()}, outside 0..{self.num_classes - 1}: "
                f"set dataset.num_classes to the number of classes"
            )
        return _pixels(images), torch.from_numpy(labels.astype(np.int64))

    def _normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """(pixels / 255 - mean) / std as float32, N x C x H x W; one split's, after it was indexed."""
        x = pixels.div(255.0).sub_(self.mean).div_(self.std)  # uint8 / float -> float32
        if x.dim() == 3:
            x = x.unsqueeze(1)  # N x H x W -> N x 1 x H x W
        return x.contiguous()

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and "train" not in self.splits:
            x, y = self._tensors("train")
            train_idx, val_idx = split_indices(len(y), self.val_size, self.seed)
            # Indexed as stored (uint8: 4x less to copy), then made float once per split.
            self.splits["train"] = TensorSplit(self._normalized(x[train_idx]), y[train_idx])
            self.splits["val"] = TensorSplit(self._normalized(x[val_idx]), y[val_idx])
        if stage in (None, "test", "predict") and "test" not in self.splits:
            x, y = self._tensors("test")
            self.splits["test"] = TensorSplit(self._normalized(x), y)
        self._place_splits(stage)
