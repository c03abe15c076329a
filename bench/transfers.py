"""Transfers: `invoke upload` against `aws s3 sync` of the same four MNIST .gz files to the same
moto S3 endpoint, and an `invoke upload` re-run with nothing changed against the first upload.

Each repetition sends to fresh prefixes (bench/invoke-<i>/, bench/awscli-<i>/), so both first
uploads find an empty prefix; the re-run then goes to the invoke prefix just filled. `invoke
upload` verifies the dataset's content hashes and stores a SHA256 with every object (what makes
its re-run a skip); `aws s3 sync` does neither. Content verification decompresses a file once;
after that project.raw knows it by its stored bytes' hash (data/<dataset>/.verified/), so in
the measured rounds both `invoke upload`s only hash the files as stored. Uses the real MNIST
files; skipped without them.

A third row, reported only, times the upload's own work in this process with start-up left out
(plan_upload + upload with one warm client): to a fresh prefix, then again with nothing to send.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from .common import ROOT, Skip, local_aws, mnist_dir, row, run_timed

BIN = Path(sys.executable).parent
AWSCLI_VENV = ROOT / "bench" / ".venv-awscli"  # only made when no working `aws` is installed


def _works(aws: str) -> bool:
    try:
        return subprocess.run([aws, "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def awscli() -> str:
    """A working `aws` executable: the one beside this Python, on PATH, or a private venv's."""
    for candidate in (BIN / "aws", shutil.which("aws"), AWSCLI_VENV / "bin" / "aws"):
        if candidate and Path(candidate).exists() and _works(str(candidate)):
            return str(candidate)
    print(f"no working `aws` found: installing awscli into {AWSCLI_VENV}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True)
    subprocess.run([str(AWSCLI_VENV / "bin" / "pip"), "install", "--quiet", "awscli"], check=True)
    aws = str(AWSCLI_VENV / "bin" / "aws")
    if not _works(aws):
        raise Skip(f"awscli in {AWSCLI_VENV} does not run")
    return aws


def _invoke() -> str:
    path = BIN / "invoke"
    return str(path) if path.exists() else "invoke"


def run(reps: int) -> dict:
    folder: Optional[Path] = mnist_dir()
    if folder is None:
        raise Skip("real MNIST not found at ../shared/data/mnist: this benchmark uploads those files")
    aws_cli = awscli()
    version = subprocess.run([aws_cli, "--version"], capture_output=True, text=True).stdout.strip() or "?"
    with local_aws() as aws:
        first, sync, again = [], [], []
        for i in range(reps + 1):  # interleaved; round 0 is the warm-up and is dropped
            upload = [_invoke(), "upload", f"dataset.source={folder}", f"dataset.s3_prefix=bench/invoke-{i}", *aws.overrides()]
            a = run_timed(upload, aws.env)
            b = run_timed(
                [aws_cli, "s3", "sync", str(folder), f"s3://{aws.data_bucket}/bench/awscli-{i}/", "--exclude", "*", "--include", "*.gz", "--only-show-errors"],
                aws.env,
            )
            c = run_timed(upload, aws.env)
            if i > 0:
                first.append(a)
                sync.append(b)
                again.append(c)
        work = _in_process(aws, folder, reps)
        s3 = aws.client("s3")
        sent = {
            side: sorted(o["Key"].rsplit("/", 1)[1] for o in s3.list_objects_v2(Bucket=aws.data_bucket, Prefix=f"bench/{side}-1/")["Contents"])
            for side in ("invoke", "awscli")
        }
    assert sent["invoke"] == sent["awscli"] and len(sent["invoke"]) == 4, f"the two sides sent different files: {sent}"
    return {
        "data": f"real MNIST (../shared/data/mnist): {', '.join(sent['invoke'])}",
        "awscli": version,
        "rows": [
            row("transfers: upload 4 files (moto S3)", "invoke upload", first, "aws s3 sync", sync, 1.0),
            row("transfers: re-run, nothing changed", "invoke upload again", again, "invoke upload first", first, 0.25),
            row("transfers: re-run vs first, in-process (start-up excluded)", "plan+upload again", work["again"], "plan+upload first", work["first"], None),
        ],
    }


def _in_process(aws, folder: Path, reps: int) -> dict:
    """The upload's own work, without start-up (interpreter, invoke, Hydra, boto3 client): plan and
    send the 4 files to a fresh prefix, then plan again with nothing to send, one shared client."""
    import time

    from project.aws import transfer
    from project.config import compose

    files = dict(compose([]).dataset.files)
    s3 = aws.client("s3")
    times = {"first": [], "again": []}
    for i in range(reps + 1):
        for side in ("first", "again"):
            started = time.perf_counter()
            items = transfer.plan_upload(folder, files, aws.data_bucket, f"bench/in-process-{i}", s3)
            transfer.upload(items, s3, progress=False, echo=lambda _: None)
            if i > 0:
                times[side].append(time.perf_counter() - started)
    return times
