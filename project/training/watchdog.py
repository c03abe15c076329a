"""The watchdog: a run whose ranks stop making progress fails with its cause, instead of billing until
MaxRuntime (pytorch-lightning #6569, #6213: a rank stuck in a collective, a dead data worker).

Each training process reports its progress (project/training/heartbeat.py): a small file per rank in
the folder HEARTBEAT_ENV names, holding its phase (PHASES), global step and a count of the batches
and phases it went through, rewritten at most once a second, and only when it changed. The process
that started the ranks watches them from a thread: the container's launcher (PID 1,
project/training/launch.py) in a SageMaker job, `invoke local`'s parent (project/training/local.py).
A rank whose file has not changed for trainer.stall_timeout_minutes (startup_timeout_minutes in the
start-up phases, STARTUP_PHASES: a rendezvous waiting for a host that never starts) is stalled. The
watchdog then

1. has every rank dump its Python stacks (faulthandler, registered on STACKS_SIGNAL in each rank, writes
   them to rank-N.stacks beside its heartbeat) and reads the frame each rank's main thread waits in;
2. names the stuck rank: the one that does not wait in a collective (the others wait for it), else the
   one furthest behind; one line, `stalled: rank 1 on algo-2 stuck in training_step (model.py:40) in
   training step at step 5 for 15.0 min; rank 0 waits for it`, printed and written as SageMaker's
   failure file (project.core.process.record_failure: the job's FailureReason);
3. asks the other ranks to checkpoint (SIGTERM: a rank that reaches a step boundary saves, one blocked
   in a collective cannot), waits a little, then kills every rank and exits STALLED_EXIT.

Several hosts: each host's launcher watches its own ranks only; there is no place both hosts could
write while the job runs. A rank that waits in a collective for a rank on another host is stalled
too, so every host fails; a host whose ranks all wait in collectives waits `cross_host_delay` longer
first, so that the host of the stuck rank (whose rank waits elsewhere) fails first and its line is
the job's FailureReason. Each host's line is in its own log stream, which `invoke why` reads
(project/aws/triage.py, the "stalled" class).

What a stall is (the detector, the stacks read, the line) is project/training/stalls.py; this module
acts on it. Standard library only: the launcher imports it before torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from project.core import process
from project.core.errors import STALLED_EXIT
from project.training.stalls import (
    LINE_PREFIX,
    STACKS_SIGNAL,
    STACKS_WAIT_SECONDS,
    Beat,
    Detector,
    Limits,
    Stalled,
    Waiting,
    main_thread_frames,
    read_beats,
    stacks_file,
    verdict,
    waits_in,
)


@dataclass
class Watchdog:
    """Watches the ranks' heartbeats in `folder` from a daemon thread; on a stall, acts (module
    docstring) and ends this process with STALLED_EXIT (`end`, replaced in `invoke local`'s parent)."""

    folder: Path
    limits: Limits
    host: str
    workers: int  # the processes this host started
    hosts: int = 1
    end: Callable[[int], None] = os._exit
    clock: Callable[[], float] = time.monotonic
    kill_also: list[int] = field(default_factory=list)  # pids besides the ranks' (invoke local's child)
    fired: str | None = None  # the line, once it fired

    def start(self) -> Watchdog:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._detector = Detector(self.limits, self.clock(), self.workers)
        self._deferred = False
        thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def poll_seconds(self) -> float:
        return max(0.2, min(5.0, min(x for x in (self.limits.stall, self.limits.startup) if x) / 20))

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            beats = read_beats(self.folder)
            now = self.clock()
            self._detector.observe(beats, now)
            stalled = self._detector.stalled(beats, now)
            if stalled and self._act(stalled, beats):
                return

    def _act(self, stalled: list[Stalled], beats: dict[int, Beat]) -> bool:
        """True once it fired; False when it waits one cross-host delay first."""
        waiting = self._stacks(beats)
        line, stuck = verdict(stalled, waiting, self.host, sorted(beats))
        all_collective = bool(waiting) and all(w.collective for w in waiting.values())
        if self.hosts > 1 and all_collective and not self._deferred:
            self._deferred = True  # the host of the stuck rank fails first: its line is the job's reason
            print(
                f"watchdog: every rank on {self.host} waits in a collective; failing in "
                f"{self.limits.cross_host_delay:.0f} s unless it moves",
                file=sys.stderr,
                flush=True,
            )
            return self._stop.wait(self.limits.cross_host_delay) or self._still_stalled(stalled, beats)
        self._fire(line, stuck, beats)
        return True

    def _still_stalled(self, before: list[Stalled], beats: dict[int, Beat]) -> bool:
        now_beats = read_beats(self.folder)
        if any(now_beats.get(r) != b for r, b in beats.items()):
            return False  # it moved: watch on
        self._fire(*verdict(before, self._stacks(now_beats), self.host, sorted(now_beats)), now_beats)
        return True

    def _stacks(self, beats: Mapping[int, Beat]) -> dict[int, Waiting]:
        """Each rank's stacks (STACKS_SIGNAL), where each waits; the dumps are printed as they are."""
        sizes = {}
        for rank, beat in beats.items():
            path = stacks_file(self.folder, rank)
            sizes[rank] = path.stat().st_size if path.exists() else 0
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(beat.pid, STACKS_SIGNAL)
        deadline = time.monotonic() + STACKS_WAIT_SECONDS
        dumps: dict[int, str] = {}
        while time.monotonic() < deadline and len(dumps) < len(beats):
            time.sleep(0.1)
            for rank in beats:
                path = stacks_file(self.folder, rank)
                if rank not in dumps and path.exists() and path.stat().st_size > sizes[rank]:
                    time.sleep(0.1)  # let it finish writing
                    dumps[rank] = path.read_text(errors="replace")[sizes[rank] :]
        for rank in sorted(dumps):
            print(f"watchdog: rank {rank} stacks:\n{dumps[rank].rstrip()}", file=sys.stderr, flush=True)
        return {rank: waits_in(main_thread_frames(dump)) for rank, dump in dumps.items()}

    def _fire(self, line: str, stuck: Stalled, beats: Mapping[int, Beat]) -> None:
        self.fired = line
        print(LINE_PREFIX + line, file=sys.stderr, flush=True)
        process.record_failure(LINE_PREFIX + line)
        healthy = [b.pid for r, b in beats.items() if r != stuck.rank and b.pid != os.getpid()]
        for pid in healthy:  # a rank that reaches a step boundary checkpoints (RunCheckpoints)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if healthy:
            print(f"watchdog: asked rank(s) {', '.join(map(str, healthy))} (pids) to checkpoint", flush=True)
            deadline = time.monotonic() + self.limits.grace
            while time.monotonic() < deadline and any(_alive(pid) for pid in healthy):
                time.sleep(0.2)
        for pid in [*(b.pid for b in beats.values()), *self.kill_also]:
            if pid != os.getpid():
                _kill(pid)
        self.end(STALLED_EXIT)


def _kill(pid: int) -> None:
    """SIGKILL `pid`, with its process group where it leads one (`invoke local`'s child: its data
    loader workers, which a hung worker would otherwise outlive)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid != os.getpgid(0):
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):  # a child of this process: reaped or a zombie
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    return True
