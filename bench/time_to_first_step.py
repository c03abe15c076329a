"""Time to first step: from the start of the command to the first optimizer step of training.

A: `invoke local` on the real MNIST files (default model and data, a short run: 1 epoch of 2
steps, 2 validation and 2 test batches), as a user iterating runs it: the same command line each
time (so its composed config comes from the cache after the first run), runs under a temporary
folder. B: bench/plain_mnist.py with the same data and model, stopped after 2 steps. Both
processes write project/core/startup.py's trace (LIGHTNING_SAGEMAKER_STARTUP_TRACE): the wall clock
at each phase, so the result carries where the time goes, per side, as medians over the
repetitions (seconds after the command started, and each phase's own share):

- invoke local: `invoke` + tasks.py ready, config composed, data checked (all in the invoke
  process); the training child's interpreter started, its imports done, config, data verified,
  Trainer + model + DataModule built, data loaded (DataModule.setup), sanity check started,
  training started, first optimizer step done.
- plain: imports done, data loaded, model + optimizer built, first optimizer step done.

The figure is A - B (target: at most TARGET_EXTRA_S); the ratio is reported beside it.

Both pairs run twice over, interleaved: with this Python (requirements.txt, the laptop's install)
and with a training-only install (requirements-local.txt, what a bare-metal box needs: no
SageMaker SDK, hence no scipy, which torchmetrics imports whenever it is installed), made once in
bench/.venv-local. The real MNIST files are needed: skipped without them.
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

from .common import ROOT, TRACE_ENV, Skip, interleaved, invoke_script, mnist_dir, read_trace, row, user_environ

LOCAL_VENV = ROOT / "bench" / ".venv-local"  # requirements-local.txt only

TARGET_EXTRA_S = 2.0
IMPORT_PROFILE_TOP = 8  # packages named in the import profile; the rest are summed
# Counted apart from their package: torch._dynamo is also the plain script's (torch imports it
# when the first optimizer is built), the rest of torch is both sides' import of torch.
IMPORT_PROFILE_SPLIT = ("torch._dynamo",)
PLAIN = Path(__file__).resolve().parent / "plain_mnist.py"
THREADS: dict[str, dict[str, int]] = {}  # side -> torch threads of its training process
SHORT_RUN = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    # A new run every round: the same command would otherwise find the previous round's finished
    # run (resume by default, project/core/identity.py) and refuse to train it again.
    "trainer.resume=false",
)


def traced(side: str, argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Run `argv` with the start-up trace on; each phase's first time, in seconds after the start."""
    with tempfile.TemporaryDirectory(prefix="bench-ttfs-") as folder:
        trace = Path(folder) / "trace.jsonl"
        started = time.time()
        result = subprocess.run(argv, env={**env, TRACE_ENV: str(trace)}, cwd=cwd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(argv)}` exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        phases = {"exit": time.time() - started, **read_trace(trace, started)}
        for line in trace.read_text().splitlines():
            record = json.loads(line)
            if record["phase"] == "first_step":  # the training process's torch threads, as it trained
                THREADS[side] = {"threads": record["threads"], "interop_threads": record["interop_threads"]}
    if "first_step" not in phases:
        raise RuntimeError(f"`{' '.join(argv)}` wrote no first_step mark: {sorted(phases)}")
    return phases


def breakdown(samples: list[dict[str, float]]) -> dict[str, float]:
    """Median time of each phase after the start (phases in the order they are reached)."""
    names = sorted(samples[0], key=lambda name: statistics.median(s[name] for s in samples))
    return {name: round(statistics.median(s[name] for s in samples), 3) for name in names}


# What the training child imports, as project/training/child.py does: the deferral first.
CHILD_IMPORTS = (
    "from project.training import deferred_imports; deferred_imports.install(); import project.training.train"
)


def import_profile(python: str, env: dict[str, str], rounds: int = 3) -> dict[str, float]:
    """Where the training child's imports go: `python -X importtime -c CHILD_IMPORTS`,
    each module's own time summed by top-level package (IMPORT_PROFILE_SPLIT apart), median of
    `rounds` runs; the IMPORT_PROFILE_TOP largest, the rest as "other", and "total". Seconds."""
    runs: list[dict[str, float]] = []
    for _ in range(rounds):
        argv = [python, "-X", "importtime", "-c", CHILD_IMPORTS]
        result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"import project.training.train failed in {python}:\n{result.stderr[-2000:]}")
        by_package: dict[str, float] = {}
        for line in result.stderr.splitlines():
            fields = line.removeprefix("import time:").split("|")
            if len(fields) != 3 or not fields[0].strip().isdigit():
                continue  # the header, or a line that is not importtime's
            module = fields[2].strip()
            package = next((p for p in IMPORT_PROFILE_SPLIT if module.startswith(p)), module.split(".")[0])
            by_package[package] = by_package.get(package, 0.0) + int(fields[0]) / 1e6
        runs.append(by_package)
    names = {name for r in runs for name in r}
    medians = {name: statistics.median(r.get(name, 0.0) for r in runs) for name in names}
    top = sorted(medians, key=medians.get, reverse=True)[:IMPORT_PROFILE_TOP]
    profile = {name: round(medians[name], 3) for name in top}
    profile["other"] = round(sum(v for k, v in medians.items() if k not in profile), 3)
    profile["total"] = round(statistics.median(sum(r.values()) for r in runs), 3)
    return profile


def training_only_python() -> Path | None:
    """bench/.venv-local's Python (requirements-local.txt), made when missing; None if it cannot be."""
    python = LOCAL_VENV / "bin" / "python"
    probe = "import importlib.util as u, invoke, pytorch_lightning; assert u.find_spec('scipy') is None"
    if python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0:
        return python
    print(f"making a training-only install in {LOCAL_VENV} (requirements-local.txt)", flush=True)
    made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(LOCAL_VENV)], capture_output=True)
    if made.returncode == 0:
        pip = [str(python), "-m", "pip", "install", "--quiet", "-r", str(ROOT / "requirements-local.txt")]
        made = subprocess.run(pip, capture_output=True)
    if made.returncode != 0 or subprocess.run([str(python), "-c", probe], capture_output=True).returncode != 0:
        print(f"no training-only install: {made.stderr.decode()[-500:]}", flush=True)
        return None
    return python


def run(reps: int) -> dict:
    folder = mnist_dir()
    if folder is None:
        raise Skip("real MNIST not found at ../shared/data/mnist: this benchmark loads it")
    env = user_environ(PYTHONPATH=str(ROOT))
    installs = {"": (invoke_script(), sys.executable)}  # this Python: requirements.txt
    lean = training_only_python()
    if lean is not None:
        installs[", training-only install"] = (str(lean.parent / "invoke"), str(lean))
    samples: dict[str, list[dict[str, float]]] = {}
    contenders = {}
    with tempfile.TemporaryDirectory(prefix="bench-ttfs-work-") as work:
        # A user's folder: runs/ and data/ (the dataset's verification records) are made there.
        for suffix, (invoke, python) in installs.items():
            product_argv = [invoke, "--search-root", str(ROOT), "local", f"dataset.channels.train={folder}", *SHORT_RUN]
            plain_argv = [python, str(PLAIN), f"--data={folder}", "--epochs=1", "--max-steps=2"]
            for name, argv in ((f"invoke local{suffix}", product_argv), (f"plain{suffix}", plain_argv)):
                samples[name] = []

                def once(name: str = name, argv: list[str] = argv) -> float:
                    phases = traced(name, argv, env, Path(work))
                    samples[name].append(phases)
                    return phases["first_step"]

                contenders[name] = once
        times = interleaved(contenders, reps)
        runs = sorted(os.listdir(Path(work) / "runs"))
    for name in samples:
        del samples[name][0]  # the warm-up round, as interleaved() drops it
    result: dict = {
        "data": f"real MNIST ({folder.name}); invoke local {' '.join(SHORT_RUN)}; plain --max-steps=2",
        "installs": {
            "this Python": "requirements.txt (the laptop's: the SageMaker SDK and its scipy)",
            **({"training-only install": "requirements-local.txt (bench/.venv-local)"} if lean else {}),
        },
        "runs_made": len(runs),
        "torch_threads": THREADS,
        "rows": [],
    }
    for suffix in installs:
        a, b = times[f"invoke local{suffix}"], times[f"plain{suffix}"]
        extra = [x - y for x, y in zip(a, b, strict=True)]
        line = row(
            f"time_to_first_step: command start -> first optimizer step{suffix}",
            "invoke local",
            a,
            "plain PyTorch script",
            b,
            None,
        )
        line["extra_seconds"] = round(statistics.median(extra), 3)
        line["target_extra_seconds"] = TARGET_EXTRA_S
        line["met"] = line["extra_seconds"] <= TARGET_EXTRA_S
        result["rows"].append(line)
        key = suffix.strip(", ").replace(" ", "_").replace("-", "_") or "this_python"
        result[f"extra_seconds_median_{key}"] = line["extra_seconds"]
        result[f"breakdown_invoke_local_{key}"] = breakdown(samples[f"invoke local{suffix}"])
        result[f"breakdown_plain_{key}"] = breakdown(samples[f"plain{suffix}"])
        result[f"child_imports_{key}"] = import_profile(installs[suffix][1], env)
    return result
