"""Where a training job's start-up went, from CreateTrainingJob to its first training step, and
what the next job's will be. Pure: over DescribeTrainingJob and the `[startup]` lines of the job's
log (project/core/startup.py prints them); project/aws/startup_history.py reads both from AWS.

What is billed: SageMaker bills each instance from TrainingStartTime to TrainingEndTime
(DescribeTrainingJob's own documentation of TrainingStartTime, in botocore's service model; also
BillableTimeInSeconds, less any spot saving). So the provisioning before TrainingStartTime (the
SecondaryStatus `Starting`: instances launched and prepared) is waited for but not billed; from
TrainingStartTime on every second is: the data download (`Downloading`), then, under `Training`,
the image download and the container's start (AWS reports no status of its own for the image any
more: its message only says "Downloading the training image"), sm_train.sh's set-up and pip, the
imports, and our code's phases up to the first step. The phases are the intervals between
consecutive boundaries, so the billed ones add up to exactly first step - TrainingStartTime.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from project.core.startup import FIRST_STEP, parse_marker

# Each phase ends at its boundary: a SecondaryStatusTransition's start, TrainingStartTime, or a log
# marker (project.core.startup.LOGGED_PHASES). A boundary the job never reported (an older job, a
# failure before it) folds its phase into the next one.
PROVISIONING = "provisioning (Starting)"
STAGES: tuple[tuple[str, str], ...] = (
    (PROVISIONING, "TrainingStartTime"),
    ("data download (Downloading)", "Training"),
    ("image download, container start", "container_start"),
    ("set-up: sm_train.sh, pip", "launcher_ready"),
    ("interpreter, imports", "imported"),
    ("config, data checks", "data_verified"),
    ("model built", "built"),
    ("rendezvous, data set-up", "data_loaded"),
    ("sanity check", "train_start"),
    ("first step", "first_step"),
)
SETUP_PHASE = STAGES[3][0]  # what job.image=custom saves: its image holds the requirements
# What a warm pool skips: its instance is up and holds the image; the job's data still downloads.
WARM_SKIPS = (PROVISIONING, STAGES[2][0])
BILLED_ROW = "billed (from TrainingStartTime)"


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    billed: bool


@dataclass(frozen=True)
class Breakdown:
    """One host's start-up: its phases in order, and whether it reached the first step."""

    host: str
    phases: tuple[Phase, ...]
    reached_first_step: bool

    @property
    def billed_seconds(self) -> float:
        return sum(p.seconds for p in self.phases if p.billed)

    @property
    def total_seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def seconds_of(self, names: Sequence[str]) -> float:
        """The seconds of the phases named (a phase that folded in a missing one included)."""
        return sum(p.seconds for p in self.phases if any(name in p.name for name in names))


def _epoch(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else (float(value) if value is not None else None)


def service_boundaries(desc: Mapping[str, Any]) -> dict[str, float]:
    """CreationTime, TrainingStartTime and where the first `Training` transition started."""
    found = {
        "CreationTime": _epoch(desc.get("CreationTime")),
        "TrainingStartTime": _epoch(desc.get("TrainingStartTime")),
    }
    for transition in desc.get("SecondaryStatusTransitions") or []:
        if transition.get("Status") == "Training" and "Training" not in found:
            found["Training"] = _epoch(transition.get("StartTime"))
    return {key: t for key, t in found.items() if t is not None}


def host_marks(lines: Sequence[str]) -> dict[str, float]:
    """The first time each phase was marked in one host's log lines."""
    marks: dict[str, float] = {}
    for line in lines:
        parsed = parse_marker(line)
        if parsed:
            marks.setdefault(parsed[0], parsed[1])
    return marks


def breakdown(desc: Mapping[str, Any], host: str, marks: Mapping[str, float]) -> Breakdown | None:
    """The host's phases from CreationTime to the last boundary it reached (None: not even started).

    Each boundary is at least the one before (an instance's clock a little behind AWS's never
    makes a phase negative), so the billed phases sum to the last boundary - TrainingStartTime."""
    times = {**service_boundaries(desc), **marks}
    if "CreationTime" not in times:
        return None
    billed_from = times.get("TrainingStartTime")
    previous, phases, pending = times["CreationTime"], [], []
    for name, boundary in STAGES:
        pending.append(name)
        if boundary not in times:
            continue
        at = max(times[boundary], previous)
        billed = billed_from is not None and boundary != "TrainingStartTime"
        phases.append(Phase(" + ".join(pending), at - previous, billed))
        previous, pending = at, []
    if not phases:
        return None
    return Breakdown(host, tuple(phases), FIRST_STEP in marks)


def job_breakdowns(desc: Mapping[str, Any], logs_by_host: Mapping[str, Sequence[str]]) -> list[Breakdown]:
    """Each host's breakdown (one per log stream; just the service's phases while there is no log)."""
    hosts = {host: host_marks(lines) for host, lines in logs_by_host.items()} or {"-": {}}
    found = [breakdown(desc, host, marks) for host, marks in sorted(hosts.items())]
    return [b for b in found if b is not None]


def slowest(breakdowns: Sequence[Breakdown]) -> Breakdown:
    """The host the job waited for: the last to reach its first step (else the one furthest along)."""
    return max(breakdowns, key=lambda b: (b.reached_first_step, b.total_seconds))


def duration(seconds: float) -> str:
    """`3 min 40 s`, `25 s`, `1.4 s`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def report(job_name: str, breakdowns: Sequence[Breakdown]) -> str:
    """The breakdown of the slowest host, a line per phase, and each host's time when there are several."""
    if not breakdowns:
        return f"start-up of {job_name}: no TrainingStartTime and no log: it has not got past provisioning"
    shown = slowest(breakdowns)
    end = "the first step" if shown.reached_first_step else "where it got to (no first step)"
    where = f", host {shown.host}" if shown.host != "-" else ""
    lines = [
        f"start-up of {job_name}{where}: {duration(shown.total_seconds)} from CreateTrainingJob to {end}, "
        f"{duration(shown.billed_seconds)} of it billed"
    ]
    width = max(len(BILLED_ROW), *(len(p.name) for p in shown.phases))
    for phase in shown.phases:
        lines.append(f"  {phase.name:<{width}}  {phase.seconds:8.1f} s{'' if phase.billed else '  not billed'}")
    lines.append(f"  {BILLED_ROW:<{width}}  {shown.billed_seconds:8.1f} s")
    if len(breakdowns) > 1:
        each = ", ".join(f"{b.host} {duration(b.total_seconds)}" for b in breakdowns)
        lines.append(f"  hosts to the first step: {each} (the slowest shown)")
    return "\n".join(lines)


@dataclass(frozen=True)
class Started:
    """One earlier job's start-up, as the prediction needs it (and the cache keeps it)."""

    job: str
    instance_type: str
    image: str
    warm: bool  # it reused a warm pool
    billed_seconds: float
    total_seconds: float
    warm_skippable_seconds: float  # provisioning and the image download: what a warm pool skips
    setup_seconds: float  # sm_train.sh's set-up and pip: what job.image=custom skips

    @classmethod
    def of(cls, desc: Mapping[str, Any], shown: Breakdown, warm: bool) -> Started:
        return cls(
            desc["TrainingJobName"],
            desc["ResourceConfig"]["InstanceType"],
            desc["AlgorithmSpecification"]["TrainingImage"],
            warm,
            shown.billed_seconds,
            shown.total_seconds,
            shown.seconds_of(WARM_SKIPS),
            shown.seconds_of([SETUP_PHASE]),
        )


# A suggestion is made only where it saves this much of every start-up: less is noise.
WORTH_SECONDS = 30.0


def predict(
    history: Sequence[Started],
    instance_type: str,
    image: str,
    image_kind: str,
    keep_alive_seconds: int,
    warm_pool_available: bool,
) -> tuple[str, ...]:
    """The summary's start-up lines: the median of earlier jobs with this instance type and image,
    cold and from a warm pool, and which suggestions would pay off."""
    same = [s for s in history if s.instance_type == instance_type and s.image == image]
    if not same:
        return (
            f"no earlier job on {instance_type} with this image to predict from (each job's is in `invoke status JOB`)",
        )
    cold, warm = [s for s in same if not s.warm], [s for s in same if s.warm]
    parts = []
    for kind, jobs in (("cold", cold), ("from a warm pool", warm)):
        if jobs:
            total = statistics.median(s.total_seconds for s in jobs)
            billed = statistics.median(s.billed_seconds for s in jobs)
            parts.append(f"{duration(total)} {kind} ({duration(billed)} billed)")
    count = f"your last {len(same)} job{'s' if len(same) != 1 else ''}"
    now = " (a warm pool is Available: this job may reuse it)" if warm_pool_available else ""
    lines = [f"~{', '.join(parts)}, from {count} on {instance_type} with this image{now}"]
    if cold and not keep_alive_seconds:
        skipped = statistics.median(s.warm_skippable_seconds for s in cold)
        if skipped >= WORTH_SECONDS:
            lines.append(
                f"a warm pool (job.keep_alive_minutes=N) would skip ~{duration(skipped)} of provisioning and "
                "the image download for a job launched within N minutes of this one's end; "
                "the idle instance is billed meanwhile"
            )
    if image_kind == "aws":
        setup = statistics.median(s.setup_seconds for s in same)
        if setup >= WORTH_SECONDS:
            lines.append(
                f"job.image=custom would skip ~{duration(setup)} of billed pip set-up at every start "
                "(`invoke build && invoke push` once)"
            )
    return tuple(lines)
