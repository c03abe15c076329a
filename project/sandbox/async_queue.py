"""An asynchronous endpoint's queue, played for serving.py's Hosting (moto answers InvokeEndpointAsync
with canned locations and writes nothing).

InvokeEndpointAsync on an endpoint whose config has an AsyncInferenceConfig is answered at once
(202, the inference id, <S3OutputPath>/<id>.out and <S3FailurePath>/<id>-error.out, as SageMaker
names them) and queued; the queue reads the input object, sends it to the endpoint's model server,
and writes the answer to the output object, or the refusal to the failure object, wrapped as
InvokeEndpoint's ModelError message. At most MaxConcurrentInvocationsPerInstance x instances
requests of an endpoint are at the model at once; `peak` keeps the most seen. Each request is
published to CloudWatch as a real-time one is (routing.publish). InvokeEndpointAsync on a
real-time endpoint is a ValidationError, as on SageMaker.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from project.core.names import split_s3_uri
from project.sandbox.routing import publish

INPUT_HEADER = "X-Amzn-SageMaker-InputLocation"
CONTENT_TYPE_HEADER = "X-Amzn-SageMaker-Content-Type"
ACCEPT_HEADER = "X-Amzn-SageMaker-Accept"
INFERENCE_ID_HEADER = "X-Amzn-SageMaker-Inference-Id"


class AsyncQueue:
    """Per endpoint, a pool of as many workers as it may run requests at once."""

    def __init__(self, s3_client: Callable[[str], Any]) -> None:
        self._make_s3 = s3_client  # region -> a new boto3 S3 client of the sandbox
        self._s3: dict[str, Any] = {}  # one per region, made once: a client takes ~0.1 s to make
        self.peak: dict[str, int] = {}  # endpoint -> most requests at its model at once
        self._busy: dict[str, int] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def accept(self, response: Any, endpoint: Any, config: Any, variant: str, server: Any) -> Any:
        """moto's InvokeEndpointAsync answered: the request queued, its locations returned."""
        from moto.sagemaker.exceptions import ValidationError

        settings = config.async_inference_config or {}
        if not settings:
            raise ValidationError(
                message=f"Endpoint {endpoint.endpoint_name} is not an asynchronous endpoint: call InvokeEndpoint."
            )
        input_location = response.headers.get(INPUT_HEADER, "")
        if not input_location.startswith("s3://"):
            raise ValidationError(message=f"InputLocation {input_location!r} is not an s3:// URI.")
        inference_id = response.headers.get(INFERENCE_ID_HEADER) or str(uuid.uuid4())
        outputs = settings["OutputConfig"]
        output = f"{outputs['S3OutputPath'].rstrip('/')}/{inference_id}.out"
        failure = f"{outputs.get('S3FailurePath', outputs['S3OutputPath']).rstrip('/')}/{inference_id}-error.out"
        request = {
            "account": response.current_account,
            "region": response.region,
            "endpoint": endpoint.endpoint_name,
            "variant": variant,
            "input": input_location,
            "content_type": response.headers.get(CONTENT_TYPE_HEADER, ""),
            "accept": response.headers.get(ACCEPT_HEADER, ""),
            "output": output,
            "failure": failure,
        }
        self._pool(endpoint, settings).submit(self._serve, server, request)
        headers = {
            "status": "202",  # moto takes the status from the headers
            "X-Amzn-SageMaker-OutputLocation": output,
            "X-Amzn-SageMaker-FailureLocation": failure,
        }
        return 202, headers, json.dumps({"InferenceId": inference_id})

    def _pool(self, endpoint: Any, settings: dict[str, Any]) -> ThreadPoolExecutor:
        per_instance = int(settings.get("ClientConfig", {}).get("MaxConcurrentInvocationsPerInstance", 1))
        instances = sum(int(v.get("CurrentInstanceCount", 1)) for v in endpoint.production_variants) or 1
        with self._lock:
            pool = self._pools.get(endpoint.endpoint_name)
            if pool is None:
                pool = ThreadPoolExecutor(per_instance * instances, f"async-{endpoint.endpoint_name}")
                self._pools[endpoint.endpoint_name] = pool
            return pool

    def _serve(self, server: Any, request: dict[str, Any]) -> None:
        name = request["endpoint"]
        s3 = self._client(request["region"])
        with self._lock:
            self._busy[name] = self._busy.get(name, 0) + 1
            self.peak[name] = max(self.peak.get(name, 0), self._busy[name])
        try:
            bucket, key = split_s3_uri(request["input"])
            status, message = 0, ""
            try:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as exc:  # noqa: BLE001 - the request fails with the reason, as on SageMaker
                message = f"Failed to read the input {request['input']}: {exc}"
            if not message:
                start = time.monotonic()
                try:
                    status, _, answer = server.invoke(body, request["content_type"], request["accept"])
                except OSError as exc:  # the endpoint was deleted meanwhile
                    status, answer = 500, f"the model server is gone: {exc}".encode()
                publish(
                    request["account"], request["region"], name, request["variant"], status, time.monotonic() - start
                )
                if status == 200:
                    out_bucket, out_key = split_s3_uri(request["output"])
                    s3.put_object(Bucket=out_bucket, Key=out_key, Body=answer)
                    return
                side = "client" if status < 500 else "server"
                message = (
                    f'Received {side} error ({status}) from primary with message "{answer.decode(errors="replace")}".'
                )
            fail_bucket, fail_key = split_s3_uri(request["failure"])
            s3.put_object(Bucket=fail_bucket, Key=fail_key, Body=message.encode())
        finally:
            with self._lock:
                self._busy[name] -= 1

    def _client(self, region: str) -> Any:
        with self._lock:
            if region not in self._s3:
                self._s3[region] = self._make_s3(region)
            return self._s3[region]

    def drop(self, endpoint: str) -> None:
        """The endpoint is gone: its queue too (requests at the model finish)."""
        with self._lock:
            pool = self._pools.pop(endpoint, None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
