"""SageMaker's API where moto falls short, and the runs of the jobs it records.

moto stores CreateTrainingJob requests but runs nothing. A `SageMakerService`, while entered,
completes it where users would notice:

* jobs start InProgress (moto marks them Completed at once) and keep their Environment and
  MetricDefinitions (moto drops the first and replaces the second with a made-up one);
* StopTrainingJob works (moto answers 500): the running container gets SIGTERM, a job that never
  ran is Stopped at once;
* ListTrainingJobs filters, sorts and pages as AWS does, whether a service is entered or not
  (listing.py, which the endpoint applies);
* a completed job with a KeepAlivePeriodInSeconds leaves a warm pool (WarmPoolStatus Available,
  Terminated once the period has passed), as ListTrainingJobs' WarmPoolStatusEquals finds it.

With a workdir, endpoints and batch transform jobs are served by the models they name (serving.py).
With run_jobs=True every created job runs in the background (`run`), as on SageMaker;
`service.result(name)` waits for one. ECR and IAM where moto falls short: ecr_iam.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from project.sandbox import record
from project.sandbox.container import LOG_GROUP, Cluster, container_problem
from project.sandbox.optml import SandboxError
from project.sandbox.patches import Patches
from project.sandbox.run import JobClients, JobRun, RunOptions, run_training_job
from project.sandbox.serving import Hosting, boto3_s3

__all__ = [
    "LOG_GROUP",
    "JobRun",
    "SageMakerService",
    "container_problem",
    "sagemaker_service",
]

# Request fields moto does not store on the job; DescribeTrainingJob returns them again.
KEPT_FIELDS = ("Environment", "RetryStrategy", "RemoteDebugConfig", "InfraCheckConfig", "SessionChainingConfig")
PARALLEL_JOBS = 2  # jobs running at once; more wait their turn (SageMaker queues nothing, but a laptop must)
RESULT_TIMEOUT_SECONDS = 600.0
HOSTING_DIR = "endpoints"  # under the workdir: each endpoint's and transform job's unpacked model


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _keep_request_fields(response: Any, job: Any) -> None:
    for name in KEPT_FIELDS:
        value = response._get_param(name)
        if value is not None:
            setattr(job, _snake(name), value)
    # moto overwrites MetricDefinitions with a made-up one, in the parsed request too: reparse.
    spec = json.loads(response.body).get("AlgorithmSpecification", {})
    job.algorithm_specification.pop("MetricDefinitions", None)
    if spec.get("MetricDefinitions"):
        job.algorithm_specification["MetricDefinitions"] = spec["MetricDefinitions"]


def describe_training_job(response: Any, original: Any) -> Any:
    """DescribeTrainingJob with the warm pool's state as of now."""
    job = response.sagemaker_backend.training_jobs.get(response._get_param("TrainingJobName"))
    if job is not None:
        record.update_warm_pool(job)
    return original(response)


class SageMakerService:
    """moto's SageMaker completed as the module docstring says, for as long as it is entered."""

    def __init__(
        self,
        run_jobs: bool = False,
        workdir: Path | None = None,
        endpoint_url: str | None = None,
        options: RunOptions | None = None,
    ) -> None:
        if run_jobs and workdir is None:
            raise ValueError("run_jobs=True needs a workdir for the jobs' /opt/ml trees")
        self.run_jobs, self.workdir, self.endpoint_url = run_jobs, workdir, endpoint_url
        self.options = options or RunOptions()
        self.served: set[str] = set()  # ARNs of jobs created while entered: their Environment is kept
        self.running: dict[str, Cluster] = {}  # ARN -> the containers running it (one per instance)
        self.runs: dict[str, Future[JobRun]] = {}  # job name -> its background run
        self._patches = Patches()
        self._pool: ThreadPoolExecutor | None = None
        self.hosting: Hosting | None = None  # endpoints and transform jobs, served where there is a workdir

    # --- life ----------------------------------------------------------------------------------

    def __enter__(self) -> SageMakerService:
        from moto.sagemaker.responses import SageMakerResponse

        if self.run_jobs:
            problem = container_problem()
            if problem:
                raise SandboxError(problem)
            self._pool = ThreadPoolExecutor(max_workers=PARALLEL_JOBS, thread_name_prefix="sagemaker-job")
        original_create = SageMakerResponse.create_training_job
        self._patches.set(SageMakerResponse, "create_training_job", lambda r: self._create(r, original_create))
        self._patches.set(SageMakerResponse, "stop_training_job", self._stop)
        original_describe = SageMakerResponse.describe_training_job
        self._patches.set(
            SageMakerResponse, "describe_training_job", lambda r: describe_training_job(r, original_describe)
        )
        if self.workdir is not None:
            credentials = {k: self.options.env_extra.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
            s3 = boto3_s3(self.endpoint_url, {k.lower(): v for k, v in credentials.items()})
            self.hosting = Hosting(Path(self.workdir) / HOSTING_DIR, s3).__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, stop_running: bool = False) -> None:
        """Restore moto; wait for the runs (stop_running: SIGKILL their containers first)."""
        self._patches.restore()
        if self.hosting is not None:
            self.hosting.__exit__()
            self.hosting = None
        if stop_running:
            for cluster in list(self.running.values()):
                cluster.stop("Stopped")
                cluster.kill()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=stop_running)

    # --- the API -------------------------------------------------------------------------------

    def _create(self, response: Any, original: Any) -> Any:
        result = original(response)
        name = response._get_param("TrainingJobName")
        job = response.sagemaker_backend.training_jobs[name]
        _keep_request_fields(response, job)
        record.start_recorded(job)
        self.served.add(job.arn)
        if self._pool is not None:
            self.runs[name] = self._pool.submit(self.run_job, name, Path(str(self.workdir)) / name)
        return result

    def _stop(self, response: Any) -> Any:
        from moto.core.responses import EmptyResult
        from moto.sagemaker.exceptions import ValidationError

        name = response._get_param("TrainingJobName")
        job = response.sagemaker_backend.training_jobs.get(name)
        if job is None:
            raise ValidationError(message=f"Requested resource not found: training job {name}")
        if job.training_job_status in (*record.TERMINAL, "Stopping"):
            raise ValidationError(
                message=f"The request was rejected because the training job is in status {job.training_job_status}."
            )
        record.set_status(job, "Stopping", "Stopping", "Stopping the training job")
        cluster = self.running.get(job.arn)
        if cluster is not None:
            cluster.stop("Stopped")  # the run ends the job when every container is gone
        elif name not in self.runs:  # created but never run: nothing to wait for
            record.finish(job, record.Outcome("Stopped"))
        return EmptyResult()

    # --- the runs ------------------------------------------------------------------------------

    def clients(self, region: str) -> JobClients:
        import boto3

        credentials = {
            "aws_access_key_id": self.options.env_extra.get("AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": self.options.env_extra.get("AWS_SECRET_ACCESS_KEY"),
        }
        session = boto3.Session(region_name=region, **credentials)
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        return JobClients(*(session.client(s, endpoint_url=endpoint) for s in ("sagemaker", "s3", "logs")))

    def run_job(self, job_name: str, workdir: Path, **options: Any) -> JobRun:
        """Run one job created while this service was entered; options override RunOptions fields."""
        job = next((j for arn in self.served if (j := record.backend(arn).training_jobs.get(job_name))), None)
        if job is None:
            raise SandboxError(f"{job_name} was not created through this service: moto dropped its Environment")
        clients = self.clients(job.arn.split(":")[3])
        return run_training_job(clients, job_name, workdir, self.running, replace(self.options, **options))

    def result(self, job_name: str, timeout: float = RESULT_TIMEOUT_SECONDS) -> JobRun:
        return self.runs[job_name].result(timeout=timeout)


@contextmanager
def sagemaker_service(
    run_jobs: bool = False, workdir: Path | None = None, endpoint_url: str | None = None, **options: Any
) -> Iterator[SageMakerService]:
    """A SageMakerService for the block; options are RunOptions fields (stop_grace, timeout, ...)."""
    with SageMakerService(run_jobs, workdir, endpoint_url, RunOptions(**options)) as service:
        yield service
