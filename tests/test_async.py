"""Asynchronous endpoints (#29 §3) through the real CLI against the sandbox: `invoke deploy --async`
makes an endpoint whose requests queue in S3, scaled between 0 and N instances on its backlog;
`invoke predict --endpoint` answers through it as through a real-time one, and a bad image leaves
a failure object; bad flags are one line and create nothing; `invoke undeploy` leaves nothing.
Every request the tasks sent is checked against botocore's service model (tests/service_model.py);
the IAM judge (tests/aws_fixtures.py) evaluates them, and what SageMaker does as the role, against
terraform/.

The world (moto with Terraform's resources, hosting played, tiny run) is tests/test_deploy.py's.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from project.aws.async_endpoints import (
    async_inference_config,
    async_price_line,
    check_async,
    check_async_config,
    failure_reason,
    from_zero_alarm_request,
    scaling_requests,
)
from project.aws.deploy_requests import DeployError, endpoint_config_request
from project.serving.predict import expand_images, predict
from tests import aws_calls, cli
from tests.cli import refusal
from tests.service_model import problems
from tests.test_deploy import DIGITS, resources, world  # noqa: F401 (world: the module's fixture, shared)

invoke = functools.partial(cli.invoke, timeout=300)
ENDPOINT = "tiny-async"


def test_async_requests_are_built_from_the_config_and_valid_on_aws(composed):
    dc = composed(
        "deploy.async_inference.max_instances=3", "deploy.async_inference.max_concurrent_invocations=2"
    ).deploy
    config = endpoint_config_request("c", "m", dc, False, {"run": "r"}, "tiny")
    config["AsyncInferenceConfig"] = async_inference_config(dc, "artifacts", "ep")
    assert config["AsyncInferenceConfig"] == {
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2},
        "OutputConfig": {
            "S3OutputPath": "s3://artifacts/async/ep/output/",
            "S3FailurePath": "s3://artifacts/async/ep/failure/",
        },
    }
    scaling = scaling_requests("ep", "tiny", dc)
    target = scaling["target"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == ("endpoint/ep/variant/tiny", 0, 3)
    backlog = scaling["backlog"]["TargetTrackingScalingPolicyConfiguration"]
    assert backlog["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert scaling["from_zero"]["StepScalingPolicyConfiguration"]["StepAdjustments"][0]["ScalingAdjustment"] == 1
    alarm = from_zero_alarm_request("ep", "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:x")
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity" and alarm["AlarmActions"][0].endswith(":x")
    requests = [
        ("sagemaker", "CreateEndpointConfig", config),
        ("application-autoscaling", "RegisterScalableTarget", target),
        ("application-autoscaling", "PutScalingPolicy", scaling["backlog"]),
        ("application-autoscaling", "PutScalingPolicy", scaling["from_zero"]),
        ("cloudwatch", "PutMetricAlarm", alarm),
    ]
    assert [p for service, op, params in requests for p in problems(service, op, params)] == []
    line = async_price_line(dc)
    assert "ml.m5.large x 0-3: $0.115/hour per instance" in line and "nothing while idle at zero" in line
    assert "cold start (about 10 min)" in line


def test_async_refuses_what_makes_no_sense(composed):
    check_async(False, False, None)  # --async alone
    for flags, message in {
        (True, False, None): "--async and --serverless: pick one",
        (False, True, None): "--async with --update",
        (False, False, 10): "--async with --traffic",
    }.items():
        with pytest.raises(DeployError, match=message):
            check_async(*flags)
    for override, message in {
        "deploy.async_inference.max_concurrent_invocations=0": "max_concurrent_invocations must be 1-1000",
        "deploy.async_inference.max_instances=0": "max_instances must be at least 1",
        "deploy.instance=ml.x": "unknown instance type deploy.instance=ml.x",
    }.items():
        with pytest.raises(DeployError, match=message):
            check_async_config(composed(override).deploy)
    wrapped = 'Received client error (415) from primary with message "request body: not an image\nmore".'
    assert failure_reason(wrapped) == "request body: not an image"
    assert failure_reason("plain reason\nsecond") == "plain reason"


def scaling_state(world) -> tuple[list, list, list]:  # noqa: F811
    clients = world["clients"]
    scaling = clients.client("application-autoscaling")
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    alarms = clients.client("cloudwatch").describe_alarms(AlarmNamePrefix=ENDPOINT)["MetricAlarms"]
    return targets, policies, alarms


@pytest.mark.slow
def test_async_endpoint_deploy_predict_failure_undeploy(world, tmp_path):  # noqa: F811
    sm, ovr, infra = world["clients"].sagemaker, world["overrides"], world["infra"]
    s3 = world["clients"].s3
    record = Path(os.environ[aws_calls.RECORD_ENV])
    offset = record.stat().st_size if record.exists() else 0
    before = resources(sm)
    ovr = [*ovr, f"deploy.endpoint_name={ENDPOINT}", "deploy.async_inference.max_concurrent_invocations=1"]

    # Bad input: one line each, nothing created.
    for args, message in {  # the rest of the refusals: test_async_refuses_what_makes_no_sense
        ("--async", "--serverless"): "--async and --serverless: pick one",
        ("--async", "--traffic", "10"): "--async with --traffic",
    }.items():
        assert message in refusal("deploy", "tiny", "--yes", *args, *ovr), args
    assert resources(sm) == before and scaling_state(world) == ([], [], [])

    made = invoke("deploy", "tiny", "--async", "--yes", *ovr)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    out = made.stdout
    assert f"endpoint {ENDPOINT}: InService" in out and "scaling: 0-2 instances on the backlog" in out
    assert "async, ml.m5.large x 0-2: $0.115/hour per instance while any is up; nothing while idle" in out
    assert "cold start (about 10 min)" in out and f"remove it: invoke undeploy {ENDPOINT}" in out
    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]
    )
    bucket = infra.artifacts_bucket
    tags = {t["Key"] for t in sm.list_tags(ResourceArn=config["EndpointConfigArn"])["Tags"]}
    assert "run" in tags and "expires-at" not in tags  # idle at zero costs nothing: never EXPIRED
    assert config["AsyncInferenceConfig"]["OutputConfig"]["S3FailurePath"] == f"s3://{bucket}/async/{ENDPOINT}/failure/"
    (target,), policies, (alarm,) = scaling_state(world)
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (
        f"endpoint/{ENDPOINT}/variant/tiny",
        0,
        2,
    )
    by_type = {p["PolicyType"]: p for p in policies}
    assert set(by_type) == {"TargetTrackingScaling", "StepScaling"}
    assert alarm["AlarmActions"] == [by_type["StepScaling"]["PolicyARN"]]

    # An async endpoint is not moved to another run.
    moved = refusal("deploy", "tiny", "--update", "--yes", *ovr)
    assert f"endpoint {ENDPOINT} is asynchronous and is not moved to another run" in moved

    remote = invoke("predict", "--endpoint", ENDPOINT, str(DIGITS), *ovr)
    local = [str(p) for p in predict(world["run_dir"], expand_images(str(DIGITS)))]  # as `invoke predict` prints
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout.splitlines() == local and len(local) == 3
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"async/{ENDPOINT}/output/")["Contents"]
    assert len(listed) == 3 and all(o["Key"].endswith(".out") for o in listed)
    assert world["service"].hosting.queue.peak[ENDPOINT] == 1  # MaxConcurrentInvocationsPerInstance=1

    bad = tmp_path / "scan.png"
    bad.write_bytes(b"not a png at all")  # the model's own reason, one line, exit 2; a failure object
    assert refusal("predict", "--endpoint", ENDPOINT, str(bad), *ovr) == (
        f"error: {bad}: endpoint {ENDPOINT} refused it: request body: not an image (expected a PNG or JPEG file)"
    )
    (failure,) = s3.list_objects_v2(Bucket=bucket, Prefix=f"async/{ENDPOINT}/failure/")["Contents"]
    assert failure["Key"].endswith("-error.out")
    pinned = refusal("predict", "--endpoint", ENDPOINT, str(DIGITS), "--variant", "tiny", *ovr)
    assert "is asynchronous, with one variant: drop --variant" in pinned

    gone = invoke("undeploy", ENDPOINT, *ovr)
    assert gone.returncode == 0, gone.stderr
    assert (
        f"{ENDPOINT}: endpoint, endpoint config and model deleted; its scaling target, policies and alarm"
        in gone.stdout
    )
    assert resources(sm) == before and scaling_state(world) == ([], [], [])
    assert ENDPOINT not in world["service"].hosting.servers

    calls = [c for c in aws_calls.read_calls(record, offset) if c.is_task]
    wanted = {"InvokeEndpointAsync", "RegisterScalableTarget", "PutScalingPolicy", "PutMetricAlarm"}
    assert wanted | {"DeleteScalingPolicy", "DeregisterScalableTarget", "DeleteAlarms"} <= {c.operation for c in calls}
    invalid = [line for c in calls for line in problems(c.service, c.operation, c.params)]
    assert not invalid, invalid
