"""The user's day on SageMaker, end to end and offline, through the real `invoke` command lines.

AWS is a moto server over HTTP with the resources `terraform apply` made (tests/aws_fixtures.py).
moto records training jobs but runs nothing: project.sandbox (what `invoke sandbox` runs) plays the service, so
each job `invoke train` creates really runs here, from the SDK's own driver scripts in an /opt/ml
tree, and its artifacts land in S3 as SageMaker leaves them. The tasks run as subprocesses
(`python -m invoke ...`); the moto server and the emulator live in this test process.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
import uuid
from pathlib import Path

import pytest

from project.aws import workflow
from project.aws.session import aws_clients
from project.aws.staging import DRY_RUN_CODE_PREFIX
from project.core import startup
from project.core.config import compose
from project.core.errors import UserError
from project.core.runtime import DEBUG_ENV
from project.core.sagemaker_names import MODEL_CONTENT_TYPE
from project.face import catalog
from project.face.compare import comparison
from project.sandbox import service as emulator
from project.sandbox.ecr_iam import placeholder_manifest
from project.training import imagetree
from project.training.imagefolder import ImageFolderDataModule
from project.training.pipe import Fingerprint
from project.training.train import run_composed
from tests import aws_calls, byo, cli
from tests.cli import one_error_line, refusal
from tests.imagetrees import write_tree
from tests.mlflow_server import mlflow_server
from tests.requires import skip_unless
from tests.service_model import problems
from tests.synthetic import make_images, tiny_overrides, write_dataset
from tests.test_distributed import single_process_eval

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
invoke = functools.partial(cli.invoke, timeout=600)  # a job's whole run


@pytest.fixture(scope="module")
def world(aws_infra, infra_overrides, tmp_path_factory):
    """Clients, the Terraform working dir (or the boto3 fallback's names) and a pushed image tag."""
    skip_unless(container=True)
    clients = aws_clients(aws_infra.region, os.environ["AWS_ENDPOINT_URL"])
    tag = f"e2e{uuid.uuid4().hex[:7]}"
    repository = aws_infra.repository_url.split("/", 1)[1]
    # What `invoke push` leaves in ECR (no Docker engine here): the tag, on an image manifest.
    clients.ecr.put_image(
        repositoryName=repository,
        imageTag=tag,
        imageManifest=placeholder_manifest(tag),
    )
    return {
        "clients": clients,
        "infra": aws_infra,
        "infra_overrides": infra_overrides,
        "tag": tag,
        "root": tmp_path_factory.mktemp("e2e"),
    }


def image_overrides(world, image: str) -> dict:
    """custom: the tag pushed above. aws: the AWS PyTorch image, whose job pip-installs the
    requirements at start, here from the test's own package folder and no index (no network):
    this machine is the image and already holds the pins, so pip finds each one satisfied."""
    if image == "custom":
        return {"job.image": "custom", "job.image_tag": world["tag"]}
    index = world["root"] / "pip-index"  # a --find-links folder; empty: nothing may be downloaded
    index.mkdir(exist_ok=True)
    return {"job.image": "aws", "+job.environment.PIP_NO_INDEX": 1, "+job.environment.PIP_FIND_LINKS": index}


def job_overrides(world, data, name: str, image: str = "custom", **extra) -> list:
    """A seconds-long CPU job on the tiny dataset, its own S3 prefix and job names."""
    folder, files = data
    return (
        tiny_overrides(
            folder,
            files,
            world["root"] / "runs",
            **{
                "instance": "ml.m5.xlarge",
                "dataset.s3_prefix": f"datasets/{name}",
                "job.base_name": name,
                **image_overrides(world, image),
                "job.max_run_minutes": 30,
                **extra,
            },
        )
        + world["infra_overrides"]
    )


@pytest.fixture(scope="module")
def data(world):
    folder = world["root"] / "raw"
    return folder, write_dataset(folder, n_train=600, n_test=200)


def test_upload_train_fetch_predict(world, data, tmp_path):
    """The default job.image=aws; the other jobs of this module run job.image=custom. It logs to MLflow
    too (logger=[tensorboard,mlflow], a real server on loopback): the job installs the client and tags its run."""
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    # The start-up trace in the job's output (bench/README.md: PID 1 to the first step).
    trace = f"+job.environment.{startup.TRACE_ENV}=/opt/ml/output/data/startup.jsonl"
    with mlflow_server(tmp_path / "mlflow") as tracking:
        tracked = ["logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={tracking}"]
        _upload_train_fetch_predict(
            world, data, tmp_path, name, [*job_overrides(world, data, name, "aws"), trace], tracked
        )


def _upload_train_fetch_predict(world, data, tmp_path, name, overrides, tracked):
    s3, infra = world["clients"].s3, world["infra"]

    dry = invoke("upload", *overrides, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert s3.list_objects_v2(Bucket=infra.data_bucket, Prefix=f"datasets/{name}/").get("KeyCount", 0) == 0

    up = invoke("upload", *overrides)
    assert up.returncode == 0, up.stderr
    keys = sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=infra.data_bucket, Prefix=f"datasets/{name}/")["Contents"]
    )
    assert keys == sorted(f"datasets/{name}/train/{stem}.gz" for stem in data[1])  # the train channel

    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs") as service:
        train = invoke("train", *overrides, *tracked, "--yes", "--poll", "1")
        assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-3000:]
        job = re.search(r"launched (\S+)", train.stdout).group(1)
        run = service.result(job)
        run.check()
        assert "Requirement already satisfied: mlflow-skinny==" in run.stdout  # logger=mlflow's client

        out = train.stdout
        assert "cost" in out and "$0.230/h x 1 instance(s)" in out  # the estimate came before the launch
        assert out.index("cost") < out.index("launched")
        # sm_train.sh pip-installed the staged requirements (all but torch) before the command.
        assert "Installing requirements" in run.stdout and "install_requirements.py requirements.txt" in run.stdout
        assert "Requirement already satisfied: pytorch-lightning==2.6.6" in run.stdout
        assert not re.search(r"Requirement already satisfied: torch==", run.stdout)
        assert run.stdout.index("Requirement already satisfied") < run.stdout.index("launching: ")
        assert re.search(r"start-up +pip installs \d+ packages", out)
        # The container ran the staged entry point as PID 1; one process on one host trains there, no torchrun.
        assert "launching: one process on one host: training in this process (PID 1), no torchrun" in run.stdout
        assert "torch.distributed.run" not in run.stdout
        assert re.search(r"test_acc=0\.\d+", out)  # log lines streamed from CloudWatch
        assert f"{job}: Completed" in out and "billable=" in out and "cost=$" in out
        # Where the start-up went, after the final report: the billed phases add up to what SageMaker billed
        # before the first step (from TrainingStartTime); the provisioning before it is shown, not billed.
        desc = world["clients"].sagemaker.describe_training_job(TrainingJobName=job)
        _check_the_startup_breakdown(out, job, desc, run.stdout)
        assert "[startup] phase=" in run.stdout and "[startup] phase=" not in out  # the log has them; not the stream
        # sm_train.sh's set-up (~110 lines) streamed as one line; CloudWatch keeps them (`invoke logs` below).
        already = run.stdout.count("Requirement already satisfied: ")
        assert re.search(rf"^set-up: {already} packages already installed, \d+\.\d s$", out, re.M), out[:3000]
        assert "Requirement already satisfied" not in out and "Environment Variables:" not in out

        assert desc["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"
        image = desc["AlgorithmSpecification"]["TrainingImage"]
        assert re.fullmatch(
            rf"763104351884\.dkr\.ecr\.{infra.region}\.amazonaws\.com/pytorch-training:\S+-cpu-\S+", image
        )
        assert desc["RoleArn"] == infra.role_arn
        assert (
            desc["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
            == f"s3://{infra.data_bucket}/datasets/{name}/train/"
        )
        assert desc["OutputDataConfig"]["S3OutputPath"].startswith(f"s3://{infra.artifacts_bucket}/")
        assert desc["CheckpointConfig"]["S3Uri"].startswith(f"s3://{infra.artifacts_bucket}/checkpoints/{name}-")
        tags = {
            t["Key"]: t["Value"]
            for t in world["clients"].sagemaker.list_tags(ResourceArn=desc["TrainingJobArn"])["Tags"]
        }
        assert tags["image"] == image.rsplit(":", 1)[1] and tags["project"] and len(tags["config-hash"]) >= 8
        final = {m["MetricName"]: m["Value"] for m in desc["FinalMetricDataList"]}
        assert final["test_acc"] > 0.5 and final["epoch"] >= 1

        status = invoke("status", job, *world["infra_overrides"], f"job.base_name={name}")
        assert status.returncode == 0, status.stderr
        assert job in status.stdout and "Completed" in status.stdout and "1xml.m5.xlarge" in status.stdout
        _check_the_startup_breakdown(status.stdout, job, desc, run.stdout)  # `invoke status JOB` shows it too

        logs = invoke("logs", job, *world["infra_overrides"])
        assert logs.returncode == 0 and "test_acc=" in logs.stdout
        assert logs.stdout.count("Requirement already satisfied: ") == already > 0  # the whole set-up

        runs = tmp_path / "runs"
        fetched = invoke(
            "fetch", *world["infra_overrides"], f"job.base_name={name}", f"paths.runs_dir={runs}"
        )  # latest job
        assert fetched.returncode == 0, fetched.stderr
        run_dir = runs / job
        assert f"run_dir={run_dir}" in fetched.stdout
        # Exactly the layout `invoke local` writes.
        for path in (
            "metrics.json",
            "model/model.ts",
            "model/model.pt",
            "model/config.yaml",
            "model/code/inference.py",  # the job's model.tar.gz serves as it is (invoke deploy <job>)
            "model/code/serving.json",
            "output/metrics.json",
            "output/metrics.csv",
            "output/confusion_matrix.png",
            "output/learning_curves.png",
        ):
            assert (run_dir / path).is_file(), path
        assert list((run_dir / "checkpoints").glob("*.ckpt"))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["test_acc"] == pytest.approx(final["test_acc"], abs=1e-4)
        _check_the_mlflow_run(tracked[1].split("=", 1)[1], metrics, job, tags)

        # `invoke register <job>` (#29 §4) by the job's name alone: fetched into paths.runs_dir,
        # measured on the held-out test set through the serving code path, registered with the job's tags.
        registered = tmp_path / "registered"
        reg = invoke(
            "register", job, *tiny_overrides(*data, registered), *world["infra_overrides"], f"deploy.model_group={name}"
        )
        assert reg.returncode == 0, reg.stdout[-3000:] + reg.stderr[-3000:]
        assert f"registered {job} as {name}/1 (PendingManualApproval)" in reg.stdout
        assert (registered / job / "model" / "model.ts").is_file()
        sm = world["clients"].sagemaker
        (summary,) = sm.list_model_packages(ModelPackageGroupName=name)["ModelPackageSummaryList"]
        package = sm.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
        properties = package["CustomerMetadataProperties"]
        assert properties["run"] == job and properties["config-hash"] == tags["config-hash"]
        assert properties["git-sha"] == tags.get("git-sha", "-")
        assert float(properties["served_test_acc"]) == pytest.approx(final["test_acc"], abs=0.01)
        assert (
            package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
            == desc["ModelArtifacts"]["S3ModelArtifacts"]
        )  # the job's own archive, not a copy
        evaluation = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
        assert evaluation == f"s3://{infra.artifacts_bucket}/models/{job}/evaluation.json"
        # Every phase from PID 1's start to the first step, in order, all in PID 1 (no torchrun).
        marks = [json.loads(line) for line in (run_dir / "output" / "startup.jsonl").read_text().splitlines()]
        first = {}
        for mark in marks:
            first.setdefault(mark["phase"], mark)
        phases = ["container_start", "launcher_ready", "imported", "config", "data_verified", "built"]
        phases += ["data_loaded", "sanity_start", "train_start", "first_step"]
        assert [p for p in first if p in phases] == phases, list(first)
        assert [first[p]["t"] for p in phases] == sorted(first[p]["t"] for p in phases)
        assert {first[p]["pid"] for p in phases} == {1}

    from PIL import Image

    images, labels = make_images(40, seed=11)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(pngs / f"digit{i:02d}_label{labels[i]}.png")
    predicted = invoke("predict", "--raw", str(run_dir), str(pngs))  # patches, not digits: as they are
    assert predicted.returncode == 0, predicted.stderr
    pairs = re.findall(r"label(\d)\.png: (?:unsure: )?(\d)", predicted.stdout)
    assert len(pairs) == 40
    accuracy = sum(truth == guess for truth, guess in pairs) / len(pairs)
    assert accuracy > 0.5 and abs(accuracy - final["test_acc"]) < 0.25, (accuracy, final)  # it really classifies

    again = invoke("upload", *overrides)  # nothing changed: nothing moves
    assert again.returncode == 0 and "uploaded 0 file(s)" in again.stdout, again.stdout + again.stderr


def _check_the_startup_breakdown(out: str, job: str, desc: dict, log: str) -> None:
    """The breakdown's billed phases sum to first step - TrainingStartTime (the log's marker), within a second."""
    from project.core.startup import parse_marker

    block = out[out.index(f"start-up of {job}") :]
    rows = re.findall(r"^  (\S.*?)  +(\d+\.\d) s( +not billed)?$", block, re.M)
    names = [name for name, _, _ in rows]
    assert names[0] == "provisioning (Starting)" and rows[0][2], block[:2000]  # shown, not billed
    assert names[-2:] == ["first step", "billed (from TrainingStartTime)"], block[:2000]
    assert "image download, container start" in names and "set-up: sm_train.sh, pip" in names
    billed = sum(float(seconds) for name, seconds, unbilled in rows[:-1] if not unbilled)
    first_step = next(t for phase, t in filter(None, map(parse_marker, log.splitlines())) if phase == "first_step")
    expected = first_step - desc["TrainingStartTime"].timestamp()
    assert abs(billed - expected) < 1.0 and abs(float(rows[-1][1]) - expected) < 1.0, (billed, expected, block)
    assert 0 < expected <= desc["BillableTimeInSeconds"] + 1
    # The sandbox's transitions as SageMaker's: Starting ends where billing starts (TrainingStartTime).
    transitions = desc["SecondaryStatusTransitions"]
    assert [t["Status"] for t in transitions] == ["Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert transitions[0]["EndTime"] == transitions[1]["StartTime"] == desc["TrainingStartTime"]


def _check_the_mlflow_run(tracking: str, metrics: dict, job: str, tags: dict) -> None:
    """The job's MLflow run: config as params, per-epoch metrics, model.ts and plots, the job's identity as tags."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["config/trainer/max_epochs"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2  # one point per epoch
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model.ts", "learning_curves.png"}
    assert run.data.tags["sagemaker-job"] == job
    assert (run.data.tags["config-hash"], run.data.tags["git-sha"]) == (tags["config-hash"], tags["git-sha"])


def test_failing_job_surfaces_its_reason(world, data, tmp_path):
    name = f"e2e-bad-{uuid.uuid4().hex[:6]}"
    overrides = job_overrides(world, data, name)
    assert invoke("upload", *overrides).returncode == 0
    # Someone replaced a data file in the bucket: the container's checksum check refuses it.
    s3, bucket = world["clients"].s3, world["infra"].data_bucket
    s3.put_object(Bucket=bucket, Key=f"datasets/{name}/train/t10k-labels-idx1-ubyte.gz", Body=b"not the labels")
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs") as service:
        train = invoke("train", *overrides, "--yes", "--poll", "1")
        job = re.search(r"launched (\S+)", train.stdout).group(1)
        service.result(job)
    assert train.returncode == 2, train.stdout[-3000:]
    assert "Traceback" not in train.stderr.splitlines()[0]
    report = train.stderr.strip().splitlines()
    assert report[0].startswith(f"error: job {job} Failed: AlgorithmError: DataError: ")
    assert "t10k-labels-idx1-ubyte" in report[0]  # the reason the container wrote, not just an exit code
    # The triage (project/aws/triage.py): the class of failure, what to do, where the log is.
    assert report[1].startswith("cause: the dataset failed its checks in the job: ") and "SHA256" in report[1]
    assert report[2].startswith("fix: upload good files with `invoke upload`")
    region = world["infra"].region
    assert report[3].startswith(
        f"log: https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#logsV2:log-groups/log-group/"
        f"$252Faws$252Fsagemaker$252FTrainingJobs$3FlogStreamNameFilter$3D{job}"
    )  # the reason came from FailureReason, so the link is to the job's streams
    desc = world["clients"].sagemaker.describe_training_job(TrainingJobName=job)
    assert desc["TrainingJobStatus"] == "Failed" and "t10k-labels-idx1-ubyte" in desc["FailureReason"]

    why = invoke("why", job, *world["infra_overrides"])  # the same report, later, and where its start-up went
    assert why.returncode == 0, why.stderr
    startup_times = train.stdout[train.stdout.index(f"start-up of {job}, host algo-1: ") :].strip()
    assert "to where it got to (no first step)" in startup_times  # it failed checking its data
    assert why.stdout.strip() == train.stderr.strip().removeprefix("error: ") + "\n" + startup_times

    fetched = invoke("fetch", job, *world["infra_overrides"], f"paths.runs_dir={tmp_path / 'runs'}")
    assert one_error_line(fetched) == f"error: training job {job} is Failed, not Completed: nothing to fetch yet"
    assert not (tmp_path / "runs").exists()


def long_data(folder: Path) -> tuple[Path, dict[str, str]]:
    """Enough training data (1,100 images: 63 steps an epoch at batch 16) to stop a job mid-way."""
    return folder, write_dataset(folder, n_train=1100, n_test=200)


def wait_for_periodic_checkpoint(service, jobs_dir: Path, job: str, host: str | None = None) -> None:
    """Until the running job has saved a periodic checkpoint of step 10 or later (training is under way)
    in its /opt/ml tree (`host`'s, of a job of several instances)."""
    checkpoints = jobs_dir / job / (f"{host}/opt_ml" if host else "opt_ml") / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(re.search(r"step=0*([1-9]\d+)", p.name) for p in checkpoints.glob("*.ckpt")):
        assert time.monotonic() < deadline and not service.runs[job].done(), "no periodic checkpoint"
        time.sleep(0.05)


def test_invalid_launches_and_missing_things_are_one_clean_line(world, data, tmp_path):
    sm = world["clients"].sagemaker
    before = len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"])
    name = f"e2e-err-{uuid.uuid4().hex[:6]}"
    overrides = job_overrides(world, data, name)
    train_uri = f"s3://{world['infra'].data_bucket}/datasets/{name}/train/"
    cases = [
        (["trainer.gpus=8", "instance=ml.p3.8xlarge"], "trainer.gpus=8 but ml.p3.8xlarge has 4 GPU(s)"),
        (["job.spot=true", "job.max_wait_minutes=10"], "spot needs job.max_wait_minutes >= job.max_run_minutes"),
        (
            ["trainer.batch_size=30", "instance=ml.p3.8xlarge", "trainer.gpus=4"],
            "does not split evenly over world size 4",
        ),
        (["instance=ml.x9.huge"], "unknown instance 'ml.x9.huge'; choose one of: "),
        (["job.image_tag=never-pushed"], "image tag never-pushed is not in ECR"),
        (["job.image=aws", "job.pytorch_version=2.0"], "pytorch-lightning==2.6.6 needs PyTorch >= 2.1"),
        (["+dataset.input_modes.train=Pipe"], "is a few files read once, Pipe streams them again every epoch"),
        ([], f"no data under {train_uri} (channel train): run `invoke upload` first"),
    ]
    for extra, message in cases:
        line = refusal("train", *overrides, *extra, "--yes")
        assert message in line, (extra, line)
    assert len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]) == before  # nothing launched

    empty = tmp_path / "not-applied"
    empty.mkdir()
    line = one_error_line(
        invoke("train", *overrides[: -len(world["infra_overrides"])], f"aws.terraform_dir={empty}", "--yes")
    )
    assert "Terraform has not been applied" in line and "terraform" in line and "apply" in line

    for task in ("fetch", "logs", "status", "why"):
        line = refusal(task, "no-such-job", *world["infra_overrides"])
        assert line == "error: no training job named 'no-such-job': `invoke status` lists recent jobs", (task, line)
    line = refusal("stop", "no-such-job", *world["infra_overrides"])
    assert "no training job named 'no-such-job'" in line

    nobody = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_ACCESS_KEY") and not k.startswith("AWS_SECRET")
    }
    nobody.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_SHARED_CREDENTIALS_FILE=str(empty / "none"),
        AWS_CONFIG_FILE=str(empty / "none"),
    )
    line = one_error_line(invoke("status", *world["infra_overrides"], env=nobody))
    assert line == "error: no AWS credentials found: run `aws configure` or set AWS_PROFILE"


def test_dry_run_prints_the_create_training_job_request(world):
    sm = world["clients"].sagemaker
    before = len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"])
    overrides = [*world["infra_overrides"], "trainer.gpus=4", "instance=ml.p3.8xlarge"]  # job.image=aws
    result = invoke("train", *overrides, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    request = json.loads(result.stdout[result.stdout.index("{") :])
    image = request["AlgorithmSpecification"]["TrainingImage"]
    assert re.fullmatch(
        rf"763104351884\.dkr\.ecr\.{world['infra'].region}\.amazonaws\.com/pytorch-training:\S+-gpu-\S+", image
    )
    version = image.rsplit(":", 1)[1].split("-")[0]
    assert f"{image}  (PyTorch {version}, AWS Deep Learning Container)" in result.stdout
    assert re.search(r"start-up +pip installs \d+ packages \(~\d+ MB\) at job start: ~\d+ s", result.stdout)
    assert (
        request["ResourceConfig"]["InstanceType"] == "ml.p3.8xlarge" and request["ResourceConfig"]["InstanceCount"] == 1
    )
    assert request["HyperParameters"]["processes_per_node"] == "4" and request["HyperParameters"]["nodes"] == "1"
    assert request["AlgorithmSpecification"]["ContainerEntrypoint"] == ["/bin/bash"]
    names = {d["Name"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]}
    assert {"train_loss", "val_loss", "val_acc", "test_acc"} <= names
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] == 120 * 60
    assert "$14.688/h x 1 instance(s) x 2.00 h max = $29.38 on-demand at most" in result.stdout
    assert "4 per node, world size 4" in result.stdout
    assert request["RetryStrategy"] == {"MaximumRetryAttempts": 3}  # capacity errors are retried by SageMaker
    assert "worst case $29.38; no budget (job.max_cost_usd)" in result.stdout
    assert len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]) == before  # nothing launched
    # The SDK uploaded the bundle to build the request: the output says what and where, and it is
    # where terraform/s3.tf expires it after a day (test_terraform checks the rule).
    bucket = world["infra"].artifacts_bucket
    staged = re.search(
        rf"dry run: uploaded the code bundle \((\d+) objects, [\d.]+ MB\) "
        rf"to s3://{bucket}/({DRY_RUN_CODE_PREFIX}/\S+/), "
        rf"where it expires after 1 day \(the bucket's lifecycle rule\); no job was created",
        result.stdout,
    )
    assert staged, result.stdout[:3000]
    listed = world["clients"].s3.list_objects_v2(Bucket=bucket, Prefix=staged[2])
    assert listed["KeyCount"] == int(staged[1]) > 10
    for channel in request["InputDataConfig"]:
        if channel["ChannelName"] in ("code", "sm_drivers"):
            assert channel["DataSource"]["S3DataSource"]["S3Uri"].startswith(f"s3://{bucket}/{staged[2]}")


def test_own_module_with_two_channels_matches_invoke_local(world, tmp_path):
    """A user's package outside project/ (tests.byo): upload of both channels, the job on the
    emulator carries the package, and the metrics equal those of `invoke local` for the same seed."""
    root = tmp_path / "user"
    byo.write_package(root)  # the job imports it from its code channel: staging carried it
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    name = f"e2e-byo-{uuid.uuid4().hex[:6]}"
    base = byo.overrides(root, tmp_path / "runs", **{"dataset.s3_prefix": f"datasets/{name}"})
    overrides = [
        *base,
        "instance=ml.m5.xlarge",
        f"job.base_name={name}",
        "job.image=custom",
        f"job.image_tag={world['tag']}",
        *world["infra_overrides"],
    ]
    local = invoke("local", *base, "run_name=local", env=env)
    assert local.returncode == 0, local.stderr[-3000:]
    expected = json.loads((tmp_path / "runs" / "local" / "metrics.json").read_text())

    up = invoke("upload", *overrides, env=env)
    assert up.returncode == 0, up.stderr
    s3, infra = world["clients"].s3, world["infra"]
    keys = sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket=infra.data_bucket, Prefix=f"datasets/{name}/")["Contents"]
    )
    assert keys == [f"datasets/{name}/train/points.csv", f"datasets/{name}/validation/points.csv"]

    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs") as service:
        train = invoke("train", *overrides, "--yes", "--poll", "1", env=env)
        assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-3000:]
        job = re.search(r"launched (\S+)", train.stdout).group(1)
        service.result(job).check()
        desc = world["clients"].sagemaker.describe_training_job(TrainingJobName=job)
        channels = {c["ChannelName"]: c for c in desc["InputDataConfig"]}
        assert {"train", "validation"} <= set(channels) and channels["validation"]["InputMode"] == "FastFile"
        assert channels["train"]["InputMode"] == "File"  # besides the SDK's code and sm_drivers channels
        assert {d["Name"] for d in desc["AlgorithmSpecification"]["MetricDefinitions"]} == {
            "train_loss",
            "val_loss",
            "test_loss",
            "epoch",
            "step_time_ms",  # every run's throughput and input stalls (TOOL_METRICS)
            "data_wait_ms",
        }
        fetched = invoke("fetch", job, *world["infra_overrides"], f"paths.runs_dir={tmp_path / 'fetched'}")
        assert fetched.returncode == 0, fetched.stderr
    remote = json.loads((tmp_path / "fetched" / job / "metrics.json").read_text())
    for key in ("train_loss", "val_loss", "test_loss"):
        assert remote[key] == pytest.approx(expected[key], rel=1e-5), key
    assert (tmp_path / "fetched" / job / "model" / "model.ts").is_file()


def test_an_image_folder_job_of_two_instances_streams_train_downloads_validation_and_mounts_test(
    world, tmp_path, monkeypatch
):
    """dataset=imagefolder on two instances (DDP, a process each), a channel read each way a job can:

    - train, Pipe mode: `invoke upload` sent it as shards + manifest (no PNG object); each host's FIFO,
      one per pass, holds the whole channel and its rank keeps its share of each pass, disjoint,
      equal, and all of the stream but the last sample (123 = 2 x 61 + 1);
    - validation, File mode: its shards, downloaded to each host;
    - test, an FSx for Lustre file system (fsx://): nothing uploaded; `invoke train` checks the VPC with
      EC2 and FSx (moto's; the IAM judge holds those calls to the launcher policy) and launches it as
      a read-only FileSystemDataSource in the VPC; the sandbox binds the file system's folder
      (SANDBOX_FILE_SYSTEMS) where SageMaker would mount it, on each host.

    Both ranks take the same steps to the same weights, and the test channel (39 images: uneven over two
    ranks) counts once in the sharded test metrics. One process in Pipe mode trains on File mode's very
    batches: tests/test_pipe.py. `invoke local`'s mount of a file system: tests/test_file_systems.py.
    """
    from project.sandbox.optml import FILE_SYSTEMS_ENV

    name = f"img-{uuid.uuid4().hex[:6]}"
    tree = write_tree(world["root"] / name, per_class=41)
    validation = write_tree(world["root"] / f"{name}-val", per_class=5, seed=1)
    fs, subnet, group = a_lustre_file_system(world)
    root = tmp_path / "file-systems"  # the file system's root, as its mount name shows it
    (root / fs).mkdir(parents=True)
    (root / fs / "shapes").symlink_to(write_tree(world["root"] / f"{name}-test", per_class=13, seed=2))
    monkeypatch.setenv(FILE_SYSTEMS_ENV, str(root))  # the sandbox runs in this process
    uri = f"fsx://{fs}/fsx/shapes"
    overrides = [
        "dataset=imagefolder",
        f"dataset.channels.train={tree}",
        f"+dataset.channels.validation={validation}",
        f"+dataset.channels.test={uri}",
        "+dataset.input_modes.train=Pipe",
        "dataset.num_classes=3",
        "dataset.shard_mb=0.01",
        f"dataset.s3_prefix=datasets/{name}",
        f"paths.runs_dir={world['root'] / 'runs'}",
        f"paths.data_dir={world['root'] / 'cache'}",
        "trainer.max_epochs=2",
        "trainer.batch_size=16",
        "trainer.gpus=0",
        "instance=ml.m5.xlarge",
        "instance.count=2",
        "job.image=custom",
        f"job.image_tag={world['tag']}",
        f"job.base_name={name}",
        "job.max_run_minutes=30",
        f"+job.environment.{DEBUG_ENV}=1",  # each rank prints its weights' digest
        f"aws.subnets=[{subnet}]",
        f"aws.security_groups=[{group}]",
        *world["infra_overrides"],
    ]
    up = invoke("upload", *overrides)
    assert up.returncode == 0, up.stderr
    assert f"test: {uri} is a file system the job mounts: nothing to upload" in up.stdout
    s3, bucket = world["clients"].s3, world["infra"].data_bucket
    for channel in ("train", "validation"):
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"datasets/{name}/{channel}/")["Contents"]]
        names = sorted(key.rsplit("/", 1)[1] for key in keys)
        assert names[-1] == imagetree.MANIFEST and len(names) > 2, (channel, names)
        assert all(n.startswith("shard-") and n.endswith(".tar") for n in names[:-1]), (channel, names)
    assert s3.list_objects_v2(Bucket=bucket, Prefix=f"datasets/{name}/test").get("KeyCount", 0) == 0

    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs") as service:
        train = invoke("train", *overrides, "--yes", "--poll", "1")
        assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-3000:]
        assert f"{uri}  (FSxLustre {fs}:/fsx/shapes, read-only)" in train.stdout
        job = re.search(r"launched (\S+)", train.stdout).group(1)
        two = service.result(job).check()
    desc = world["clients"].sagemaker.describe_training_job(TrainingJobName=job)
    channels = {c["ChannelName"]: c for c in desc["InputDataConfig"]}
    assert (channels["train"]["InputMode"], channels["validation"]["InputMode"]) == ("Pipe", "File")
    assert channels["test"]["DataSource"]["FileSystemDataSource"] == {
        "FileSystemId": fs,
        "FileSystemAccessMode": "ro",
        "FileSystemType": "FSxLustre",
        "DirectoryPath": "/fsx/shapes",
    }
    assert desc["VpcConfig"] == {"Subnets": [subnet], "SecurityGroupIds": [group]}
    assert desc["ResourceConfig"]["InstanceCount"] == 2
    # Pipe: nothing of train on either host's disk; each rank read train_0, then train_1. Rank r keeps
    # stream positions r, r + 2, ... of each pass, 61 each: the fingerprints say which samples each rank
    # read (tests/test_pipe.py: they tell one sample swapped).
    assert not any((opt_ml / "input/data/train").exists() for opt_ml in two.trees.values())
    passes = re.findall(
        r"^\[(algo-\d)\] pipe: (train_\d) epoch (\d) rank (\d)/2: (\d+) of 123 samples, fingerprint (\w+)$",
        two.stdout,
        re.M,
    )
    stream = [f.relpath for f in imagetree.scan_tree(tree)[1]]  # the stream's order: the packed one
    shares = [stream[rank::2][:61] for rank in (0, 1)]
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == sorted(stream[:122])
    assert sorted(passes) == [
        (host, f"train_{epoch}", str(epoch), str(rank), "61", Fingerprint.of(shares[rank]))
        for host, rank in (("algo-1", 0), ("algo-2", 1))
        for epoch in (0, 1)
    ], two.stdout[-3000:]
    digests = sorted(re.findall(r"^\[(algo-\d)\] rank=(\d) weights_sha256=(\w+)$", two.stdout, re.M))
    assert [(host, rank) for host, rank, _ in digests] == [("algo-1", "0"), ("algo-2", "1")]
    assert len({digest for *_, digest in digests}) == 1, digests
    metrics = json.loads((two.tree / "output" / "data" / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["global_steps"]) == (2, 2 * 8)  # 61 a rank in batches of 8
    tested = str(root / fs / "shapes")
    held = ImageFolderDataModule(train_dir=tested, validation_dir=tested, num_classes=3)
    held.setup("test")
    test = held.splits["test"]
    accuracy, loss = single_process_eval(
        two.tree / "model" / "model.ts", test.images.numpy(), test.labels.numpy()
    )  # the exported model alone, over the whole test channel (each rank read its half on its host's mount)
    assert len(test) == 39 and round(metrics["test_acc"] * 39) == round(accuracy * 39)
    assert metrics["test_loss"] == pytest.approx(loss, rel=1e-4)


# Job B's steps from A's weights at a rate too small to move them: its first validation is A's last,
# within 2 of 100 validation images (tests/test_init_from.py says why).
STILL = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "model.lr": 1e-6}


def test_a_job_starts_from_an_earlier_model_through_its_model_channel(world, data, tmp_path, capsys):
    """trainer.init_from on SageMaker: run A here; job B from A reads A's weights in its `model`
    channel and starts at A's accuracy, its tags and metrics.json name A, `invoke runs` and
    `invoke compare` show it. Then job B as a parent, by its name, for a dataset of 5 classes:
    refused strictly in one line, a new head with init_strict=false (a dry run: nothing launched)."""
    record = Path(os.environ[aws_calls.RECORD_ENV])
    offset = record.stat().st_size if record.exists() else 0
    name, runs = f"init-{uuid.uuid4().hex[:6]}", world["root"] / "runs"
    a_name = f"{name}-a"
    a = run_composed(compose(tiny_overrides(*data, runs, run_name=a_name)))
    overrides = job_overrides(world, data, name, **{"trainer.init_from": a_name, **STILL})
    assert invoke("upload", *overrides).returncode == 0
    sm, bucket = world["clients"].sagemaker, world["infra"].artifacts_bucket
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs") as service:
        train = invoke("train", *overrides, "--yes", "--poll", "1")
        assert train.returncode == 0, train.stdout[-4000:] + train.stderr[-3000:]
        job = re.search(r"launched (\S+)", train.stdout).group(1)
        service.result(job).check()
        uri = re.search(
            rf"start from +{a_name} \({a['config_hash']}\): (s3://{bucket}/models/{a_name}/\S+)", train.stdout
        )
        assert uri and f"-> {uri[1]}" in train.stdout, train.stdout[:3000]  # uploaded before the launch
        desc = sm.describe_training_job(TrainingJobName=job)
        (model,) = [c for c in desc["InputDataConfig"] if c["ChannelName"] == "model"]
        assert model["DataSource"]["S3DataSource"]["S3Uri"] == uri[1] and model["InputMode"] == "File"
        tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=desc["TrainingJobArn"])["Tags"]}
        assert tags["parent-run"] == a_name and tags["parent-config-hash"] == a["config_hash"]
        # what `invoke runs` lists of the job (catalog.list_runs's SageMaker half, in this process)
        (row,) = [line for line in catalog.table(catalog.sagemaker_entries(sm)).splitlines() if line.startswith(job)]
        assert f"{a_name} ({a['config_hash']})" in row
        assert invoke("fetch", job, *world["infra_overrides"], f"paths.runs_dir={runs}").returncode == 0
    b = json.loads((runs / job / "metrics.json").read_text())
    assert b["parent"] == {"run": a_name, "config_hash": a["config_hash"], "weights": uri[1]}
    assert abs(b["val_acc"] - a["val_acc"]) <= 0.02, (a["val_acc"], b["val_acc"])
    assert f"lineage: - | {a_name} ({a['config_hash']})" in comparison(runs / a_name, runs / job)  # invoke compare's

    # Job B as a parent, by its name (no folder of that name here): its model.tar.gz, checked on this
    # machine against a 5-class head; `invoke train`'s own function, in this process.
    before = len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"])
    five = [
        o if not o.startswith("paths.runs_dir=") else f"paths.runs_dir={tmp_path / 'c'}"
        for o in job_overrides(world, data, f"{name}-c", dataset="fashion_mnist", **{"dataset.num_classes": 5})
    ]
    with pytest.raises(UserError) as refused:
        workflow.train([*five, f"trainer.init_from={job}"], yes=True, echo=lambda line: None)
    assert "net.head.weight is [10, 32] there, [5, 32] here" in str(refused.value) and "\n" not in str(refused.value)
    lines: list[str] = []
    workflow.train([*five, f"trainer.init_from={job}", "trainer.init_strict=false"], dry_run=True, echo=lines.append)
    assert re.search(
        rf"init_from {job}: loaded \d+ of \d+ tensors; not loaded: net\.head\.weight", capsys.readouterr().out
    )
    request = json.loads(lines[-1])
    (model,) = [c for c in request["InputDataConfig"] if c["ChannelName"] == "model"]
    assert model["DataSource"]["S3DataSource"]["S3Uri"] == desc["ModelArtifacts"]["S3ModelArtifacts"]
    assert (model["InputMode"], model["ContentType"]) == ("File", MODEL_CONTENT_TYPE)
    assert {"Key": "parent-run", "Value": job} in request["Tags"]
    assert len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]) == before  # nothing launched
    # Every request sent for these runs is one AWS would take (patterns, ranges, enums).
    sent = [c for c in aws_calls.read_calls(record, offset) if name in json.dumps(c.params)]
    assert {"CreateTrainingJob", "DescribeTrainingJob", "PutObject"} <= {c.operation for c in sent}
    for call in sent:
        assert problems(call.service, call.operation, call.params) == [], (call.who, call.operation)


def a_lustre_file_system(world) -> tuple[str, str, str]:
    """An FSx for Lustre file system in a VPC as terraform/'s network leaves one (a subnet with its S3
    endpoint, a group open to itself on Lustre's ports), in moto: (its id, the subnet, the group)."""
    clients = world["clients"]
    ec2, fsx = clients.client("ec2"), clients.client("fsx")
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]
    main = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"][0]
    s3 = f"com.amazonaws.{world['infra'].region}.s3"
    ec2.create_vpc_endpoint(VpcId=vpc, ServiceName=s3, VpcEndpointType="Gateway", RouteTableIds=[main["RouteTableId"]])
    group = ec2.create_security_group(GroupName=f"jobs-{uuid.uuid4().hex[:6]}", Description="jobs", VpcId=vpc)
    pairs = [{"GroupId": group["GroupId"]}]
    ec2.authorize_security_group_ingress(
        GroupId=group["GroupId"],
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": low, "ToPort": high, "UserIdGroupPairs": pairs}
            for low, high in ((988, 988), (1018, 1023))  # Lustre's ports
        ],
    )
    fs = fsx.create_file_system(
        FileSystemType="LUSTRE",
        StorageCapacity=1200,
        SubnetIds=[subnet["SubnetId"]],
        LustreConfiguration={"DeploymentType": "SCRATCH_2"},
    )["FileSystem"]["FileSystemId"]
    return fs, subnet["SubnetId"], group["GroupId"]
