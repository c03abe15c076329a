"""IAM on the default path: what the tasks call and what SageMaker does as the role, judged by the
policies Terraform renders (tests/iam_policy.py evaluates them as IAM does).

tests/aws_fixtures.py judges every test on Terraform's resources after it (_judged_by_iam). The
tests here drive the tasks a user runs that no other test runs on those resources (the launch's
account checks, a sweep, `invoke runs`, `invoke prices`), keep the role's Deep Learning Container
grant in step with the SageMaker SDK's image tables, and test the evaluator itself.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest

from project.aws import fit, image
from tests import aws_calls, cli
from tests.aws_fixtures import RENDERED, TERRAFORM_DIR
from tests.iam_policy import ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY, Request, decision
from tests.price_list import PriceListServer, fixture_products
from tests.requires import requires
from tests.synthetic import tiny_overrides, write_dataset

invoke = functools.partial(cli.invoke, timeout=300)

# --- the evaluator ----------------------------------------------------------------------------

POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::data/datasets/*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::data/datasets/secret/*"},
        {"Effect": "Allow", "NotAction": ["iam:*", "sts:*"], "Resource": "arn:aws:sagemaker:*:1:training-job/job-?"},
        {"Effect": "Allow", "Action": "ecr:BatchGetImage", "NotResource": "arn:aws:ecr:*:1:repository/private-*"},
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": "arn:aws:s3:::art",
            "Condition": {"StringLike": {"s3:prefix": ["code", "jobs/*"]}},
        },
        {
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": "arn:aws:iam::1:role/r",
            "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        },
        {
            "Effect": "Deny",
            "Action": "s3:ListBucket",
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:RequestedRegion": "eu-west-1"}},
        },
        {
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": "arn:aws:s3:::art/jobs/*",
            "Condition": {"StringEqualsIfExists": {"s3:x-amz-server-side-encryption": "AES256"}},
        },
    ],
}


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (Request("s3:GetObject", "arn:aws:s3:::data/datasets/mnist/a.gz"), ALLOWED),
        (Request("S3:getobject", "arn:aws:s3:::data/datasets/mnist/a.gz"), ALLOWED),  # actions: any case
        (Request("s3:GetObject", "arn:aws:s3:::Data/datasets/mnist/a.gz"), IMPLICIT_DENY),  # resources: exact case
        (Request("s3:GetObject", "arn:aws:s3:::data/datasets/secret/a.gz"), EXPLICIT_DENY),  # Deny wins
        (Request("s3:PutObject", "arn:aws:s3:::data/datasets/mnist/a.gz"), IMPLICIT_DENY),
        (Request("sagemaker:DescribeTrainingJob", "arn:aws:sagemaker:us-east-1:1:training-job/job-1"), ALLOWED),
        (Request("sagemaker:DescribeTrainingJob", "arn:aws:sagemaker:us-east-1:1:training-job/job-12"), IMPLICIT_DENY),
        (Request("iam:PassRole", "arn:aws:sagemaker:us-east-1:1:training-job/job-1"), IMPLICIT_DENY),  # NotAction
        (Request("ecr:BatchGetImage", "arn:aws:ecr:us-east-1:1:repository/public"), ALLOWED),
        (Request("ecr:BatchGetImage", "arn:aws:ecr:us-east-1:1:repository/private-x"), IMPLICIT_DENY),  # NotResource
        (Request("s3:ListBucket", "arn:aws:s3:::art", {"s3:prefix": "jobs/j1/output/"}), ALLOWED),
        (Request("s3:ListBucket", "arn:aws:s3:::art", {"s3:prefix": "code"}), ALLOWED),
        (Request("s3:ListBucket", "arn:aws:s3:::art", {"s3:prefix": "batch/x"}), IMPLICIT_DENY),
        (Request("s3:ListBucket", "arn:aws:s3:::art"), IMPLICIT_DENY),  # the key is absent: no match
        (
            Request("s3:ListBucket", "arn:aws:s3:::art", {"s3:prefix": "code", "aws:RequestedRegion": "eu-west-1"}),
            EXPLICIT_DENY,
        ),
        (Request("s3:PutObject", "arn:aws:s3:::art/jobs/m.tar.gz"), ALLOWED),  # IfExists: absent holds
        (
            Request("s3:PutObject", "arn:aws:s3:::art/jobs/m.tar.gz", {"s3:x-amz-server-side-encryption": "aws:kms"}),
            IMPLICIT_DENY,
        ),
        (Request("iam:PassRole", "arn:aws:iam::1:role/r", {"iam:PassedToService": "sagemaker.amazonaws.com"}), ALLOWED),
        (Request("iam:PassRole", "arn:aws:iam::1:role/r", {"iam:PassedToService": "ec2.amazonaws.com"}), IMPLICIT_DENY),
        (
            Request("iam:PassRole", "arn:aws:iam::1:role/other", {"iam:PassedToService": "sagemaker.amazonaws.com"}),
            IMPLICIT_DENY,
        ),
    ],
)
def test_the_evaluator_decides_as_iam_does(request_, expected):
    assert decision([POLICY], request_) == expected


def test_the_evaluator_refuses_what_it_cannot_evaluate():
    for statement in (
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/${aws:username}/*"},
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Condition": {"ForAnyValue:StringLike": {"k": "v"}}},
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "1.2.3.4"}}},
    ):
        with pytest.raises(NotImplementedError):
            decision([{"Statement": [statement]}], Request("s3:GetObject", "arn:aws:s3:::b/u/k", {"k": "v"}))


# --- the Deep Learning Containers the role may pull ---------------------------------------------


def terraform_dlc_accounts() -> dict[str, str]:
    text = (TERRAFORM_DIR / "dlc.tf").read_text()
    block = re.search(r"dlc_accounts = \{(.*?)\n  \}", text, re.DOTALL)
    assert block, "terraform/dlc.tf has no local dlc_accounts map"
    return dict(re.findall(r'"([a-z0-9-]+)"\s*=\s*"(\d{12})"', block.group(1)))


def test_terraform_knows_the_sdks_dlc_account_of_every_region():
    """terraform/dlc.tf's map is the SageMaker SDK's image tables, region for region."""
    wanted = image.dlc_accounts()
    block = "\n".join(f'    "{region}" = "{account}"' for region, account in wanted.items())
    assert terraform_dlc_accounts() == wanted, (
        "terraform/dlc.tf disagrees with the installed SageMaker SDK's image tables: replace its "
        f"dlc_accounts map with this and run `terraform fmt terraform`:\n  dlc_accounts = {{\n{block}\n  }}"
    )


def test_every_image_the_tool_can_choose_comes_from_the_mapped_account():
    """job.image=aws on a CPU and a GPU instance, and the newest serving image, in every region of
    the map: each comes from that region's account, from the two repositories the role may pull."""
    from sagemaker.core import image_uris

    from project.aws import deploy_image

    newest_serving = max(deploy_image.known_inference_versions(), key=image._version_tuple)
    for region, account in image.dlc_accounts().items():
        chosen = []
        for instance in ("ml.m5.xlarge", "ml.g5.xlarge"):
            try:
                chosen.append(image.aws_image(region, instance, None).uri)
            except image.ImageError:
                continue  # no such image there: the launch is refused before anything is pulled
        try:
            chosen.append(
                image_uris.retrieve(
                    "pytorch", region, newest_serving, instance_type="ml.m5.large", image_scope="inference"
                )
            )
        except ValueError:
            pass
        assert chosen, region
        for uri in chosen:
            arn = fit.repository_arn(uri)
            assert arn is not None and arn.split(":")[4] == account, uri
            assert arn.rsplit("/", 1)[1] in (image.DLC_REPOSITORY, image.DLC_INFERENCE_REPOSITORY), uri


@pytest.fixture(scope="module")
def rendered(terraform_applied) -> aws_calls.Policies:
    return RENDERED[-1]


@requires(terraform=True)
@pytest.mark.parametrize("kind", image.IMAGE_KINDS)
def test_the_role_may_pull_every_image_the_launch_checks(composed, kind, rendered, terraform_applied):
    """What `invoke train` asks IAM's simulator (fit.check_image_pull) is what the role allows, for
    every job.image choice, on a GPU and a CPU instance, and for the image endpoints serve on."""
    infra = terraform_applied[2]
    for instance in ("ml.g5.xlarge", "ml.m5.xlarge"):
        cfg = composed(f"job.image={kind}", f"instance={instance}")
        uri = image.job_image(cfg, infra.repository_url, infra.region).uri
        arn = fit.repository_arn(uri)
        assert arn is not None
        for action in fit.PULL_ACTIONS:
            assert decision(rendered.role, Request(action, arn)) == ALLOWED, (kind, uri, action)
    elsewhere = f"arn:aws:ecr:{infra.region}:111122223333:repository/{image.DLC_REPOSITORY}"
    assert decision(rendered.role, Request("ecr:BatchGetImage", elsewhere)) == IMPLICIT_DENY


@requires(terraform=True)
def test_the_role_may_pull_the_serving_image(rendered, terraform_applied):
    from project.aws import deploy_image

    region = terraform_applied[2].region
    for version in deploy_image.known_inference_versions():
        if image._version_tuple(version) >= (2, 1):
            from sagemaker.core import image_uris

            uri = image_uris.retrieve("pytorch", region, version, instance_type="ml.m5.large", image_scope="inference")
            assert decision(rendered.role, Request("ecr:BatchGetImage", fit.repository_arn(uri) or "")) == ALLOWED


# --- the tasks no other test runs on Terraform's resources ---------------------------------------


@requires(terraform=True)
def test_launch_checks_sweep_runs_and_prices_are_allowed(aws_infra, terraform_applied, tmp_path):
    """Driven here, judged after the test by _judged_by_iam; the calls this test needs judged are
    asserted to have been recorded, so a recorder that records nothing fails."""
    workdir = terraform_applied[0]
    name = f"iam-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "raw"
    files = write_dataset(folder, n_train=300, n_test=100)
    overrides = [
        *tiny_overrides(
            folder, files, tmp_path / "runs", **{"instance": "ml.m5.xlarge", "dataset.s3_prefix": f"datasets/{name}"}
        ),
        f"aws.terraform_dir={workdir}",
        f"job.base_name={name}",
    ]
    record = Path(os.environ[aws_calls.RECORD_ENV])
    start = record.stat().st_size if record.exists() else 0

    assert invoke("upload", *overrides).returncode == 0
    train = invoke("train", *overrides, "--dry-run")
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    # A sweep looks up the jobs it already ran (Search) before it asks; no terminal: nothing launched.
    sweep = invoke("train", *overrides, "model.lr=0.01,0.02", "--multirun")
    assert "pass --yes to launch" in cli.one_error_line(sweep)
    runs = invoke("runs", f"aws.terraform_dir={workdir}")
    assert runs.returncode == 0, runs.stderr[-2000:]
    catalog = tmp_path / "instance"
    shutil.copytree(TERRAFORM_DIR.parent / "conf" / "instance", catalog)
    with PriceListServer(fixture_products()) as server:
        prices = invoke("prices", "--catalog", str(catalog), env={**os.environ, "AWS_ENDPOINT_URL": server.url})
    assert prices.returncode == 0, prices.stderr[-2000:]

    made = {(c.who, c.operation) for c in aws_calls.read_calls(record, start) if c.is_task}
    for expected in [
        ("invoke upload", "PutObject"),
        ("invoke train", "ListServiceQuotas"),
        ("invoke train", "ListTrainingJobs"),
        ("invoke train", "SimulatePrincipalPolicy"),
        ("invoke train", "Search"),
        ("invoke runs", "Search"),
        ("invoke prices", "GetProducts"),
    ]:
        assert expected in made, (expected, sorted(made))
