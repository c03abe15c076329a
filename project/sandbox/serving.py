"""SageMaker hosting played: endpoints and batch transform jobs answered by the models they name.

moto records models, endpoint configs, endpoints and transform jobs but serves nothing: an endpoint
is InService at once and InvokeEndpoint answers canned data; a transform job is Completed at once
with no output. While a `Hosting` is entered:

* CreateEndpoint starts Creating; the model's model.tar.gz is downloaded and unpacked, and a model
  server (model_server.py: the inference image's /ping and /invocations around the archive's
  code/inference.py) starts in its own process; the endpoint goes InService once /ping answers
  (Failed, with the reason, if it never does);
* each production variant of the config has its own server (a variant whose model is unchanged
  keeps its server across an update);
* UpdateEndpoint (moto has none) is Updating while the new config's models start, then InService
  on it; the old variants' servers stop. With a DeploymentConfig, it is SageMaker's blue/green
  update with its traffic shifting and alarm rollbacks (bluegreen.py). DeleteEndpoint stops the
  endpoint's servers;
* InvokeEndpoint (sagemaker-runtime) is sent to one variant's server, as routing.py routes it
  (TargetVariant, else by weight): its answer comes back naming the variant, a 4xx/5xx of the
  handler as SageMaker's ModelError (424, OriginalStatusCode/OriginalMessage), and each call is
  published to CloudWatch per variant (routing.publish), as on AWS;
* InvokeEndpointAsync on an asynchronous endpoint is queued and answered through S3 (async_queue.py);
* CreateTransformJob is InProgress while each object under the input prefix is sent to the model,
  one request each, and its answer written to <output>/<key>.out; then Completed (or Failed with
  the first refusal).

This module is over 300 lines because it is one stand-in, SageMaker hosting: Hosting and its ModelServers
share one lifecycle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from project.core.names import split_s3_uri
from project.sandbox.async_queue import AsyncQueue
from project.sandbox.bluegreen import BlueGreen, guarded
from project.sandbox.patches import Patches
from project.sandbox.routing import INVOKED_HEADER, TARGET_HEADER, Router, live_variants, publish

CHECKOUT = Path(__file__).resolve().parents[2]  # `python -m project.sandbox.model_server` runs from here
START_TIMEOUT_SECONDS = 120.0
INVOKE_TIMEOUT_SECONDS = 60.0  # SageMaker's limit for one real-time invocation


class ModelServer:
    """One model.tar.gz, unpacked in `folder` and served by a model_server process on a free port."""

    def __init__(self, folder: Path, archive: Path) -> None:
        model_dir = folder / "model"
        shutil.rmtree(model_dir, ignore_errors=True)
        model_dir.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(model_dir, filter="data")
        self.log = (folder / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "project.sandbox.model_server", str(model_dir)],
            cwd=CHECKOUT,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.url = ""
        self.model = ""  # the SageMaker model it serves

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Until /ping answers; RuntimeError with the server's last log line if it dies first."""
        assert self.process.stdout is not None
        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        try:
            line = self.process.stdout.readline().decode().split()
        finally:
            timer.cancel()
        if len(line) != 2 or line[0] != "port":
            self.stop()
            tail = Path(self.log.name).read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"the model server did not start: {tail[0]}")
        self.url = f"http://127.0.0.1:{line[1]}"
        with urllib.request.urlopen(f"{self.url}/ping", timeout=timeout) as ping:
            ping.read()

    def invoke(self, body: bytes, content_type: str, accept: str) -> tuple[int, str, bytes]:
        headers = {"Content-Type": content_type or "application/octet-stream", "Accept": accept or "*/*"}
        request = urllib.request.Request(f"{self.url}/invocations", body, headers)
        try:
            with urllib.request.urlopen(request, timeout=INVOKE_TIMEOUT_SECONDS) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.headers.get("Content-Type", ""), refused.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


class Hosting:
    """moto's SageMaker hosting completed as the module docstring says, for as long as it is entered."""

    def __init__(self, workdir: Path, s3_client: Any) -> None:
        self.workdir, self.s3 = workdir, s3_client  # s3_client(region) -> a boto3 S3 client of the sandbox
        self.servers: dict[str, dict[str, ModelServer]] = {}  # endpoint name -> variant name -> its server
        self.router = Router()
        self.queue = AsyncQueue(s3_client)
        self._lock = threading.Lock()
        self._patches = Patches()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sagemaker-hosting")
        self.blue_green = BlueGreen(self)

    def __enter__(self) -> Hosting:
        from moto.sagemaker.responses import SageMakerResponse
        from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

        create, delete = SageMakerResponse.create_endpoint, SageMakerResponse.delete_endpoint
        transform = SageMakerResponse.create_transform_job
        self._patches.set(SageMakerResponse, "create_endpoint", lambda r: self._create(r, create))
        self._patches.set(SageMakerResponse, "delete_endpoint", lambda r: self._delete(r, delete))
        self._patches.set(SageMakerResponse, "update_endpoint", self._update)
        self._patches.set(SageMakerResponse, "create_transform_job", lambda r: self._transform(r, transform))
        self._patches.set(SageMakerRuntimeResponse, "invoke_endpoint", self._invoke)
        self._patches.set(SageMakerRuntimeResponse, "invoke_endpoint_async", self._invoke_async)
        self._patches.set(SageMakerRuntimeResponse, "setup_class", _raw_body_setup)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._patches.restore()
        self.blue_green.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.queue.close()
        with self._lock:
            for fleet in self.servers.values():
                for server in fleet.values():
                    server.stop()
            self.servers.clear()

    # --- models --------------------------------------------------------------------------------

    def start(self, backend: Any, model_name: str, folder: Path) -> ModelServer:
        model = backend._models[model_name]
        bucket, key = split_s3_uri(model.primary_container["ModelDataUrl"])
        folder.mkdir(parents=True, exist_ok=True)
        archive = folder / "model.tar.gz"
        self.s3(backend.region_name).download_file(bucket, key, str(archive))
        server = ModelServer(folder, archive)
        server.wait_ready()
        server.model = model_name
        return server

    # --- endpoints -----------------------------------------------------------------------------

    def _create(self, response: Any, original: Any) -> Any:
        result = original(response)
        backend = response.sagemaker_backend
        endpoint = backend.endpoints[response._get_param("EndpointName")]
        endpoint.endpoint_status = "Creating"
        self._pool.submit(self._bring_up, backend, endpoint, endpoint.endpoint_config_name)
        return result

    def _bring_up(self, backend: Any, endpoint: Any, config_name: str) -> None:
        name = endpoint.endpoint_name
        config = backend.endpoint_configs[config_name]
        with self._lock:
            running = dict(self.servers.get(name, {}))
        started: dict[str, ModelServer] = {}
        try:
            for variant in config.production_variants:
                old = running.get(variant["VariantName"])
                if old is None or old.model != variant["ModelName"]:
                    folder = self.workdir / name / config_name / variant["VariantName"]
                    started[variant["VariantName"]] = self.start(backend, variant["ModelName"], folder)
        except Exception as exc:  # noqa: BLE001 - the endpoint fails with the reason, as on SageMaker
            for server in started.values():
                server.stop()
            endpoint.failure_reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            endpoint.endpoint_status = "Failed" if endpoint.endpoint_status == "Creating" else "InService"
            return
        self.switch(backend, endpoint, config_name, started, running)

    def switch(
        self,
        backend: Any,
        endpoint: Any,
        config_name: str,
        started: dict[str, ModelServer],
        running: dict[str, ModelServer] | None = None,
    ) -> None:
        """`endpoint` served by config_name's variants, on the servers `started` for them, else those
        `running` (default: its servers now); the other running servers stop."""
        name, config = endpoint.endpoint_name, backend.endpoint_configs[config_name]
        with self._lock:
            running = dict(self.servers.get(name, {})) if running is None else running
            if backend.endpoints.get(name) is not endpoint:  # deleted while it was starting
                for server in started.values():
                    server.stop()
                return
            fleet = {
                v["VariantName"]: started.get(v["VariantName"]) or running[v["VariantName"]]
                for v in config.production_variants
            }
            stale = [server for server in running.values() if server not in fleet.values()]
            self.servers[name] = fleet
            endpoint.endpoint_config_name = config_name
            endpoint.production_variants = live_variants(endpoint, config)
            endpoint.endpoint_status = "InService"
            endpoint.last_modified_time = _now()
        for server in stale:
            server.stop()

    def _update(self, response: Any) -> Any:
        from moto.core.responses import ActionResult
        from moto.sagemaker.exceptions import ValidationError

        backend = response.sagemaker_backend
        name, config_name = response._get_param("EndpointName"), response._get_param("EndpointConfigName")
        endpoint = backend.endpoints.get(name)
        if endpoint is None:
            raise ValidationError(message=f"Could not find endpoint '{name}'.")
        if config_name not in backend.endpoint_configs:
            raise ValidationError(message=f"Could not find endpoint configuration '{config_name}'.")
        if endpoint.endpoint_status != "InService":
            raise ValidationError(message=f"Cannot update in-progress endpoint '{endpoint.arn}'.")
        deployment = response._get_param("DeploymentConfig")
        if guarded(deployment):
            self.blue_green.check(backend, deployment)
        endpoint.endpoint_status = "Updating"  # the old model answers until the new one is up
        if guarded(deployment):
            self._pool.submit(self.blue_green.run, backend, endpoint, config_name, deployment)
        else:
            self._pool.submit(self._bring_up, backend, endpoint, config_name)
        return ActionResult({"EndpointArn": endpoint.arn})

    def _delete(self, response: Any, original: Any) -> Any:
        result = original(response)
        self.blue_green.drop(response._get_param("EndpointName"))
        with self._lock:
            fleet = self.servers.pop(response._get_param("EndpointName"), {})
        self.queue.drop(response._get_param("EndpointName"))
        for server in fleet.values():
            server.stop()
        shutil.rmtree(self.workdir / response._get_param("EndpointName"), ignore_errors=True)
        return result

    def _serving(self, response: Any) -> tuple[Any, Any, dict[str, ModelServer]]:
        """The backend, endpoint and variant servers a runtime request names; not found: ValidationError."""
        from moto.sagemaker.exceptions import ValidationError
        from moto.sagemaker.models import sagemaker_backends

        name = response.path.split("/")[2]
        backend = sagemaker_backends[response.current_account][response.region]
        endpoint = backend.endpoints.get(name)
        with self._lock:
            fleet = dict(self.servers.get(name, {}))
        if endpoint is None or not fleet:
            raise ValidationError(message=f"Endpoint {name} of account {response.current_account} not found.")
        return backend, endpoint, fleet

    def _invoke_async(self, response: Any) -> Any:
        backend, endpoint, fleet = self._serving(response)
        variant = self.router.choose(endpoint, list(fleet), None)
        config = backend.endpoint_configs[endpoint.endpoint_config_name]
        return self.queue.accept(response, endpoint, config, variant, fleet[variant])

    def _invoke(self, response: Any) -> Any:
        _, endpoint, fleet = self._serving(response)
        name = endpoint.endpoint_name
        fleet = self.blue_green.fleet(name, fleet, response.headers.get(TARGET_HEADER))  # mid-rollout: old or new
        variant = self.router.choose(endpoint, list(fleet), response.headers.get(TARGET_HEADER))
        start = time.monotonic()
        status, content_type, body = fleet[variant].invoke(
            response.raw_body if isinstance(response.raw_body, bytes) else response.raw_body.encode(),
            response.headers.get("Content-Type", ""),
            response.headers.get("Accept", ""),
        )
        publish(response.current_account, response.region, name, variant, status, time.monotonic() - start)
        if status == 200:
            return 200, {"Content-Type": content_type, INVOKED_HEADER: variant}, body
        message = body.decode(errors="replace")
        error = {
            "Message": f'Received client error ({status}) from primary with message "{message}".',
            "OriginalStatusCode": status,
            "OriginalMessage": message,
        }
        # moto takes a response's status from its headers (the tuple's own is ignored): without it
        # the model's refusal reached the client as a 200 whose body was the error.
        headers = {
            "Content-Type": "application/json",
            "x-amzn-ErrorType": "ModelError",
            "status": "424",
            INVOKED_HEADER: variant,
        }
        return 424, headers, json.dumps(error)

    # --- batch transform -----------------------------------------------------------------------

    def _transform(self, response: Any, original: Any) -> Any:
        result = original(response)
        backend = response.sagemaker_backend
        job = backend.transform_jobs[response._get_param("TransformJobName")]
        job.transform_job_status = "InProgress"
        job.transform_end_time = None
        self._pool.submit(self._run_transform, backend, job)
        return result

    def _run_transform(self, backend: Any, job: Any) -> None:
        folder = self.workdir / "transform" / job.transform_job_name
        server = None
        try:
            server = self.start(backend, job.model_name, folder)
            job.failure_reason = self._transform_objects(backend.region_name, job, server) or ""
        except Exception as exc:  # noqa: BLE001 - the job fails with the reason, as on SageMaker
            job.failure_reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        finally:
            if server is not None:
                server.stop()
            shutil.rmtree(folder, ignore_errors=True)
        job.transform_end_time = job.last_modified_time = _now()
        job.transform_job_status = "Failed" if job.failure_reason else "Completed"

    def _transform_objects(self, region: str, job: Any, server: ModelServer) -> str | None:
        s3 = self.s3(region)
        source = job.transform_input["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, prefix = split_s3_uri(source)
        out_bucket, out_prefix = split_s3_uri(job.transform_output["S3OutputPath"])
        out_prefix = out_prefix if not out_prefix or out_prefix.endswith("/") else out_prefix + "/"
        content_type = job.transform_input.get("ContentType", "")
        accept = job.transform_output.get("Accept", "")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                status, _, answer = server.invoke(body, content_type, accept)
                if status != 200:
                    return f"ClientError: {item['Key']}: the model answered {status}: {answer.decode(errors='replace')}"
                relative = item["Key"][len(prefix) :].lstrip("/") if prefix else item["Key"]
                s3.put_object(Bucket=out_bucket, Key=f"{out_prefix}{relative}.out", Body=answer)
        return None


def _raw_body_setup(response: Any, request: Any, full_url: str, headers: Any, use_raw_body: bool = False) -> None:
    """moto decodes every request body as UTF-8; an image is not: keep InvokeEndpoint's bytes as they came."""
    from moto.core.responses import BaseResponse

    BaseResponse.setup_class(response, request, full_url, headers, use_raw_body=True)


def _now() -> Any:
    from moto.core.utils import utcnow

    return utcnow()  # the type moto keeps its times in


def boto3_s3(endpoint_url: str | None, credentials: dict[str, str | None]) -> Any:
    """s3_client for Hosting: a boto3 S3 client of the sandbox's endpoint per region."""

    def make(region: str) -> Any:
        import boto3

        session = boto3.Session(region_name=region, **credentials)
        return session.client("s3", endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))

    return make
