"""What a guarded rollout (`invoke deploy --update --canary N` / `--linear N` with `--bake M`) sends:
the checks of its flags, the CloudWatch alarms on the new fleet, UpdateEndpoint's DeploymentConfig,
and the progress line of DescribeEndpoint. Pure: plain values in, plain values out.

SageMaker's blue/green update starts the new config's fleet beside the old one and shifts traffic to
it: CANARY moves --canary percent of the capacity, bakes, then the rest; LINEAR moves --linear
percent at a time, baking after each step. The old fleet stays for one more bake after the last
step. While any step bakes, one of the alarms in ALARM rolls the whole update back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from project.aws.deploy_requests import DeployError, check_instance

CANARY, LINEAR = "CANARY", "LINEAR"
PERCENTS = {CANARY: (1, 50), LINEAR: (10, 50)}  # SageMaker's own limits on a canary and a linear step
BAKE_MINUTES = (1, 60)  # WaitIntervalInSeconds and TerminationWaitInSeconds are at most 3600
MAX_EXECUTION_SECONDS = (600, 28800)  # BlueGreenUpdatePolicy.MaximumExecutionTimeoutInSeconds
NAMESPACE = "AWS/SageMaker"
# Alarm name suffix -> (metric, statistic, conf key of the threshold); ModelLatency is in microseconds.
ALARMS = {
    "5xx": ("Invocation5XXErrors", "Sum", "max_5xx_errors"),
    "latency": ("ModelLatency", "Average", "max_latency_ms"),
}


@dataclass(frozen=True)
class Rollout:
    kind: str  # CANARY or LINEAR
    percent: int  # the canary, or each linear step, as a percent of the new fleet's capacity
    bake_minutes: int

    def shares(self) -> list[int]:
        """The percent of traffic on the new fleet after each step; each step then bakes."""
        if self.kind == CANARY:
            return [self.percent, 100]
        return [min(100, self.percent * (i + 1)) for i in range(math.ceil(100 / self.percent))]

    def bake_seconds(self) -> int:
        return self.bake_minutes * 60

    def planned_seconds(self) -> int:
        """Every step's bake, the last one (the old fleet kept) included; starting the fleet not."""
        return len(self.shares()) * self.bake_seconds()

    def flags(self) -> str:
        return f"--{self.kind.lower()} {self.percent} --bake {self.bake_minutes}"

    def plan(self) -> str:
        steps = " -> ".join(f"{share}%" for share in self.shares())
        return f"{self.kind.lower()}: {steps} of the traffic on the new fleet, each baking {self.bake_minutes} min"


def _whole(flag: str, value: str, low: int, high: int, what: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise DeployError(f"{flag} {value}: give {what} of {low}-{high}")
    return number


def check_rollout(
    canary: str | None, linear: str | None, bake: str | None, update: bool, serverless: bool, dc: Any
) -> Rollout | None:
    """The rollout the flags ask for (None: an update all at once), or a DeployError saying what to change."""
    if canary is None and linear is None:
        if bake is not None:
            raise DeployError(f"--bake {bake} bakes the steps of a rollout: add --canary N or --linear N with --update")
        return None
    if canary is not None and linear is not None:
        raise DeployError("--canary or --linear, not both: a canary shifts once, a linear rollout in equal steps")
    if not update:
        raise DeployError("--canary/--linear guard an update of a serving endpoint: add --update")
    if serverless:
        raise DeployError("SageMaker updates serverless endpoints all at once: drop --canary/--linear")
    kind, value = (CANARY, canary) if canary is not None else (LINEAR, linear)
    assert value is not None
    low, high = PERCENTS[kind]
    what = "a canary" if kind == CANARY else "a step"
    percent = _whole(f"--{kind.lower()}", value, low, high, f"{what} as a percent of the fleet")
    rc = dc.rollout
    bake_minutes = _whole("--bake", str(rc.bake_minutes if bake is None else bake), *BAKE_MINUTES, "minutes")
    if all(rc[key] is None for _, _, key in ALARMS.values()):
        keys = " or ".join(f"deploy.rollout.{key}" for _, _, key in ALARMS.values())
        raise DeployError(f"--bake {bake_minutes} with no alarm to watch it: set {keys}")
    rollout = Rollout(kind, percent, bake_minutes)
    seconds, most = execution_seconds(rollout, dc), MAX_EXECUTION_SECONDS[1]
    if seconds > most:
        raise DeployError(
            f"{rollout.flags()} takes up to {seconds / 3600:.1f} h with deploy.wait_minutes={dc.wait_minutes} to "
            f"start the fleet; SageMaker stops a rollout after {most // 3600} h: take bigger steps or bake less"
        )
    return rollout


def execution_seconds(rollout: Rollout, dc: Any) -> int:
    """How long SageMaker may take: the bakes, and deploy.wait_minutes to start the new fleet."""
    return max(MAX_EXECUTION_SECONDS[0], rollout.planned_seconds() + int(dc.wait_minutes) * 60)


def bake_cost_line(rollout: Rollout, dc: Any) -> str:
    """What the rollout adds to the bill: blue/green runs the whole new fleet beside the old one
    through every bake (the last one included), so at most its instances for the planned bakes."""
    price, count = check_instance(dc.instance, dc), int(dc.instance_count)
    minutes = rollout.planned_seconds() / 60
    return (
        f"the rollout runs the new fleet ({dc.instance} x {count}) beside the old one for up to {minutes:g} min "
        f"of bakes: up to ${price * count * minutes / 60:.3f} more"
    )


def alarm_names(prefix: str, endpoint: str) -> dict[str, str]:
    """Every alarm a rollout may create for `endpoint`: suffix -> name (`invoke undeploy` removes them all)."""
    return {suffix: f"{prefix}{endpoint}-{suffix}" for suffix in ALARMS}


def alarm_requests(rc: Any, endpoint: str, variant: str) -> list[dict[str, Any]]:
    """PutMetricAlarm for each threshold set in deploy.rollout, on the new fleet's variant of `endpoint`."""
    names, requests = alarm_names(rc.alarm_prefix, endpoint), []
    for suffix, (metric, statistic, key) in ALARMS.items():
        if rc[key] is None:
            continue
        threshold = float(rc[key]) * (1000 if metric == "ModelLatency" else 1)  # ms -> microseconds
        requests.append(
            {
                "AlarmName": names[suffix],
                "AlarmDescription": f"invoke deploy --update: rolls {endpoint} back if variant {variant}'s "
                f"{metric} {statistic} exceeds deploy.rollout.{key}={rc[key]} while a step bakes",
                "Namespace": NAMESPACE,
                "MetricName": metric,
                "Dimensions": [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}],
                "Statistic": statistic,
                "Period": int(rc.alarm_period_seconds),
                "EvaluationPeriods": int(rc.alarm_evaluation_periods),
                "Threshold": threshold,
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching",  # no requests yet is not a failure
            }
        )
    return requests


def deployment_config(rollout: Rollout, alarms: list[str], dc: Any) -> dict[str, Any]:
    """UpdateEndpoint's DeploymentConfig: blue/green with CANARY or LINEAR routing, rolled back by `alarms`."""
    size = {"Type": "CAPACITY_PERCENT", "Value": rollout.percent}
    routing: dict[str, Any] = {"Type": rollout.kind, "WaitIntervalInSeconds": rollout.bake_seconds()}
    routing["CanarySize" if rollout.kind == CANARY else "LinearStepSize"] = size
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": rollout.bake_seconds(),  # the old fleet stays one more bake
            "MaximumExecutionTimeoutInSeconds": execution_seconds(rollout, dc),
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": name} for name in alarms]},
    }


def progress(desc: dict[str, Any]) -> str:
    """DescribeEndpoint as one line: its status and, while it updates, each new variant's status."""
    status = desc["EndpointStatus"]
    pending = desc.get("PendingDeploymentSummary") or {}
    steps = [
        ", ".join(filter(None, (f"{variant['VariantName']} {state['Status']}", state.get("StatusMessage"))))
        for variant in pending.get("ProductionVariants", [])
        for state in variant.get("VariantStatus", [])
    ]
    return f"{status}; new fleet: {'; '.join(steps)}" if steps else status
