"""What a stall is, in pure functions of what the ranks reported: the vocabulary the training processes
report in (phases, the heartbeat file), the limits, the detector over a clock passed in, where a rank
waits as its stacks say, and the line that names the stuck rank. The watchdog (project/training/watchdog.py)
acts on it; the ranks report through project/training/heartbeat.py.

Standard library only: the launcher imports it before torch.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        the stall limit (of the start-up limit where that is off), at most a minute."""
        return min(60.0, (self.stall or self.startup) / 4)

    @property
    def cross_host_delay(self) -> float:
        """A host whose ranks all wait in collectives waits this much longer: the stuck host fails first."""
        return 2 * self.grace + STACKS_WAIT_SECONDS


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
        for gone in set(self._seen) - set(beats):  # a rank whose number changed (heartbeat.set_rank)
            del self._seen[gone]
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
