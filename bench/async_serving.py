"""Async serving overhead in the sandbox: one request through an asynchronous endpoint against the
same request through a real-time endpoint of the same model.

Both endpoints serve one model.tar.gz (the default CNN, untrained: latency does not depend on what
it learnt) in the sandbox (project/sandbox: moto over HTTP on 127.0.0.1, hosting played, each
endpoint's own model server process). A: what `invoke predict --endpoint` does on an async
endpoint, per request: PutObject of the input, InvokeEndpointAsync, then ListObjectsV2 on the
output key every POLL_SECONDS until it is there, and GetObject of it. B: InvokeEndpoint with the
same bytes. Per repetition, REQUESTS sequential calls of each side, alternately. The ratio A/B
and the difference A - B are the async path's overhead (S3 round trips, the queue's hand-off, the
poll); on SageMaker an instance's cold start from zero comes on top (minutes, not measured here).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

from .common import ROOT, interleaved, row

REQUESTS = 20  # calls per repetition and side
POLL_SECONDS = 0.005  # the bench's own poll of the output key: it measures the path, not a poll interval
DIGIT = ROOT / "examples" / "digits" / "mnist-test-0-label7.png"
ROLE = "arn:aws:iam::123456789012:role/bench"
BUCKET = "bench-async"


def run(reps: int) -> dict:
    import boto3

    from project.sandbox.endpoint import Endpoint
    from project.sandbox.service import sagemaker_service

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    with (
        tempfile.TemporaryDirectory(prefix="bench-async-") as tmp,
        Endpoint("127.0.0.1", 0) as aws,
        sagemaker_service(workdir=Path(tmp) / "sandbox", endpoint_url=aws.url),
    ):
        session = boto3.Session(region_name="us-east-1")
        s3, sm = session.client("s3", endpoint_url=aws.url), session.client("sagemaker", endpoint_url=aws.url)
        runtime = session.client("sagemaker-runtime", endpoint_url=aws.url)
        s3.create_bucket(Bucket=BUCKET)
        _endpoints(sm, s3, Path(tmp))
        body = DIGIT.read_bytes()

        def async_call() -> float:
            started = time.perf_counter()
            for _ in range(REQUESTS):
                key = f"async/bench-async/input/{uuid.uuid4().hex}.png"
                s3.put_object(Bucket=BUCKET, Key=key, Body=body)
                out = runtime.invoke_endpoint_async(
                    EndpointName="bench-async", InputLocation=f"s3://{BUCKET}/{key}", ContentType="image/png"
                )["OutputLocation"]
                out_key = out.removeprefix(f"s3://{BUCKET}/")
                while not s3.list_objects_v2(Bucket=BUCKET, Prefix=out_key).get("KeyCount"):
                    time.sleep(POLL_SECONDS)
                answer = s3.get_object(Bucket=BUCKET, Key=out_key)["Body"].read()
                assert b'"predictions"' in answer, answer[:200]
            return (time.perf_counter() - started) / REQUESTS

        def realtime_call() -> float:
            started = time.perf_counter()
            for _ in range(REQUESTS):
                answer = runtime.invoke_endpoint(EndpointName="bench-realtime", Body=body, ContentType="image/png")
                assert b'"predictions"' in answer["Body"].read()
            return (time.perf_counter() - started) / REQUESTS

        times = interleaved({"async": async_call, "realtime": realtime_call}, reps)
    overhead = sorted(a - b for a, b in zip(times["async"], times["realtime"], strict=True))
    return {
        "transport": f"sandbox on 127.0.0.1 (moto, hosting played); a PNG digit; {REQUESTS} sequential calls a side",
        "async_overhead": f"A - B median {overhead[len(overhead) // 2] * 1000:.1f} ms a request",
        "rows": [
            row(
                "serving: async over real-time endpoint (sandbox), per request",
                "InvokeEndpointAsync via S3",
                times["async"],
                "InvokeEndpoint",
                times["realtime"],
                None,
            )
        ],
    }


def _endpoints(sm, s3, folder: Path) -> None:
    """One model, a real-time endpoint and an async endpoint of it, both InService."""
    from project.core import config as C
    from project.serving import archive as serving
    from project.training.artifacts import export_model
    from project.training.models import build_net

    cfg = C.compose([])
    model_dir = folder / "model"
    model_dir.mkdir()
    net = build_net(dict(cfg.model.net))
    export_model(net, model_dir, list(cfg.dataset.image_shape), cfg.dataset.mean, cfg.dataset.std)
    archive = serving.pack_model(model_dir, cfg, folder / serving.MODEL_ARCHIVE)
    s3.upload_file(str(archive), BUCKET, "models/bench/model.tar.gz")
    container = {"Image": "pytorch-inference:cpu", "ModelDataUrl": f"s3://{BUCKET}/models/bench/model.tar.gz"}
    sm.create_model(ModelName="bench", ExecutionRoleArn=ROLE, PrimaryContainer=container)
    variant = {"VariantName": "bench", "ModelName": "bench", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
    sm.create_endpoint_config(EndpointConfigName="bench-realtime", ProductionVariants=[variant])
    outputs = {"S3OutputPath": f"s3://{BUCKET}/async/bench-async/output/"}
    outputs["S3FailurePath"] = f"s3://{BUCKET}/async/bench-async/failure/"
    sm.create_endpoint_config(
        EndpointConfigName="bench-async",
        ProductionVariants=[variant],
        AsyncInferenceConfig={"ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1}, "OutputConfig": outputs},
    )
    for name in ("bench-realtime", "bench-async"):
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    for name in ("bench-realtime", "bench-async"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
