"""The AWS tasks on the command line against moto over real HTTP: refusals, bad names, logs, uploads.

Cheap fixtures: buckets, an ECR tag and job records made with boto3 in moto, named to the tasks
with aws.* overrides (no Terraform). Each task runs as `python -m invoke ...` in a subprocess,
the moto server lives in this test process. Refusals are real: moto answers 403 where a
bucket policy denies the request.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import pytest

from project.aws.session import aws_clients
from project.sagemaker_names import JOB_NAME
from project.sandbox import record
from project.sandbox import service as emulator
from project.sandbox.service import placeholder_manifest
from tests.cli import invoke, one_error_line
from tests.synthetic import write_dataset

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
    line = one_error_line(invoke("upload", *overrides(tmp_path, dataset, repository, data, data)))
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
    line = one_error_line(invoke("train", "--dry-run", *good, override))
    assert expected in line, line


# --- logs and names -----------------------------------------------------------------------------


def create_job(clients, name: str, artifacts: str) -> None:
    clients.sagemaker.create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/x:t",
            "TrainingInputMode": "File",
        },
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/cli-sagemaker",
        OutputDataConfig={"S3OutputPath": f"s3://{artifacts}/jobs"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
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
