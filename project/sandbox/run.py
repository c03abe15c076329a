"""One SageMaker instance ("algo-1") running a recorded job on this machine, start to end state.

The job's channels and existing checkpoints go into an /opt/ml tree, its recorded
ContainerEntrypoint + ContainerArguments run as PID 1 with this machine as the image (its
python3, torch and torchrun), and the end state lands on moto's record: Completed, Failed
(FailureReason from /opt/ml/output/failure) or Stopped, with BillableTimeInSeconds and the
FinalMetricDataList of the job's metric regexes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from project.sandbox import record
from project.sandbox.container import STOP_GRACE_SECONDS, Container, LogStream, namespace_argv
from project.sandbox.optml import HOST, Desc, SandboxError, container_env, file_system_mounts, prepare_tree
from project.sandbox.pipes import start_feeds
from project.sandbox.results import failure_reason, final_metrics, sync_checkpoints, upload_archives

LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class JobClients:
    sagemaker: Any
    s3: Any
    logs: Any


@dataclass(frozen=True)
class RunOptions:
    env_extra: dict[str, str] = field(default_factory=dict)  # added to the container's environment
    timeout: float | None = None  # caps the run as MaxRuntimeInSeconds does (whichever is shorter)
    stop_grace: float = STOP_GRACE_SECONDS
    echo: Callable[[str], None] | None = None  # called with each container line


@dataclass
class JobRun:
    job_name: str
    status: str  # Completed, Failed or Stopped
    returncode: int
    stdout: str  # the container's stdout and stderr, as CloudWatch has them
    model_uri: str | None
    output_uri: str | None
    failure_reason: str | None
    log_stream: str
    seconds: float
    tree: Path  # what was mounted at /opt/ml, kept for inspection

    def check(self) -> JobRun:
        """Raise with the log's tail unless the job completed."""
        if self.status != "Completed":
            tail = "\n".join(self.stdout.splitlines()[-LOG_TAIL_LINES:])
            raise AssertionError(
                f"job {self.job_name} {self.status} (exit {self.returncode}): {self.failure_reason}\n{tail}"
            )
        return self


@dataclass
class _Ended:
    """What the container run left: its exit, its lines, why it was stopped (None: it was not)."""

    returncode: int
    lines: list[str]
    stop_reason: str | None
    log_stream: str


def _command(desc: Desc) -> list[str]:
    spec = desc["AlgorithmSpecification"]
    if desc["ResourceConfig"].get("InstanceCount", 1) != 1:
        raise SandboxError(
            f"{desc['TrainingJobName']} asks for {desc['ResourceConfig']['InstanceCount']} instances; "
            "the sandbox runs one"
        )
    if not spec.get("ContainerEntrypoint"):
        raise SandboxError(
            f"{desc['TrainingJobName']} has no ContainerEntrypoint: the image's own entry point cannot run here"
        )
    return list(spec["ContainerEntrypoint"]) + list(spec.get("ContainerArguments") or [])


def _max_runtime(desc: Desc, options: RunOptions) -> float:
    limit = float(desc.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 0) or float("inf"))
    return min(limit, options.timeout) if options.timeout is not None else limit


def _stream(container: Container, log: LogStream, echo: Callable[[str], None] | None) -> list[str]:
    lines = []
    for raw in container.stdout:
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        lines.append(line)
        log.add(line)
        if echo:
            echo(line)
    return lines


def _run_container(
    desc: Desc, tree: Path, running: dict[str, Container], logs: Any, options: RunOptions, started: float
) -> _Ended:
    """The entry point until it exits, stopped by StopTrainingJob (via `running`) or MaxRuntime."""
    argv = namespace_argv(tree, _command(desc), read_only=file_system_mounts(desc))
    container = Container(argv, container_env(desc, options.env_extra), options.stop_grace)
    running[desc["TrainingJobArn"]] = container
    watchdog = threading.Timer(_max_runtime(desc, options), container.stop, args=("MaxRuntimeExceeded",))
    watchdog.daemon = True
    watchdog.start()
    log = LogStream(logs, desc["TrainingJobName"], HOST, started)
    try:
        lines = _stream(container, log, options.echo)
        returncode = container.process.wait()
    finally:
        container.reap()
        watchdog.cancel()
        log.close()
        running.pop(desc["TrainingJobArn"], None)
    return _Ended(returncode, lines, container.stop_reason, log.name)


def _outcome(ended: _Ended) -> tuple[str, str]:
    if ended.stop_reason:
        return "Stopped", ended.stop_reason
    return ("Completed", "Completed") if ended.returncode == 0 else ("Failed", "Failed")


def _conclude(clients: JobClients, desc: Desc, tree: Path, checkpoints: Path, ended: _Ended, started: float) -> JobRun:
    """Upload what the job left, then end it on moto's record."""
    job = record.moto_job(clients.sagemaker, desc["TrainingJobName"])
    status, secondary = _outcome(ended)
    record.set_status(
        job, "Stopping" if status == "Stopped" else "InProgress", "Uploading", "Uploading generated training model"
    )
    uris = upload_archives(clients.s3, desc, tree, status)
    sync_checkpoints(clients.s3, desc, checkpoints)
    reason = failure_reason(tree, ended.returncode) if status == "Failed" else None
    metrics = final_metrics(ended.lines, desc["AlgorithmSpecification"].get("MetricDefinitions") or [])
    billable = max(1, round(time.time() - started))
    record.finish(job, record.Outcome(status, secondary, uris["model"], reason, billable, metrics))
    stdout = "\n".join(ended.lines)
    return JobRun(
        desc["TrainingJobName"], status, ended.returncode, stdout, uris["model"], uris["output"], reason,
        ended.log_stream, time.time() - started, tree,
    )  # fmt: skip


def run_training_job(
    clients: JobClients, job_name: str, workdir: Path, running: dict[str, Container], options: RunOptions
) -> JobRun:
    """Run the recorded job as one SageMaker instance; end it on moto's record.

    `running` is where StopTrainingJob finds the container (the service's map of ARN -> container).
    """
    desc = clients.sagemaker.describe_training_job(TrainingJobName=job_name)
    _command(desc)  # refuse what cannot run before downloading anything
    job = record.moto_job(clients.sagemaker, job_name)
    started = time.time()
    record.set_status(job, "InProgress", "Downloading", "Downloading input data")
    # Billing starts as the instances are up and the download begins: Starting's end (project/aws/startup_times.py).
    job.training_start_time = job.secondary_status_transitions[-1]["StartTime"]
    tree = Path(workdir) / "opt_ml"
    try:
        checkpoints = prepare_tree(tree, desc, clients.s3)
    except SandboxError as exc:  # a channel the sandbox cannot give the job: it fails, as SageMaker's would
        reason = f"ClientError: {exc}"
        record.finish(job, record.Outcome("Failed", "Failed", failure_reason=reason))
        return JobRun(job_name, "Failed", -1, "", None, None, reason, "", time.time() - started, tree)
    if job.training_job_status in ("Stopping", "Stopped"):  # stopped while downloading
        record.finish(job, record.Outcome("Stopped"))
        return JobRun(job_name, "Stopped", -1, "", None, None, None, "", time.time() - started, tree)
    record.set_status(job, "InProgress", "Training", "Training image download completed. Training in progress.")
    feeds = start_feeds(clients.s3, desc, tree)  # Pipe channels: a FIFO per pass, fed while the job runs
    try:
        ended = _run_container(desc, tree, running, clients.logs, options, started)
    finally:
        for feed in feeds:
            feed.stop()
    return _conclude(clients, desc, tree, checkpoints, ended, started)
