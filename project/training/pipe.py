"""SageMaker's Pipe mode for a packed image channel: each epoch's shards streamed through a FIFO.

In Pipe mode SageMaker copies nothing to disk: for channel `train` it makes one FIFO per epoch,
`/opt/ml/input/data/train_<k>`, and writes into it, once a reader opens it, the concatenation of
the channel's S3 objects (here the ones SageMaker's manifest of the channel lists, in its order:
`shards.json`, then each shard). The k-th FIFO is the k-th pass a job reads; the next appears once
the previous one is drained and closed. Standard library only (the DataModule turns samples into
tensors: project.training.imagefolder).

Decisions:
- FIFO index vs epoch: the FIFO index counts the passes *this job* has opened (`EpochStreams`),
  never Lightning's epoch number: a resumed job (spot, a re-run) starts at `train_0` again while its
  trainer resumes at epoch e. Lightning's epoch seeds the shuffle, so a pass is reproducible.
- Shares: every instance's FIFO holds the whole channel (FullyReplicated); rank r of world w keeps
  the samples at stream positions r, r + w, ... and only `count // w` of them, so every rank takes the
  same number of steps (DDP waits on each step of every rank) and the shares are disjoint.
- What a rank read of a pass is in its log, one line per epoch: its count and a fingerprint of its
  samples' names (`Fingerprint`, blind to their order), so the hosts' lines show their shares
  apart (different fingerprints) and the same from one run to the next (the same ones).
- One reader per FIFO: bytes written into a FIFO go to whichever reader takes them first, so no two
  processes may read one. Where one process trains on an instance, it reads SageMaker's FIFOs
  itself; where several do (one per GPU), the launcher relays each pass to a FIFO of each local
  rank (project/training/pipe_relay.py), `<RELAY_ENV>/<LOCAL_RANK>/train_<k>`, each rank reads the
  whole stream and keeps its share as above (`reader_dir` names the folder). A rank reads its FIFO in
  its main process (no loader workers: they cannot share it).
- A pass is always drained to the end, even by a reader that stopped early (limit_train_batches):
  SageMaker (and the sandbox) opens the next FIFO only when the previous one is finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from project.training import imagetree
from project.training.raw import DataError

PIPE = "Pipe"  # SageMaker's name of the input mode
SHUFFLE_BUFFER = 1000  # samples a rank holds to shuffle a stream (encoded bytes: ~1 MB of 1 kB PNGs)
FIFO_WAIT_SECONDS = 120.0  # how long a reader waits for the next epoch's FIFO to appear
CHUNK = 1 << 16
# Set by the launcher where it relays a piped channel to several processes of an instance
# (project/training/pipe_relay.py): the folder that holds each local rank's FIFOs.
RELAY_ENV = "LIGHTNING_SAGEMAKER_PIPE_RELAY_DIR"
T = TypeVar("T")


def check_input_modes(dataset: Mapping[str, Any]) -> None:
    """Pipe only where it helps: the train channel of a dataset packed into shards, read with a
    validation channel beside it. One line (a DataError) for anything else, before anything is launched."""
    modes = dict(dataset.get("input_modes") or {})
    piped = sorted(channel for channel, mode in modes.items() if mode == PIPE)
    if not piped:
        return
    name = dataset.get("name")
    if not imagetree.packs(dataset):
        raise DataError(
            f"dataset.input_modes.{piped[0]}=Pipe: dataset {name} is a few files read once, Pipe streams "
            "them again every epoch; FastFile or File is the better choice (Pipe is for dataset=imagefolder shards)"
        )
    if piped != ["train"]:
        raise DataError(
            f"dataset.input_modes.{piped[-1]}=Pipe: only the train channel is streamed (each epoch); "
            f"read {piped[-1]} once with File or FastFile"
        )
    if "validation" not in (dataset.get("channels") or {}):
        raise DataError(
            "dataset.input_modes.train=Pipe streams the train channel, so nothing of it can be held out: "
            "add +dataset.channels.validation=<folder> (read in File or FastFile mode)"
        )


def fifo_path(channel_dir: Path, index: int) -> Path:
    """SageMaker's FIFO of a channel's pass `index`: /opt/ml/input/data/<channel>_<index>."""
    return channel_dir.parent / f"{channel_dir.name}_{index}"


def relay_dir(root: Path, local_rank: int, channel: str) -> Path:
    """Where a relay (project/training/pipe_relay.py) puts local rank `local_rank`'s FIFOs of a channel."""
    return root / str(local_rank) / channel


def reader_dir(channel_dir: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """Where this process reads a piped channel: SageMaker's FIFOs beside `channel_dir`, or, where the
    launcher relays them to several processes (RELAY_ENV), its own local rank's (torchrun's LOCAL_RANK)."""
    root = environ.get(RELAY_ENV)
    if not root:
        return channel_dir
    return relay_dir(Path(root), int(environ.get("LOCAL_RANK", "0")), channel_dir.name)


def _is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(path.stat().st_mode)
    except OSError:
        return False


def is_piped(channel_dir: Path) -> bool:
    """Whether a job reads this channel in Pipe mode: no folder, its first FIFO in its place."""
    return not channel_dir.is_dir() and _is_fifo(fifo_path(channel_dir, 0))


def share(items: Iterable[T], rank: int, world: int, count: int) -> Iterator[T]:
    """Rank `rank`'s share of a stream of `count` items: positions rank, rank + world, ..., at most
    count // world of them (equal shares: every rank takes as many steps). Reads `items` to the end."""
    keep = count // world
    for position, item in enumerate(items):
        if position % world == rank and position // world < keep:
            yield item


class Fingerprint:
    """An order-blind fingerprint of a set of sample names: the sum of their SHA-256s (the first 8 bytes
    of each) mod 2**64, as 16 hex digits. Taken in one pass, in constant memory, whatever the shuffle;
    two different sets of names print the same one with a chance of about 2**-64."""

    BYTES = 8

    def __init__(self) -> None:
        self.total = 0

    def add(self, name: str) -> None:
        digest = hashlib.sha256(name.encode()).digest()[: self.BYTES]
        self.total = (self.total + int.from_bytes(digest, "big")) % (1 << (8 * self.BYTES))

    def __str__(self) -> str:
        return f"{self.total:0{2 * self.BYTES}x}"

    @classmethod
    def of(cls, names: Iterable[str]) -> str:
        fingerprint = cls()
        for name in names:
            fingerprint.add(name)
        return str(fingerprint)


def shuffled(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """A shuffle within a buffer of `size` items (WebDataset's and tf.data's): each item leaves at a
    random point at most `size` items later. A size of 0 or 1 keeps the order."""
    if size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


class _Stream:
    """A FIFO's bytes, with what was read ahead of the manifest kept for the shards."""

    def __init__(self, file: IO[bytes], ahead: bytes, path: Path):
        self.file, self.ahead, self.path = file, ahead, path

    def read_exact(self, size: int) -> bytes:
        parts, need = [self.ahead[:size]], size - min(size, len(self.ahead))
        self.ahead = self.ahead[size:]
        while need:
            chunk = self.file.read(min(need, 1 << 22))
            if not chunk:
                raise DataError(f"{self.path} ended {need} bytes early: the channel's objects changed during the job")
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    def drain(self) -> None:
        while self.file.read(CHUNK):
            pass
        self.file.close()


def _read_manifest(file: IO[bytes], path: Path) -> tuple[dict, bytes]:
    """`shards.json` at the head of a pass (ASCII JSON, then the shards' bytes), and the bytes read past it."""
    buffer, decoder = b"", json.JSONDecoder()
    while True:
        chunk = file.read(CHUNK)
        if not chunk:
            raise DataError(f"{path} holds no {imagetree.MANIFEST} at its head: upload the dataset again")
        buffer += chunk
        try:
            manifest, end = decoder.raw_decode(buffer.decode("latin-1"))  # latin-1: one char per byte
        except ValueError:
            if len(buffer) > 1 << 26:
                raise DataError(f"{path} does not start with {imagetree.MANIFEST}: upload the dataset again") from None
            continue
        rest = buffer[end:].lstrip(b"\n")
        if not isinstance(manifest, dict) or manifest.get("format") != imagetree.MANIFEST_FORMAT:
            raise DataError(f"{path} does not start with a {imagetree.MANIFEST} of format {imagetree.MANIFEST_FORMAT}")
        return manifest, rest


def open_fifo(path: Path, wait: float = FIFO_WAIT_SECONDS) -> IO[bytes]:
    """The FIFO, opened for reading once it exists (SageMaker makes the next one after the last closed)."""
    deadline, pause = time.monotonic() + wait, 0.01
    while not _is_fifo(path):
        if time.monotonic() > deadline:
            raise DataError(f"{path} did not appear within {wait:.0f} s: is the channel in Pipe mode?")
        time.sleep(pause)
        pause = min(pause * 2, 1.0)
    return open(path, "rb")  # noqa: SIM115  closed by _Stream.drain


class EpochStreams:
    """The passes of one channel in Pipe mode: the k-th call of `next_pass` reads `<channel>_<k>`.

    `head()` opens the next FIFO early to read its manifest (the classes and the sample count,
    needed to build the model and count the steps before the first epoch) and keeps it open for
    that pass.
    """

    def __init__(self, channel_dir: Path):
        self.channel_dir, self.opened = Path(channel_dir), 0
        self._next: tuple[dict, _Stream] | None = None
        self._current: _Stream | None = None
        self.first: dict | None = None  # the first pass's manifest: every pass must match it

    def head(self) -> dict:
        if self._next is None:
            path = fifo_path(self.channel_dir, self.opened)
            self._finish_current()
            file = open_fifo(path)
            self.opened += 1
            manifest, ahead = _read_manifest(file, path)
            self._next = (manifest, _Stream(file, ahead, path))
        manifest = self._next[0]
        if self.first is None:
            self.first = manifest
        elif manifest["shards"] != self.first["shards"]:
            raise DataError(
                f"{self._next[1].path} streams other shards than the first pass: upload no data during a job"
            )
        return manifest

    def _finish_current(self) -> None:
        if self._current is not None:
            self._current.drain()
            self._current = None

    def next_pass(self) -> Iterator[imagetree.Sample]:
        """Every sample of the next pass, in the stream's order; the pass is read to its end."""
        manifest = self.head()
        assert self._next is not None
        stream = self._current = self._next[1]
        self._next = None
        return self._samples(manifest, stream)

    def _samples(self, manifest: dict, stream: _Stream) -> Iterator[imagetree.Sample]:
        for entry in manifest["shards"]:
            content = stream.read_exact(int(entry["bytes"]))
            if hashlib.sha256(content).hexdigest() != entry["sha256"]:
                raise DataError(
                    f"shard {entry['name']} in {stream.path} does not match its SHA256 in {imagetree.MANIFEST}"
                )
            yield from imagetree.shard_samples(content, stream.path / entry["name"])
        if self._current is stream:
            self._finish_current()

    def close(self) -> None:
        """Training is over: close what is open, unread (nothing waits for the rest of a pass now)."""
        for stream in (self._current, self._next[1] if self._next else None):
            if stream is not None:
                stream.file.close()
        self._current = self._next = None
