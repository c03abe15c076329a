"""Pipe mode with several training processes on one instance: the launcher relays each pass to each.

SageMaker gives an instance one FIFO per pass of a Pipe channel, `/opt/ml/input/data/train_<k>`,
and the bytes of a FIFO go to whichever reader takes them first: two processes cannot share it.
So where torchrun runs several processes on an instance (one per GPU), the launcher (PID 1,
project/training/launch.py) runs a Relay: for pass k it makes `<root>/<local rank>/train_<k>` for
every local rank, waits until every rank has opened its own, only then opens SageMaker's
`train_<k>` (SageMaker streams once it is opened) and copies all of it to every rank. A rank reads
its FIFOs as it would SageMaker's (pipe.EpochStreams on pipe.reader_dir: the launcher names the
root in pipe.RELAY_ENV) and keeps its global share of the whole stream with pipe.share, so the
shares stay disjoint and equal across hosts and ranks. Standard library only.

Decisions:
- No lock step: one thread reads SageMaker's FIFO into a queue per rank, and a writer thread per
  rank empties its own. A tee that wrote each chunk to every rank in turn would deadlock: under DDP
  rank 0 waits in an all-reduce for rank 1 while rank 1 waits for bytes that sit behind rank 0's full
  pipe (a rank reads a whole shard at a time, and its later samples lie later in the stream).
- Memory: the reader waits while every rank still reading has BACKLOG bytes queued, so the rank
  furthest ahead has at most BACKLOG (and a chunk) waiting. A rank behind it holds in addition how
  far it is behind, which DDP bounds: the ranks wait for each other at every step, so their batches
  are within a step or two (Lightning fetches one batch ahead); every rank reads ahead of its batch by
  the same shuffle buffer, and by at most one shard more than another (a shard is read whole:
  dataset.shard_mb). A rank whose share fits its buffer reads the whole pass before its first step:
  such a pass is at most the buffer's samples times the world size. A chunk is one object in every
  queue, so the relay holds what the rank furthest behind has yet to take, not that times the ranks.
- A rank whose FIFO breaks (the process died, or closed it at the end of training) is dropped from
  that pass; the others go on (torchrun ends a job whose worker failed). SageMaker's FIFO is always
  read to its end, whoever reads, so that SageMaker makes the next.
- The threads are daemons: at the job's end the relay waits for a pass no rank opens, and PID 1
  exits anyway (`close` ends them sooner).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, MutableMapping
from pathlib import Path

from project.training import pipe
from project.training.raw import DataError

CHUNK = 1 << 20  # bytes taken from SageMaker's FIFO at a time (less when less has arrived)
BACKLOG = 16 << 20  # bytes queued for every rank before the reader waits: keeps the fastest rank fed
OPEN_POLL_SECONDS = 0.05  # how often a writer looks whether its rank opened the next pass's FIFO


class Relay:
    """SageMaker's passes of `channel_dir` (FIFOs `<channel>_<k>` beside it), each copied whole to
    `ranks` FIFOs under `root` (pipe.relay_dir), one per local rank."""

    def __init__(self, channel_dir: Path, root: Path, ranks: int):
        self.channel_dir, self.root, self.ranks = Path(channel_dir), Path(root), ranks
        self.passes = 0  # SageMaker's FIFOs read to their end
        self._changed = threading.Condition()  # guards everything below
        self._queues: list[deque[bytes | None]] = [deque() for _ in range(ranks)]  # None: the pass ended
        self._queued = [0] * ranks  # bytes in each queue
        self._opened = [0] * ranks  # passes each rank has opened
        self._reading: set[int] = set()  # ranks still reading the current pass
        self._stopped = threading.Event()

    def fifo(self, rank: int, index: int) -> Path:
        return pipe.fifo_path(pipe.relay_dir(self.root, rank, self.channel_dir.name), index)

    def start(self) -> Relay:
        """Make every rank's first FIFO (there before any rank looks for it), then start the threads."""
        for rank in range(self.ranks):
            self.fifo(rank, 0).parent.mkdir(parents=True, exist_ok=True)
            os.mkfifo(self.fifo(rank, 0))
        for rank in range(self.ranks):
            threading.Thread(target=self._write, args=(rank,), name=f"pipe-relay-{rank}", daemon=True).start()
        threading.Thread(target=self._read, name="pipe-relay", daemon=True).start()
        return self

    def close(self) -> None:
        """Training is over: the threads waiting for a pass end (one in a pass ends with it)."""
        self._stopped.set()
        with self._changed:
            self._changed.notify_all()

    # --- the reader: SageMaker's FIFO into every rank's queue ----------------------------------------

    def _read(self) -> None:
        try:
            for index in itertools.count():
                if not self._relay_pass(index):
                    return
        except (OSError, DataError) as exc:  # the ranks then find their pass cut short, and fail
            print(f"pipe relay: {exc}", file=sys.stderr, flush=True)
            self._end_pass()

    def _relay_pass(self, index: int) -> bool:
        with self._changed:
            self._changed.wait_for(lambda: self._stopped.is_set() or min(self._opened) > index)
            if self._stopped.is_set():
                return False
            self._reading = set(range(self.ranks))
        with pipe.open_fifo(pipe.fifo_path(self.channel_dir, index)) as source:
            while chunk := os.read(source.fileno(), CHUNK):  # what has arrived, up to CHUNK: no wait for more
                with self._changed:
                    self._changed.wait_for(self._room)
                    for rank in self._reading:
                        self._queues[rank].append(chunk)
                        self._queued[rank] += len(chunk)
                    self._changed.notify_all()
        self.passes = index + 1  # before any rank finds its pass ended
        self._end_pass()
        return True

    def _room(self) -> bool:
        """Whether some rank still reading has less than BACKLOG queued (or none reads: the rest is dropped)."""
        return not self._reading or min(self._queued[rank] for rank in self._reading) < BACKLOG

    def _end_pass(self) -> None:
        with self._changed:
            for queue in self._queues:
                queue.append(None)
            self._changed.notify_all()

    # --- a writer: one rank's queue into its FIFO ----------------------------------------------------

    def _write(self, rank: int) -> None:
        try:
            for index in itertools.count():
                fd = self._open(self.fifo(rank, index))
                if fd is None:
                    return
                with self._changed:
                    self._opened[rank] += 1
                    self._changed.notify_all()
                try:
                    self._copy(rank, fd)
                    os.mkfifo(self.fifo(rank, index + 1))  # before this one ends: the rank finds its next pass there
                finally:
                    os.close(fd)
        except OSError:
            if not self._stopped.is_set():
                raise
            # closed: its folder is being removed

    def _open(self, path: Path) -> int | None:
        """`path` opened for writing once its rank opened it for reading; None once the relay is closed."""
        while not self._stopped.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader has it open
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                self._stopped.wait(OPEN_POLL_SECONDS)
                continue
            os.set_blocking(fd, True)  # a full pipe holds this writer, and only this one, back
            return fd
        return None

    def _copy(self, rank: int, fd: int) -> None:
        """This pass's chunks into the rank's FIFO, up to the pass's end; after a break, dropped."""
        broken = False
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queues[rank]) or self._stopped.is_set())
                if not self._queues[rank]:
                    return
                chunk = self._queues[rank].popleft()
                self._queued[rank] -= len(chunk or b"")
                self._changed.notify_all()
            if chunk is None:
                return
            if broken:
                continue
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:  # BrokenPipeError: the rank closed its end (it ended)
                broken = True
                with self._changed:
                    self._reading.discard(rank)  # queued no more, and waited for no more
                    self._changed.notify_all()


@contextlib.contextmanager
def relayed(
    channel_dir: Path | None, processes: int, environ: MutableMapping[str, str] = os.environ
) -> Iterator[Relay | None]:
    """A Relay of a piped channel to this host's `processes` processes while they run, its folder in
    environ[pipe.RELAY_ENV] for them to inherit; None where one process reads or nothing is piped."""
    if processes < 2 or channel_dir is None or not pipe.is_piped(channel_dir):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="pipe-relay-") as root:
        relay = Relay(channel_dir, Path(root), processes).start()
        environ[pipe.RELAY_ENV] = root
        print(f"pipe: {channel_dir}_<k> relayed to {processes} processes ({root}/<local rank>)", flush=True)
        try:
            yield relay
        finally:
            relay.close()
            environ.pop(pipe.RELAY_ENV, None)
