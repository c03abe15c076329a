"""The AWS tasks on the command line against moto over real HTTP: refusals, bad names, logs, uploads.

Cheap fixtures: buckets, an ECR tag and job records made with boto3 in moto, named to the tasks
with aws.* overrides (no Terraform). Each task runs as `python -m invoke ...` in a subprocess,
the moto server lives in this test process. Refusals are real: moto answers 403 where a
bucket policy denies the request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from datetime import date
from pathlib import Path

import pytest

from project.aws import prices
from project.aws.quotas import free_instances
from project.aws.session import aws_clients
from project.core.sagemaker_names import JOB_NAME, LOG_GROUP
from project.sandbox import quotas as sandbox_quotas
from project.sandbox import record
from project.sandbox import service as emulator
from project.sandbox.ecr_iam import placeholder_manifest
from tests import byo
from tests.cli import invoke, one_error_line, refusal
from tests.price_list import PriceListServer, fixture_products
from tests.synthetic import write_dataset
from tests.test_triage import CAPACITY, CUDA_OOM, NCCL_TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"


@pytest.fixture(scope="module")
def clients(moto_endpoint):
    return aws_clients(REGION, moto_endpoint)


def new_bucket(clients, kind: str) -> str:
    name = f"cli-{kind}-{uuid.uuid4().hex[:10]}"
    clients.s3.create_bucket(Bucket=name)
    return name


def deny_objects(clients, bucket: str, *actions: str) -> None:
    """A bucket policy that refuses these object actions to everyone (moto answers them 403)."""
    statement = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": list(actions),
        "Resource": f"arn:aws:s3:::{bucket}/*",
    }
    clients.s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))


@pytest.fixture(scope="module")
def repository(clients):
    """An ECR repository holding one pushed tag, as `invoke push` leaves it."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    url = clients.ecr.create_repository(repositoryName=name)["repository"]["repositoryUri"]
    clients.ecr.put_image(repositoryName=name, imageTag="clitag1", imageManifest=placeholder_manifest("clitag1"))
    return url, "clitag1"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-raw")
    return folder, write_dataset(folder, n_train=50, n_test=20)


def overrides(tmp_path, dataset, repository, data_bucket, artifacts_bucket, **extra) -> list[str]:
    folder, files = dataset
    values = {
        "dataset.channels.train": str(folder),
        "dataset.s3_prefix": "datasets/tiny",
        "paths.data_dir": str(tmp_path / "cache"),
        "paths.runs_dir": str(tmp_path / "runs"),
        "aws.data_bucket": data_bucket,
        "aws.artifacts_bucket": artifacts_bucket,
        "aws.repository_url": repository[0],
        "aws.role_arn": f"arn:aws:iam::{ACCOUNT}:role/cli-sagemaker",
        "aws.region": REGION,
        "job.image_tag": repository[1],
        "instance": "ml.m5.xlarge",
        "trainer.gpus": "0",
        "trainer.batch_size": "64",
        **{f"dataset.files.{stem}": sha for stem, sha in files.items()},
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def upload_dataset(clients, dataset, bucket: str, prefix: str = "datasets/tiny/train") -> None:
    folder, files = dataset
    for stem in files:
        clients.s3.upload_file(str(folder / f"{stem}.gz"), bucket, f"{prefix}/{stem}.gz")


# --- S3 refusals are one line -------------------------------------------------------------------


def test_upload_refused_by_a_bucket_policy_is_one_line(clients, dataset, repository, tmp_path):
    data = new_bucket(clients, "data")
    deny_objects(clients, data, "s3:PutObject")
    result = invoke("upload", *overrides(tmp_path, dataset, repository, data, data))
    line = one_error_line(result)
    assert re.search(rf"S3 PutObject on s3://{data}/datasets/tiny/train/\S+\.gz refused: 403", line), line
    assert "s3:PutObject" in line and "bucket policy" in line and "aws sts get-caller-identity" in line


def test_upload_whose_checksum_lookup_is_refused_is_one_line(clients, dataset, repository, tmp_path):
    data = new_bucket(clients, "data")
    deny_objects(clients, data, "s3:*")  # HeadObject too: the checksum of what the bucket holds
    line = refusal("upload", *overrides(tmp_path, dataset, repository, data, data))
    assert re.search(rf"S3 HeadObject on s3://{data}/datasets/tiny/train/\S+\.gz refused: 403", line), line
    assert "s3:GetObject" in line and "aws sts get-caller-identity" in line


def test_fetch_refused_by_a_bucket_policy_is_one_line(clients, dataset, repository, tmp_path):
    artifacts = new_bucket(clients, "art")
    name = f"cli-fetch-{uuid.uuid4().hex[:6]}"
    create_job(clients, name, artifacts)
    model_uri = f"s3://{artifacts}/jobs/{name}/output/model.tar.gz"
    clients.s3.put_object(Bucket=artifacts, Key=f"jobs/{name}/output/model.tar.gz", Body=b"not read")
    record.finish_job(clients.sagemaker, name, record.Outcome("Completed", model_uri=model_uri))
    deny_objects(clients, artifacts, "s3:GetObject")
    result = invoke("fetch", name, *overrides(tmp_path, dataset, repository, artifacts, artifacts))
    line = one_error_line(result)
    assert f"S3 GetObject on {model_uri} refused: 403" in line and "s3:GetObject" in line, line
    assert not (tmp_path / "runs" / name).exists()


def test_train_whose_code_upload_is_refused_is_one_line(clients, dataset, repository, tmp_path):
    data, artifacts = new_bucket(clients, "data"), new_bucket(clients, "art")
    upload_dataset(clients, dataset, data)
    deny_objects(clients, artifacts, "s3:PutObject")  # the SDK stages the code there first
    before = len(clients.sagemaker.list_training_jobs(MaxResults=100)["TrainingJobSummaries"])
    result = invoke("train", "--yes", "--no-wait", *overrides(tmp_path, dataset, repository, data, artifacts))
    line = one_error_line(result)
    assert re.search(rf"S3 PutObject on s3://{artifacts}/code/\S+ refused: 403", line), line
    assert "s3:PutObject" in line
    assert len(clients.sagemaker.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]) == before


# --- resource names are checked at compose time --------------------------------------------------


@pytest.mark.parametrize(
    "override,expected",
    [
        (
            f"aws.repository_url={ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com",
            f"aws.repository_url='{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com': "
            "expected <account>.dkr.ecr.<region>.amazonaws.com/<repository>",
        ),
        (f"aws.repository_url={ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/My_Repo", "aws.repository_url="),
        ("aws.role_arn=arn:aws:iam::12345:role/x", "aws.role_arn='arn:aws:iam::12345:role/x': expected arn:aws"),
        ("aws.data_bucket=My_Bucket", "aws.data_bucket='My_Bucket': bucket names are 3-63"),
        ("aws.region=us-east1", "aws.region='us-east1': expected a region like us-east-1"),
    ],
)
def test_bad_resource_name_is_one_line_before_any_call(override, expected, dataset, repository, tmp_path):
    good = overrides(tmp_path, dataset, repository, "cli-never-data", "cli-never-art")
    line = refusal("train", "--dry-run", *good, override)
    assert expected in line, line


# --- logs and names -----------------------------------------------------------------------------


def create_job(clients, name: str, artifacts: str, keep_alive_seconds: int = 0, count: int = 1) -> None:
    clients.sagemaker.create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/x:t",
            "TrainingInputMode": "File",
        },
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/cli-sagemaker",
        OutputDataConfig={"S3OutputPath": f"s3://{artifacts}/jobs"},
        ResourceConfig={
            "InstanceType": "ml.m5.xlarge",
            "InstanceCount": count,
            "VolumeSizeInGB": 10,
            **({"KeepAlivePeriodInSeconds": keep_alive_seconds} if keep_alive_seconds else {}),
        },
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )


def test_logs_of_a_job_without_a_log_stream_say_so(clients, dataset, repository, tmp_path):
    name = f"cli-logs-{uuid.uuid4().hex[:6]}"
    with emulator.sagemaker_service():  # the job is InProgress / Starting, as right after a launch
        create_job(clients, name, "cli-never-art")
    result = invoke("logs", name, *overrides(tmp_path, dataset, repository, "cli-never-data", "cli-never-art"))
    assert result.returncode == 0, result.stderr
    assert f"no log stream yet for {name} (status InProgress / Starting)" in result.stdout, result.stdout
    assert "--follow" in result.stdout


def test_job_tasks_take_the_job_by_name_or_by_its_folder(clients, dataset, repository, tmp_path):
    """`invoke logs runs/<job>/`, as tab completion writes a fetched job's folder, is `invoke logs <job>`."""
    name = f"cli-path-{uuid.uuid4().hex[:6]}"
    args = overrides(tmp_path, dataset, repository, "cli-never-data", "cli-never-art")
    with emulator.sagemaker_service():
        create_job(clients, name, "cli-never-art")
    for task in ("logs", "why", "status"):
        by_name, by_path = invoke(task, name, *args), invoke(task, f"runs/{name}/", *args)
        assert by_name.returncode == 0 and by_path.returncode == 0, (task, by_name.stderr, by_path.stderr)
        assert name in by_path.stdout and by_path.stdout.splitlines()[0] == by_name.stdout.splitlines()[0], task
    not_done = f"error: training job {name} is InProgress, not Completed: nothing to fetch yet"
    assert refusal("fetch", name, *args) == refusal("fetch", f"runs/{name}/", *args)
    assert refusal("fetch", f"runs/{name}", *args) == not_done
    with emulator.sagemaker_service():  # moto has no StopTrainingJob; the sandbox's SageMaker has
        stopped = invoke("stop", f"runs/{name}/", *args)
    assert stopped.returncode == 0 and stopped.stdout.startswith(f"stop requested for {name}:"), stopped.stderr
    assert "names no training job (job names are 1-63 letters" in refusal("logs", "runs/my job/", *args)


def test_upload_of_your_own_dataset_needs_no_model(clients, tmp_path):
    """`invoke upload dataset=mine` moves data: no model=mine to match it (the default classifier
    would want dataset.num_classes, which a regression's dataset has not)."""
    byo.write_package(tmp_path)
    data = new_bucket(clients, "data")
    result = invoke(
        "upload",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "dataset=byo",
        f"paths.data_dir={tmp_path / 'cache'}",
        f"aws.data_bucket={data}",
        f"aws.artifacts_bucket={data}",
        f"aws.repository_url={ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/never-called",
        f"aws.role_arn=arn:aws:iam::{ACCOUNT}:role/cli-sagemaker",
        f"aws.region={REGION}",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    keys = {o["Key"] for o in clients.s3.list_objects_v2(Bucket=data)["Contents"]}
    assert keys == {"datasets/byo/train/points.csv", "datasets/byo/validation/points.csv"}


def test_launch_records_the_unique_job_name(clients, dataset, repository, tmp_path):
    data, artifacts = new_bucket(clients, "data"), new_bucket(clients, "art")
    upload_dataset(clients, dataset, data)
    base = f"cli-{uuid.uuid4().hex[:6]}"
    extra = {"job.base_name": base}
    with emulator.sagemaker_service():
        result = invoke(
            "train", "--yes", "--no-wait", *overrides(tmp_path, dataset, repository, data, artifacts, **extra)
        )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    name = re.search(r"launched (\S+)", result.stdout).group(1)
    assert JOB_NAME.match(name) and name.startswith(f"{base}-")
    assert re.search(rf"^  job +{name}$", result.stdout, re.M)  # the summary names the job that was launched
    desc = clients.sagemaker.describe_training_job(TrainingJobName=name)
    assert desc["TrainingJobName"] == name
    assert desc["RetryStrategy"] == {"MaximumRetryAttempts": 3}  # SageMaker relaunches after a capacity error
    # job.image=aws, the default: the AWS PyTorch container of the region, CPU flavour for ml.m5.
    image = desc["AlgorithmSpecification"]["TrainingImage"]
    assert re.fullmatch(rf"763104351884\.dkr\.ecr\.{REGION}\.amazonaws\.com/pytorch-training:[\d.]+-cpu-py\d+", image)


# --- job.image=custom: build and push skip a tag ECR has; train names the command to run ---------


def custom_overrides(tmp_path, dataset, repository, data, artifacts) -> list[str]:
    """job.image=custom with the content-hash tag (no job.image_tag)."""
    given = overrides(tmp_path, dataset, repository, data, artifacts, **{"job.image": "custom"})
    return [o for o in given if not o.startswith("job.image_tag=")]


def test_custom_image_build_push_and_train_follow_the_tag_in_ecr(clients, dataset, tmp_path):
    from project.aws.image import DEFAULT_BASE_IMAGE, content_tag

    name = f"cli-{uuid.uuid4().hex[:8]}"
    url = clients.ecr.create_repository(repositoryName=name, imageTagMutability="IMMUTABLE")["repository"][
        "repositoryUri"
    ]
    data, artifacts = new_bucket(clients, "data"), new_bucket(clients, "art")
    upload_dataset(clients, dataset, data)
    given = custom_overrides(tmp_path, dataset, (url, None), data, artifacts)
    tag = content_tag(DEFAULT_BASE_IMAGE.format(region=REGION))

    line = refusal("train", "--yes", *given)
    assert line == (
        f"error: image tag {tag} is not in ECR repository {name}: "
        "run `invoke build && invoke push` (or use job.image=aws: no Docker)"
    )
    base = "acct.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.9.0-gpu-py312"
    line = refusal("train", "--yes", *given, f"job.base_image={base}")
    assert f"run `invoke build job.base_image={base} && invoke push job.base_image={base}`" in line
    assert content_tag(base) in line and content_tag(base) != tag

    built = invoke("build", "--dry-run", *given)
    assert built.returncode == 0, built.stderr
    assert (
        f"--tag {url}:{tag} " in built.stdout
        and f"BASE_IMAGE={DEFAULT_BASE_IMAGE.format(region=REGION)}" in built.stdout
    )

    clients.ecr.put_image(repositoryName=name, imageTag=tag, imageManifest=placeholder_manifest(tag))  # pushed
    for task, said in (("build", "nothing to build"), ("push", "nothing to push")):
        result = invoke(task, *given)  # not a dry run: no docker is needed to find there is nothing to do
        assert result.returncode == 0, result.stderr
        assert f"{url}:{tag} is already in ECR" in result.stdout and said in result.stdout
    dry = invoke("train", "--dry-run", *given)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert f"{url}:{tag}  (PyTorch 2.8.0, ours: invoke build/push)" in dry.stdout
    assert "pip installs" not in dry.stdout  # our image holds the requirements: nothing installed at start


# --- upload sends what was verified; an s3:// source uses the configured endpoint ---------------


def test_upload_sends_the_verified_copy_not_the_corrupt_source(clients, dataset, repository, tmp_path):
    folder, files = dataset
    source = tmp_path / "source"
    source.mkdir()
    for stem in files:
        (source / f"{stem}.gz").write_bytes((folder / f"{stem}.gz").read_bytes())
    cache = tmp_path / "cache" / "mnist"
    cache.mkdir(parents=True)
    bad = list(files)[-1]  # not the first file: its folder is not the one the others came from
    (cache / f"{bad}.gz").write_bytes((folder / f"{bad}.gz").read_bytes())  # a good copy in the cache
    (source / f"{bad}.gz").write_bytes(b"\x1f\x8b corrupt")  # and a corrupt one in the source
    data = new_bucket(clients, "data")
    result = invoke(
        "upload", *overrides(tmp_path, dataset, repository, data, data, **{"dataset.channels.train": source})
    )
    assert result.returncode == 0, result.stdout + result.stderr
    body = clients.s3.get_object(Bucket=data, Key=f"datasets/tiny/train/{bad}.gz")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256((cache / f"{bad}.gz").read_bytes()).hexdigest()


def test_s3_source_is_read_at_the_configured_endpoint(clients, dataset, repository, tmp_path, moto_endpoint):
    mirror, data = new_bucket(clients, "mirror"), new_bucket(clients, "data")
    upload_dataset(clients, dataset, mirror, prefix="mnist")
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}  # only aws.endpoint_url names moto
    extra = {"dataset.channels.train": f"s3://{mirror}/mnist", "aws.endpoint_url": moto_endpoint}
    result = invoke("upload", *overrides(tmp_path, dataset, repository, data, data, **extra), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(clients.s3.list_objects_v2(Bucket=data, Prefix="datasets/tiny/")["Contents"]) == len(dataset[1])


# --- before money is spent: quotas, budget, the instance, prices, retries -------------------------


def job_count(clients) -> int:
    pages = clients.sagemaker.get_paginator("list_training_jobs").paginate()
    return sum(len(page["TrainingJobSummaries"]) for page in pages)


def refused_launch(clients, tmp_path, dataset, repository, *extra: str) -> str:
    """`invoke train --yes` refused with one line, and no job created."""
    data, artifacts = new_bucket(clients, "data"), new_bucket(clients, "art")
    upload_dataset(clients, dataset, data)
    before = job_count(clients)
    with emulator.sagemaker_service():
        result = invoke(
            "train", "--yes", "--no-wait", *overrides(tmp_path, dataset, repository, data, artifacts), *extra
        )
    line = one_error_line(result)
    assert job_count(clients) == before
    return line


def test_a_launch_over_the_quota_is_refused_with_the_increase_command(clients, dataset, repository, tmp_path):
    name = "ml.m5.xlarge for training job usage"
    with sandbox_quotas.set_quota(name, 0):
        line = refused_launch(clients, tmp_path, dataset, repository)
    in_use = int(re.search(rf"quota '{name}' is 0, (\d+) in use, 1 requested", line).group(1))
    code = sandbox_quotas.quota_code(name)
    assert (
        f"`aws service-quotas request-service-quota-increase --service-code sagemaker --quota-code {code} "
        f"--desired-value {in_use + 1} --region {REGION}`"
    ) in line
    # Jobs in progress count against the quota with all their instances: one more InProgress job of
    # the type on three instances, three more in use; a launch on two instances asks for two.
    with emulator.sagemaker_service():
        create_job(clients, f"cli-quota-{uuid.uuid4().hex[:6]}", "cli-never-art", count=3)
    with sandbox_quotas.set_quota(name, in_use + 4):
        line = refused_launch(clients, tmp_path, dataset, repository, "instance.count=2")
    assert f"is {in_use + 4}, {in_use + 3} in use, 2 requested" in line, line


def test_spot_and_warm_pool_quotas_are_checked(clients, dataset, repository, tmp_path):
    with sandbox_quotas.set_quota("ml.m5.xlarge for spot training job usage", 0):
        line = refused_launch(clients, tmp_path, dataset, repository, "job.spot=true")
    assert "quota 'ml.m5.xlarge for spot training job usage' is 0" in line
    with sandbox_quotas.set_quota("ml.m5.xlarge for training warm pool usage", 0):
        line = refused_launch(clients, tmp_path, dataset, repository, "job.keep_alive_minutes=10")
    assert "quota 'ml.m5.xlarge for training warm pool usage' is 0, 0 in use, 1 requested" in line


def test_a_completed_jobs_warm_pool_holds_its_instances_until_it_expires(clients, dataset, repository, tmp_path):
    name = "ml.m5.xlarge for training warm pool usage"
    job = f"cli-warm-{uuid.uuid4().hex[:6]}"
    with emulator.sagemaker_service():
        create_job(clients, job, "cli-never-art", keep_alive_seconds=600)
        record.finish_job(clients.sagemaker, job, record.Outcome("Completed"))
        pool = clients.sagemaker.describe_training_job(TrainingJobName=job)["WarmPoolStatus"]
    assert pool["Status"] == "Available"
    try:  # the pool's instance is in use: a second warm-pool launch needs a quota of 2
        with sandbox_quotas.set_quota(name, 1):
            line = refused_launch(clients, tmp_path, dataset, repository, "job.keep_alive_minutes=10")
    finally:
        record.terminate_warm_pool(record.moto_job(clients.sagemaker, job))
    assert f"quota '{name}' is 1, 1 in use, 1 requested" in line, line
    # A pool whose KeepAlivePeriod has passed holds nothing.
    short = f"cli-warm-{uuid.uuid4().hex[:6]}"
    with emulator.sagemaker_service():
        create_job(clients, short, "cli-never-art", keep_alive_seconds=1)
        record.finish_job(clients.sagemaker, short, record.Outcome("Completed"))
        time.sleep(1.1)
        pool = clients.sagemaker.describe_training_job(TrainingJobName=short)["WarmPoolStatus"]
        assert (pool["Status"], pool["ResourceRetainedBillableTimeInSeconds"]) == ("Terminated", 1)
        assert free_instances(clients.client("service-quotas"), clients.sagemaker, "ml.m5.xlarge", "warm pool") == 100


def test_unreadable_quotas_warn_once_and_the_launch_goes_on(clients, dataset, repository, tmp_path):
    data, artifacts = new_bucket(clients, "data"), new_bucket(clients, "art")
    upload_dataset(clients, dataset, data)
    with sandbox_quotas.deny_quotas(), emulator.sagemaker_service():
        result = invoke("train", "--yes", "--no-wait", *overrides(tmp_path, dataset, repository, data, artifacts))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: cannot read")]
    assert warnings == [
        "warning: cannot read the SageMaker quotas for ml.m5.xlarge (Service Quotas refused: AccessDeniedException); "
        "launching without the check"
    ]
    assert "launched " in result.stdout


def test_free_instances_of_a_type(clients):
    service_quotas = clients.client("service-quotas")
    with sandbox_quotas.set_quota("ml.p5.48xlarge for training job usage", 2):
        assert free_instances(service_quotas, clients.sagemaker, "ml.p5.48xlarge") == 2
    with sandbox_quotas.deny_quotas():
        assert free_instances(service_quotas, clients.sagemaker, "ml.p5.48xlarge") is None


@pytest.mark.parametrize(
    "extra,expected",
    [
        (
            ("job.max_cost_usd=0.1",),
            "this job can cost up to $0.46, over job.max_cost_usd=$0.10",
        ),
        (
            ("instance=ml.g4dn.xlarge", "trainer.gpus=1", "trainer.precision=bf16-mixed"),
            "trainer.precision=bf16-mixed needs an Ampere or newer GPU",
        ),
        (
            ("instance=ml.g4dn.xlarge", "trainer.gpus=1", "model.net.width=512", "trainer.batch_size=4096"),
            "the model needs ~4",
        ),
        (
            ("model=mlp", "dataset.image_shape=[3,32,32]"),
            "model.net=project.training.models.MLP cannot take dataset=mnist's",
        ),
        (("model.net._target_=no_such_package.models.Net",), "cannot import module no_such_package.models"),
    ],
)
def test_launches_the_instance_cannot_afford_or_run_are_refused(
    extra, expected, clients, dataset, repository, tmp_path
):
    line = refused_launch(clients, tmp_path, dataset, repository, *extra)
    assert expected in line, line


def test_prices_refresh_the_catalog_from_the_price_list(composed, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    env = dict(os.environ)
    with PriceListServer(fixture_products(), throttle=1) as server:
        env["AWS_ENDPOINT_URL"] = server.url
        result = invoke("prices", "--region", "us-east-1", "--catalog", str(conf / "instance"), env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "retrying GetProducts (attempt 2 of 5) after ThrottlingException" in result.stderr
    assert server.requests[-1]["Filters"] == prices.training_filters("us-east-1")
    assert len(server.requests) >= 3  # the throttled one, then every page
    assert "ml.p5.48xlarge: $113.07/h -> $63.3/h (us-east-1, " in result.stdout
    assert "warning: ml.p3.2xlarge has no on-demand training price in us-east-1; its file is unchanged" in result.stdout
    today = date.today().isoformat()
    p5 = composed(instance="ml.p5.48xlarge", conf_dir=conf).instance
    assert (p5.price_per_hour, p5.price_region, p5.price_date) == (63.3, "us-east-1", today)
    assert "AmazonSageMaker USE1-Train:ml.p5.48xlarge on-demand" in p5.price_source
    assert (conf / "instance" / "ml.p3.2xlarge.yaml").read_text() == (
        ROOT / "conf/instance/ml.p3.2xlarge.yaml"
    ).read_text()
    with PriceListServer(fixture_products()) as server:
        env["AWS_ENDPOINT_URL"] = server.url
        result = invoke("prices", "--region", "us-west-2", "--catalog", str(conf / "instance"), env=env)
    assert result.returncode == 0, result.stderr
    g5 = composed(instance="ml.g5.xlarge", conf_dir=conf).instance
    assert (g5.price_per_hour, g5.price_region) == (1.5, "us-west-2")


def test_prices_refused_change_nothing(tmp_path):
    catalog = tmp_path / "instance"
    shutil.copytree(ROOT / "conf" / "instance", catalog)
    before = {p.name: p.read_text() for p in catalog.iterdir()}
    env = dict(os.environ)
    with PriceListServer(fixture_products(), refuse=True) as server:
        env["AWS_ENDPOINT_URL"] = server.url
        line = one_error_line(invoke("prices", "--catalog", str(catalog), env=env))
    assert "Price List GetProducts on the AWS Price List API in us-east-1 refused: AccessDeniedException" in line
    assert "pricing:GetProducts" in line
    with PriceListServer(fixture_products()) as server:
        env["AWS_ENDPOINT_URL"] = server.url
        line = one_error_line(invoke("prices", "--region", "eu-central-1", "--catalog", str(catalog), env=env))
    assert "lists no SageMaker training prices for region 'eu-central-1'" in line
    assert {p.name: p.read_text() for p in catalog.iterdir()} == before


# --- invoke why ----------------------------------------------------------------------------------


def put_log(clients, stream: str, lines: list[str]) -> None:
    """One host's log stream, as the SageMaker agent writes it."""
    with contextlib.suppress(clients.logs.exceptions.ResourceAlreadyExistsException):
        clients.logs.create_log_group(logGroupName=LOG_GROUP)
    clients.logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    now = int(time.time() * 1000)
    events = [{"timestamp": now + i, "message": line} for i, line in enumerate(lines)]
    clients.logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=events)


def test_why_reads_each_hosts_log_and_names_the_host_that_failed_first(clients, dataset, repository, tmp_path):
    name = f"cli-why-{uuid.uuid4().hex[:6]}"
    create_job(clients, name, "cli-never-art")
    progress = [f"epoch 1/3 step {i}/300 (1%): 900 samples/s" for i in range(150)]
    # Text as two GPU hosts leave it (tests/test_triage.py says where it was recorded): rank 1 ran out
    # of GPU memory, so rank 0 waited in its all-reduce until NCCL's watchdog gave up.
    put_log(clients, f"{name}/algo-1-1764742500", [*progress, *NCCL_TIMEOUT])
    put_log(clients, f"{name}/algo-2-1764742501", [*progress, CUDA_OOM])
    record.finish_job(clients.sagemaker, name, record.Outcome("Failed", failure_reason="AlgorithmError: exit code: 1"))
    result = invoke("why", name, *overrides(tmp_path, dataset, repository, "cli-never-data", "cli-never-art"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"job {name} Failed: AlgorithmError: exit code: 1"
    assert lines[1] == "cause: a GPU ran out of memory on algo-2"
    assert lines[2].startswith("fix: lower trainer.batch_size")
    assert lines[3].startswith("evidence: algo-2: [rank1]: torch.OutOfMemoryError: CUDA out of memory.")
    assert lines[4] == (
        f"log: https://{REGION}.console.aws.amazon.com/cloudwatch/home?region={REGION}#logsV2:log-groups/log-group/"
        f"$252Faws$252Fsagemaker$252FTrainingJobs/log-events/{name}$252Falgo-2-1764742501"
    )


def test_why_of_a_capacity_failure_without_logs_links_the_jobs_streams(clients, dataset, repository, tmp_path):
    base = f"cli-why-{uuid.uuid4().hex[:6]}"
    name = f"{base}-20261203-063500-001-abcd"
    create_job(clients, name, "cli-never-art")
    record.finish_job(clients.sagemaker, name, record.Outcome("Failed", failure_reason=CAPACITY))
    args = overrides(tmp_path, dataset, repository, "cli-never-data", "cli-never-art", **{"job.base_name": base})
    with emulator.sagemaker_service():  # ListTrainingJobs as the service answers it
        result = invoke("why", *args)  # no job named: the latest of job.base_name
    assert result.returncode == 0, result.stderr
    assert f"cause: SageMaker had no ml.m5.xlarge capacity in {REGION} when the job started" in result.stdout
    assert f"$3FlogStreamNameFilter$3D{name}\n" in result.stdout


def test_why_of_no_job_or_an_unknown_one_is_one_line(dataset, repository, tmp_path):
    base = f"cli-none-{uuid.uuid4().hex[:6]}"
    args = overrides(tmp_path, dataset, repository, "cli-never-data", "cli-never-art", **{"job.base_name": base})
    assert refusal("why", *args) == (f"error: no training jobs named {base}-*: launch one with `invoke train`")
    assert refusal("why", "no-such-job", *args) == (
        "error: no training job named 'no-such-job': `invoke status` lists recent jobs"
    )
