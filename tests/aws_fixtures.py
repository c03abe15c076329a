"""Local AWS for the tests: a moto server over real HTTP, and the real terraform/ applied against it.

A pytest plugin (tests/conftest.py: `pytest_plugins = ["tests.aws_fixtures"]`). Session fixtures:

- moto_endpoint: "http://127.0.0.1:PORT", project.sandbox's endpoint (moto with S3 bucket-policy
  conditions evaluated); the session's AWS environment points at it.
- terraform_applied: (working copy of terraform/, outputs, Infra) after `terraform apply`
  against moto; `terraform destroy` runs at the end of the session.
- aws_infra: the Infra that SageMaker tests use: terraform_applied where terraform is
  installed, else the same resources made directly with boto3.

Every AWS call of the session is recorded (tests/aws_calls.py). Once Terraform has applied, each
test's tasks are judged after it against the policies Terraform rendered (_judged_by_iam): an AWS
call of a task that the launcher policy refuses, or a step of a job, model or transform job it
created that the execution role may not take, fails that test, naming the task, action, resource.

Terraform never runs in terraform/ itself: the *.tf files and the lock file are copied to a
tmp dir and a `moto_override.tf` there points the provider at moto. The provider comes from a
local filesystem mirror when there is one (TF_PLUGIN_MIRROR or a usual place), else the registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import pytest

from project.infra import Infra, load_infra, read_terraform_outputs
from tests import aws_calls

ROOT = Path(__file__).resolve().parent.parent
TERRAFORM_DIR = ROOT / "terraform"
PROVIDER = "registry.terraform.io/hashicorp/aws"
REGION = "us-east-1"
INSTALL_HINT = (
    "terraform is not installed: install Terraform >= 1.6 "
    "(https://developer.hashicorp.com/terraform/install, e.g. `apt-get install terraform` "
    "from apt.releases.hashicorp.com, or `brew install hashicorp/tap/terraform`)"
)
# Searched in order for <dir>/registry.terraform.io/hashicorp/aws; TF_PLUGIN_MIRROR comes first.
MIRROR_CANDIDATES = (
    Path("/opt/tf-plugins"),
    Path.home() / ".terraform.d" / "plugins",
    Path("/usr/share/terraform/plugins"),
)
# Every AWS API the configuration calls; each is sent to the local endpoint.
SERVICES = ("cloudwatch", "ecr", "iam", "kms", "logs", "s3", "sts")
# Tests leave objects and images behind; destroy must still remove the buckets and repository.
# The launcher policy is made so that tests read it back from IAM.
TEST_VARS = ("-var", "force_destroy=true", "-var", "create_launcher_policy=true")
TERRAFORM_TIMEOUT_S = 600


def find_plugin_mirror() -> Path | None:
    """A filesystem mirror holding hashicorp/aws, or None (Terraform then uses the registry)."""
    configured = os.environ.get("TF_PLUGIN_MIRROR")
    candidates = ([Path(configured)] if configured else []) + list(MIRROR_CANDIDATES)
    return next((path for path in candidates if (path / PROVIDER).is_dir()), None)


def write_cli_config(workdir: Path, mirror: Path) -> Path:
    """A Terraform CLI config that installs hashicorp/aws from the mirror and nothing else from it."""
    path = workdir / "cli.tfrc"
    path.write_text(
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f"    path    = {json.dumps(str(mirror))}\n"
        f'    include = ["{PROVIDER}"]\n'
        "  }\n"
        "  direct {\n"
        f'    exclude = ["{PROVIDER}"]\n'
        "  }\n"
        "}\n"
    )
    return path


def cli_env(workdir: Path) -> dict[str, str]:
    """Environment for any terraform command in tests: quiet, non-interactive, mirror if found."""
    env = dict(os.environ, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0")
    mirror = find_plugin_mirror()
    if mirror is not None:
        env["TF_CLI_CONFIG_FILE"] = str(write_cli_config(workdir, mirror))
    return env


def terraform_env(endpoint: str, workdir: Path) -> dict[str, str]:
    """Environment for terraform (or tflocal) against the local endpoint, never a real account."""
    env = cli_env(workdir)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        env.pop(name, None)
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_ENDPOINT_URL=endpoint,
        # No shared config or credentials file can point at a real account.
        AWS_CONFIG_FILE=str(workdir / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(workdir / "no-aws-credentials"),
        # tflocal: path-style S3 on a plain IP endpoint.
        S3_HOSTNAME=urlparse(endpoint).hostname or "localhost",
    )
    return env


def moto_override(endpoint: str) -> str:
    """HCL merged into the provider block: every service at the endpoint, path-style S3.

    Credentials come from terraform_env, so no key is ever written into a .tf file.
    """
    endpoints = "\n".join(f"    {service:<10} = {json.dumps(endpoint)}" for service in SERVICES)
    return (
        "# Generated by tests/aws_fixtures.py: the provider talks to a local moto server.\n"
        'provider "aws" {\n'
        "  s3_use_path_style           = true\n"
        "  skip_credentials_validation = true\n"
        "  skip_metadata_api_check     = true\n"
        "  skip_region_validation      = true\n"
        "  max_retries                 = 2 # fail fast when moto lacks an API\n"
        "\n"
        "  endpoints {\n"
        f"{endpoints}\n"
        "  }\n"
        "}\n"
    )


def copy_configuration(dest: Path) -> Path:
    """The *.tf files and lock file of terraform/ in dest: no state, tfvars or .terraform/ come along."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in TERRAFORM_DIR.glob("*.tf"):
        if not source.name.endswith("_override.tf"):
            shutil.copy2(source, dest / source.name)
    shutil.copy2(TERRAFORM_DIR / ".terraform.lock.hcl", dest / ".terraform.lock.hcl")
    return dest


def run_terraform(workdir: Path, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess:
    """`terraform -chdir=<workdir> <args>`; a failure fails the test with Terraform's own output."""
    command = ["terraform", f"-chdir={workdir}", *args]
    result = subprocess.run(
        command, env=dict(env), capture_output=True, text=True, timeout=TERRAFORM_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def require_terraform() -> None:
    if shutil.which("terraform") is None:
        pytest.skip(INSTALL_HINT)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> Iterator[str]:
    """The sandbox's endpoint (`invoke sandbox` serves the same one) on a free loopback port; for
    the session every AWS SDK call goes there. SageMaker is played only inside a test's
    `sagemaker_service()` block; outside it moto's SageMaker is as moto has it.
    """
    from project.sandbox.endpoint import Endpoint

    empty = tmp_path_factory.mktemp("no-aws-config")
    with pytest.MonkeyPatch.context() as patch, Endpoint("127.0.0.1", 0) as endpoint:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        patch.setenv("AWS_REGION", REGION)
        patch.setenv("AWS_ENDPOINT_URL", endpoint.url)
        patch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
        patch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
        # Every process of the session, the tasks' subprocesses included, records its AWS calls.
        patch.setenv(aws_calls.PLUGIN_ENV, aws_calls.PLUGIN)
        patch.setenv(aws_calls.RECORD_ENV, str(tmp_path_factory.mktemp("aws-calls") / "calls.jsonl"))
        yield endpoint.url


@pytest.fixture(scope="session")
def terraform_applied(moto_endpoint, tmp_path_factory) -> Iterator[tuple[Path, dict[str, object], Infra]]:
    """terraform/ applied against moto: (working copy, outputs, Infra); destroyed at session end."""
    require_terraform()
    workdir = copy_configuration(tmp_path_factory.mktemp("terraform"))
    (workdir / "moto_override.tf").write_text(moto_override(moto_endpoint))
    env = terraform_env(moto_endpoint, workdir)
    destroy = ("destroy", "-auto-approve", "-input=false", "-no-color", *TEST_VARS)
    run_terraform(workdir, env, "init", "-input=false", "-no-color")
    try:
        run_terraform(workdir, env, "apply", "-auto-approve", "-input=false", "-no-color", *TEST_VARS)
    except BaseException:
        # Clean up what a partial apply made; the apply failure is the error to report.
        subprocess.run(["terraform", f"-chdir={workdir}", *destroy], env=env, capture_output=True, check=False)
        raise
    infra = load_infra(workdir)
    outputs = read_terraform_outputs(workdir)
    RENDERED.append(rendered_policies(outputs))
    yield workdir, outputs, infra
    RENDERED.clear()
    run_terraform(workdir, env, *destroy)
    assert_destroyed(infra)


# The policies of the session's `terraform apply`, once it has run: what _judged_by_iam judges by.
RENDERED: list[aws_calls.Policies] = []


def rendered_policies(outputs: Mapping[str, object]) -> aws_calls.Policies:
    """The launcher policy and the execution role's policies as moto's IAM holds them after the apply."""
    import boto3

    iam = boto3.client("iam")
    arn = str(outputs["launcher_policy_arn"])
    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    launcher = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    role_arn = str(outputs["role_arn"])
    name = role_arn.rsplit("/", 1)[1]
    role = [
        iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]
    ]
    documents = [json.loads(d) if isinstance(d, str) else d for d in (launcher, *role)]
    return aws_calls.Policies(role_arn.split(":")[4], documents[:1], role_arn, documents[1:])


@pytest.fixture(autouse=True)
def _judged_by_iam(request) -> Iterator[None]:
    """After each test on the resources Terraform made (it asks for aws_infra or terraform_applied):
    its tasks' AWS calls, judged by the policies Terraform rendered.

    Per test, from the calls recorded during it: the verdict does not depend on which tests ran
    before or in what order. Tests on resources they make themselves are not judged: terraform/
    promises nothing for those.
    """
    path = os.environ.get(aws_calls.RECORD_ENV)
    start = Path(path).stat().st_size if path and Path(path).exists() else 0
    yield
    path = os.environ.get(aws_calls.RECORD_ENV)
    on_terraform = {"aws_infra", "terraform_applied"} & set(request.fixturenames)
    if not path or not on_terraform or not RENDERED:  # RENDERED is empty only where terraform is absent
        return
    problems = aws_calls.refusals(aws_calls.read_calls(Path(path), start), RENDERED[-1])
    if problems:
        pytest.fail("IAM would refuse what the tasks did:\n" + "\n".join(problems), pytrace=False)


def assert_destroyed(infra: Infra) -> None:
    """After `terraform destroy`: no bucket, repository or role of infra is left in moto."""
    import boto3

    buckets = {bucket["Name"] for bucket in boto3.client("s3").list_buckets()["Buckets"]}
    repositories = {repo["repositoryUri"] for repo in boto3.client("ecr").describe_repositories()["repositories"]}
    roles = {role["Arn"] for role in boto3.client("iam").list_roles()["Roles"]}
    left = ({infra.data_bucket, infra.artifacts_bucket} & buckets) | ({infra.repository_url} & repositories)
    left |= {infra.role_arn} & roles
    assert not left, f"terraform destroy left {sorted(left)}"


@pytest.fixture(scope="session")
def aws_infra(request, moto_endpoint) -> Infra:
    """Buckets, repository and role in moto: from Terraform, or from boto3 where terraform is absent."""
    if shutil.which("terraform") is not None:
        return request.getfixturevalue("terraform_applied")[2]
    return create_with_boto3()


def create_with_boto3(prefix: str = "lightning-boto3-fallback") -> Infra:
    """Fallback without terraform: the same kinds of resources, made with boto3 in moto.

    Every name starts with prefix (by default "...-boto3-fallback") so a test (or a person) can
    tell which path made them.
    The settings mirror terraform/ closely enough for SageMaker tests; test_terraform.py checks
    the real configuration, so this is not a second source of truth.
    """
    import boto3

    s3, ecr, iam, sts = (boto3.client(name, region_name=REGION) for name in ("s3", "ecr", "iam", "sts"))
    account = sts.get_caller_identity()["Account"]
    buckets = {name: f"{prefix}-{name}-{account}-{REGION}" for name in ("data", "artifacts")}
    for bucket in buckets.values():
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
    repository = ecr.create_repository(
        repositoryName=prefix, imageTagMutability="IMMUTABLE", imageScanningConfiguration={"scanOnPush": True}
    )["repository"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sagemaker.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": account},
                    "ArnLike": {"aws:SourceArn": f"arn:aws:sagemaker:{REGION}:{account}:training-job/*"},
                },
            }
        ],
    }
    role = iam.create_role(RoleName=f"{prefix}-sagemaker", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    return Infra(
        data_bucket=buckets["data"],
        artifacts_bucket=buckets["artifacts"],
        repository_url=repository["repositoryUri"],
        role_arn=role["Arn"],
        region=REGION,
    )
