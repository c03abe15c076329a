"""The served model's handler: the SageMaker PyTorch inference toolkit's four functions.

Shipped as `code/inference.py` inside `model.tar.gz` (project/serving/archive.py copies it there, with
`preprocess.py` and `serving.json` beside it). The inference image imports it with `code/` on
sys.path and calls model_fn once, then input_fn -> predict_fn -> output_fn per request. It imports
nothing of this project beyond those two files: the image has torch, numpy and Pillow, not our code.

Requests (`serving.json` says whether the model is a classifier, its input shape and top-k):
- `image/png`, `image/jpeg` (or `application/x-image`): one photo or scan, through MNIST's
  preprocessing, exactly as `invoke predict` does (classifiers only);
- `application/x-npy` or `application/json`: pixels already in the model's format, one sample
  (C x H x W or H x W when C is 1) or a batch (N x C x H x W, N x H x W); JSON as nested lists or
  `{"instances": ...}`.
Answers are `application/json`: `{"predictions": [{"class", "probability", "top_k": [...]}, ...]}`
for a classifier (`"class": null` and a `"problem"` when a photo shows no digit), else
`{"outputs": <the model's raw output as nested lists>}`. A payload the model cannot take is a 4xx
with a one-line reason (the toolkit's error class when it is there, so the image answers that code).
"""

from __future__ import annotations

import functools
import io
import json
import os
from typing import Any

import numpy as np
import preprocess  # code/preprocess.py in the artifact
import torch

try:  # in the inference image: its status code reaches the client
    from sagemaker_inference.errors import BaseInferenceToolkitError
except ImportError:  # elsewhere (the sandbox's model server, tests): the same shape

    class BaseInferenceToolkitError(Exception):  # type: ignore[no-redef]
        def __init__(self, status_code: int, message: str, phrase: str) -> None:
            super().__init__(message)
            self.status_code, self.message, self.phrase = status_code, message, phrase


TORCHSCRIPT_FILE = "model.ts"
SERVING_FILE = "serving.json"  # beside this file: {"classifier", "input_shape", "top_k"}
IMAGE_TYPES = ("image/png", "image/jpeg", "application/x-image")
ARRAY_TYPES = ("application/x-npy", "application/json")
JSON = "application/json"
MAX_BATCH = 1024  # samples per request: a bigger payload is refused, not run out of memory


class PayloadError(BaseInferenceToolkitError):
    """A request this model cannot answer; `status_code` is the HTTP status (4xx)."""

    def __init__(self, message: str, status_code: int = 400, phrase: str = "Bad Request") -> None:
        super().__init__(status_code, message, phrase)


class Batch:
    """What input_fn hands on: model input for the samples that have one, a problem for the rest."""

    def __init__(self, pixels: list[np.ndarray | None], problems: list[str | None]) -> None:
        self.pixels, self.problems = pixels, problems


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


@functools.cache
def _meta() -> dict[str, Any]:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), SERVING_FILE)) as handle:
        return json.load(handle)


def model_fn(model_dir: str) -> dict[str, Any]:
    net = torch.jit.load(os.path.join(model_dir, TORCHSCRIPT_FILE), map_location="cpu").eval()
    return {"net": net, **_meta()}


# The toolkit passes a context as one more argument to a handler that takes one: exactly two here.
def input_fn(request_body: bytes | str, request_content_type: str) -> Batch:
    meta = _meta()
    kind = _media_type(request_content_type)
    body = request_body.encode() if isinstance(request_body, str) else request_body
    if not body:
        raise PayloadError("empty request body: send one image, or an array of pixels")
    if kind in IMAGE_TYPES:
        if not meta["classifier"]:
            raise PayloadError("this model is not an image classifier: send application/x-npy or application/json", 415)
        grey = _grey(body)
        pixels, problem = preprocess.mnist_pixels(grey)
        return Batch([None if pixels is None else pixels[None]], [problem or None])
    if kind in ARRAY_TYPES:
        array = _array(body, kind)
        return Batch(list(_samples(array, meta["input_shape"])), [None] * len(array))
    accepted = ", ".join((*IMAGE_TYPES, *ARRAY_TYPES) if meta["classifier"] else ARRAY_TYPES)
    raise PayloadError(f"content type {request_content_type!r} is not served; send one of {accepted}", 415)


def _grey(body: bytes) -> np.ndarray:
    try:
        return preprocess.load_grey(io.BytesIO(body), name="request body")
    except preprocess.ImageError as exc:
        raise PayloadError(str(exc)) from None


def _array(body: bytes, kind: str) -> np.ndarray:
    try:
        if kind == JSON:
            data = json.loads(body)
            data = data.get("instances", data.get("inputs")) if isinstance(data, dict) else data
            array = np.asarray(data, dtype=np.float32)
        else:
            array = np.load(io.BytesIO(body), allow_pickle=False).astype(np.float32)
    except (ValueError, TypeError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PayloadError(f"cannot read the {kind} body as an array of numbers: {reason}") from None
    if not np.isfinite(array).all():
        raise PayloadError("the pixels hold NaN or infinity")
    return array


def _samples(array: np.ndarray, input_shape: list[int]) -> np.ndarray:
    """The array as N x C x H x W for input_shape [C, H, W]; one sample may come without N (and C if 1)."""
    shape = tuple(input_shape)
    if array.shape == shape or (shape[0] == 1 and array.shape == shape[1:]):
        array = array.reshape(1, *shape)
    elif array.ndim == len(shape) and shape[0] == 1 and array.shape[1:] == shape[1:]:
        array = array.reshape(len(array), *shape)
    if array.ndim != len(shape) + 1 or array.shape[1:] != shape or len(array) == 0:
        want = " x ".join(map(str, shape))
        raise PayloadError(f"pixels of shape {list(array.shape)}; this model takes {want} (or N x {want})")
    if len(array) > MAX_BATCH:
        raise PayloadError(f"{len(array)} samples in one request; send at most {MAX_BATCH}", 413, "Payload Too Large")
    return array


def predict_fn(input_data: Batch, model: dict[str, Any]) -> dict[str, Any]:
    ready = {i: pixels for i, pixels in enumerate(input_data.pixels) if pixels is not None}
    outputs: dict[int, torch.Tensor] = {}
    if ready:
        batch = torch.from_numpy(np.stack(list(ready.values())).astype(np.float32))
        with torch.no_grad():
            result = model["net"](batch)
        outputs = dict(zip(ready, result, strict=True))
    return {"outputs": outputs, "problems": input_data.problems, "meta": model}


def output_fn(prediction: dict[str, Any], accept: str | None) -> str:
    kind = _media_type(accept)
    if kind not in ("", "*/*", JSON):
        raise PayloadError(f"cannot answer in {accept!r}: this model answers {JSON}", 406, "Not Acceptable")
    meta, outputs = prediction["meta"], prediction["outputs"]
    if not meta["classifier"]:
        return json.dumps({"outputs": [outputs[i].tolist() for i in sorted(outputs)]})
    answers = []
    for i, problem in enumerate(prediction["problems"]):
        if i not in outputs:
            answers.append({"class": None, "probability": None, "top_k": [], "problem": problem})
            continue
        top = outputs[i].topk(min(meta["top_k"], outputs[i].numel()))
        pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ranked = [{"class": c, "probability": p} for c, p in pairs]
        answers.append({**ranked[0], "top_k": ranked})
    return json.dumps({"predictions": answers})
