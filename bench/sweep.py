"""Launching a sweep: `invoke train -m` of 8 jobs against `invoke train` of one job of the same config.

Both run against a moto server (bench/common.local_aws), as fresh subprocesses, and are timed
from the command's start to its last CreateTrainingJob: the moment the last `launched ...` line
reaches stdout (unbuffered). What comes after (following the jobs, the results table) is not
timed. The sweep shares one code bundle and composes the configs once, so it should cost far
less than 8 single launches: target <= 2x one launch.

Each repetition uses its own trainer.seed: a sweep skips jobs that already completed with the
same config hash, and moto marks every created job Completed at once.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence

from .common import ROOT, interleaved, invoke_script, local_aws, row

JOBS = 8
LEARNING_RATES = ",".join(f"{0.001 * (i + 1):g}" for i in range(JOBS))  # 8 distinct configs


def time_to_last_launch(argv: Sequence[str], env: dict[str, str], launches: int) -> float:
    """Seconds from starting argv to its `launches`-th `launched` line; the command must then succeed."""
    started = time.perf_counter()
    process = subprocess.Popen(list(argv), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, elapsed, lines = 0, None, []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "launched " in line:
            seen += 1
            if seen == launches:
                elapsed = time.perf_counter() - started
    stderr = process.stderr.read() if process.stderr else ""
    if process.wait() != 0 or elapsed is None:
        raise RuntimeError(
            f"`{' '.join(argv)}` exited {process.returncode}:\n{''.join(lines)[-2000:]}\n{stderr[-2000:]}"
        )
    return elapsed


def run(reps: int) -> dict:
    with local_aws() as aws:
        env = dict(aws.env, PYTHONUNBUFFERED="1")
        base = [invoke_script(), "train", *aws.overrides(), "--yes", "instance=ml.m5.xlarge"]
        seeds = iter(range(1, 10_000))

        def single() -> float:
            return time_to_last_launch([*base, "--no-wait", "model.lr=0.001", f"trainer.seed={next(seeds)}"], env, 1)

        def sweep() -> float:
            argv = [*base, "-m", f"model.lr={LEARNING_RATES}", f"trainer.seed={next(seeds)}"]
            argv += [f"hydra.launcher.max_parallel={JOBS}", "--poll", "0"]
            return time_to_last_launch(argv, env, JOBS)

        times = interleaved({"sweep": sweep, "single": single}, reps)
    return {
        "rows": [
            row(
                f"sweep: launch {JOBS} jobs (moto)",
                f"invoke train -m ({JOBS} jobs)",
                times["sweep"],
                "invoke train (1 job)",
                times["single"],
                2.0,
            )
        ]
    }
