"""Asynchronous endpoints: `invoke deploy --async`, `invoke predict --endpoint` on one, and what
`invoke undeploy` removes besides the endpoint.

An asynchronous endpoint takes each request as an S3 object (InvokeEndpointAsync names it), queues
it, and writes the answer to <S3OutputPath>/<inference id>.out, or the model's refusal to
<S3FailurePath>/<inference id>-error.out; payloads up to 1 GB. Its variant is an Application Auto
Scaling target between 0 and deploy.async_inference.max_instances instances with two policies:
target tracking on ApproximateBacklogSizePerInstance (scales out with the queue and back in to
zero once it is empty) and a step policy that a CloudWatch alarm on HasBacklogWithoutCapacity sets
off (target tracking cannot leave zero: at zero instances there is no per-instance backlog).

The requests are built here, pure (plain values in, plain values out); the few functions at the end
send them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from project.aws.deploy_requests import DeployError, Echo, check_instance

ASYNC_PREFIX = "async"  # of the artifacts bucket: async/<endpoint>/input|output|failure/ (terraform/main.tf)
MAX_PAYLOAD_BYTES = 1024**3  # InvokeEndpointAsync's limit on an input object: 1 GB
NAMESPACE = "sagemaker"  # Application Auto Scaling's service namespace
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRICS = "AWS/SageMaker"  # where SageMaker publishes an async endpoint's backlog metrics
BACKLOG_POLICY = "backlog-per-instance"  # target tracking: scales out with the queue, in to zero
FROM_ZERO_POLICY = "scale-from-zero"  # step scaling, set off by the alarm below
FROM_ZERO_ALARM = "has-backlog-without-capacity"  # the alarm's name ends so (terraform/iam.tf scopes it)


def check_async(serverless: bool, update: bool, traffic: Any) -> None:
    """--async with flags that do not make sense for it: one line, before anything is created."""
    if serverless:
        raise DeployError("--async and --serverless: pick one (an async endpoint runs on instances and scales to zero)")
    if update:
        raise DeployError(
            "--async with --update: an async endpoint is not moved to another run; "
            "`invoke undeploy` it and deploy again, or name a new one with deploy.endpoint_name=..."
        )
    if traffic is not None:
        raise DeployError("--async with --traffic: an async endpoint serves one variant; drop --traffic")


def check_async_config(dc: Any) -> None:
    ac = dc.async_inference
    check_instance(dc.instance, dc)
    if not 1 <= int(ac.max_concurrent_invocations) <= 1000:
        raise DeployError("deploy.async_inference.max_concurrent_invocations must be 1-1000")
    if int(ac.max_instances) < 1:
        raise DeployError("deploy.async_inference.max_instances must be at least 1")
    if float(ac.backlog_per_instance) <= 0:
        raise DeployError("deploy.async_inference.backlog_per_instance must be above 0")


def async_location(bucket: str, endpoint: str, kind: str) -> str:
    """s3://<artifacts>/async/<endpoint>/<kind>/: kind is input, output or failure."""
    return f"s3://{bucket}/{ASYNC_PREFIX}/{endpoint}/{kind}/"


def async_inference_config(dc: Any, bucket: str, endpoint: str) -> dict[str, Any]:
    """CreateEndpointConfig's AsyncInferenceConfig: where answers and refusals go, how many at once."""
    return {
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": int(dc.async_inference.max_concurrent_invocations)},
        "OutputConfig": {
            "S3OutputPath": async_location(bucket, endpoint, "output"),
            "S3FailurePath": async_location(bucket, endpoint, "failure"),
        },
    }


def async_price_line(dc: Any) -> str:
    ac, price = dc.async_inference, check_instance(dc.instance, dc)
    return (
        f"async, {dc.instance} x 0-{int(ac.max_instances)}: ${price:.3f}/hour per instance while any is up; "
        f"nothing while idle at zero instances; a request at zero waits a cold start (about "
        f"{float(ac.cold_start_minutes):g} min)"
    )


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def _target(endpoint: str, variant: str) -> dict[str, str]:
    return {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint, variant), "ScalableDimension": DIMENSION}


def _endpoint_dimension(endpoint: str) -> list[dict[str, str]]:
    return [{"Name": "EndpointName", "Value": endpoint}]


def scaling_requests(endpoint: str, variant: str, dc: Any) -> dict[str, dict[str, Any]]:
    """RegisterScalableTarget (0 to max_instances) and the two PutScalingPolicy requests."""
    ac = dc.async_inference
    backlog = {
        "TargetValue": float(ac.backlog_per_instance),
        "CustomizedMetricSpecification": {
            "MetricName": "ApproximateBacklogSizePerInstance",
            "Namespace": METRICS,
            "Dimensions": _endpoint_dimension(endpoint),
            "Statistic": "Average",
        },
        "ScaleInCooldown": int(ac.scale_in_cooldown_seconds),
        "ScaleOutCooldown": int(ac.scale_out_cooldown_seconds),
    }
    from_zero = {  # one instance as soon as requests wait with none to take them
        "AdjustmentType": "ChangeInCapacity",
        "MetricAggregationType": "Average",
        "Cooldown": int(ac.scale_out_cooldown_seconds),
        "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
    }
    return {
        "target": {**_target(endpoint, variant), "MinCapacity": 0, "MaxCapacity": int(ac.max_instances)},
        "backlog": {
            **_target(endpoint, variant),
            "PolicyName": f"{endpoint}-{BACKLOG_POLICY}",
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": backlog,
        },
        "from_zero": {
            **_target(endpoint, variant),
            "PolicyName": f"{endpoint}-{FROM_ZERO_POLICY}",
            "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": from_zero,
        },
    }


def from_zero_alarm_request(endpoint: str, policy_arn: str) -> dict[str, Any]:
    """PutMetricAlarm: HasBacklogWithoutCapacity for two minutes sets off the step policy."""
    return {
        "AlarmName": f"{endpoint}-{FROM_ZERO_ALARM}",
        "AlarmDescription": f"scale async endpoint {endpoint} out from zero instances (invoke deploy --async)",
        "MetricName": "HasBacklogWithoutCapacity",
        "Namespace": METRICS,
        "Dimensions": _endpoint_dimension(endpoint),
        "Statistic": "Average",
        "Period": 60,
        "EvaluationPeriods": 2,
        "DatapointsToAlarm": 2,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "missing",
        "AlarmActions": [policy_arn],
    }


def check_payloads(images: list[Path], raw: bool) -> None:
    if raw:
        return  # 28 x 28 pixels each
    for path in images:
        if path.stat().st_size > MAX_PAYLOAD_BYTES:
            raise DeployError(f"{path}: over 1 GB, an async endpoint's limit per request: nothing uploaded")


def failure_reason(text: str) -> str:
    """The model's own message of a failure object (SageMaker wraps it as InvokeEndpoint's ModelError)."""
    wrapped = re.search(r'with message "(.*)"', text, re.DOTALL)
    reason = wrapped.group(1) if wrapped else text
    return (reason.strip().splitlines() or ["no reason given"])[0]


# --- sending ------------------------------------------------------------------------------------


def add_scaling(ctx: Any, endpoint: str, variant: str, echo: Echo) -> None:
    """The scaling target and its policies, and the alarm that scales out from zero."""
    scaling = ctx.clients.client("application-autoscaling")
    requests = scaling_requests(endpoint, variant, ctx.cfg.deploy)
    scaling.register_scalable_target(**requests["target"])
    scaling.put_scaling_policy(**requests["backlog"])
    arn = scaling.put_scaling_policy(**requests["from_zero"])["PolicyARN"]
    ctx.clients.client("cloudwatch").put_metric_alarm(**from_zero_alarm_request(endpoint, arn))
    echo(f"scaling: 0-{requests['target']['MaxCapacity']} instances on the backlog ({resource_id(endpoint, variant)})")


def remove_scaling(ctx: Any, endpoint: str, variants: list[str]) -> None:
    """What add_scaling made, idempotently (a part already gone is fine)."""
    scaling = ctx.clients.client("application-autoscaling")
    ctx.clients.client("cloudwatch").delete_alarms(AlarmNames=[f"{endpoint}-{FROM_ZERO_ALARM}"])
    for variant in variants:
        for policy in (BACKLOG_POLICY, FROM_ZERO_POLICY):
            _unless_gone(
                scaling, scaling.delete_scaling_policy, PolicyName=f"{endpoint}-{policy}", **_target(endpoint, variant)
            )
        _unless_gone(scaling, scaling.deregister_scalable_target, **_target(endpoint, variant))


def _unless_gone(client: Any, call: Any, **params: Any) -> None:
    try:
        call(**params)
    except client.exceptions.ObjectNotFoundException:
        pass
    except client.exceptions.ValidationException as exc:
        if "No scal" not in str(exc):  # moto's (and AWS's) "No scalable target/scaling policy found"
            raise


def async_config_of(sm: Any, config_name: str) -> dict[str, Any] | None:
    """The AsyncInferenceConfig of an endpoint config; None: a real-time one."""
    return sm.describe_endpoint_config(EndpointConfigName=config_name).get("AsyncInferenceConfig") or None


def async_answers(
    ctx: Any, endpoint: str, requests: list[tuple[Path, bytes, str]], echo: Echo | None = None
) -> list[dict[str, Any]]:
    """Each (path, body, content type) uploaded, queued with InvokeEndpointAsync, and its answer (JSON)
    read once its output object is written; a failure object is the model's refusal (DeployError)."""
    s3, runtime, dc = ctx.clients.s3, ctx.clients.client("sagemaker-runtime"), ctx.cfg.deploy
    bucket = ctx.infra.artifacts_bucket
    pending = []
    for path, body, content_type in requests:
        key = f"{ASYNC_PREFIX}/{endpoint}/input/{uuid.uuid4().hex}{path.suffix.lower() or '.npy'}"
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
        try:
            queued = runtime.invoke_endpoint_async(
                EndpointName=endpoint,
                InputLocation=f"s3://{bucket}/{key}",
                ContentType=content_type,
                Accept="application/json",
            )
        except runtime.exceptions.ClientError as exc:
            if "not found" in str(exc).lower() or "Could not find" in str(exc):
                raise DeployError(f"no endpoint {endpoint}: `invoke endpoints` lists them") from None
            raise
        pending.append((path, queued["OutputLocation"], queued["FailureLocation"]))
    return [_wait_answer(s3, endpoint, path, out, failure, dc) for path, out, failure in pending]


def _wait_answer(s3: Any, endpoint: str, path: Path, output: str, failure: str, dc: Any) -> dict[str, Any]:
    start = time.monotonic()
    while True:
        for location, failed in ((output, False), (failure, True)):
            bucket, _, key = location.removeprefix("s3://").partition("/")
            if s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0):
                text = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                if failed:
                    reason = failure_reason(text.decode(errors="replace"))
                    raise DeployError(f"{path}: endpoint {endpoint} refused it: {reason}")
                return json.loads(text)
        if time.monotonic() - start > float(dc.wait_minutes) * 60:
            raise DeployError(
                f"{path}: no answer from async endpoint {endpoint} after {dc.wait_minutes} min "
                f"(it may be starting from zero instances): its answer will be {output}"
            )
        time.sleep(float(dc.poll_seconds))
