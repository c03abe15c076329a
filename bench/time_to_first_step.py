"""Time to first step: from the start of the command to the first optimizer step of training.

A: `invoke local` on the real MNIST files (default model and data, a short run: 1 epoch of 2
steps, 2 validation and 2 test batches), as a user iterating runs it: the same command line each
time (so its composed config comes from the cache after the first run), runs under a temporary
folder. B: bench/plain_mnist.py with the same data and model, stopped after 2 steps. Both
processes write project/startup.py's trace (LIGHTNING_SAGEMAKER_STARTUP_TRACE): the wall clock
at each phase, so the result carries where the time goes, per side, as medians over the
repetitions (seconds after the command started, and each phase's own share):

- invoke local: `invoke` + tasks.py ready, config composed, data checked (all in the invoke
  process); the training child's interpreter started, its imports done, config, data verified,
  Trainer + model + DataModule built, data loaded (DataModule.setup), sanity check started,
  training started, first optimizer step done.
- plain: imports done, data loaded, model + optimizer built, first optimizer step done.

The figure is A - B (target: at most TARGET_EXTRA_S); the ratio is reported beside it.
The real MNIST files are needed: skipped without them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, Skip, interleaved, invoke_script, mnist_dir, row, user_environ

TARGET_EXTRA_S = 2.0
PLAIN = Path(__file__).resolve().parent / "plain_mnist.py"
TRACE_ENV = "LIGHTNING_SAGEMAKER_STARTUP_TRACE"  # project.startup.TRACE_ENV; not imported: bench stays light
THREADS: dict[str, dict[str, int]] = {}  # command -> torch threads of its training process
SHORT_RUN = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
)


def traced(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Run `argv` with the start-up trace on; each phase's first time, in seconds after the start."""
    with tempfile.TemporaryDirectory(prefix="bench-ttfs-") as folder:
        trace = Path(folder) / "trace.jsonl"
        started = time.time()
        result = subprocess.run(argv, env={**env, TRACE_ENV: str(trace)}, cwd=cwd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(argv)}` exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        phases: dict[str, float] = {"exit": time.time() - started}
        for line in trace.read_text().splitlines():
            record = json.loads(line)
            phases.setdefault(record["phase"], record["t"] - started)
            if record["phase"] == "first_step":  # the training process's torch threads, as it trained
                THREADS[argv[0]] = {"threads": record["threads"], "interop_threads": record["interop_threads"]}
    if "first_step" not in phases:
        raise RuntimeError(f"`{' '.join(argv)}` wrote no first_step mark: {sorted(phases)}")
    return phases


def breakdown(samples: list[dict[str, float]]) -> dict[str, float]:
    """Median time of each phase after the start (phases in the order they are reached)."""
    names = sorted(samples[0], key=lambda name: statistics.median(s[name] for s in samples))
    return {name: round(statistics.median(s[name] for s in samples), 3) for name in names}


def run(reps: int) -> dict:
    folder = mnist_dir()
    if folder is None:
        raise Skip("real MNIST not found at ../shared/data/mnist: this benchmark loads it")
    env = user_environ(PYTHONPATH=str(ROOT))
    samples: dict[str, list[dict[str, float]]] = {"invoke local": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="bench-ttfs-work-") as work:
        # A user's folder: runs/ and data/ (the dataset's verification records) are made there.
        product_argv = [
            invoke_script(),
            "--search-root",
            str(ROOT),
            "local",
            f"dataset.channels.train={folder}",
            *SHORT_RUN,
        ]
        plain_argv = [sys.executable, str(PLAIN), f"--data={folder}", "--epochs=1", "--max-steps=2"]

        def side(name: str, argv: list[str]):
            def once() -> float:
                phases = traced(argv, env, Path(work))
                samples[name].append(phases)
                return phases["first_step"]

            return once

        times = interleaved(
            {"invoke local": side("invoke local", product_argv), "plain": side("plain", plain_argv)}, reps
        )
        runs = sorted(os.listdir(Path(work) / "runs"))
    for name in samples:
        del samples[name][0]  # the warm-up round, as interleaved() drops it
    extra = [a - b for a, b in zip(times["invoke local"], times["plain"], strict=True)]
    result = row(
        "time_to_first_step: command start -> first optimizer step",
        "invoke local",
        times["invoke local"],
        "plain PyTorch script",
        times["plain"],
        None,
    )
    result["extra_seconds"] = round(statistics.median(extra), 3)
    result["target_extra_seconds"] = TARGET_EXTRA_S
    result["met"] = result["extra_seconds"] <= TARGET_EXTRA_S
    return {
        "data": f"real MNIST ({folder.name}); invoke local {' '.join(SHORT_RUN)}; plain --max-steps=2",
        "extra_seconds_median": result["extra_seconds"],
        "breakdown_invoke_local": breakdown(samples["invoke local"]),
        "breakdown_plain": breakdown(samples["plain"]),
        "runs_made": len(runs),
        "torch_threads": {"invoke local": THREADS[product_argv[0]], "plain": THREADS[plain_argv[0]]},
        "rows": [result],
    }
