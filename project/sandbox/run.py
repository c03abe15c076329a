"""A recorded job's instances (algo-1 ... algo-N) running on this machine, start to end state.

Each instance's channels and existing checkpoints go into its own /opt/ml tree, the job's recorded
ContainerEntrypoint + ContainerArguments run as PID 1 of one container per instance with this
machine as the image (its python3, torch and torchrun), and the end state lands on moto's record:
Completed (every host exited 0), Failed (a host failed: the FailureReason from the first host that
wrote /opt/ml/output/failure, and the other hosts are stopped) or Stopped, with BillableTimeInSeconds
(one instance's wall clock: SageMaker bills it on each instance) and the FinalMetricDataList of the job's metric
regexes (read in algo-1's log, where rank 0 reports).

Several instances share this machine's network: each container's /etc/hosts maps algo-1 ... algo-N
to loopback, and the rendezvous port on algo-1 is a free one the sandbox picks (MASTER_PORT_ENV).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from project.core.runtime import MASTER_PORT_ENV
from project.sandbox import record
from project.sandbox.container import STOP_GRACE_SECONDS, Cluster, Container, LogStream, hosts_file, namespace_argv
from project.sandbox.environment import container_env
from project.sandbox.optml import (
    HOST,
    Desc,
    SandboxError,
    file_system_mounts,
    job_hosts,
    prepare_tree,
)
from project.sandbox.pipes import start_feeds
from project.sandbox.results import FAILURE_FILE, failure_reason, final_metrics, sync_checkpoints, upload_archives

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
    log_stream: str  # algo-1's
    seconds: float
    tree: Path  # what was mounted at algo-1's /opt/ml, kept for inspection
    trees: dict[str, Path] = field(default_factory=dict)  # every host's, algo-1 first
    log_streams: dict[str, str] = field(default_factory=dict)  # every host's CloudWatch stream

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
    """What one host's container run left: its exit, its lines, why it was stopped (None: it was not)."""

    host: str
    returncode: int
    lines: list[str]
    stop_reason: str | None
    log_stream: str
    at: float  # when it exited

    @property
    def failed(self) -> bool:
        """It failed of itself (not stopped: by the user, MaxRuntime or another host's failure)."""
        return self.returncode != 0 and self.stop_reason is None


def _command(desc: Desc) -> list[str]:
    spec = desc["AlgorithmSpecification"]
    if not spec.get("ContainerEntrypoint"):
        raise SandboxError(
            f"{desc['TrainingJobName']} has no ContainerEntrypoint: the image's own entry point cannot run here"
        )
    return list(spec["ContainerEntrypoint"]) + list(spec.get("ContainerArguments") or [])


def _max_runtime(desc: Desc, options: RunOptions) -> float:
    limit = float(desc.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 0) or float("inf"))
    return min(limit, options.timeout) if options.timeout is not None else limit


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stream(container: Container, log: LogStream, echo: Callable[[str], None] | None, prefix: str) -> list[str]:
    lines = []
    for raw in container.stdout:
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        lines.append(line)
        log.add(line)
        if echo:
            echo(prefix + line)
    return lines


def _start(desc: Desc, trees: dict[str, Path], options: RunOptions) -> dict[str, Container]:
    """One container per host; with several, /etc/hosts names them all and algo-1's rendezvous port is free."""
    command, mounts = _command(desc), file_system_mounts(desc)
    env_extra, etc_hosts = dict(options.env_extra), None
    if len(trees) > 1:
        etc_hosts = trees[HOST].parent.parent / "hosts"  # beside the hosts' folders (_trees)
        etc_hosts.write_text(hosts_file(list(trees)))
        env_extra[MASTER_PORT_ENV] = str(_free_port())
    containers: dict[str, Container] = {}
    try:
        for host, tree in trees.items():
            argv = namespace_argv(tree, command, read_only=mounts, etc_hosts=etc_hosts)
            containers[host] = Container(argv, container_env(desc, env_extra, host), options.stop_grace)
    except BaseException:
        for container in containers.values():
            container.reap()
        raise
    return containers


def _run_containers(
    desc: Desc, trees: dict[str, Path], running: dict[str, Cluster], logs: Any, options: RunOptions, started: float
) -> tuple[str | None, list[_Ended]]:
    """The hosts' entry points until all exit, stopped by StopTrainingJob (via `running`), MaxRuntime, or
    another host's failure; returns why the job was stopped (None: it was not) and each host's end."""
    containers = _start(desc, trees, options)
    cluster = Cluster(containers)
    running[desc["TrainingJobArn"]] = cluster
    watchdog = threading.Timer(_max_runtime(desc, options), cluster.stop, args=("MaxRuntimeExceeded",))
    watchdog.daemon = True
    watchdog.start()
    streams = {host: LogStream(logs, desc["TrainingJobName"], host, started) for host in containers}
    ended: dict[str, _Ended] = {}
    errors: list[BaseException] = []

    def follow(host: str, container: Container) -> None:
        try:
            prefix = f"[{host}] " if len(containers) > 1 else ""
            lines = _stream(container, streams[host], options.echo, prefix)
            returncode = container.process.wait()
            ended[host] = _Ended(host, returncode, lines, container.stop_reason, streams[host].name, time.time())
            if ended[host].failed:
                cluster.stop_others(host)  # SageMaker ends the job: the other hosts are stopped
        except Exception as exc:  # noqa: BLE001 - the sandbox failed, not the job: raised once all are reaped
            errors.append(exc)
            cluster.kill()

    followers = [
        threading.Thread(target=follow, args=(host, c), name=f"{desc['TrainingJobName']}-{host}", daemon=True)
        for host, c in containers.items()
    ]
    try:
        for follower in followers:
            follower.start()
        for follower in followers:
            follower.join()
    finally:
        for container in containers.values():
            container.reap()
        watchdog.cancel()
        for stream in streams.values():
            stream.close()
        running.pop(desc["TrainingJobArn"], None)
    if errors:
        raise errors[0]
    return cluster.stop_reason, [ended[host] for host in containers]


def _first_failed(trees: dict[str, Path], ended: list[_Ended]) -> _Ended | None:
    """The host whose failure ended the job: the first to write /opt/ml/output/failure, else the first to exit."""
    failed = [e for e in ended if e.failed]

    def wrote(e: _Ended) -> float:
        failure = trees[e.host] / FAILURE_FILE
        return failure.stat().st_mtime if failure.is_file() else float("inf")

    return min(failed, key=lambda e: (wrote(e), e.at), default=None)


def _outcome(stop_reason: str | None, ended: list[_Ended], failed: _Ended | None) -> tuple[str, str]:
    if failed is not None:
        return "Failed", "Failed"
    if stop_reason:
        return "Stopped", stop_reason
    return ("Completed", "Completed") if all(e.returncode == 0 for e in ended) else ("Failed", "Failed")


def _conclude(
    clients: JobClients,
    desc: Desc,
    trees: dict[str, Path],
    checkpoints: dict[str, Path],
    run: tuple[str | None, list[_Ended]],
    started: float,
) -> JobRun:
    """Upload what the hosts left, then end the job on moto's record."""
    stop_reason, ended = run
    job = record.moto_job(clients.sagemaker, desc["TrainingJobName"])
    failed = _first_failed(trees, ended)
    status, secondary = _outcome(stop_reason, ended, failed)
    record.set_status(
        job, "Stopping" if status == "Stopped" else "InProgress", "Uploading", "Uploading generated training model"
    )
    uris = upload_archives(clients.s3, desc, list(trees.values()), status)
    for folder in checkpoints.values():  # every host's, to the one S3 URI
        sync_checkpoints(clients.s3, desc, folder)
    cause = failed or next((e for e in ended if e.returncode != 0), ended[0])
    reason = failure_reason(trees[cause.host], cause.returncode) if status == "Failed" else None
    metrics = final_metrics(ended[0].lines, desc["AlgorithmSpecification"].get("MetricDefinitions") or [])
    billable = max(1, round(time.time() - started))  # the wall clock: SageMaker bills it on each instance
    record.finish(job, record.Outcome(status, secondary, uris["model"], reason, billable, metrics))
    if len(ended) == 1:
        stdout = "\n".join(ended[0].lines)
    else:
        stdout = "\n".join(f"[{e.host}] {line}" for e in ended for line in e.lines)
    return JobRun(
        desc["TrainingJobName"], status, cause.returncode, stdout, uris["model"], uris["output"], reason,
        ended[0].log_stream, time.time() - started, trees[HOST], trees, {e.host: e.log_stream for e in ended},
    )  # fmt: skip


def _trees(workdir: Path, hosts: list[str]) -> dict[str, Path]:
    """Where each host's /opt/ml lies: <workdir>/opt_ml for one host, <workdir>/<host>/opt_ml for several."""
    if len(hosts) == 1:
        return {hosts[0]: Path(workdir) / "opt_ml"}
    return {host: Path(workdir) / host / "opt_ml" for host in hosts}


def run_training_job(
    clients: JobClients, job_name: str, workdir: Path, running: dict[str, Cluster], options: RunOptions
) -> JobRun:
    """Run the recorded job as its InstanceCount SageMaker instances; end it on moto's record.

    `running` is where StopTrainingJob finds the containers (the service's map of ARN -> cluster).
    """
    desc = clients.sagemaker.describe_training_job(TrainingJobName=job_name)
    _command(desc)  # refuse what cannot run before downloading anything
    job = record.moto_job(clients.sagemaker, job_name)
    started = time.time()
    record.set_status(job, "InProgress", "Downloading", "Downloading input data")
    # Billing starts as the instances are up and the download begins: Starting's end (project/aws/startup_times.py).
    job.training_start_time = job.secondary_status_transitions[-1]["StartTime"]
    trees = _trees(workdir, job_hosts(desc))
    try:
        checkpoints = {host: prepare_tree(tree, desc, clients.s3, host) for host, tree in trees.items()}
    except SandboxError as exc:  # a channel the sandbox cannot give the job: it fails, as SageMaker's would
        reason = f"ClientError: {exc}"
        record.finish(job, record.Outcome("Failed", "Failed", failure_reason=reason))
        return JobRun(job_name, "Failed", -1, "", None, None, reason, "", time.time() - started, trees[HOST], trees)
    if job.training_job_status in ("Stopping", "Stopped"):  # stopped while downloading
        record.finish(job, record.Outcome("Stopped"))
        return JobRun(job_name, "Stopped", -1, "", None, None, None, "", time.time() - started, trees[HOST], trees)
    record.set_status(job, "InProgress", "Training", "Training image download completed. Training in progress.")
    hosts = list(trees)
    feeds = [  # Pipe channels: a FIFO per pass on each host, fed while the job runs
        feed
        for index, (host, tree) in enumerate(trees.items())
        for feed in start_feeds(clients.s3, desc, tree, (index, len(hosts)))
    ]
    try:
        run = _run_containers(desc, trees, running, clients.logs, options, started)
    finally:
        for feed in feeds:
            feed.stop()
    return _conclude(clients, desc, trees, checkpoints, run, started)
