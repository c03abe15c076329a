"""The real terraform/ configuration: formatted, valid, free of checkov findings, and applied.

The apply runs once per session against a moto server over HTTP (tests/aws_fixtures.py);
each test here reads one part of the result back through boto3, as a user would see it in AWS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest

from project.infra import OUTPUT_NAMES, load_infra
from tests.aws_fixtures import (
    INSTALL_HINT,
    ROOT,
    TERRAFORM_DIR,
    cli_env,
    copy_configuration,
    create_with_boto3,
    run_terraform,
)

needs_terraform = pytest.mark.skipif(shutil.which("terraform") is None, reason=INSTALL_HINT)
CHECKOV_INSTALL = "python -m venv .venv-tools && .venv-tools/bin/pip install -r requirements-tools.txt"
ACCOUNT = "123456789012"  # moto's account
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"


def as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value)


@pytest.fixture(scope="module")
def outputs(terraform_applied) -> dict[str, object]:
    return terraform_applied[1]


@pytest.fixture(scope="module")
def role(outputs) -> dict:
    return boto3.client("iam").get_role(RoleName=str(outputs["role_arn"]).rsplit("/", 1)[1])["Role"]


# --- static checks ---------------------------------------------------------------------------


@needs_terraform
def test_configuration_is_formatted(tmp_path):
    run_terraform(TERRAFORM_DIR, cli_env(tmp_path), "fmt", "-check", "-diff", "-recursive", "-no-color")


@needs_terraform
def test_configuration_is_valid(tmp_path):
    workdir = copy_configuration(tmp_path / "terraform")
    env = cli_env(tmp_path)
    run_terraform(workdir, env, "init", "-backend=false", "-input=false", "-no-color")
    run_terraform(workdir, env, "validate", "-no-color")


def test_lock_file_pins_the_aws_provider_for_every_platform():
    lock = (TERRAFORM_DIR / ".terraform.lock.hcl").read_text()
    assert 'provider "registry.terraform.io/hashicorp/aws"' in lock
    assert re.search(r'version\s+=\s+"5\.100\.\d+"', lock)
    # zh: hashes are the registry's per-platform zip checksums (linux, darwin, windows, ...);
    # with only an h1: hash, `terraform init` fails on every platform but the one that made it.
    assert len(re.findall(r'"zh:[0-9a-f]{64}"', lock)) >= 10


def find_checkov() -> str | None:
    """CHECKOV_BIN, else the repository's .venv-tools, else checkov on PATH."""
    configured = os.environ.get("CHECKOV_BIN")
    if configured:
        if shutil.which(configured) is None:
            pytest.fail(f"CHECKOV_BIN={configured} is not an executable")
        return configured
    venv = ROOT / ".venv-tools" / "bin" / "checkov"
    return str(venv) if venv.exists() else shutil.which("checkov")


def test_checkov_finds_nothing_and_every_skip_is_justified():
    checkov = find_checkov()
    if checkov is None:
        pytest.skip(f"checkov not found: run `{CHECKOV_INSTALL}` (or set CHECKOV_BIN)")
    command = [checkov, "--directory", "terraform", "--framework", "terraform", "--skip-download", "--output", "json"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert (summary["failed"], failed, result.returncode) == (0, [], 0)
    assert summary["parsing_errors"] == 0 and summary["passed"] > 0
    for check in report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert reason and reason != "No comment provided", f"{check['check_id']} skipped without a reason"


# --- applied against moto --------------------------------------------------------------------


@needs_terraform
@pytest.mark.parametrize("name", ["data_bucket", "artifacts_bucket"])
def test_bucket_is_private_encrypted_and_versioned(outputs, name):
    s3, bucket = boto3.client("s3"), str(outputs[name])
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        flag: True for flag in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
    }
    ownership = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    encryption = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert encryption[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"  # SSE-S3 default
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"


@needs_terraform
@pytest.mark.parametrize("name", ["data_bucket", "artifacts_bucket"])
def test_bucket_policy_denies_insecure_transport(outputs, name):
    bucket = str(outputs[name])
    policy = json.loads(boto3.client("s3").get_bucket_policy(Bucket=bucket)["Policy"])
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] in ("*", {"AWS": "*"})
    assert as_list(statement["Action"]) == ["s3:*"]
    assert sorted(as_list(statement["Resource"])) == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@needs_terraform
@pytest.mark.parametrize("name", ["data_bucket", "artifacts_bucket"])
def test_bucket_lifecycle_aborts_uploads_and_expires_old_versions(outputs, name):
    rules = boto3.client("s3").get_bucket_lifecycle_configuration(Bucket=str(outputs[name]))["Rules"]
    by_id = {rule["ID"]: rule for rule in rules}
    assert all(rule["Status"] == "Enabled" for rule in rules)
    # The variables.tf defaults.
    assert by_id["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert by_id["expire-noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30


@needs_terraform
def test_repository_is_immutable_scanned_encrypted_and_pruned(outputs):
    ecr = boto3.client("ecr")
    name = str(outputs["repository_url"]).split("/", 1)[1]
    (repository,) = ecr.describe_repositories(repositoryNames=[name])["repositories"]
    assert repository["imageTagMutability"] == "IMMUTABLE"
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repository["encryptionConfiguration"]["encryptionType"] == "AES256"
    rules = json.loads(ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"])["rules"]
    selections = {rule["selection"]["tagStatus"]: rule["selection"] for rule in rules}
    assert selections["untagged"]["countType"] == "sinceImagePushed"
    assert selections["any"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 30}
    assert all(rule["action"] == {"type": "expire"} for rule in rules)


@needs_terraform
def test_role_trusts_only_sagemaker_of_this_account(role):
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and as_list(statement["Action"]) == ["sts:AssumeRole"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


@needs_terraform
def test_role_policy_is_least_privilege(outputs, role):
    iam = boto3.client("iam")
    assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    assert iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"] == ["training"]
    document = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="training")["PolicyDocument"]
    statements = document["Statement"]
    data, artifacts = (f"arn:aws:s3:::{outputs[name]}" for name in ("data_bucket", "artifacts_bucket"))
    repository = boto3.client("ecr").describe_repositories()["repositories"][0]["repositoryArn"]
    log_group = f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:{TRAINING_LOG_GROUP}"
    allowed_resources = {data, f"{data}/*", artifacts, f"{artifacts}/*", repository, log_group, f"{log_group}:*", "*"}
    granted: dict[str, set[str]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        resources = set(as_list(statement["Resource"]))
        assert resources <= allowed_resources, statement
        for action in as_list(statement["Action"]):
            assert "*" not in action and action != "iam:PassRole", statement
            granted.setdefault(action, set()).update(resources)
        if "*" in resources:  # only actions without resource-level permissions
            assert set(as_list(statement["Action"])) <= {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
        if "cloudwatch:PutMetricData" in as_list(statement["Action"]):
            assert statement["Condition"] == {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}
    data_actions = {action for action, resources in granted.items() if resources & {data, f"{data}/*"}}
    assert data_actions == {"s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"}  # read only
    assert {"s3:GetObject", "s3:PutObject"} <= {a for a, r in granted.items() if f"{artifacts}/*" in r}
    assert granted["ecr:BatchGetImage"] == granted["ecr:GetDownloadUrlForLayer"] == {repository}
    assert granted["logs:PutLogEvents"] == {log_group, f"{log_group}:*"}


@needs_terraform
def test_python_side_reads_the_outputs(terraform_applied):
    workdir, outputs, infra = terraform_applied
    assert set(OUTPUT_NAMES) <= set(outputs)
    assert load_infra(workdir) == infra
    assert infra.region == "us-east-1"
    assert infra.repository_url.startswith(f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/")
    assert infra.role_arn.startswith(f"arn:aws:iam::{ACCOUNT}:role/")
    assert infra.data_bucket.endswith(f"-data-{ACCOUNT}-us-east-1")
    # Config overrides win field by field over the outputs.
    assert load_infra(workdir, {"data_bucket": "existing-data", "role_arn": None}).data_bucket == "existing-data"


@needs_terraform
def test_working_copy_never_touches_terraform_dir(terraform_applied):
    workdir = terraform_applied[0]
    assert (workdir / "terraform.tfstate").exists() and (workdir / "moto_override.tf").exists()
    assert not list(Path(TERRAFORM_DIR).glob("*_override.tf"))


# --- what other tests use -------------------------------------------------------------------


def assert_resources_exist(infra) -> None:
    buckets = {bucket["Name"] for bucket in boto3.client("s3").list_buckets()["Buckets"]}
    assert {infra.data_bucket, infra.artifacts_bucket} <= buckets
    repositories = boto3.client("ecr").describe_repositories()["repositories"]
    assert infra.repository_url in {repo["repositoryUri"] for repo in repositories}
    assert infra.role_arn in {role["Arn"] for role in boto3.client("iam").list_roles()["Roles"]}


def test_aws_infra_points_at_existing_resources(aws_infra):
    assert_resources_exist(aws_infra)
    assert aws_infra.region == "us-east-1"


def test_boto3_fallback_makes_the_same_kinds_of_resources(moto_endpoint):
    infra = create_with_boto3(prefix="fallback-check")
    assert_resources_exist(infra)
    versioning = boto3.client("s3").get_bucket_versioning(Bucket=infra.data_bucket)
    assert versioning["Status"] == "Enabled"
