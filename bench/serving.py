"""Serving overhead: the model behind the inference image's HTTP contract against the model itself.

A: the served model, as an endpoint runs it: model.ts with the artifact's code/inference.py behind
`POST /invocations` (project/sandbox/model_server.py, its own process, like the image's server),
called over a kept-alive HTTP/1.1 connection on this machine with `application/x-npy` pixels
(no photo preprocessing: that is the same work wherever it runs). B: the same TorchScript model
called directly in this process on the same tensor. Per repetition, REQUESTS sequential calls of
each side, alternately; each call's latency is kept. Single images (1 x 1 x 28 x 28) and batches
of 64. Reported per row: the median latency of each side (its ratio A/B is the serving overhead),
and in the details requests per second and p50/p99 of every call.
"""

from __future__ import annotations

import http.client
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import ROOT, interleaved, row

# One torch thread on both sides. With torch's default (2 here) the server's OpenMP workers, in a
# second process on a loaded 2-core machine, were woken late: HTTP p50 70-290 ms for a 1 ms model.
THREADS = 1
REQUESTS = {1: 60, 64: 12}  # calls per repetition: single images, batches of 64 (minutes on the shared machine)


def _model_dir(folder: Path) -> Path:
    from project.core import config as C
    from project.serving import archive as serving
    from project.training.artifacts import export_model
    from project.training.models import build_net

    cfg = C.compose([])  # the default CNN; latency does not depend on what it learnt
    model_dir = folder / "model"
    model_dir.mkdir()
    net = build_net(dict(cfg.model.net))
    export_model(net, model_dir, list(cfg.dataset.image_shape), cfg.dataset.mean, cfg.dataset.std)
    serving.write_serving_code(model_dir, cfg)
    return model_dir


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(reps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        model_dir = _model_dir(Path(tmp))
        server = subprocess.Popen(
            [sys.executable, "-m", "project.sandbox.model_server", str(model_dir)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline().split()[1])
            threads = torch.get_num_threads()
            torch.set_num_threads(THREADS)
            try:
                return _measure(model_dir, port, reps)
            finally:
                torch.set_num_threads(threads)
        finally:
            server.terminate()
            server.wait(timeout=30)


def _measure(model_dir: Path, port: int, reps: int) -> dict:
    model = torch.jit.load(str(model_dir / "model.ts")).eval()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    rng = np.random.default_rng(0)
    rows, details = [], {}
    for batch, calls in REQUESTS.items():
        pixels = rng.integers(0, 256, size=(batch, 1, 28, 28)).astype(np.float32)
        body, tensor = _npy(pixels), torch.from_numpy(pixels)
        latencies: dict[str, list[float]] = {"http": [], "direct": []}

        def over_http(body=body, batch=batch, latencies=latencies, calls=calls) -> float:
            started = time.perf_counter()
            for _ in range(calls):
                t0 = time.perf_counter()
                connection.request("POST", "/invocations", body, {"Content-Type": "application/x-npy"})
                response = connection.getresponse()
                answer = response.read()
                latencies["http"].append(time.perf_counter() - t0)
                assert response.status == 200 and answer.count(b'"class"') >= batch, answer[:200]
            return (time.perf_counter() - started) / calls

        def direct(tensor=tensor, latencies=latencies, calls=calls) -> float:
            started = time.perf_counter()
            for _ in range(calls):
                t0 = time.perf_counter()
                with torch.no_grad():
                    model(tensor).topk(3, dim=1)
                latencies["direct"].append(time.perf_counter() - t0)
            return (time.perf_counter() - started) / calls

        # Each side returns its mean seconds per call in that repetition; the warm-up round is dropped.
        times = interleaved({"http": over_http, "direct": direct}, reps)
        warm = {name: values[calls:] for name, values in latencies.items()}  # the first round's calls dropped
        what = "single image" if batch == 1 else f"batch of {batch}"
        rows.append(
            row(
                f"serving: {what}, mean latency",
                "HTTP /invocations",
                times["http"],
                "model in-process",
                times["direct"],
                None,
            )
        )
        for name, values in warm.items():
            seconds = sum(values)
            details[f"{name}_{batch}"] = (
                f"{len(values) / seconds:.1f} requests/s ({len(values) * batch / seconds:.0f} images/s), "
                f"p50 {_percentile(values, 50) * 1000:.2f} ms, p99 {_percentile(values, 99) * 1000:.2f} ms"
            )
    connection.close()
    transport = f"npy pixels over a kept-alive HTTP/1.1 connection on 127.0.0.1; {THREADS} torch thread each side"
    return {"transport": transport, **details, "rows": rows}
