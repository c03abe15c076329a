"""The real terraform/ configuration: formatted, valid, free of checkov findings, and applied.

The apply runs once per session against a moto server over HTTP (tests/aws_fixtures.py);
each test here reads one part of the result back through boto3, as a user would see it in AWS.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import boto3
import pytest
import yaml

from project.aws.async_endpoints import ASYNC_PREFIX
from project.aws.image import JobImage
from project.aws.infra import OUTPUT_NAMES, load_infra
from project.aws.plan import plan_job
from project.aws.staging import DRY_RUN_CODE_PREFIX, DRY_RUN_EXPIRY_DAYS
from project.core.sagemaker_names import LOG_GROUP  # the group the Terraform grants must name
from tests.aws_fixtures import (
    ROOT,
    TERRAFORM_DIR,
    cli_env,
    copy_configuration,
    create_with_boto3,
    run_terraform,
    terraform_env,
)
from tests.requires import find_dev_tool, requires

ACCOUNT = "123456789012"  # moto's account
SAGEMAKER = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}"
TRAINING_JOBS = f"{SAGEMAKER}:training-job/*"
SERVING = {f"{SAGEMAKER}:{kind}/*" for kind in ("model", "endpoint-config", "endpoint", "transform-job")}
REGISTRY = {f"{SAGEMAKER}:{kind}/*" for kind in ("model-package-group", "model-package")}
INFERENCE_IMAGE = "arn:aws:ecr:us-east-1:763104351884:repository/pytorch-inference"
TRAINING_IMAGE = "arn:aws:ecr:us-east-1:763104351884:repository/pytorch-training"  # job.image=aws
DATASET_CONFIGS = sorted((ROOT / "conf" / "dataset").glob("*.yaml"))


def as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def _wildcard(pattern: str) -> re.Pattern[str]:
    """An IAM Action/Resource pattern ("*" any run of characters, "?" one) as a regex."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.IGNORECASE)


def allows(document: dict, action: str, resource: str) -> bool:
    """Whether some Allow statement of document names action on resource (conditions not evaluated).

    Enough for these policies: they have no Deny and no NotAction/NotResource (asserted here).
    """
    statements = document["Statement"]
    for statement in [statements] if isinstance(statements, dict) else statements:
        assert statement["Effect"] == "Allow" and not {"NotAction", "NotResource"} & set(statement), statement
        actions, resources = as_list(statement["Action"]), as_list(statement["Resource"])
        if any(_wildcard(a).fullmatch(action) for a in actions) and any(
            _wildcard(r).fullmatch(resource) for r in resources
        ):
            return True
    return False


def statements_with(document: dict, action: str) -> list[dict]:
    return [s for s in document["Statement"] if action in as_list(s["Action"])]


@pytest.fixture(scope="module")
def outputs(terraform_applied) -> dict[str, object]:
    return terraform_applied[1]


@pytest.fixture(scope="module")
def role(outputs) -> dict:
    return boto3.client("iam").get_role(RoleName=str(outputs["role_arn"]).rsplit("/", 1)[1])["Role"]


@pytest.fixture(scope="module")
def training_policy(role) -> dict:
    return boto3.client("iam").get_role_policy(RoleName=role["RoleName"], PolicyName="training")["PolicyDocument"]


@pytest.fixture(scope="module")
def launcher_policy(outputs) -> dict:
    """The launcher policy as IAM holds it (the tests apply with create_launcher_policy=true)."""
    iam = boto3.client("iam")
    policy = iam.get_policy(PolicyArn=str(outputs["launcher_policy_arn"]))["Policy"]
    version = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])["PolicyVersion"]
    document = version["Document"]
    return json.loads(document) if isinstance(document, str) else document


@pytest.fixture(scope="module")
def arns(outputs) -> dict[str, str]:
    name = str(outputs["repository_url"]).split("/", 1)[1]  # the moto server also holds other tests' repositories
    repository = boto3.client("ecr").describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryArn"]
    return {
        "data": f"arn:aws:s3:::{outputs['data_bucket']}",
        "artifacts": f"arn:aws:s3:::{outputs['artifacts_bucket']}",
        "repository": repository,
        "role": str(outputs["role_arn"]),
        "log_group": f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:{LOG_GROUP}",
    }


# --- static checks ---------------------------------------------------------------------------


@requires(terraform=True)
def test_configuration_is_formatted(tmp_path):
    run_terraform(TERRAFORM_DIR, cli_env(tmp_path), "fmt", "-check", "-diff", "-recursive", "-no-color")


@requires(terraform=True)
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


@requires(dev_tool="checkov")
def test_checkov_finds_nothing_and_every_skip_is_justified():
    checkov = find_dev_tool("checkov")
    command = [checkov, "--directory", "terraform", "--framework", "terraform", "--skip-download", "--output", "json"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert (summary["failed"], failed, result.returncode) == (0, [], 0)
    assert summary["parsing_errors"] == 0 and summary["passed"] > 0
    # checkov silently skips its IAM checks on a document it cannot resolve (a `for` expression in
    # resources did that): each identity policy must really have been checked.
    checked = {c["resource"] for c in report["results"]["passed_checks"] if c["check_id"] == "CKV_AWS_111"}
    assert {"aws_iam_policy_document.training", "aws_iam_policy_document.launcher"} <= checked
    for check in report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert reason and reason != "No comment provided", f"{check['check_id']} skipped without a reason"


# --- applied against moto --------------------------------------------------------------------


@requires(terraform=True)
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


@requires(terraform=True)
@pytest.mark.parametrize("name", ["data_bucket", "artifacts_bucket"])
def test_bucket_policy_denies_insecure_transport(outputs, name):
    bucket = str(outputs[name])
    policy = json.loads(boto3.client("s3").get_bucket_policy(Bucket=bucket)["Policy"])
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] in ("*", {"AWS": "*"})
    assert as_list(statement["Action"]) == ["s3:*"]
    assert sorted(as_list(statement["Resource"])) == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@requires(terraform=True)
@pytest.mark.parametrize("name", ["data_bucket", "artifacts_bucket"])
def test_bucket_lifecycle_aborts_uploads_and_expires_old_versions_and_delete_markers(outputs, name):
    rules = boto3.client("s3").get_bucket_lifecycle_configuration(Bucket=str(outputs[name]))["Rules"]
    by_id = {rule["ID"]: rule for rule in rules}
    assert all(rule["Status"] == "Enabled" for rule in rules)
    # The variables.tf defaults.
    assert by_id["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert by_id["expire-noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    # Once its noncurrent versions are gone, a delete marker is all that is left of an object: remove it too.
    assert by_id["remove-expired-delete-markers"]["Expiration"] == {"ExpiredObjectDeleteMarker": True}
    assert by_id["remove-expired-delete-markers"]["Filter"] in ({}, {"Prefix": ""})


@requires(terraform=True)
def test_staged_code_expires_in_the_artifacts_bucket_only(outputs):
    s3 = boto3.client("s3")
    artifacts = {
        r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=str(outputs["artifacts_bucket"]))["Rules"]
    }
    assert artifacts["expire-staged-code"]["Filter"] == {"Prefix": "code/"}
    assert artifacts["expire-staged-code"]["Expiration"] == {"Days": 30}  # code_retention_days
    # A dry run's bundle, where `invoke train --dry-run` stages it: gone after a day, versions too.
    dry_run = artifacts["expire-dry-run-code"]
    assert dry_run["Filter"] == {"Prefix": f"{DRY_RUN_CODE_PREFIX}/"} and dry_run["Status"] == "Enabled"
    assert dry_run["Expiration"] == {"Days": DRY_RUN_EXPIRY_DAYS}
    assert dry_run["NoncurrentVersionExpiration"]["NoncurrentDays"] == DRY_RUN_EXPIRY_DAYS
    # An async endpoint's requests and answers (project/aws/async_endpoints.py): a day, versions too.
    queued = artifacts["expire-async-requests"]
    assert queued["Filter"] == {"Prefix": f"{ASYNC_PREFIX}/"} and queued["Expiration"] == {"Days": 1}
    assert queued["NoncurrentVersionExpiration"]["NoncurrentDays"] == 1
    data = s3.get_bucket_lifecycle_configuration(Bucket=str(outputs["data_bucket"]))["Rules"]
    assert not {"expire-staged-code", "expire-dry-run-code", "expire-async-requests"} & {rule["ID"] for rule in data}


@requires(terraform=True)
def test_terraform_tags_are_spelled_like_the_job_tags(composed, terraform_applied):
    """Cost-allocation tags are case-sensitive: `Project` on the buckets and `project` on the jobs are two tags."""
    bucket_tags = {
        t["Key"]: t["Value"]
        for t in boto3.client("s3").get_bucket_tagging(Bucket=str(terraform_applied[1]["data_bucket"]))["TagSet"]
    }
    image = JobImage("custom", f"{terraform_applied[2].repository_url}:abc1234", None)
    job_tags = plan_job(composed(), terraform_applied[2], image).tags
    assert bucket_tags["project"] == job_tags["project"]
    # Every key in the job tags' spelling (lowercase, hyphens), so no key differs from another by case only.
    assert all(re.fullmatch(r"[a-z][a-z0-9-]*", key) for key in (*bucket_tags, *job_tags)), (bucket_tags, job_tags)


@requires(terraform=True)
def test_a_capitalised_default_tag_key_is_refused(terraform_applied, moto_endpoint):
    workdir = terraform_applied[0]
    command = ["terraform", f"-chdir={workdir}", "plan", "-input=false", "-no-color", "-var", 'tags={Project="x"}']
    env = terraform_env(moto_endpoint, workdir)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    assert "spell the keys project and managed-by in lowercase" in " ".join(result.stderr.split())


@requires(terraform=True)
def test_enable_mlflow_plans_a_tracking_server_that_works_as_the_execution_role(terraform_applied, moto_endpoint):
    """moto has no SageMaker MLflow API, so the tracking server is checked as planned, not applied."""
    workdir, outputs, _ = terraform_applied
    env = terraform_env(moto_endpoint, workdir)
    plan = ["plan", "-input=false", "-no-color", "-var", "enable_mlflow=true", "-out", "mlflow.tfplan"]
    subprocess.run(["terraform", f"-chdir={workdir}", *plan], env=env, capture_output=True, timeout=300, check=True)
    shown = subprocess.run(
        ["terraform", f"-chdir={workdir}", "show", "-json", "mlflow.tfplan"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    changes = {c["address"]: c["change"] for c in json.loads(shown.stdout)["resource_changes"]}
    server = changes["aws_sagemaker_mlflow_tracking_server.this[0]"]
    assert server["actions"] == ["create"]
    assert server["after"]["role_arn"] == outputs["role_arn"] and server["after"]["tracking_server_size"] == "Small"
    assert server["after"]["artifact_store_uri"] == f"s3://{outputs['artifacts_bucket']}/mlflow/"
    # the execution role and the launcher get the MLflow grants once the server's ARN is known
    assert changes["aws_iam_role_policy.this"]["actions"] == ["update"]
    assert outputs.get("mlflow_tracking_server_arn") is None  # off by default


@requires(terraform=True)
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


@requires(terraform=True)
def test_role_trusts_only_training_jobs_and_served_models_of_this_account(role):
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and as_list(statement["Action"]) == ["sts:AssumeRole"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    # Confused deputy: SageMaker assumes the role only for a training job, model, endpoint or
    # transform job of this account.
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    assert set(statement["Condition"]) == {"StringEquals", "ArnLike"}
    assert set(as_list(statement["Condition"]["ArnLike"]["aws:SourceArn"])) == {
        TRAINING_JOBS,
        *(arn for arn in SERVING if ":endpoint-config/" not in arn),
    }


@requires(terraform=True)
def test_role_has_only_the_training_policy(role):
    iam = boto3.client("iam")
    assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    assert iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"] == ["training"]


@requires(terraform=True)
@pytest.mark.parametrize(
    ("action", "bucket", "key", "allowed"),
    [
        ("s3:GetObject", "data", "datasets/mnist/train-images-idx3-ubyte.gz", True),
        ("s3:GetObject", "data", "elsewhere/file", False),
        ("s3:PutObject", "data", "datasets/mnist/train-images-idx3-ubyte.gz", False),
        ("s3:GetObject", "artifacts", "code/lightning/lightning-2026/input/code/sm_entry.py", True),
        ("s3:PutObject", "artifacts", "code/lightning/lightning-2026/input/code/sm_entry.py", False),
        ("s3:PutObject", "artifacts", "jobs/lightning-2026/output/model.tar.gz", True),
        ("s3:PutObject", "artifacts", "checkpoints/lightning-0123abcd/last.ckpt", True),
        ("s3:GetObject", "artifacts", "checkpoints/lightning-0123abcd/last.ckpt", True),  # resume
        ("s3:PutObject", "artifacts", "elsewhere/file", False),
        ("s3:DeleteObject", "artifacts", "checkpoints/lightning-0123abcd/last.ckpt", False),
        ("s3:PutObjectAcl", "artifacts", "jobs/lightning-2026/output/model.tar.gz", False),
        ("s3:GetObject", "artifacts", "models/seed42/model.tar.gz", True),  # a local run, deployed
        ("s3:PutObject", "artifacts", "models/seed42/model.tar.gz", False),
        ("s3:GetObject", "artifacts", "batch/seed42/seed42-2026/input/a.png", True),  # batch transform
        ("s3:PutObject", "artifacts", "batch/seed42/seed42-2026/output/a.png.out", True),
        ("s3:PutObject", "artifacts", "batch/seed42/seed42-2026/input/a.png", False),
        ("s3:GetObject", "artifacts", "async/digits/input/0a1b.png", True),  # an async endpoint's request
        ("s3:PutObject", "artifacts", "async/digits/output/0a1b.out", True),  # its answer
        ("s3:PutObject", "artifacts", "async/digits/failure/0a1b-error.out", True),  # or its refusal
        ("s3:PutObject", "artifacts", "async/digits/input/0a1b.png", False),
    ],
)
def test_role_writes_only_job_output_and_checkpoints(training_policy, arns, action, bucket, key, allowed):
    assert allows(training_policy, action, f"{arns[bucket]}/{key}") is allowed


@requires(terraform=True)
def test_role_policy_is_least_privilege(training_policy, arns):
    data, artifacts, repository, log_group = (arns[k] for k in ("data", "artifacts", "repository", "log_group"))
    granted: dict[str, set[str]] = {}
    for statement in training_policy["Statement"]:
        resources = set(as_list(statement["Resource"]))
        for action in as_list(statement["Action"]):
            assert "*" not in action and action != "iam:PassRole", statement
            granted.setdefault(action, set()).update(resources)
        if "*" in resources:  # only actions without resource-level permissions
            assert set(as_list(statement["Action"])) <= {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}
        if "cloudwatch:PutMetricData" in as_list(statement["Action"]):
            assert statement["Condition"] == {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}
    assert granted["s3:ListBucket"] == {data, artifacts}  # names only; objects are scoped by prefix below
    assert granted["s3:GetObject"] == {
        f"{data}/datasets/*",
        *(f"{artifacts}/{p}/*" for p in ("code", "jobs", "checkpoints", "models")),
        f"{artifacts}/batch/*/input/*",
        f"{artifacts}/async/*/input/*",
    }
    assert granted["s3:PutObject"] == {
        f"{artifacts}/jobs/*",
        f"{artifacts}/checkpoints/*",
        f"{artifacts}/batch/*/output/*",
        f"{artifacts}/async/*/output/*",
        f"{artifacts}/async/*/failure/*",
    }
    assert (
        granted["ecr:BatchGetImage"]
        == granted["ecr:GetDownloadUrlForLayer"]
        == {
            repository,
            TRAINING_IMAGE,
            INFERENCE_IMAGE,
        }
    )
    serving_logs = {
        f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/aws/sagemaker/{g}/*" for g in ("Endpoints", "TransformJobs")
    }
    assert granted["logs:PutLogEvents"] == {log_group, f"{log_group}:*", *serving_logs}


@requires(terraform=True)
@pytest.mark.parametrize("dataset", DATASET_CONFIGS, ids=lambda path: path.stem)
def test_every_dataset_prefix_is_readable_by_jobs_and_writable_by_the_launcher(
    training_policy, launcher_policy, arns, dataset
):
    prefix = yaml.safe_load(dataset.read_text())["s3_prefix"].strip("/")
    key = f"{arns['data']}/{prefix}/file.gz"
    assert allows(training_policy, "s3:GetObject", key), f"{dataset.name}: s3_prefix outside the dataset_prefix"
    assert allows(launcher_policy, "s3:PutObject", key)


# --- the launcher's policy (a person or CI) ---------------------------------------------------


@requires(terraform=True)
def test_launcher_policy_output_is_the_policy_iam_holds(outputs, launcher_policy):
    assert json.loads(str(outputs["launcher_policy_json"])) == launcher_policy


@requires(terraform=True)
def test_launcher_passes_only_the_execution_role_and_only_to_sagemaker(launcher_policy, arns):
    (statement,) = statements_with(launcher_policy, "iam:PassRole")
    assert as_list(statement["Action"]) == ["iam:PassRole"] and as_list(statement["Resource"]) == [arns["role"]]
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    (linked,) = statements_with(launcher_policy, "iam:CreateServiceLinkedRole")  # deploy --async's scaling
    assert as_list(linked["Resource"]) == [
        f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
        "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
    ]
    assert linked["Condition"] == {
        "StringEquals": {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}
    }
    assert not any(
        a.startswith("iam:")
        for s in launcher_policy["Statement"]
        for a in as_list(s["Action"])
        if s is not statement and s is not linked
    )


@requires(terraform=True)
def test_launcher_manages_training_jobs_serving_and_their_tags_only(launcher_policy):
    granted: dict[str, set[str]] = {}
    for statement in launcher_policy["Statement"]:
        for action in as_list(statement["Action"]):
            if action.startswith("sagemaker:"):
                granted.setdefault(action, set()).update(as_list(statement["Resource"]))
    on_jobs = {"CreateTrainingJob", "DescribeTrainingJob", "StopTrainingJob"}
    serving = {"CreateModel", "DescribeModel", "DeleteModel", "CreateEndpointConfig", "DescribeEndpointConfig"}
    serving |= {"DeleteEndpointConfig", "CreateEndpoint", "DescribeEndpoint", "UpdateEndpoint", "DeleteEndpoint"}
    serving |= {"InvokeEndpoint", "InvokeEndpointAsync", "CreateTransformJob", "DescribeTransformJob"}
    serving |= {"UpdateEndpointWeightsAndCapacities"}  # invoke traffic (A/B variants)
    registry = {"CreateModelPackageGroup", "DescribeModelPackageGroup", "CreateModelPackage"}
    registry |= {"DescribeModelPackage", "UpdateModelPackage", "ListModelPackages"}  # invoke register, models, approve
    assert granted == (
        {f"sagemaker:{a}": {TRAINING_JOBS} for a in on_jobs}
        | {f"sagemaker:{a}": SERVING for a in serving}
        | {f"sagemaker:{a}": REGISTRY for a in registry}
        | {"sagemaker:AddTags": {TRAINING_JOBS, *SERVING, *REGISTRY}, "sagemaker:ListTags": {TRAINING_JOBS, *SERVING}}
        | {"sagemaker:ListTrainingJobs": {"*"}, "sagemaker:ListEndpoints": {"*"}, "sagemaker:Search": {"*"}}
    )


@requires(terraform=True)
@pytest.mark.parametrize(
    ("action", "bucket", "key", "allowed"),
    [
        ("s3:PutObject", "data", "datasets/mnist/train-images-idx3-ubyte.gz", True),  # invoke upload
        ("s3:GetObject", "data", "datasets/mnist/train-images-idx3-ubyte.gz", True),  # its checksum check
        ("s3:PutObject", "data", "elsewhere/file", False),
        ("s3:PutObject", "artifacts", "code/lightning/lightning-2026/input/code/sm_entry.py", True),  # the SDK stages
        ("s3:GetObject", "artifacts", "jobs/lightning-2026/output/model.tar.gz", True),  # invoke fetch
        ("s3:GetObject", "artifacts", "checkpoints/lightning-0123abcd/last.ckpt", True),
        ("s3:PutObject", "artifacts", "jobs/lightning-2026/output/model.tar.gz", False),
        ("s3:PutObject", "artifacts", "checkpoints/lightning-0123abcd/last.ckpt", False),
        ("s3:DeleteObject", "artifacts", "code/lightning/lightning-2026/input/code/sm_entry.py", False),
        ("s3:PutObject", "artifacts", "models/seed42/model.tar.gz", True),  # invoke deploy of a local run
        ("s3:PutObject", "artifacts", "batch/seed42/seed42-2026/input/a.png", True),  # invoke batch-predict
        ("s3:GetObject", "artifacts", "batch/seed42/seed42-2026/output/a.png.out", True),
        ("s3:DeleteObject", "artifacts", "models/seed42/model.tar.gz", False),
        ("s3:PutObject", "artifacts", "async/digits/input/0a1b.png", True),  # predict --endpoint, async
        ("s3:GetObject", "artifacts", "async/digits/output/0a1b.out", True),
        ("s3:GetObject", "artifacts", "async/digits/failure/0a1b-error.out", True),
    ],
)
def test_launcher_s3_access_follows_the_prefixes(launcher_policy, arns, action, bucket, key, allowed):
    assert allows(launcher_policy, action, f"{arns[bucket]}/{key}") is allowed


@requires(terraform=True)
def test_launcher_lists_only_the_artifact_prefixes_it_reads(launcher_policy, arns):
    (statement,) = [
        s for s in statements_with(launcher_policy, "s3:ListBucket") if arns["artifacts"] in as_list(s["Resource"])
    ]
    # "code" without a slash: the SDK checks the bucket with list_objects_v2(Prefix="code").
    prefixes = as_list(statement["Condition"]["StringLike"]["s3:prefix"])
    assert sorted(prefixes) == ["async/*", "batch/*", "checkpoints/*", "code", "code/*", "jobs/*"]


@requires(terraform=True)
def test_launcher_pushes_to_this_repository_and_reads_the_training_logs(launcher_policy, arns):
    push = ["InitiateLayerUpload", "UploadLayerPart", "CompleteLayerUpload", "PutImage", "BatchCheckLayerAvailability"]
    assert all(allows(launcher_policy, f"ecr:{a}", arns["repository"]) for a in push)
    other = arns["repository"].rsplit("/", 1)[0] + "/another-repository"
    assert not allows(launcher_policy, "ecr:PutImage", other)
    assert allows(launcher_policy, "ecr:GetAuthorizationToken", "*")
    stream = f"{arns['log_group']}:log-stream:lightning-2026/algo-1-1700000000"
    assert allows(launcher_policy, "logs:GetLogEvents", stream)
    assert allows(launcher_policy, "logs:DescribeLogStreams", f"{arns['log_group']}:*")
    assert not allows(
        launcher_policy, "logs:GetLogEvents", f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:other:log-stream:x"
    )
    assert not any(
        a.startswith("logs:") and not a.startswith(("logs:Get", "logs:Describe"))
        for s in launcher_policy["Statement"]
        for a in as_list(s["Action"])
    )
    wildcard = {a for s in launcher_policy["Statement"] if "*" in as_list(s["Resource"]) for a in as_list(s["Action"])}
    # Actions without resource-level permissions.
    assert wildcard == {
        "ecr:GetAuthorizationToken",
        "sagemaker:ListTrainingJobs",
        "sagemaker:ListEndpoints",
        "cloudwatch:GetMetricStatistics",
        "sagemaker:Search",
        "pricing:GetProducts",
        "servicequotas:ListServiceQuotas",
        "servicequotas:ListAWSDefaultServiceQuotas",
        # invoke train's network check of a job with an fsx:// or efs:// channel (project/aws/vpc.py)
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeRouteTables",
        "ec2:DescribeVpcEndpoints",
        "ec2:DescribeNetworkInterfaces",
        "fsx:DescribeFileSystems",
    }
    efs = f"arn:aws:elasticfilesystem:us-east-1:{ACCOUNT}:file-system/fs-89abcdef"
    assert allows(launcher_policy, "elasticfilesystem:DescribeMountTargets", efs)
    assert not allows(launcher_policy, "elasticfilesystem:DescribeMountTargets", efs.replace(ACCOUNT, "210987654321"))


# --- parliament: every policy document linted --------------------------------------------------

# Findings accepted, each with its reason: (document, issue, detail). Any other finding fails.
PARLIAMENT_ALLOWED = {
    # parliament reads every document as an identity policy; a role's trust policy is a resource
    # policy of the role, whose statements never carry Resource (IAM rejects one that does).
    ("trust", "MALFORMED", "Statement contains neither Resource nor NotResource"),
}


def parliament_findings(parliament: str, document: dict) -> list[dict]:
    """parliament's findings for one policy document (given on stdin: with --file it refuses a non-tty stdin)."""
    result = subprocess.run(
        [parliament, "--json"], input=json.dumps(document), capture_output=True, text=True, timeout=120, check=False
    )
    assert not result.stderr.strip(), result.stderr
    findings = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode == (1 if findings else 0), result  # a crash is not a clean bill
    return findings


@requires(terraform=True, dev_tool="parliament")
def test_parliament_finds_nothing_in_any_policy_document(role, training_policy, launcher_policy, outputs):
    parliament = find_dev_tool("parliament")
    s3 = boto3.client("s3")
    buckets = ("data_bucket", "artifacts_bucket")
    documents = {
        "trust": role["AssumeRolePolicyDocument"],
        "training": training_policy,
        "launcher": launcher_policy,
        **{name: json.loads(s3.get_bucket_policy(Bucket=str(outputs[name]))["Policy"]) for name in buckets},
    }
    found = {name: parliament_findings(parliament, document) for name, document in documents.items()}
    unexpected = [
        f"{name}: {f['issue']} {f['detail']} at {f['location']}"
        for name, findings in found.items()
        for f in findings
        if (name, f["issue"], str(f["detail"])) not in PARLIAMENT_ALLOWED
    ]
    assert unexpected == []


@requires(dev_tool="parliament")
def test_parliament_reports_what_it_is_asked_to_find():
    """The linter runs and reports: an object action on a bucket ARN is a finding."""
    parliament = find_dev_tool("parliament")
    bad = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b"}],
    }
    assert [f["issue"] for f in parliament_findings(parliament, bad)] == ["RESOURCE_MISMATCH"]


@requires(terraform=True)
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


@requires(terraform=True)
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
