"""`invoke predict --endpoint`: a run's deployed model answers images (or raw pixel arrays) as the
local `invoke predict` prints them; with --variant, a request pinned to one production variant
(TargetVariant). Where the endpoint has several variants, each line says which one answered
(the response's InvokedProductionVariant).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from project.aws.deploy_requests import IMAGE_CONTENT_TYPES, DeployError
from project.aws.workflow import aws_task, setup

REQUESTS_IN_FLIGHT = 4  # a folder's images sent at a time to a real-time endpoint


def invoke_endpoint(
    ctx: Any, endpoint: str, body: bytes, content_type: str, what: str, variant: str | None = None
) -> tuple[dict[str, Any], str]:
    """The endpoint's JSON answer and the variant that gave it."""
    runtime = ctx.clients.client("sagemaker-runtime")
    pinned = {"TargetVariant": variant} if variant else {}
    try:
        response = runtime.invoke_endpoint(
            EndpointName=endpoint, Body=body, ContentType=content_type, Accept="application/json", **pinned
        )
    except runtime.exceptions.ModelError as exc:
        message = exc.response.get("OriginalMessage") or exc.response["Error"].get("Message", "")
        raise DeployError(f"{what}: endpoint {endpoint} refused it: {message.splitlines()[0]}") from None
    except runtime.exceptions.ClientError as exc:
        if "Could not find" in str(exc) or "not found" in str(exc).lower():
            if variant and "variant" in str(exc).lower():
                raise DeployError(
                    f"endpoint {endpoint} has no variant {variant}: `invoke endpoints` lists them"
                ) from None
            raise DeployError(f"no endpoint {endpoint}: `invoke endpoints` lists them") from None
        raise
    return json.loads(response["Body"].read()), response.get("InvokedProductionVariant", "")


def call_endpoint(ctx: Any, endpoint: str, path: Path, raw: bool, variant: str | None) -> tuple[dict[str, Any], str]:
    """One image (or its raw pixels) sent as `invoke predict` sends it."""
    body, kind = request_body(path, raw)
    return invoke_endpoint(ctx, endpoint, body, kind, str(path), variant)


def request_body(path: Path, raw: bool) -> tuple[bytes, str]:
    """What is sent for one image: its file, or (raw) its pixels as .npy; and the content type."""
    if raw:
        import io

        import numpy as np

        from project.serving.predict import raw_pixels

        buffer = io.BytesIO()
        np.save(buffer, raw_pixels(path)[0].astype(np.float32))
        body, kind = buffer.getvalue(), "application/x-npy"
    else:
        body, kind = path.read_bytes(), IMAGE_CONTENT_TYPES.get(path.suffix.lower(), "image/png")
    return body, kind


def _prediction(answer: dict[str, Any], path: Path, endpoint: str) -> Any:
    from project.serving.predict import Prediction

    if "outputs" in answer:
        return f"{path}: {json.dumps(answer)}"  # not a classifier: its raw outputs
    if "predictions" not in answer:  # the handler answers one or the other (project/serving/inference.py)
        reason = str(answer.get("OriginalMessage") or answer.get("Message") or json.dumps(answer)[:200])
        raise DeployError(f"{path}: endpoint {endpoint} answered no prediction: {reason.splitlines()[0]}")
    (one,) = answer["predictions"]
    ranked = tuple((a["class"], a["probability"]) for a in one["top_k"][:2])
    return Prediction(path, ranked, one.get("problem"))


def answer_label(answer: dict[str, Any], path: Path, endpoint: str) -> int | None:
    """The class a classifier's answer names (None: no digit found)."""
    prediction = _prediction(answer, path, endpoint)
    if isinstance(prediction, str):
        raise DeployError(f"endpoint {endpoint} is not a classifier: it answers raw outputs, nothing to score")
    return prediction.label


def endpoint_predictions(
    ctx: Any, endpoint: str, images: list[Path], raw: bool, variant: str | None = None
) -> Iterable[tuple[Any, str]]:
    """(Prediction as `invoke predict` prints it, the variant that answered) per image; an async
    endpoint's through S3 (async_endpoints), all queued before the first answer is awaited."""
    from project.aws.async_endpoints import async_answers, async_config_of, check_payloads
    from project.aws.endpoints import endpoint_status

    desc = endpoint_status(ctx.clients.sagemaker, endpoint)
    if desc is not None and async_config_of(ctx.clients.sagemaker, desc["EndpointConfigName"]):
        if variant:
            raise DeployError(f"endpoint {endpoint} is asynchronous, with one variant: drop --variant")
        check_payloads(images, raw)
        answers = async_answers(ctx, endpoint, [(path, *request_body(path, raw)) for path in images])
        served = desc["ProductionVariants"][0]["VariantName"]
        return [(_prediction(answer, path, endpoint), served) for path, answer in zip(images, answers, strict=True)]
    return _in_order(ctx, endpoint, images, raw, variant)


def _in_order(ctx: Any, endpoint: str, images: list[Path], raw: bool, variant: str | None) -> Iterator[tuple[Any, str]]:
    """A real-time endpoint's answers in the images' order, each as soon as it and those before it
    are in: up to REQUESTS_IN_FLIGHT requests at a time (an endpoint serves them concurrently), so a
    folder of a thousand images streams its lines instead of printing them all at the end. The
    first refusal stops the rest (those not yet sent are cancelled)."""
    pool = ThreadPoolExecutor(max_workers=REQUESTS_IN_FLIGHT, thread_name_prefix="predict")
    try:
        for path, (answer, served) in zip(
            images, pool.map(lambda p: call_endpoint(ctx, endpoint, p, raw, variant), images), strict=True
        ):
            yield _prediction(answer, path, endpoint), served
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _variant_count(ctx: Any, endpoint: str) -> int:
    from project.aws.endpoints import endpoint_status

    desc = endpoint_status(ctx.clients.sagemaker, endpoint)
    return len((desc or {}).get("ProductionVariants", [])) or 1


@aws_task
def predict_task(
    overrides: list[str], endpoint: str, images: list[Path], raw: bool, variant: str | None = None
) -> None:
    ctx = setup(overrides)
    say_variant = bool(variant) or _variant_count(ctx, endpoint) > 1
    for prediction, served in endpoint_predictions(ctx, endpoint, images, raw, variant):
        print(f"{prediction}  [variant {served}]" if say_variant else prediction)
