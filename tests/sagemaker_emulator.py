"""Test-side SageMaker: run a training job that moto recorded, the way the service would.

moto stores CreateTrainingJob requests but runs nothing (and marks every job Completed at once).
This module plays the service's part, for tests only:

* `sagemaker_service()` completes moto's SageMaker, inside the block, where it falls short of the
  API: jobs start InProgress, keep their Environment and MetricDefinitions, can be stopped
  (StopTrainingJob), and ListTrainingJobs sorts and filters before it pages. With
  `run_jobs=True` every created job runs in the background, as on SageMaker.
* `run_training_job()` is one instance ("algo-1") running the job: it downloads the channels and
  existing checkpoints into an /opt/ml tree, writes /opt/ml/input/config/*.json, and runs the
  recorded ContainerEntrypoint + ContainerArguments with this machine as the container image
  (its python3, torch and torchrun), /opt/ml bind-mounted in private mount and PID namespaces.
  The container's stdout goes to CloudWatch Logs; afterwards model/ and output/data/ are tarred
  to <S3OutputPath>/<job>/output/{model,output}.tar.gz, checkpoints are synced back, and the job
  ends Completed, Failed (FailureReason from /opt/ml/output/failure) or Stopped.
* `finish_job()` sets the end state on moto's in-process record, which the API cannot do.

As in a container, the entry point is PID 1 of its namespace: a stop (or MaxRuntime) sends
SIGTERM to PID 1 alone, then SIGKILL after the grace period (120 s on SageMaker).

Needs root (mount and PID namespaces) and moto running in this process (ThreadedMotoServer, as
tests/aws_fixtures.py's moto_endpoint does). The mount point /opt/ml is created on this machine
if missing and stays empty: each job's tree is mounted there only inside its own namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTAINER_ROOT = "/opt/ml"
HOST = "algo-1"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
STOP_GRACE_SECONDS = 120.0  # SageMaker's delay between SIGTERM and SIGKILL
FAILURE_REASON_LIMIT = 1024  # SageMaker truncates FailureReason
TERMINAL = ("Completed", "Failed", "Stopped")
# What a container inherits from this machine: enough to find python3 and the AWS endpoint.
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYENV_ROOT", "PYENV_VERSION")
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")


class EmulatorError(RuntimeError):
    """The emulator cannot run this job here; the message says why."""


# --- can this machine be the container? -----------------------------------------------------


def container_problem() -> str | None:
    """None if a job can run here; else why not (tests skip with it)."""
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    try:
        Path(CONTAINER_ROOT).mkdir(parents=True, exist_ok=True)  # the bind-mount target, left empty
    except OSError as exc:
        return f"cannot create the mount point {CONTAINER_ROOT}: {exc}"
    with tempfile.TemporaryDirectory() as probe:
        (Path(probe) / "probe").touch()
        result = subprocess.run(
            _namespace_argv(Path(probe), ["test", "-f", f"{CONTAINER_ROOT}/probe"]),
            capture_output=True,
            text=True,
            timeout=30,
        )
    if result.returncode != 0:
        return (
            f"cannot bind-mount {CONTAINER_ROOT} in a private mount/PID namespace (needs root): {result.stderr.strip()}"
        )
    return None


def _namespace_argv(tree: Path, command: list[str]) -> list[str]:
    # --fork makes `command` PID 1 of a new PID namespace, as a container's entry point is.
    script = 'mount --bind "$1" ' + CONTAINER_ROOT + ' && shift && cd / && exec "$@"'
    return [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(tree),
        *command,
    ]


# --- moto's record of a job ---------------------------------------------------------------------


def _backend(arn: str):
    from moto.sagemaker.models import sagemaker_backends

    _, _, _, region, account, _ = arn.split(":", 5)
    return sagemaker_backends[account][region]


def moto_job(sagemaker_client, job_name: str):
    """moto's in-process record of the job (the object DescribeTrainingJob reads)."""
    arn = sagemaker_client.describe_training_job(TrainingJobName=job_name)["TrainingJobArn"]
    job = _backend(arn).training_jobs.get(job_name)
    if job is None:
        raise EmulatorError(f"job {job_name} is not in this process's moto: run moto as ThreadedMotoServer in-process")
    return job


def _now():
    from moto.core.utils import utcnow

    return utcnow()


def _set_status(job, status: str, secondary: str, message: str) -> None:
    now = _now()
    transitions = job.secondary_status_transitions or []
    if transitions and "EndTime" not in transitions[-1]:
        transitions[-1]["EndTime"] = now
    transitions.append({"Status": secondary, "StartTime": now, "StatusMessage": message})
    job.secondary_status_transitions = transitions
    job.training_job_status, job.secondary_status, job.last_modified_time = status, secondary, now


def finish_job(
    sagemaker_client,
    job_name: str,
    status: str,
    secondary_status: str | None = None,
    model_uri: str | None = None,
    failure_reason: str | None = None,
    billable_seconds: int | None = None,
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """End the job on moto's record as SageMaker would (test-side: the API has no such call)."""
    if status not in TERMINAL:
        raise ValueError(f"status must be one of {TERMINAL}, got {status!r}")
    job = moto_job(sagemaker_client, job_name)
    _set_status(job, status, secondary_status or status, f"Training job {status.lower()}")
    now = _now()
    job.secondary_status_transitions[-1]["EndTime"] = now
    job.training_start_time = job.training_start_time or job.creation_time
    job.training_end_time = now
    job.training_time_in_seconds = max(1, int((now - job.training_start_time).total_seconds()))
    job.billable_time_in_seconds = billable_seconds if billable_seconds is not None else job.training_time_in_seconds
    job.model_artifacts = {"S3ModelArtifacts": model_uri} if model_uri else None
    job.failure_reason = failure_reason[:FAILURE_REASON_LIMIT] if failure_reason else None
    job.final_metric_data_list = [
        {"MetricName": name, "Value": float(value), "Timestamp": now} for name, value in (metrics or {}).items()
    ] or None
    return sagemaker_client.describe_training_job(TrainingJobName=job_name)


# --- the service patch --------------------------------------------------------------------------


_SERVED: set = set()  # ARNs of jobs created inside sagemaker_service(): their Environment is kept
_RUNNING: dict[str, _Container] = {}  # ARN -> the container running it
_ON_CREATE: list[Callable[[str, str], None]] = []  # (job name, ARN) callbacks of run_jobs services


def _created(response, job) -> None:
    """What moto leaves out of a new job: Environment and co., real MetricDefinitions, InProgress."""
    for param in ("Environment", "RetryStrategy", "RemoteDebugConfig", "InfraCheckConfig", "SessionChainingConfig"):
        value = response._get_param(param)
        if value is not None:
            setattr(job, re.sub(r"(?<!^)(?=[A-Z])", "_", param).lower(), value)
    # moto overwrites MetricDefinitions with a made-up one, in the parsed request too: reparse.
    spec = json.loads(response.body).get("AlgorithmSpecification", {})
    job.algorithm_specification.pop("MetricDefinitions", None)
    if spec.get("MetricDefinitions"):
        job.algorithm_specification["MetricDefinitions"] = spec["MetricDefinitions"]
    job.training_job_status, job.secondary_status = "InProgress", "Starting"
    job.training_start_time = job.training_end_time = job.model_artifacts = job.final_metric_data_list = None
    job.secondary_status_transitions = [
        {"Status": "Starting", "StartTime": job.creation_time, "StatusMessage": "Launching requested ML instances"}
    ]
    _SERVED.add(job.arn)


def _stop_training_job(response):
    from moto.core.responses import EmptyResult
    from moto.sagemaker.exceptions import ValidationError

    name = response._get_param("TrainingJobName")
    job = response.sagemaker_backend.training_jobs.get(name)
    if job is None:
        raise ValidationError(message=f"Requested resource not found: training job {name}")
    if job.training_job_status in TERMINAL + ("Stopping",):
        raise ValidationError(
            message=f"The request was rejected because the training job is in status {job.training_job_status}."
        )
    _set_status(job, "Stopping", "Stopping", "Stopping the training job")
    container = _RUNNING.get(job.arn)
    if container is not None:
        container.stop("Stopped")  # the emulator ends the job when the container is gone
    else:  # created but never run: nothing to wait for
        _set_status(job, "Stopped", "Stopped", "Training job stopped")
        job.training_end_time = _now()
    return EmptyResult()


def _list_training_jobs(response):
    """ListTrainingJobs as the API does it: filter, sort, then page (moto pages first, never sorts)."""
    from moto.core.responses import ActionResult

    jobs = list(response.sagemaker_backend.training_jobs.values())
    name, status = response._get_param("NameContains"), response._get_param("StatusEquals")
    jobs = [
        j for j in jobs if (not name or name in j.training_job_name) and (not status or j.training_job_status == status)
    ]
    sort_by = response._get_param("SortBy") or "CreationTime"
    attribute = {"Name": "training_job_name", "Status": "training_job_status"}.get(sort_by, "creation_time")
    jobs.sort(key=lambda j: getattr(j, attribute), reverse=response._get_param("SortOrder") == "Descending")
    start = int(response._get_param("NextToken") or 0)
    end = start + int(response._get_param("MaxResults") or 100)
    summaries = [
        {
            k: v
            for k, v in {
                "TrainingJobName": j.training_job_name,
                "TrainingJobArn": j.arn,
                "CreationTime": j.creation_time,
                "TrainingEndTime": j.training_end_time,
                "LastModifiedTime": j.last_modified_time,
                "TrainingJobStatus": j.training_job_status,
            }.items()
            if v is not None
        }
        for j in jobs[start:end]
    ]
    result = {"TrainingJobSummaries": summaries}
    if end < len(jobs):
        result["NextToken"] = str(end)
    return ActionResult(result)


@dataclass
class Service:
    """What sagemaker_service() yields: the background runs of created jobs (run_jobs=True)."""

    runs: dict[str, Future[JobRun]] = field(default_factory=dict)

    def result(self, job_name: str, timeout: float = 600) -> JobRun:
        return self.runs[job_name].result(timeout=timeout)


@contextmanager
def sagemaker_service(run_jobs: bool = False, workdir: Path | None = None, **run_kwargs) -> Iterator[Service]:
    """Inside the block, moto's SageMaker behaves like the service (see the module docstring).

    run_jobs=True runs every job created in the block in a background thread under `workdir`
    (run_kwargs go to run_training_job); `service.result(name)` waits for one.
    """
    from moto.sagemaker.responses import SageMakerResponse

    service = Service()
    saved = {
        name: SageMakerResponse.__dict__.get(name)
        for name in ("create_training_job", "stop_training_job", "list_training_jobs")
    }
    original_create = SageMakerResponse.create_training_job

    def create_training_job(self):
        result = original_create(self)
        name = self._get_param("TrainingJobName")
        job = self.sagemaker_backend.training_jobs[name]
        _created(self, job)
        for callback in list(_ON_CREATE):
            callback(name, job.arn)
        return result

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sagemaker-job") if run_jobs else None
    if run_jobs:
        if workdir is None:
            raise ValueError("run_jobs=True needs a workdir for the jobs' /opt/ml trees")
        problem = container_problem()
        if problem:
            raise EmulatorError(problem)

    def on_create(name: str, arn: str) -> None:
        service.runs[name] = pool.submit(_run_created, name, arn, Path(workdir) / name, run_kwargs)

    SageMakerResponse.create_training_job = create_training_job
    SageMakerResponse.stop_training_job = _stop_training_job
    SageMakerResponse.list_training_jobs = _list_training_jobs
    if run_jobs:
        _ON_CREATE.append(on_create)
    try:
        yield service
    finally:
        if run_jobs:
            _ON_CREATE.remove(on_create)
            pool.shutdown(wait=True)
        for name, value in saved.items():
            if value is None:
                delattr(SageMakerResponse, name)
            else:
                setattr(SageMakerResponse, name, value)


def _run_created(name: str, arn: str, workdir: Path, run_kwargs: dict[str, Any]) -> JobRun:
    import boto3

    region = arn.split(":")[3]
    run_kwargs = dict(run_kwargs)
    endpoint = run_kwargs.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
    session = boto3.Session(region_name=region)
    sm, s3 = (session.client(s, endpoint_url=endpoint) for s in ("sagemaker", "s3"))
    return run_training_job(
        sm, s3, name, workdir, logs_client=session.client("logs", endpoint_url=endpoint), **run_kwargs
    )


# --- one instance running the job ---------------------------------------------------------------


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
            tail = "\n".join(self.stdout.splitlines()[-40:])
            raise AssertionError(
                f"job {self.job_name} {self.status} (exit {self.returncode}): {self.failure_reason}\n{tail}"
            )
        return self


def _container_path(path: str, tree: Path) -> Path:
    if path != CONTAINER_ROOT and not path.startswith(CONTAINER_ROOT + "/"):
        raise EmulatorError(f"{path} is outside {CONTAINER_ROOT}: the emulator mounts only {CONTAINER_ROOT}")
    return tree / path[len(CONTAINER_ROOT) :].lstrip("/")


def _split(uri: str):
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def _download_prefix(s3, uri: str, dest: Path, folder: bool = False) -> int:
    """Every object under the S3 prefix into dest, keeping the key's path below the prefix."""
    bucket, prefix = _split(uri)
    if folder and prefix and not prefix.endswith("/"):
        prefix += "/"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
    dest.mkdir(parents=True, exist_ok=True)

    def one(key: str) -> None:
        relative = key[len(prefix) :].lstrip("/") or key.rsplit("/", 1)[-1]  # the URI named one object
        target = dest / relative
        if ".." in Path(relative).parts:
            raise EmulatorError(f"s3://{bucket}/{key} would land outside {dest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, keys))
    return len(keys)


def _network_interface() -> str:
    return "eth0" if Path("/sys/class/net/eth0").exists() else "lo"


def config_files(desc: dict[str, Any]) -> dict[str, Any]:
    """/opt/ml/input/config/*.json as SageMaker writes them for one instance."""
    instance_type = desc["ResourceConfig"]["InstanceType"]
    files = {
        "hyperparameters.json": desc.get("HyperParameters", {}),
        "resourceconfig.json": {
            "current_host": HOST,
            "current_instance_type": instance_type,
            "current_group_name": "homogeneousCluster",
            "hosts": [HOST],
            "instance_groups": [
                {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": [HOST]}
            ],
            "network_interface_name": _network_interface(),
        },
        "inputdataconfig.json": {
            c["ChannelName"]: {
                "TrainingInputMode": c.get(
                    "InputMode", desc["AlgorithmSpecification"].get("TrainingInputMode", "File")
                ),
                "S3DistributionType": c["DataSource"]["S3DataSource"].get("S3DataDistributionType", "FullyReplicated"),
                "RecordWrapperType": c.get("RecordWrapperType", "None"),
                **({"ContentType": c["ContentType"]} if c.get("ContentType") else {}),
            }
            for c in desc.get("InputDataConfig", [])
        },
    }
    if desc.get("CheckpointConfig"):
        files["checkpointconfig.json"] = desc["CheckpointConfig"]
    return files


def uses_sdk_drivers(desc: dict[str, Any]) -> bool:
    return any(c["ChannelName"] == "sm_drivers" for c in desc.get("InputDataConfig", []))


def toolkit_env(desc: dict[str, Any]) -> dict[str, str]:
    """The SM_* variables the sagemaker-training toolkit exports before it runs a user script."""
    channels = sorted(c["ChannelName"] for c in desc.get("InputDataConfig", []))
    files = config_files(desc)
    resource = files["resourceconfig.json"]
    hps = {k: _maybe_json(v) for k, v in desc.get("HyperParameters", {}).items()}
    env = {
        "SM_MODEL_DIR": f"{CONTAINER_ROOT}/model",
        "SM_INPUT_DIR": f"{CONTAINER_ROOT}/input",
        "SM_INPUT_CONFIG_DIR": f"{CONTAINER_ROOT}/input/config",
        "SM_OUTPUT_DIR": f"{CONTAINER_ROOT}/output",
        "SM_OUTPUT_DATA_DIR": f"{CONTAINER_ROOT}/output/data",
        "SM_OUTPUT_INTERMEDIATE_DIR": f"{CONTAINER_ROOT}/output/intermediate",
        "SM_CHANNELS": json.dumps(channels),
        "SM_HOSTS": json.dumps(resource["hosts"]),
        "SM_CURRENT_HOST": resource["current_host"],
        "SM_CURRENT_INSTANCE_TYPE": resource["current_instance_type"],
        "SM_NETWORK_INTERFACE_NAME": resource["network_interface_name"],
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_NUM_GPUS": str(_num_gpus()),
        "SM_LOG_LEVEL": "20",
        "SM_HPS": json.dumps(hps),
        "SM_USER_ARGS": json.dumps(
            [a for k, v in hps.items() for a in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]
        ),
        "SM_RESOURCE_CONFIG": json.dumps(resource),
        "SM_INPUT_DATA_CONFIG": json.dumps(files["inputdataconfig.json"]),
    }
    env.update({f"SM_CHANNEL_{c.upper()}": f"{CONTAINER_ROOT}/input/data/{c}" for c in channels})
    env.update({f"SM_HP_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in hps.items()})
    env["SM_TRAINING_ENV"] = json.dumps(
        {
            "channel_input_dirs": {c: env[f"SM_CHANNEL_{c.upper()}"] for c in channels},
            "current_host": resource["current_host"],
            "hosts": resource["hosts"],
            "hyperparameters": hps,
            "input_data_config": files["inputdataconfig.json"],
            "job_name": desc["TrainingJobName"],
            "model_dir": env["SM_MODEL_DIR"],
            "num_cpus": int(env["SM_NUM_CPUS"]),
            "num_gpus": int(env["SM_NUM_GPUS"]),
            "output_data_dir": env["SM_OUTPUT_DATA_DIR"],
            "resource_config": resource,
            "network_interface_name": resource["network_interface_name"],
        }
    )
    return env


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _num_gpus() -> int:
    try:
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def container_env(desc: dict[str, Any], env_extra: dict[str, str] | None = None) -> dict[str, str]:
    """The container's environment: the platform's variables and the job's Environment.

    With the SDK's drivers the SM_* variables are not the platform's: sm_train.sh sets them
    (sm_drivers/scripts/environment.py), exactly as it must on SageMaker. Other jobs get them
    as the sagemaker-training toolkit of a framework image would set them.
    """
    region = desc["TrainingJobArn"].split(":")[3]
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV + AWS_ENV if k in os.environ}
    if not uses_sdk_drivers(desc):
        env.update(toolkit_env(desc))
    env.update(
        {
            "TRAINING_JOB_NAME": desc["TrainingJobName"],
            "TRAINING_JOB_ARN": desc["TrainingJobArn"],
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
        }
    )
    env.update(desc.get("Environment") or {})
    env.update(env_extra or {})
    return env


def prepare_tree(tree: Path, desc: dict[str, Any], s3) -> Path:
    """The /opt/ml tree of the job: config files, channels, existing checkpoints; returns the checkpoint dir."""
    if tree.exists():
        shutil.rmtree(tree)
    for sub in ("input/config", "input/data", "model", "output/data"):
        (tree / sub).mkdir(parents=True)
    for name, content in config_files(desc).items():
        (tree / "input/config" / name).write_text(json.dumps(content))
    for channel in desc.get("InputDataConfig", []):
        source = channel["DataSource"].get("S3DataSource")
        if source is None or source.get("S3DataType", "S3Prefix") != "S3Prefix":
            raise EmulatorError(f"channel {channel['ChannelName']}: only S3Prefix data sources are emulated")
        if channel.get("InputMode", "File") == "Pipe":
            raise EmulatorError(f"channel {channel['ChannelName']}: Pipe mode is not emulated")
        _download_prefix(s3, source["S3Uri"], tree / "input/data" / channel["ChannelName"])
    checkpoint = desc.get("CheckpointConfig") or {}
    local = _container_path(checkpoint.get("LocalPath") or f"{CONTAINER_ROOT}/checkpoints", tree)
    local.mkdir(parents=True, exist_ok=True)
    if checkpoint.get("S3Uri"):
        _download_prefix(s3, checkpoint["S3Uri"], local, folder=True)  # SageMaker restores them first
    return local


class _Container:
    """The running entry point; stop() is docker-stop: SIGTERM to PID 1, SIGKILL after the grace."""

    def __init__(self, argv: list[str], env: dict[str, str], grace: float):
        self.grace = grace
        self.stop_reason: str | None = None
        self.killer: threading.Timer | None = None
        self.process = subprocess.Popen(
            argv, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _pid1(self) -> int | None:
        """The entry point's host PID: unshare's only child."""
        for _ in range(50):
            try:
                children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            except OSError:
                return None
            if children:
                return int(children[0])
            time.sleep(0.05)
        return None

    def stop(self, reason: str) -> None:
        if self.stop_reason is not None or self.process.poll() is not None:
            return
        self.stop_reason = reason
        pid1 = self._pid1()
        if pid1 is not None:
            try:
                os.kill(pid1, signal.SIGTERM)  # ignored unless PID 1 handles it, as in a container
            except ProcessLookupError:
                return
        self.killer = threading.Timer(self.grace, self.kill)
        self.killer.daemon = True  # never keeps the test process alive
        self.killer.start()

    def kill(self) -> None:
        pid1 = self._pid1()
        if self.process.poll() is None and pid1 is not None:
            try:
                os.kill(pid1, signal.SIGKILL)  # PID 1 gone: the kernel kills the whole namespace
            except ProcessLookupError:
                pass


class _LogStream:
    """The container's lines into CloudWatch Logs every half second, as the SageMaker agent sends them."""

    def __init__(self, logs, job_name: str, started: float):
        self.logs, self.name = logs, f"{job_name}/{HOST}-{int(started)}"
        self.pending: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.closed = threading.Event()
        if logs is not None:
            try:
                logs.create_log_group(logGroupName=LOG_GROUP)
            except logs.exceptions.ResourceAlreadyExistsException:
                pass
            logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=self.name)
        self.flusher = threading.Thread(target=self._flush_periodically, daemon=True)
        self.flusher.start()

    def add(self, line: str) -> None:
        if line:  # CloudWatch holds no empty events
            with self.lock:
                self.pending.append({"timestamp": int(time.time() * 1000), "message": line})

    def _flush_periodically(self) -> None:
        while not self.closed.wait(0.5):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
            if self.logs is not None and batch:
                self.logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=self.name, logEvents=batch)

    def close(self) -> None:
        self.closed.set()
        self.flusher.join()
        self.flush()


def final_metrics(lines: list[str], definitions: list[dict[str, str]]) -> dict[str, float]:
    """The last value each metric regex captured in the log, as FinalMetricDataList reports."""
    metrics: dict[str, float] = {}
    for definition in definitions:
        pattern = re.compile(definition["Regex"])
        for line in lines:
            for match in pattern.finditer(line):
                try:
                    metrics[definition["Name"]] = float(match.group(1))
                except (IndexError, ValueError):
                    pass
    return metrics


def _tar_folder(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(folder.iterdir()):
            tar.add(entry, arcname=entry.name)


def _upload_results(s3, desc: dict[str, Any], tree: Path, checkpoints: Path, status: str) -> dict[str, str | None]:
    """model.tar.gz, output.tar.gz and the checkpoints to S3, as the service does at the end."""
    base = desc["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{desc['TrainingJobName']}/output"
    uris: dict[str, str | None] = {"model": None, "output": None}
    with tempfile.TemporaryDirectory() as scratch:
        for name, folder in (("model", tree / "model"), ("output", tree / "output/data")):
            if name == "model" and status == "Failed":
                continue  # a failed job has no ModelArtifacts
            if name == "output" and not any(folder.iterdir()):
                continue
            archive = Path(scratch) / f"{name}.tar.gz"
            _tar_folder(folder, archive)
            bucket, key = _split(f"{base}/{name}.tar.gz")
            s3.upload_file(str(archive), bucket, key)
            uris[name] = f"s3://{bucket}/{key}"
    checkpoint_uri = (desc.get("CheckpointConfig") or {}).get("S3Uri")
    if checkpoint_uri:
        bucket, prefix = _split(checkpoint_uri)
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        for path in sorted(p for p in checkpoints.rglob("*") if p.is_file()):
            s3.upload_file(str(path), bucket, prefix + path.relative_to(checkpoints).as_posix())
    return uris


def _failure_reason(tree: Path, returncode: int) -> str:
    failure = tree / "output/failure"
    text = failure.read_text(errors="replace").strip() if failure.is_file() else ""
    return f"AlgorithmError: {text}, exit code: {returncode}" if text else f"AlgorithmError: exit code: {returncode}"


def run_training_job(
    sagemaker_client,
    s3_client,
    job_name: str,
    workdir: Path,
    env_extra: dict[str, str] | None = None,
    timeout: float = 600,
    logs_client=None,
    stop_grace: float = STOP_GRACE_SECONDS,
    echo: Callable[[str], None] | None = None,
) -> JobRun:
    """Run the recorded job on this machine as one SageMaker instance; end it on moto's record.

    `timeout` caps the run like MaxRuntimeInSeconds does (whichever is shorter); the job then
    ends Stopped with SecondaryStatus MaxRuntimeExceeded. logs_client None: made like the
    SageMaker client (same region and endpoint). echo: called with each container line.
    """
    problem = container_problem()
    if problem:
        raise EmulatorError(problem)
    desc = sagemaker_client.describe_training_job(TrainingJobName=job_name)
    if desc["TrainingJobArn"] not in _SERVED:
        raise EmulatorError(f"{job_name} was created outside sagemaker_service(): moto dropped its Environment")
    if desc["ResourceConfig"].get("InstanceCount", 1) != 1:
        raise EmulatorError(
            f"{job_name} asks for {desc['ResourceConfig']['InstanceCount']} instances; the emulator runs one"
        )
    if logs_client is None:
        import boto3

        logs_client = boto3.client(
            "logs", region_name=sagemaker_client.meta.region_name, endpoint_url=sagemaker_client.meta.endpoint_url
        )
    job = moto_job(sagemaker_client, job_name)
    started = time.time()
    _set_status(job, "InProgress", "Downloading", "Downloading input data")
    job.training_start_time = _now()
    tree = Path(workdir) / "opt_ml"
    checkpoints = prepare_tree(tree, desc, s3_client)

    if job.training_job_status in ("Stopping", "Stopped"):  # stopped while downloading
        finish_job(sagemaker_client, job_name, "Stopped")
        return JobRun(job_name, "Stopped", -1, "", None, None, None, "", time.time() - started, tree)
    spec = desc["AlgorithmSpecification"]
    command = list(spec.get("ContainerEntrypoint") or []) + list(spec.get("ContainerArguments") or [])
    if not spec.get("ContainerEntrypoint"):
        raise EmulatorError(f"{job_name} has no ContainerEntrypoint: the image's own entry point cannot run here")
    _set_status(job, "InProgress", "Training", "Training image download completed. Training in progress.")
    container = _Container(_namespace_argv(tree, command), container_env(desc, env_extra), stop_grace)
    _RUNNING[desc["TrainingJobArn"]] = container
    max_runtime = min(timeout, desc.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", timeout))
    watchdog = threading.Timer(max_runtime, container.stop, args=("MaxRuntimeExceeded",))
    watchdog.daemon = True
    watchdog.start()
    log = _LogStream(logs_client, job_name, started)
    lines: list[str] = []
    try:
        for raw in container.process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            lines.append(line)
            log.add(line)
            if echo:
                echo(line)
        returncode = container.process.wait()
    finally:
        if container.process.poll() is None:  # the emulator failed, not the job: leave nothing running
            container.kill()
            container.process.wait()
        watchdog.cancel()
        if container.killer is not None:
            container.killer.cancel()
        log.close()
        _RUNNING.pop(desc["TrainingJobArn"], None)

    if container.stop_reason:
        status, secondary = "Stopped", container.stop_reason
    else:
        status, secondary = ("Completed", "Completed") if returncode == 0 else ("Failed", "Failed")
    _set_status(
        job, "Stopping" if status == "Stopped" else "InProgress", "Uploading", "Uploading generated training model"
    )
    uris = _upload_results(s3_client, desc, tree, checkpoints, status)
    reason = _failure_reason(tree, returncode) if status == "Failed" else None
    metrics = final_metrics(lines, spec.get("MetricDefinitions") or [])
    billable = max(1, int(round(time.time() - started)))
    finish_job(sagemaker_client, job_name, status, secondary, uris["model"], reason, billable, metrics)
    return JobRun(
        job_name,
        status,
        returncode,
        "\n".join(lines),
        uris["model"],
        uris["output"],
        reason,
        log.name,
        time.time() - started,
        tree,
    )
