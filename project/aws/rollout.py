"""Guarded rollouts' calls (`invoke deploy --update --canary N` / `--linear N`; the requests are
rollout_requests.py's): the CloudWatch alarms on the new fleet, created fresh before UpdateEndpoint
and removed after a rollback, a failed deploy and by `invoke undeploy`; and what a rollback says.
"""

from __future__ import annotations

from typing import Any

from project.aws.deploy_requests import DeployError
from project.aws.rollout_requests import alarm_names, alarm_requests


def remove_alarms(cloudwatch: Any, prefix: str, endpoint: str) -> list[str]:
    """Delete the rollout alarms of `endpoint` that exist; their names."""
    names = list(alarm_names(prefix, endpoint).values())
    found = [alarm["AlarmName"] for alarm in cloudwatch.describe_alarms(AlarmNames=names)["MetricAlarms"]]
    if found:
        cloudwatch.delete_alarms(AlarmNames=found)
    return found


def put_alarms(cloudwatch: Any, rc: Any, endpoint: str, variant: str) -> list[str]:
    """The alarms on `variant` of `endpoint`, made anew: an alarm that is only updated keeps its state,
    and one still in ALARM from an earlier rollout would roll this one back at once."""
    remove_alarms(cloudwatch, rc.alarm_prefix, endpoint)
    requests = alarm_requests(rc, endpoint, variant)
    for request in requests:
        cloudwatch.put_metric_alarm(**request)
    return [request["AlarmName"] for request in requests]


def rolled_back(cloudwatch: Any, alarms: list[str], run: str, endpoint: str, desc: dict[str, Any]) -> DeployError:
    """The error of an update that ended InService on the endpoint's previous config: which of the
    rollout's `alarms` went off, else SageMaker's reason (the new fleet did not start)."""
    found = cloudwatch.describe_alarms(AlarmNames=alarms)["MetricAlarms"] if alarms else []
    tripped = ", ".join(f"alarm {a['AlarmName']} ({a['MetricName']})" for a in found if a["StateValue"] == "ALARM")
    if tripped:
        what = f"rolled back: {tripped} went off while {run} baked"
    else:
        what = f"{run} did not take over: {desc.get('FailureReason') or 'SageMaker rolled the update back'}"
    return DeployError(
        f"{what}; endpoint {endpoint} serves its previous config {desc['EndpointConfigName']} again, "
        f"and {run}'s model and config are deleted"
    )
