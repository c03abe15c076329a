"""Transfers: `invoke upload` against `aws s3 sync` of the same four MNIST .gz files to the same
moto S3 endpoint, an `invoke upload` re-run with nothing changed against the first upload, and
`invoke fetch` of a job's artifacts against `aws s3 cp --recursive` of the same objects.

Every round empties the target prefixes first (untimed), so each first upload finds nothing
there, and runs the same command lines, as a user repeats them: from the second round on the
composed config of `invoke upload` is cached (project.core.config.compose). A reported row runs the
upload with that cache off (Hydra composes every time). `invoke upload` verifies the dataset's
content hashes and stores a SHA256 with every object (what makes its re-run a skip); `aws s3
sync` does neither. Content verification decompresses a file once; after that project.training.raw knows
it by its stored bytes' hash (data/<dataset>/.verified/), so in the measured rounds both `invoke
upload`s only hash the files as stored. Uses the real MNIST files; skipped without them.

A reported row times the upload's own work in this process with start-up left out
(plan_upload + upload with one warm client): to a fresh prefix, then again with nothing to send.
Another times the floor under any task: `invoke` loading the project's tasks.py and running a
task that does nothing (bench/floor/tasks.py), against the same first upload.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .common import ROOT, Skip, invoke_script, local_aws, mnist_dir, row, run_timed

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


def _empty(s3, bucket: str, prefix: str) -> None:
    """Delete everything under prefix (untimed), so the next upload is a first upload again."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    if listing:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": o["Key"]} for o in listing]})


def run(reps: int) -> dict:
    folder: Path | None = mnist_dir()
    if folder is None:
        raise Skip("real MNIST not found at ../shared/data/mnist: this benchmark uploads those files")
    aws_cli = awscli()
    version = subprocess.run([aws_cli, "--version"], capture_output=True, text=True).stdout.strip() or "?"
    with local_aws() as aws:
        s3 = aws.client("s3")
        upload = [
            invoke_script(),
            "upload",
            f"dataset.channels.train={folder}",
            "dataset.s3_prefix=bench/invoke",
            *aws.overrides(),
        ]
        cold = [
            invoke_script(),
            "upload",
            f"dataset.channels.train={folder}",
            "dataset.s3_prefix=bench/cold",
            *aws.overrides(),
        ]
        no_cache = {**aws.env, "LIGHTNING_SAGEMAKER_CACHE": "off"}
        noop = [invoke_script(), "--search-root", str(ROOT / "bench" / "floor"), "noop"]
        sync = [
            aws_cli,
            "s3",
            "sync",
            str(folder),
            f"s3://{aws.data_bucket}/bench/awscli/",
            "--exclude",
            "*",
            "--include",
            "*.gz",
            "--only-show-errors",
        ]
        times: dict[str, list] = {"first": [], "sync": [], "again": [], "cold": [], "noop": []}
        for i in range(reps + 1):  # interleaved; round 0 is the warm-up and is dropped
            for prefix in ("bench/invoke/", "bench/awscli/", "bench/cold/"):
                _empty(s3, aws.data_bucket, prefix)
            # The same command line every round, as a user repeats it: from round 1 on its
            # composed config is cached (project.core.config.compose); the cold row composes afresh.
            sample = {
                "first": run_timed(upload, aws.env),
                "sync": run_timed(sync, aws.env),
                "again": run_timed(upload, aws.env),
                "cold": run_timed(cold, no_cache),
                "noop": run_timed(noop, aws.env),
            }
            if i > 0:
                for key, value in sample.items():
                    times[key].append(value)
        sent = {
            side: sorted(
                o["Key"].rsplit("/", 1)[1]
                for o in s3.list_objects_v2(Bucket=aws.data_bucket, Prefix=f"bench/{side}/")["Contents"]
            )
            for side in ("invoke", "awscli", "cold")
        }
        assert sent["invoke"] == sent["awscli"] == sent["cold"] and len(sent["invoke"]) == 4, (
            f"the sides sent different files: {sent}"
        )
        work = _in_process(aws, folder, reps)
        fetched = _fetch(aws, aws_cli, folder, reps)
    return {
        "data": f"real MNIST (../shared/data/mnist): {', '.join(sent['invoke'])}",
        "awscli": version,
        "fetch_artifacts": fetched["artifacts"],
        "rows": [
            row(
                "transfers: upload 4 files (moto S3)",
                "invoke upload",
                times["first"],
                "aws s3 sync",
                times["sync"],
                1.0,
            ),
            row(
                "transfers: upload, config cache off",
                "invoke upload (Hydra composes)",
                times["cold"],
                "aws s3 sync",
                times["sync"],
                None,
            ),
            row(
                "transfers: re-run, nothing changed",
                "invoke upload again",
                times["again"],
                "invoke upload first",
                times["first"],
                0.25,
            ),
            row(
                "transfers: floor, a task that does nothing",
                "invoke noop (tasks.py loaded)",
                times["noop"],
                "invoke upload first",
                times["first"],
                None,
            ),
            row(
                "transfers: re-run vs first, in-process (start-up excluded)",
                "plan+upload again",
                work["again"],
                "plan+upload first",
                work["first"],
                None,
            ),
            row(
                "transfers: fetch a job's artifacts",
                "invoke fetch",
                fetched["invoke"],
                "aws s3 cp --recursive",
                fetched["awscli"],
                1.0,
            ),
        ],
    }


def _job_artifacts(folder: Path, scratch: Path) -> dict[str, Path]:
    """model.tar.gz and output.tar.gz of a real (short) training run, packed as SageMaker packs
    /opt/ml/model and /opt/ml/output/data: the default model on real MNIST, 20 steps."""
    import tarfile

    runs = scratch / "runs"
    overrides = [
        f"dataset.channels.train={folder}",
        f"paths.runs_dir={runs}",
        f"paths.data_dir={scratch / 'data'}",
        "run_name=bench-fetch",
        "trainer.gpus=0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=4",
    ]
    subprocess.run(
        [sys.executable, "-m", "project.training.train", *overrides], cwd=ROOT, check=True, capture_output=True
    )
    tarballs = {}
    for name in ("model", "output"):
        tarballs[name] = scratch / f"{name}.tar.gz"
        with tarfile.open(tarballs[name], "w:gz") as tar:
            for path in sorted((runs / "bench-fetch" / name).iterdir()):
                tar.add(path, arcname=path.name)
    return tarballs


def _fetch(aws, aws_cli: str, folder: Path, reps: int) -> dict:
    """`invoke fetch <job>` (describe, download, verify, unpack into runs/<job>/) against `aws s3 cp
    --recursive` of the same two objects. moto records a created job as Completed with its
    model at <S3OutputPath>/<job>/output/model.tar.gz; the job here has no checkpoints."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    try:
        tarballs = _job_artifacts(folder, scratch)
        job = "bench-fetch-job"
        aws.client("sagemaker").create_training_job(
            TrainingJobName=job,
            AlgorithmSpecification={
                "TrainingImage": f"{aws.repository_url}:{aws.image_tag}",
                "TrainingInputMode": "File",
            },
            RoleArn=aws.role_arn,
            OutputDataConfig={"S3OutputPath": f"s3://{aws.artifacts_bucket}/jobs"},
            ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
            StoppingCondition={"MaxRuntimeInSeconds": 3600},
        )
        s3 = aws.client("s3")
        prefix = f"jobs/{job}/output/"
        for name, path in tarballs.items():
            s3.upload_file(str(path), aws.artifacts_bucket, f"{prefix}{name}.tar.gz")
        fetch = [invoke_script(), "fetch", job, f"paths.runs_dir={scratch / 'fetched'}", *aws.overrides()]
        copy = [
            aws_cli,
            "s3",
            "cp",
            "--recursive",
            f"s3://{aws.artifacts_bucket}/{prefix}",
            str(scratch / "copied"),
            "--only-show-errors",
        ]
        times: dict[str, list] = {"invoke": [], "awscli": []}
        for i in range(reps + 1):
            shutil.rmtree(scratch / "fetched", ignore_errors=True)  # each fetch starts with nothing local
            shutil.rmtree(scratch / "copied", ignore_errors=True)
            a, b = run_timed(fetch, aws.env), run_timed(copy, aws.env)
            if i > 0:
                times["invoke"].append(a)
                times["awscli"].append(b)
        got = scratch / "fetched" / job
        assert (got / "metrics.json").is_file() and any((got / "model").iterdir()), f"invoke fetch left no run in {got}"
        assert sorted(p.name for p in (scratch / "copied").iterdir()) == ["model.tar.gz", "output.tar.gz"]
        times["artifacts"] = {name: f"{path.stat().st_size / 2**20:.2f} MiB" for name, path in tarballs.items()}
        return times
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _in_process(aws, folder: Path, reps: int) -> dict:
    """The upload's own work, without start-up (interpreter, invoke, Hydra, boto3 client): plan and
    send the 4 files to a fresh prefix, then plan again with nothing to send, one shared client."""
    import time

    from project.aws import upload
    from project.core.config import compose
    from project.training.fetch import candidates

    files = dict(compose([]).dataset.files)
    paths = {stem: next(folder / n for n in candidates(stem) if (folder / n).is_file()) for stem in files}
    s3 = aws.client("s3")
    times = {"first": [], "again": []}
    for i in range(reps + 1):
        for side in ("first", "again"):
            started = time.perf_counter()
            items = upload.plan_upload(paths, aws.data_bucket, f"bench/in-process-{i}", s3)
            upload.upload(items, s3, progress=False, echo=lambda _: None)
            if i > 0:
                times[side].append(time.perf_counter() - started)
    return times
