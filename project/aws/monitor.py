"""Watch SageMaker jobs: status tables, the log streamed while a job runs, final report, stop.

Reading the job's CloudWatch streams, and folding each host's set-up, is project.aws.joblogs's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from project.aws.cost import job_cost
from project.aws.errors import aws_errors
from project.aws.joblogs import LogTail, SetupFold
from project.core import startup
from project.core.errors import UserError

TERMINAL = {"Completed", "Failed", "Stopped"}


class JobError(UserError):
    pass


class NotCompleted(UserError):
    """A training job that exists but has not Completed: 'training job N is S, not Completed'."""


def describe(sm, job_name: str) -> dict[str, Any]:
    with aws_errors(resource=f"training job {job_name}"):
        try:
            return sm.describe_training_job(TrainingJobName=job_name)
        except sm.exceptions.ResourceNotFound:
            raise JobError(f"no training job named {job_name!r}: `invoke status` lists recent jobs") from None
        except sm.exceptions.ClientError as exc:
            if "not found" in str(exc).lower() or "ValidationException" in str(exc):
                raise JobError(f"no training job named {job_name!r}: `invoke status` lists recent jobs") from None
            raise


def recent_jobs(sm, name_prefix: str, limit: int = 10) -> list[str]:
    response = sm.list_training_jobs(
        NameContains=name_prefix, SortBy="CreationTime", SortOrder="Descending", MaxResults=limit
    )
    return [job["TrainingJobName"] for job in response.get("TrainingJobSummaries", [])]


def latest_job(sm, name_prefix: str) -> str:
    jobs = recent_jobs(sm, name_prefix, limit=1)
    if not jobs:
        raise JobError(f"no training jobs named {name_prefix}-*: launch one with `invoke train`")
    return jobs[0]


def final_metrics(desc: dict[str, Any]) -> dict[str, float]:
    return {m["MetricName"]: m["Value"] for m in desc.get("FinalMetricDataList", [])}


def _duration(desc: dict[str, Any]) -> float | None:
    start, end = desc.get("TrainingStartTime"), desc.get("TrainingEndTime")
    return (end - start).total_seconds() if start and end else None


def completed(sm, job_name: str) -> dict[str, Any]:
    """DescribeTrainingJob of a job whose model is wanted (fetch, deploy, register, init_from): JobError
    where there is no such job, NotCompleted where it has not Completed (each caller says what for)."""
    desc = describe(sm, job_name)
    if desc["TrainingJobStatus"] != "Completed":
        raise NotCompleted(f"training job {job_name} is {desc['TrainingJobStatus']}, not Completed")
    return desc


def job_tags(sm, desc: dict[str, Any]) -> dict[str, str]:
    """A described training job's tags, as a dict."""
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=desc["TrainingJobArn"])["Tags"]}


@dataclass(frozen=True)
class StatusRow:
    name: str
    status: str
    instance: str
    duration_s: float | None
    billable_s: int | None
    cost_usd: float | None
    metrics: dict[str, float]

    @classmethod
    def of(cls, desc: dict[str, Any]) -> StatusRow:
        rc = desc.get("ResourceConfig", {})
        return cls(
            name=desc["TrainingJobName"],
            status=desc["TrainingJobStatus"] + ("/spot" if desc.get("EnableManagedSpotTraining") else ""),
            instance=f"{rc.get('InstanceCount', 1)}x{rc.get('InstanceType', '?')}",
            duration_s=_duration(desc),
            billable_s=desc.get("BillableTimeInSeconds"),
            cost_usd=job_cost(desc),
            metrics=final_metrics(desc),
        )


def status_table(rows: list[StatusRow]) -> str:
    def fmt(value, spec, before="", after=""):
        """A missing value is a bare '-', never '-s' or '$-'."""
        return "-" if value is None else f"{before}{value:{spec}}{after}"

    header = ("job", "status", "instance", "duration", "billable", "cost", "test_acc", "val_acc")
    lines = [header] + [
        (
            r.name,
            r.status,
            r.instance,
            fmt(r.duration_s, ".0f", after="s"),
            fmt(r.billable_s, "d", after="s"),
            fmt(r.cost_usd, ".2f", before="$"),
            fmt(r.metrics.get("test_acc"), ".4f"),
            fmt(r.metrics.get("val_acc"), ".4f"),
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def wait(
    sm, logs, job_name: str, poll_seconds: float = 10.0, echo: Callable[[str], None] = print, keep_last: int = 20
) -> tuple:
    """Stream the job's log until it ends, each host's set-up folded; return (description, last log lines)."""
    tail, fold = LogTail(logs, job_name), SetupFold()
    last: list[str] = []
    previous = None
    seen: set[tuple[str, str]] = set()

    def show(lines: list[str]) -> None:
        nonlocal last
        lines = [line for line in lines if startup.parse_marker(line) is None]  # the breakdown says them at the end
        for line in lines:
            echo(line)
        last = (last + lines)[-keep_last:]

    while True:
        desc = describe(sm, job_name)
        for stream, timestamp, line in tail.poll_events():
            show(fold.feed(stream, timestamp, line))
        status = (desc["TrainingJobStatus"], desc.get("SecondaryStatus"))
        if status != previous:
            echo(f"[{job_name}] {status[0]} / {status[1]}")
            previous = status
        for message in capacity_messages(desc, seen):
            echo(f"[{job_name}] {message}")
        if desc["TrainingJobStatus"] in TERMINAL:
            for stream, timestamp, line in tail.poll_events():
                show(fold.feed(stream, timestamp, line))
            show(fold.flush())
            return desc, last
        time.sleep(poll_seconds)


CAPACITY_WORDS = ("capacity", "retry", "retrying")  # SageMaker's words while RetryStrategy waits for instances


def capacity_messages(desc: dict[str, Any], seen: set[tuple[str, str]]) -> list[str]:
    """New SecondaryStatusTransitions messages about capacity or retries (each said once)."""
    new = []
    for transition in desc.get("SecondaryStatusTransitions", []):
        key = (str(transition.get("StartTime")), str(transition.get("StatusMessage", "")))
        if key not in seen and any(word in key[1].lower() for word in CAPACITY_WORDS):
            new.append(f"{transition.get('Status', '?')}: {key[1]}")
        seen.add(key)
    return new


def no_log_stream(desc: dict[str, Any]) -> str:
    """What `invoke logs` says when the job has written no log yet (or never will)."""
    name, status = desc["TrainingJobName"], f"{desc['TrainingJobStatus']} / {desc.get('SecondaryStatus', '-')}"
    if desc["TrainingJobStatus"] not in TERMINAL:
        return (
            f"no log stream yet for {name} (status {status}): the instance is still starting; "
            f"try again in a minute or use --follow"
        )
    reason = f": {desc['FailureReason']}" if desc.get("FailureReason") else ""
    return f"no log stream for {name} (status {status}): the job ended before its container wrote a line{reason}"


def final_report(desc: dict[str, Any]) -> str:
    row = StatusRow.of(desc)
    parts = [f"{row.name}: {desc['TrainingJobStatus']}"]
    if row.metrics:
        parts.append(" ".join(f"{k}={v:.6g}" for k, v in sorted(row.metrics.items())))
    if row.billable_s is not None:
        parts.append(f"billable={row.billable_s}s")
    if row.cost_usd is not None:
        parts.append(f"cost=${row.cost_usd:.2f}")
    return "  ".join(parts)


def stop(sm, job_name: str) -> str:
    desc = describe(sm, job_name)
    if desc["TrainingJobStatus"] in TERMINAL:
        return f"{job_name} already {desc['TrainingJobStatus']}; nothing to stop"
    sm.stop_training_job(TrainingJobName=job_name)
    return f"stop requested for {job_name}: SageMaker sends SIGTERM, the job checkpoints and ends as Stopped"
