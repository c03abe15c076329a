"""`invoke predict --endpoint`: a run's deployed model answers images (or raw pixel arrays) as the
local `invoke predict` prints them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from project.aws.deploy_requests import IMAGE_CONTENT_TYPES, DeployError
from project.aws.workflow import aws_task, setup


def invoke_endpoint(ctx: Any, endpoint: str, body: bytes, content_type: str, what: str) -> dict[str, Any]:
    runtime = ctx.clients.client("sagemaker-runtime")
    try:
        response = runtime.invoke_endpoint(
            EndpointName=endpoint, Body=body, ContentType=content_type, Accept="application/json"
        )
    except runtime.exceptions.ModelError as exc:
        message = exc.response.get("OriginalMessage") or exc.response["Error"].get("Message", "")
        raise DeployError(f"{what}: endpoint {endpoint} refused it: {message.splitlines()[0]}") from None
    except runtime.exceptions.ClientError as exc:
        if "Could not find" in str(exc) or "not found" in str(exc).lower():
            raise DeployError(f"no endpoint {endpoint}: `invoke endpoints` lists them") from None
        raise
    return json.loads(response["Body"].read())


def endpoint_predictions(ctx: Any, endpoint: str, images: list[Path], raw: bool) -> list[Any]:
    """One Prediction per image (as `invoke predict` prints them), answered by the endpoint."""
    import io

    import numpy as np

    from project.serving.predict import Prediction, raw_pixels

    results: list[Any] = []
    for path in images:
        if raw:
            buffer = io.BytesIO()
            np.save(buffer, raw_pixels(path)[0].astype(np.float32))
            body, kind = buffer.getvalue(), "application/x-npy"
        else:
            body, kind = path.read_bytes(), IMAGE_CONTENT_TYPES.get(path.suffix.lower(), "image/png")
        answer = invoke_endpoint(ctx, endpoint, body, kind, str(path))
        if "outputs" in answer:
            results.append(f"{path}: {json.dumps(answer)}")  # not a classifier: its raw outputs
            continue
        if "predictions" not in answer:  # the handler answers one or the other (project/serving/inference.py)
            reason = str(answer.get("OriginalMessage") or answer.get("Message") or json.dumps(answer)[:200])
            raise DeployError(f"{path}: endpoint {endpoint} answered no prediction: {reason.splitlines()[0]}")
        (one,) = answer["predictions"]
        ranked = tuple((a["class"], a["probability"]) for a in one["top_k"][:2])
        results.append(Prediction(path, ranked, one.get("problem")))
    return results


@aws_task
def predict_task(overrides: list[str], endpoint: str, images: list[Path], raw: bool) -> None:
    for prediction in endpoint_predictions(setup(overrides), endpoint, images, raw):
        print(prediction)
