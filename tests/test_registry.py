"""The model registry through the real CLI: `invoke register`, `models`, `approve`, `reject`,
`invoke deploy model:latest`, against the tests' moto server with the Terraform-made resources.

Two tiny runs on the same synthetic digits: A (three epochs, ~0.9 accuracy) and C (one epoch at a
learning rate that learns nothing, ~0.1). The gate measures each through the served handler.
Every request the tasks sent is checked against botocore's service model (tests/service_model.py),
and tests/aws_fixtures.py judges them against the launcher policy Terraform rendered.
"""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

import pytest

from project.aws.registry import Version, gate
from project.aws.session import aws_clients
from project.core import config as C
from project.sandbox import service as emulator
from project.training.train import run_composed
from tests import aws_calls, cli
from tests.cli import one_error_line, refusal
from tests.service_model import problems
from tests.synthetic import make_glyphs, tiny_overrides, write_dataset

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
invoke = functools.partial(cli.invoke, timeout=300)
REGISTRY_TASKS = ("invoke register", "invoke models", "invoke approve", "invoke reject", "invoke deploy")


@pytest.fixture(scope="module")
def world(aws_infra, infra_overrides, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    files = write_dataset(root / "data", n_train=600, n_test=100, make=make_glyphs)
    for name, extra in (("reg-a", {"trainer.max_epochs": 3}), ("reg-c", {"trainer.max_epochs": 1, "model.lr": 1e-6})):
        run_composed(C.compose(tiny_overrides(root / "data", files, root / "runs", run_name=name, **extra)))
    group = f"registry-{uuid.uuid4().hex[:8]}"  # the moto server lives for the session
    with emulator.sagemaker_service(workdir=root / "sandbox") as service:
        yield {
            "clients": aws_clients(aws_infra.region, os.environ["AWS_ENDPOINT_URL"]),
            "runs": root / "runs",
            "group": group,
            "service": service,
            "overrides": [
                *infra_overrides,
                f"paths.runs_dir={root / 'runs'}",
                "deploy.poll_seconds=0.5",
                f"deploy.model_group={group}",
            ],
        }


def test_the_gate_compares_with_the_newest_approved_version():
    approved = Version("g", 3, "arn", "Approved", {"served_test_acc": "0.9", "test_loss": "0.4"})
    assert gate("test_acc", 0.895, approved, 0.01)[0]  # worse, within the tolerance
    passes, verdict = gate("test_acc", 0.5, approved, 0.01)
    assert not passes and verdict == "test_acc 0.5 against 0.9 of version 3 (Approved)"
    assert gate("test_loss", 0.3, approved, 0.0)[0] and not gate("test_loss", 0.5, approved, 0.05)[0]  # lower wins
    assert gate("test_acc", 0.1, None, 0.0) == (True, "no Approved version to compare test_acc with")


def test_a_registered_version_is_the_run_of_invoke_deploy():
    from tests.test_tasks import parse

    assert parse("deploy", "model:latest", "--yes")["deploy"]["job"] == "model:latest"
    assert parse("deploy", "model:3", "deploy.endpoint_name=ep")["deploy"]["job"] == "model:3"
    assert parse("register", "seed42", "--force")["register"] == {"job": "seed42", "force": True, "overrides": []}


def _versions(sm, group):
    try:
        return [
            (p["ModelPackageVersion"], p["ModelApprovalStatus"])
            for p in sm.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
        ]
    except sm.exceptions.ClientError:
        return []


def _described(sm, group, number):
    """A version described by its ARN (AWS takes a versioned package's ARN, not GROUP/VERSION)."""
    (arn,) = [
        p["ModelPackageArn"]
        for p in sm.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
        if p["ModelPackageVersion"] == number
    ]
    return sm.describe_model_package(ModelPackageName=arn)


@pytest.mark.slow
def test_register_gate_approve_and_deploy_latest(world):
    sm, ovr, group = world["clients"].sagemaker, world["overrides"], world["group"]
    record = Path(os.environ[aws_calls.RECORD_ENV])
    offset = record.stat().st_size if record.exists() else 0

    # Bad input first, one line each, nothing created (no group yet either).
    cases = {
        ("register", "no-such-run"): "no run folder",
        ("register", "reg-a", "deploy.gate.metric=test_f1"): "deploy.gate.metric=test_f1: run reg-a never logged it",
        ("approve", f"{group}/1"): f"no version 1 in model group {group} (its versions: none yet)",
        ("approve", "latest"): "is not GROUP/VERSION",
        ("deploy", "model:latest", "--yes"): f"no Approved version in model group {group}",
    }
    for args, message in cases.items():
        assert message in refusal(*args, *ovr), args
    assert _versions(sm, group) == []

    a = invoke("register", "reg-a", *ovr)
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    assert "evaluated reg-a through the serving code path on 100 test images" in a.stdout
    assert f"registered reg-a as {group}/1 (PendingManualApproval)" in a.stdout
    desc = _described(sm, group, 1)
    props = desc["CustomerMetadataProperties"]
    assert props["run"] == "reg-a" and props["forced"] == "false" and props["dataset"] == "mnist"
    assert len(props["config-hash"]) == 12 and props["git-sha"] and float(props["served_test_acc"]) > 0.5
    assert abs(float(props["served_test_acc"]) - float(props["test_acc"])) < 1e-6  # the served path = training's
    (container,) = desc["InferenceSpecification"]["Containers"]
    assert container["Image"].endswith("/pytorch-inference:2.6-cpu-py312")
    assert container["ModelDataUrl"].endswith("/models/reg-a/model.tar.gz")
    assert desc["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"].endswith("/models/reg-a/evaluation.json")

    approved = invoke("approve", f"{group}/1", *ovr)
    assert approved.returncode == 0 and "PendingManualApproval -> Approved" in approved.stdout, approved.stderr
    assert "already Approved: nothing changed" in refusal("approve", f"{group}/1", *ovr)
    kept = _described(sm, group, 1)["CustomerMetadataProperties"]
    assert kept == props  # an approval keeps what register recorded

    refused = invoke("register", "reg-c", *ovr)
    line = one_error_line(refused)
    assert line.startswith("error: gate: reg-c is worse than the newest Approved version, test_acc ")
    assert "of version 1 (Approved), by more than deploy.gate.tolerance=0.01: nothing registered" in line
    assert _versions(sm, group) == [(1, "Approved")]

    forced = invoke("register", "reg-c", "--force", *ovr)
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert "gate forced past the gate: test_acc" in forced.stdout and f"as {group}/2" in forced.stdout
    c_props = _described(sm, group, 2)["CustomerMetadataProperties"]
    assert c_props["forced"] == "true" and c_props["gate"].startswith("forced past the gate: test_acc")

    listed = invoke("models", *ovr)
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert rows[0].split()[:3] == ["VERSION", "STATUS", "RUN"]
    assert rows[1].split()[:3] == [f"{group}/2", "PendingManualApproval", "reg-c"] and rows[1].endswith("forced")
    assert rows[2].split()[:3] == [f"{group}/1", "Approved", "reg-a"] and rows[2].endswith("passed")

    assert "is PendingManualApproval, not Approved" in refusal("deploy", "model:2", "--yes", *ovr)
    assert "no version 7 in model group" in refusal("deploy", "model:7", "--yes", *ovr)
    rejected = invoke("reject", f"{group}/2", *ovr)
    assert rejected.returncode == 0 and "PendingManualApproval -> Rejected" in rejected.stdout, rejected.stderr

    deployed = invoke("deploy", "model:latest", "--yes", "deploy.endpoint_name=reg-latest", *ovr)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    assert f"deploy reg-a (config {props['config-hash']}, {group}/1) as endpoint reg-latest" in deployed.stdout
    endpoint = sm.describe_endpoint(EndpointName="reg-latest")
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=endpoint["EndpointArn"])["Tags"]}
    assert tags["model-version"] == f"{group}/1" and tags["run"] == "reg-a"
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == container["ModelDataUrl"]  # the registered archive
    assert model["PrimaryContainer"]["Image"] == container["Image"]
    remote = invoke("predict", "--endpoint", "reg-latest", str(DIGITS), *ovr)
    local = invoke("predict", str(world["runs"] / "reg-a"), str(DIGITS))
    assert remote.returncode == 0 and remote.stdout == local.stdout, remote.stderr + local.stderr
    assert invoke("undeploy", "reg-latest", *ovr).returncode == 0

    # Every request the registry tasks sent is one AWS would take (patterns, ranges, enums).
    sent = [c for c in aws_calls.read_calls(record, offset) if c.who.startswith(REGISTRY_TASKS)]
    operations = {c.operation for c in sent}
    assert {"CreateModelPackageGroup", "CreateModelPackage", "UpdateModelPackage", "ListModelPackages"} <= operations
    for call in sent:
        assert problems(call.service, call.operation, call.params) == [], (call.who, call.operation)
