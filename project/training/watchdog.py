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

Standard library only: the launcher imports it before torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from project.core import process
from project.core.errors import STALLED_EXIT

HEARTBEAT_ENV = "LIGHTNING_SAGEMAKER_HEARTBEAT_DIR"  # the folder of the ranks' heartbeat and stacks files
STACKS_SIGNAL = signal.SIGUSR2  # each rank dumps its stacks on it (faulthandler)
STARTUP, DATA, RENDEZVOUS = "start-up", "data set-up", "rendezvous"
TRAINING, VALIDATION, TEST, CHECKPOINT, EXPORT = "training step", "validation", "test", "checkpoint", "export"
PHASES = (STARTUP, DATA, RENDEZVOUS, TRAINING, VALIDATION, TEST, CHECKPOINT, EXPORT)
DONE = "done"  # the process is ending: no longer watched
STARTUP_PHASES = (STARTUP, DATA, RENDEZVOUS)  # limited by startup_timeout_minutes
STACKS_WAIT_SECONDS = 3.0  # the most a rank gets to write its stacks (faulthandler writes at once)
LINE_PREFIX = "stalled: "  # the watchdog's line, as `invoke why` finds it in a log


def heartbeat_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rank-{rank}.json"


def stacks_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rank-{rank}.stacks"


@dataclass(frozen=True)
class Limits:
    """Seconds without progress before a rank is stalled; 0: not watched."""

    stall: float = 0.0
    startup: float = 0.0

    @classmethod
    def of(cls, trainer: Any, in_container: bool) -> Limits:
        """trainer.stall_timeout_minutes and startup_timeout_minutes; null: the job_ default in a
        SageMaker container, off elsewhere (conf/trainer/default.yaml)."""

        def minutes(key: str) -> float:
            value = trainer.get(key)
            if value is None and in_container:
                value = trainer.get(f"job_{key}")
            return 60.0 * float(value or 0)

        return cls(minutes("stall_timeout_minutes"), minutes("startup_timeout_minutes"))

    @property
    def on(self) -> bool:
        return self.stall > 0 or self.startup > 0

    def of_phase(self, phase: str) -> float:
        if phase == DONE:
            return 0.0
        return self.startup if phase in STARTUP_PHASES else self.stall

    @property
    def grace(self) -> float:
        """How long the other ranks get to checkpoint, and the cross-host delay's unit: a quarter of
        the stall limit, at most a minute."""
        return min(60.0, max(self.stall, self.startup) / 4)

    @property
    def cross_host_delay(self) -> float:
        """A host whose ranks all wait in collectives waits this much longer: the stuck host fails first."""
        return 2 * self.grace + STACKS_WAIT_SECONDS

    def to_env(self) -> str:
        return f"{self.stall},{self.startup}"


@dataclass(frozen=True)
class Beat:
    """One rank's heartbeat: what heartbeat.py writes."""

    rank: int
    host: str
    pid: int
    phase: str
    step: int
    progress: int  # batches and phases gone through: any change is progress

    @classmethod
    def read(cls, path: Path) -> Beat | None:
        try:
            said = json.loads(path.read_text())
            return cls(
                int(said["rank"]), str(said["host"]), int(said["pid"]), str(said["phase"]), int(said["step"]),
                int(said["progress"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not written yet (it is replaced whole, never half-written)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def read_beats(folder: Path) -> dict[int, Beat]:
    beats = (Beat.read(path) for path in Path(folder).glob("rank-*.json"))
    return {beat.rank: beat for beat in beats if beat is not None}


@dataclass(frozen=True)
class Stalled:
    rank: int | None  # None: a process that never reported
    beat: Beat | None
    seconds: float  # without progress


class Detector:
    """Which ranks made no progress for their phase's limit: pure, its clock passed in."""

    def __init__(self, limits: Limits, started: float, workers: int) -> None:
        self.limits, self.started, self.workers = limits, started, workers
        self._seen: dict[int, tuple[tuple[str, int, int], float]] = {}  # rank -> (state, when it changed)

    def observe(self, beats: Mapping[int, Beat], now: float) -> None:
        for rank, beat in beats.items():
            state = (beat.phase, beat.step, beat.progress)
            if rank not in self._seen or self._seen[rank][0] != state:
                self._seen[rank] = (state, now)

    def stalled(self, beats: Mapping[int, Beat], now: float) -> list[Stalled]:
        found = []
        for rank, (_, changed) in self._seen.items():
            beat = beats.get(rank)
            limit = self.limits.of_phase(beat.phase if beat else STARTUP)
            if limit and now - changed > limit:
                found.append(Stalled(rank, beat, now - changed))
        silent = self.workers - len(self._seen)  # started, never reported: still starting up
        if silent > 0 and self.limits.startup and now - self.started > self.limits.startup:
            found.append(Stalled(None, None, now - self.started))
        return found


# --- what a stack says ---------------------------------------------------------------------------

FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
COLLECTIVE_FILES = ("torch/distributed/",)
BACKWARD_FUNCS = ("_engine_run_backward", "backward")  # DDP's gradient all_reduce waits at its end
LOADER_FILE = "torch/utils/data/dataloader.py"
LIBRARY_PARTS = ("site-packages", "dist-packages", "/lib/python3")


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    func: str

    def __str__(self) -> str:
        return f"{self.func} ({Path(self.file).name}:{self.line})"


def main_thread_frames(dump: str) -> list[Frame]:
    """The main thread's frames, innermost first, from a faulthandler dump (the main thread is the
    last one it lists: CPython lists threads newest first)."""
    blocks = re.split(r"^(?:Current thread|Thread) 0x[0-9a-f]+.*$", dump, flags=re.M)
    frames = [FRAME.match(line) for line in (blocks[-1] if len(blocks) > 1 else "").splitlines()]
    return [Frame(m["file"], int(m["line"]), m["func"]) for m in frames if m]


@dataclass(frozen=True)
class Waiting:
    what: str  # where it waits, in words
    collective: bool  # for another rank: not the cause


def _library(frame: Frame) -> bool:
    return any(part in frame.file for part in LIBRARY_PARTS)


def waits_in(frames: list[Frame]) -> Waiting:
    """Where a rank's main thread waits, read from the innermost frame outwards up to the first of
    the run's own code: a collective, a data loader worker, else that frame of its own."""
    for frame in frames:
        posix = frame.file.replace(os.sep, "/")
        if any(part in posix for part in COLLECTIVE_FILES) and frame.func not in ("wrapper", "<module>"):
            return Waiting(frame.func, collective=True)
        if frame.func in BACKWARD_FUNCS and "torch/" in posix:
            return Waiting("backward (DDP's gradient all_reduce)", collective=True)
        if posix.endswith(LOADER_FILE):
            return Waiting("a data loader worker (trainer.num_workers)", collective=False)
        if not _library(frame):
            return Waiting(str(frame), collective=False)
    if frames:
        return Waiting(str(frames[0]), collective=False)
    return Waiting("an unknown frame (no stacks were written)", collective=False)


def verdict(
    stalled: list[Stalled], waiting: Mapping[int, Waiting], host: str, other_ranks: list[int]
) -> tuple[str, Stalled]:
    """The line naming the stuck rank, and that rank: the one not in a collective, else the one
    furthest behind, else the one stalled longest."""
    known = [s for s in stalled if s.rank is not None]
    if not known:
        s = stalled[0]
        return (f"a rank on {host} never reported after {s.seconds / 60:.1f} min of start-up"), s

    def order(s: Stalled) -> tuple:
        wait = waiting.get(s.rank) if s.rank is not None else None
        return (wait is not None and wait.collective, s.beat.step if s.beat else -1, -s.seconds)

    stuck = min(known, key=order)
    wait = waiting.get(stuck.rank) if stuck.rank is not None else None
    phase, step = (stuck.beat.phase, stuck.beat.step) if stuck.beat else (STARTUP, 0)
    where = f"in {phase} at step {step} for {stuck.seconds / 60:.1f} min"
    if wait is not None and wait.collective:
        line = f"rank {stuck.rank} on {host} waits in {wait.what} {where}: a rank on another host does not answer"
    else:
        line = f"rank {stuck.rank} on {host} stuck in {wait.what if wait else 'an unknown frame'} {where}"
    others = [r for r in other_ranks if r != stuck.rank]
    if others and not (wait is not None and wait.collective):
        line += f"; rank {', '.join(map(str, others))} {'waits' if len(others) == 1 else 'wait'} for it"
    return line, stuck


# --- the watching thread -------------------------------------------------------------------------


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
