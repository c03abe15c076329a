"""A job's start-up read from AWS (DescribeTrainingJob and the head of each host's CloudWatch
stream), and this project's history of them for the launch summary's prediction.

The history is the last HISTORY_JOBS jobs of job.base_name (ListTrainingJobs, newest first). An
ended job's start-up never changes: it is kept in `startup/<job>.json` of the tool's cache
(project.core.config.cache.cache_root: $LIGHTNING_SAGEMAKER_CACHE, else ~/.cache/lightning-sagemaker)
once its warm pool, if any, has ended too, so a launch describes only the jobs it has not seen end.
The calls are those `invoke status` and `invoke logs` make (ListTrainingJobs, DescribeTrainingJob,
DescribeLogStreams, GetLogEvents): no other permission.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from project.aws import joblogs, startup_times
from project.aws.startup_times import Breakdown, Started
from project.core import startup
from project.core.atomic import write_atomically
from project.core.config.cache import cache_root

HISTORY_JOBS = 10  # the newest jobs of the base name the prediction reads: recent enough to be today's image
ENDED = ("Completed", "Failed", "Stopped")
POOL_LIVE = ("Available", "InUse")  # a warm pool whose status may still change


def cache_dir() -> Path | None:
    """Where ended jobs' start-ups are kept, one JSON file per job (None: caching is off)."""
    root = cache_root()
    return None if root is None else root / "startup"


def host_of(stream: str) -> str:
    """`algo-2` of the stream `<job>/algo-2-1733590000`."""
    return stream.split("/", 1)[-1].rsplit("-", 1)[0]


def _reaches_first_step(line: str) -> bool:
    marked = startup.parse_marker(line)
    return marked is not None and marked[0] == startup.FIRST_STEP


def marker_lines(logs: Any, job_name: str) -> dict[str, list[str]]:
    """Each host's `[startup]` lines, read from its stream's head up to the first step."""
    return {
        host_of(stream): joblogs.head_lines(
            logs, stream, keep=lambda line: startup.MARKER in line, until=_reaches_first_step
        )
        for stream in joblogs.log_streams(logs, job_name)
    }


def breakdowns(logs: Any, desc: dict[str, Any]) -> list[Breakdown]:
    return startup_times.job_breakdowns(desc, marker_lines(logs, desc["TrainingJobName"]))


def job_report(logs: Any, desc: dict[str, Any]) -> str:
    """The lines `invoke status JOB`, `invoke why` and the end of `invoke train` print."""
    return startup_times.report(desc["TrainingJobName"], breakdowns(logs, desc))


@dataclass(frozen=True)
class Seen:
    """What the history keeps of one job: its start-up (None: it never reached a first step) and
    its warm pool (whose ReusedByJob says which later job started warm)."""

    job: str
    instance_type: str
    image: str
    started: Started | None
    pool_status: str | None
    reused_by: str | None

    @classmethod
    def of(cls, logs: Any, desc: dict[str, Any]) -> Seen:
        found = breakdowns(logs, desc)
        shown = startup_times.slowest(found) if found else None
        pool = desc.get("WarmPoolStatus") or {}
        return cls(
            desc["TrainingJobName"],
            desc["ResourceConfig"]["InstanceType"],
            desc["AlgorithmSpecification"]["TrainingImage"],
            Started.of(desc, shown, warm=False) if shown is not None and shown.reached_first_step else None,
            pool.get("Status"),
            pool.get("ReusedByJob"),
        )

    def final(self, status: str) -> bool:
        return status in ENDED and self.pool_status not in POOL_LIVE

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Seen:
        data = json.loads(text)
        started = Started(**data.pop("started")) if data.get("started") else None
        return cls(started=started, **data)


@dataclass(frozen=True)
class History:
    started: list[Started]  # the jobs that reached a first step, newest first, `warm` where they reused a pool
    available_pools: set[tuple[str, str]]  # (instance type, image) of each warm pool Available now


def _seen(sm: Any, logs: Any, summary: dict[str, Any], folder: Path | None) -> Seen:
    name = summary["TrainingJobName"]
    cached = folder / f"{name}.json" if folder is not None else None
    if cached is not None and cached.is_file():
        try:
            return Seen.from_json(cached.read_text())
        except (ValueError, TypeError, KeyError):
            pass  # an older format, or a torn file: described again
    seen = Seen.of(logs, sm.describe_training_job(TrainingJobName=name))
    if cached is not None and seen.final(summary["TrainingJobStatus"]):
        write_atomically(cached, seen.to_json())
    return seen


def history(sm: Any, logs: Any, base_name: str) -> History:
    """The start-ups of the newest jobs of `base_name`; ended ones from the cache once seen."""
    response = sm.list_training_jobs(
        NameContains=base_name, SortBy="CreationTime", SortOrder="Descending", MaxResults=HISTORY_JOBS
    )
    folder = cache_dir()
    seen = [_seen(sm, logs, summary, folder) for summary in response.get("TrainingJobSummaries", [])]
    reused = {s.reused_by for s in seen if s.reused_by}
    return History(
        [replace(s.started, warm=s.job in reused) for s in seen if s.started is not None],
        {(s.instance_type, s.image) for s in seen if s.pool_status == "Available"},
    )


def prediction(sm: Any, logs: Any, plan: Any) -> tuple[str, ...]:
    """The launch summary's start-up lines for `plan` (a JobPlan). Advice only: credentials that may
    not read the history get one line, and the launch goes on."""
    from botocore.exceptions import ClientError

    try:
        past = history(sm, logs, plan.base_name)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        return (f"no prediction: {exc.operation_name} was refused ({error.get('Code', '?')})",)
    return startup_times.predict(
        past.started,
        plan.instance_type,
        plan.image.uri,
        plan.image.kind,
        plan.keep_alive_seconds,
        (plan.instance_type, plan.image.uri) in past.available_pools,
    )
