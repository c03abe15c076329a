"""What every benchmark shares: interleaved paired timing, the machine description, MNIST on disk,
and a local AWS (moto server over real HTTP) with the resources the workflow needs.

Timing rule (the machine is shared and noisy): the two things compared run alternately in the
same process (A, B, A, B, ...); the first repetition of each is a warm-up and is dropped; a
ratio is the median of the per-repetition ratios A_i / B_i, so a slow phase of the machine hits
both sides of a pair instead of one side of the comparison.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The real MNIST files: ../shared/data/mnist from the repository root, or $BENCH_MNIST_DIR (a GPU
# host that gets only a copy of the repository: copy the 4 .gz files into an ignored folder).
MNIST_DIR = Path(os.environ.get("BENCH_MNIST_DIR") or ROOT.parent / "shared" / "data" / "mnist").resolve()
MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
REGION = "us-east-1"


class Skip(Exception):
    """A benchmark that cannot run on this machine; the message says why."""


# --- environment ------------------------------------------------------------------------------


def user_environ(**extra: str) -> dict[str, str]:
    """This process's environment as a user's shell has it, plus `extra`, for the commands timed.

    PYTHONDONTWRITEBYTECODE is dropped: a development sandbox may set it, a user's shell does
    not, and with it every run of a command would recompile the project's modules (pip already
    compiled the installed packages, the baselines' code included). Bytecode goes to the usual
    __pycache__ folders (git-ignored); the dropped warm-up round writes it.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


# --- timing -----------------------------------------------------------------------------------


def interleaved(contenders: Mapping[str, Callable[[], float | None]], reps: int) -> dict[str, list[float]]:
    """Run each contender once per repetition, in order, `reps + 1` times; drop the first round.

    A contender returns its own measured seconds, or None to be timed here as a whole call.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(reps + 1):
        for name, run in contenders.items():
            started = time.perf_counter()
            measured = run()
            elapsed = time.perf_counter() - started if measured is None else measured
            if round_ > 0:
                times[name].append(elapsed)
    return times


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def row(
    benchmark: str,
    a_label: str,
    a: Sequence[float],
    b_label: str,
    b: Sequence[float],
    target: float | None,
    unit: str = "s",
) -> dict:
    """One line of the results table: medians of both sides and the paired ratio against its target."""
    ratio = paired_ratio(a, b)
    return {
        "benchmark": benchmark,
        "a_label": a_label,
        "a": median(a),
        "b_label": b_label,
        "b": median(b),
        "unit": unit,
        "ratio": ratio,
        "target": target,  # ratio must be <= target; None: reported only
        "met": None if target is None else ratio <= target,
        "a_samples": list(a),
        "b_samples": list(b),
    }


def invoke_script() -> str:
    """The `invoke` beside this interpreter (not a pyenv shim: start-up alike on both sides)."""
    path = Path(sys.executable).parent / "invoke"
    return str(path) if path.exists() else "invoke"


def run_timed(argv: Sequence[str], env: Mapping[str, str], cwd: Path = ROOT) -> float:
    """Wall time of one subprocess; a failure is an error, not a fast sample."""
    started = time.perf_counter()
    result = subprocess.run(list(argv), env=dict(env), cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(argv)}` exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return elapsed


# project/core/startup.py's TRACE_ENV (not imported: the bench process stays light): with it set, each
# process of a run appends `{"phase", "t"}` lines, and bench/plain_mnist.py writes the same.
TRACE_ENV = "LIGHTNING_SAGEMAKER_STARTUP_TRACE"


def read_trace(path: Path, started: float) -> dict[str, float]:
    """Each phase's first time in a run trace, in seconds after `started` (a time.time())."""
    phases: dict[str, float] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        phases.setdefault(record["phase"], record["t"] - started)
    return phases


# --- machine ----------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    import pytorch_lightning
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "lightning": pytorch_lightning.__version__,
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --- data -------------------------------------------------------------------------------------


def mnist_dir() -> Path | None:
    """The real MNIST .gz files (../shared/data/mnist from the repository root), or None."""
    present = all((MNIST_DIR / f"{stem}.gz").is_file() for stem in MNIST_STEMS)
    return MNIST_DIR if present else None


def train_arrays(n: int | None = None):
    """(images uint8 N x 28 x 28, labels uint8 N, source description): real MNIST, else synthetic."""
    from project.training.data import parse_idx, read_bytes

    folder = mnist_dir()
    if folder is not None:
        images = parse_idx(read_bytes(folder / "train-images-idx3-ubyte.gz"))
        labels = parse_idx(read_bytes(folder / "train-labels-idx1-ubyte.gz"))
        source = "real MNIST (../shared/data/mnist)"
    else:
        sys.path.insert(0, str(ROOT))
        from tests.synthetic import make_images

        images, labels = make_images(60000, seed=0)
        source = "synthetic MNIST-shaped data (real MNIST not found at ../shared/data/mnist)"
    if n is not None:
        images, labels = images[:n], labels[:n]
    return images, labels, source


# --- local AWS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalAws:
    endpoint: str
    env: dict[str, str]  # the environment for subprocesses: credentials, region, endpoint
    data_bucket: str
    artifacts_bucket: str
    repository_url: str
    role_arn: str
    image_tag: str

    def overrides(self) -> list[str]:
        """The infra as config overrides, so no Terraform state is read."""
        return [
            f"aws.data_bucket={self.data_bucket}",
            f"aws.artifacts_bucket={self.artifacts_bucket}",
            f"aws.repository_url={self.repository_url}",
            f"aws.role_arn={self.role_arn}",
            f"aws.region={REGION}",
            "job.image=custom",  # the pushed tag below: the same image (and no pip at start) in every run
            f"job.image_tag={self.image_tag}",
        ]

    def client(self, service: str):
        return _client(self.endpoint, service)


def _client(endpoint: str, service: str):
    import boto3

    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    return session.client(service, endpoint_url=endpoint)


def _aws_env(endpoint: str, empty: Path) -> dict[str, str]:
    env = {
        k: v for k, v in user_environ().items() if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
    }
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_ENDPOINT_URL=endpoint,
        AWS_CONFIG_FILE=str(empty / "config"),  # the user's profiles never leak into a benchmark
        AWS_SHARED_CREDENTIALS_FILE=str(empty / "credentials"),
        SAGEMAKER_VALIDATE_ROLE="false",
        PYTHONPATH=str(ROOT),
        LIGHTNING_SAGEMAKER_CACHE=str(empty / "cache"),  # composed configs: starts empty, never the user's
    )
    return env


@contextmanager
def local_aws() -> Iterator[LocalAws]:
    """The sandbox's AWS endpoint (moto, plus Service Quotas for SageMaker, as `invoke sandbox`
    serves it) on a free loopback port, with buckets, an ECR image tag, a role and data."""
    from project.sandbox.endpoint import Endpoint

    # The server's access log would bury the results.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    scratch = Path(tempfile.mkdtemp(prefix="bench-aws-"))
    try:
        with Endpoint("127.0.0.1", 0) as server:
            endpoint = server.url
            # moto keeps its state per process, not per server: start from empty, whatever ran before.
            reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
            urllib.request.urlopen(reset, timeout=30).close()
            yield _create_resources(endpoint, _aws_env(endpoint, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _create_resources(endpoint: str, env: dict[str, str]) -> LocalAws:
    s3, ecr, iam, sts = (_client(endpoint, service) for service in ("s3", "ecr", "iam", "sts"))
    account = sts.get_caller_identity()["Account"]
    buckets = {name: f"bench-{name}-{account}" for name in ("data", "artifacts")}
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)
    repository = ecr.create_repository(repositoryName="bench-training")["repository"]
    tag = "bench0001"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 2,
            "digest": "sha256:" + "0" * 64,
        },
        "layers": [],
    }
    ecr.put_image(repositoryName="bench-training", imageManifest=json.dumps(manifest), imageTag=tag)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = iam.create_role(RoleName="bench-sagemaker", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    # The dataset prefix `invoke train` checks for: the four file names (their bytes are not read).
    for stem in MNIST_STEMS:
        s3.put_object(Bucket=buckets["data"], Key=f"datasets/mnist/train/{stem}.gz", Body=b"placeholder")
    return LocalAws(
        endpoint=endpoint,
        env=env,
        data_bucket=buckets["data"],
        artifacts_bucket=buckets["artifacts"],
        repository_url=repository["repositoryUri"],
        role_arn=role["Arn"],
        image_tag=tag,
    )
