"""Guarded rollouts (#29 §2): `invoke deploy --update --canary N --bake M` (or `--linear N`) through
the real CLI against the sandbox, which plays SageMaker's blue/green update (project/sandbox/bluegreen.py):
a canary that an alarm rolls back mid-bake (CloudWatch's SetAlarmState, as an operator or CloudWatch
would set it) and one that completes; the refusals, one line each before any AWS call; the alarms gone
with `invoke undeploy`. Every request the tasks sent is checked against botocore's service model.

The sandbox bakes a "minute" in SANDBOX_TIME_SCALE minutes (the CLI still sends the real seconds).
The world (moto with Terraform's resources, hosting played, tiny run) is tests/test_deploy.py's; the
new version is a copy of its run under another name, so that its fleet is a variant of its own.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from project.aws.deploy_requests import DeployError
from project.aws.rollout_requests import (
    Rollout,
    alarm_names,
    alarm_requests,
    check_rollout,
    deployment_config,
    progress,
)
from project.sandbox.bluegreen import TIME_SCALE_ENV, shares
from tests import aws_calls, cli
from tests.cli import one_error_line, refusal
from tests.service_model import problems
from tests.test_deploy import resources, world  # noqa: F401 (world: the module's fixture, shared)

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
invoke = functools.partial(cli.invoke, timeout=300)
ENDPOINT = "guarded"
SCALE = 0.01  # a sandbox "minute" bakes 0.6 s: --bake 60 leaves the test 36 s to set the alarm mid-bake


def test_flags_are_checked_before_anything_is_sent(composed):
    dc = composed().deploy
    check = functools.partial(check_rollout, update=True, serverless=False, dc=dc)
    assert check(None, None, None) is None  # a plain update, all at once
    assert check("10", None, "5") == Rollout("CANARY", 10, 5)
    assert check(None, "20", None) == Rollout("LINEAR", 20, 10)  # --bake's default: deploy.rollout.bake_minutes
    for (canary, linear, bake), message in {
        ("60", None, "5"): "--canary 60: give a canary as a percent of the fleet of 1-50",
        ("0", None, "5"): "--canary 0: give a canary",
        ("ten", None, "5"): "--canary ten: give a canary",
        (None, "5", "5"): "--linear 5: give a step as a percent of the fleet of 10-50",
        (None, "60", "5"): "--linear 60: give a step",
        ("10", None, "0"): "--bake 0: give minutes of 1-60",
        ("10", None, "90"): "--bake 90: give minutes of 1-60",
        (None, None, "5"): "--bake 5 bakes the steps of a rollout: add --canary N or --linear N",
        ("10", "20", "5"): "--canary or --linear, not both",
        (None, "10", "60"): "--linear 10 --bake 60 takes up to 10.5 h",  # SageMaker stops a rollout at 8 h
    }.items():
        with pytest.raises(DeployError, match=re.escape(message)):
            check(canary, linear, bake)
    with pytest.raises(DeployError, match=re.escape("guard an update of a serving endpoint: add --update")):
        check_rollout("10", None, "5", update=False, serverless=False, dc=dc)
    with pytest.raises(DeployError, match="SageMaker updates serverless endpoints all at once"):
        check_rollout("10", None, "5", update=True, serverless=True, dc=dc)
    quiet = composed("deploy.rollout.max_5xx_errors=null", "deploy.rollout.max_latency_ms=null").deploy
    with pytest.raises(DeployError, match=re.escape("--bake 5 with no alarm to watch it: set deploy.rollout.")):
        check_rollout("10", None, "5", update=True, serverless=False, dc=quiet)


def test_requests_are_valid_for_sagemaker_and_cloudwatch(composed):
    dc = composed().deploy
    canary, linear = Rollout("CANARY", 10, 10), Rollout("LINEAR", 20, 5)
    assert (canary.shares(), linear.shares(), Rollout("LINEAR", 30, 1).shares()) == (
        [10, 100],
        [20, 40, 60, 80, 100],
        [30, 60, 90, 100],
    )
    alarms = alarm_requests(dc.rollout, "ep", "run-b")
    assert [a["AlarmName"] for a in alarms] == list(alarm_names(dc.rollout.alarm_prefix, "ep").values())
    assert [(a["MetricName"], a["Statistic"], a["Threshold"]) for a in alarms] == [
        ("Invocation5XXErrors", "Sum", 0.0),
        ("ModelLatency", "Average", 1_000_000.0),  # deploy.rollout.max_latency_ms=1000, in microseconds
    ]
    assert alarms[0]["Dimensions"] == [
        {"Name": "EndpointName", "Value": "ep"},
        {"Name": "VariantName", "Value": "run-b"},
    ]
    only_5xx = alarm_requests(composed("deploy.rollout.max_latency_ms=null").deploy.rollout, "ep", "b")
    assert [a["MetricName"] for a in only_5xx] == ["Invocation5XXErrors"]
    for alarm in alarms:
        assert not problems("cloudwatch", "PutMetricAlarm", alarm)
    names = [a["AlarmName"] for a in alarms]
    for rollout in (canary, linear, Rollout("CANARY", 50, 60), Rollout("LINEAR", 10, 1)):
        config = deployment_config(rollout, names, dc)
        assert not problems(
            "sagemaker", "UpdateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "c", "DeploymentConfig": config}
        )
    routing = deployment_config(canary, names, dc)["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing == {
        "Type": "CANARY",
        "WaitIntervalInSeconds": 600,
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
    }
    assert shares(routing) == [0.1, 1.0]  # the sandbox shifts as the CLI plans
    linear_routing = deployment_config(linear, names, dc)["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert [round(s, 2) for s in shares(linear_routing)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    policy = deployment_config(linear, names, dc)["BlueGreenUpdatePolicy"]
    assert policy["TerminationWaitInSeconds"] == 300 and policy["MaximumExecutionTimeoutInSeconds"] == 5 * 300 + 30 * 60
    pending = {
        "EndpointStatus": "Updating",
        "PendingDeploymentSummary": {
            "EndpointConfigName": "c",
            "ProductionVariants": [
                {"VariantName": "b", "VariantStatus": [{"Status": "Baking", "StatusMessage": "10%"}]}
            ],
        },
    }
    assert progress(pending) == "Updating; new fleet: b Baking, 10%"
    assert progress({"EndpointStatus": "InService"}) == "InService"


def _alarms(cloudwatch) -> list[str]:
    return [a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNamePrefix="sagemaker-rollout-")["MetricAlarms"]]


def _config(sm) -> dict:
    desc = sm.describe_endpoint(EndpointName=ENDPOINT)
    assert desc["EndpointStatus"] == "InService", desc
    return sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])


def _answers(clients) -> str:
    """The variant that answers a digit sent to the endpoint (it names itself, as on SageMaker)."""
    image = next(DIGITS.glob("*.png")).read_bytes()
    answer = clients.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=ENDPOINT, Body=image, ContentType="image/png"
    )
    assert answer["Body"].read()
    return answer["InvokedProductionVariant"]


def _read_until(proc: subprocess.Popen, needle: str) -> list[str]:
    """stdout lines up to the first that holds `needle` (the test fails if the command ends first)."""
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return lines
    _, err = proc.communicate(timeout=60)
    pytest.fail(f"no {needle!r} before the command ended ({proc.returncode}):\n{''.join(lines)[-3000:]}\n{err[-3000:]}")


@pytest.mark.slow
def test_a_canary_rolled_back_by_an_alarm_and_one_that_completes(world, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv(TIME_SCALE_ENV, str(SCALE))  # read by the sandbox, which serves in this process
    sm, ovr = world["clients"].sagemaker, [*world["overrides"], f"deploy.endpoint_name={ENDPOINT}"]
    cloudwatch = world["clients"].client("cloudwatch")
    record = Path(os.environ[aws_calls.RECORD_ENV])
    offset = record.stat().st_size if record.exists() else 0
    before = resources(sm)
    new = tmp_path / "tiny-v2"  # the new version: the same model under another run's name
    shutil.copytree(world["run_dir"], new)

    made = invoke("deploy", "tiny", "--yes", *ovr)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    serving = resources(sm)

    # Refused in one line, before any AWS call.
    refused_at = record.stat().st_size
    for args, message in {
        ("--canary", "60", "--bake", "10"): "--canary 60: give a canary as a percent of the fleet of 1-50",
        ("--linear", "20", "--bake", "5", "deploy.rollout.max_5xx_errors=null", "deploy.rollout.max_latency_ms=null"): (
            "--bake 5 with no alarm to watch it"
        ),
        ("--traffic", "10", "--canary", "10"): "--traffic adds a variant with its share at once: drop --canary",
    }.items():
        assert message in refusal("deploy", str(new), "--update", "--yes", *args, *ovr), args
    assert [c.operation for c in aws_calls.read_calls(record, refused_at) if c.is_task] == []
    assert resources(sm) == serving and _alarms(cloudwatch) == []

    # A canary of 10% that an alarm rolls back while it bakes: the old fleet serves again.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "invoke",
            "deploy",
            str(new),
            "--update",
            "--canary",
            "10",
            "--bake",
            "60",
            "--yes",
            *ovr,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        said = _read_until(proc, "Baking, 10% of the traffic")
        assert _alarms(cloudwatch) == [f"sagemaker-rollout-{ENDPOINT}-5xx", f"sagemaker-rollout-{ENDPOINT}-latency"]
        desc = sm.describe_endpoint(EndpointName=ENDPOINT)
        assert (
            desc["EndpointStatus"] == "Updating"
            and desc["PendingDeploymentSummary"]["ProductionVariants"][0]["VariantName"] == "tiny-v2"
        )
        cloudwatch.set_alarm_state(
            AlarmName=f"sagemaker-rollout-{ENDPOINT}-5xx", StateValue="ALARM", StateReason="5XX answers of the canary"
        )
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    rolled = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(said) + out, err)
    line = one_error_line(rolled)
    assert (
        f"rolled back: alarm sagemaker-rollout-{ENDPOINT}-5xx (Invocation5XXErrors) went off while tiny-v2 baked"
        in line
    )
    assert "canary: 10% -> 100% of the traffic on the new fleet, each baking 60 min" in rolled.stdout
    assert re.search(rf"^endpoint {ENDPOINT}: Updating; new fleet: tiny-v2 Creating", rolled.stdout, re.M)
    assert [v["VariantName"] for v in _config(sm)["ProductionVariants"]] == ["tiny"]  # the old fleet, as before
    assert resources(sm) == serving and _alarms(cloudwatch) == []  # the new model and config, the alarms: gone
    assert _answers(world["clients"]) == "tiny"

    # A canary that completes: each step bakes one (sandbox) minute and no alarm goes off.
    done = invoke("deploy", str(new), "--update", "--canary", "10", "--bake", "1", "--yes", *ovr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "canary: 10% -> 100% of the traffic on the new fleet, each baking 1 min" in done.stdout
    assert f"endpoint {ENDPOINT} is InService (tiny-v2)" in done.stdout
    assert [v["VariantName"] for v in _config(sm)["ProductionVariants"]] == ["tiny-v2"]
    assert len(resources(sm) - before) == 3  # the endpoint, the new model and config; the old ones deleted
    assert _alarms(cloudwatch) == [f"sagemaker-rollout-{ENDPOINT}-5xx", f"sagemaker-rollout-{ENDPOINT}-latency"]
    last = sm.describe_endpoint(EndpointName=ENDPOINT)["LastDeploymentConfig"]
    assert last["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["WaitIntervalInSeconds"] == 60  # real seconds
    assert _answers(world["clients"]) == "tiny-v2"

    gone = invoke("undeploy", ENDPOINT, *ovr)
    assert gone.returncode == 0 and f"{ENDPOINT}: alarms sagemaker-rollout-{ENDPOINT}-5xx" in gone.stdout, gone.stderr
    assert resources(sm) == before and _alarms(cloudwatch) == []

    # Valid on AWS: every request the tasks sent, canary sizes and bakes included.
    calls = [c for c in aws_calls.read_calls(record, offset) if c.is_task]
    sent = {c.operation for c in calls}
    assert {"PutMetricAlarm", "DescribeAlarms", "DeleteAlarms", "UpdateEndpoint"} <= sent, sent
    guarded = [c for c in calls if c.operation == "UpdateEndpoint" and "DeploymentConfig" in c.params]
    assert [
        c.params["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["CanarySize"]
        for c in guarded
    ] == [{"Type": "CAPACITY_PERCENT", "Value": 10}] * 2
    invalid = [line for c in calls for line in problems(c.service, c.operation, c.params)]
    assert not invalid, invalid
