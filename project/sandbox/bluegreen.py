"""SageMaker's blue/green update with deployment guardrails, played for serving.py's Hosting:
UpdateEndpoint with a DeploymentConfig whose TrafficRoutingConfiguration is CANARY, LINEAR or ALL_AT_ONCE.

* UpdateEndpoint is refused (ValidationError) when an alarm of AutoRollbackConfiguration does not
  exist, or a step is not a capacity percent in SageMaker's range (a canary 1-50, a linear step 10-50);
* the new config's variants start as a fleet of their own (green) beside the serving one (blue),
  even where a model is unchanged; the endpoint is Updating, and DescribeEndpoint's
  PendingDeploymentSummary says each new variant's status (Creating, then Baking with its share of
  the traffic in StatusMessage), LastDeploymentConfig the DeploymentConfig;
* traffic shifts to green in steps: CANARY's CanarySize then the rest, LINEAR's LinearStepSize at a
  time, ALL_AT_ONCE all of it. A request goes to green with the share shifted so far (a seeded draw,
  SANDBOX_ROUTING_SEED), then to a variant of that fleet as routing.py routes it (TargetVariant may
  name a variant of either fleet);
* each step bakes WaitIntervalInSeconds, the last TerminationWaitInSeconds (the old fleet kept). While
  it bakes, an alarm in ALARM (moto's CloudWatch: a test sets one with SetAlarmState) rolls the update
  back: RollingBack, all traffic to blue, green stops, InService on the old config;
* after the last bake green serves alone: InService on the new config, blue stops.

Bakes last their seconds times SANDBOX_TIME_SCALE (default 1), so that a test bakes a "minute" in a
fraction of a second while the code under test sends the real seconds.
"""

from __future__ import annotations

import functools
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from project.sandbox.routing import SEED_ENV

TIME_SCALE_ENV = "SANDBOX_TIME_SCALE"
ALARM_CHECK_SECONDS = 0.05  # how often a bake looks at its alarms
STEP_PERCENTS = {"CANARY": ("CanarySize", 1, 50), "LINEAR": ("LinearStepSize", 10, 50)}


def guarded(deployment: dict[str, Any] | None) -> bool:
    """An update shifted blue/green (else: the plain update serving.py plays)."""
    return bool(deployment and deployment.get("BlueGreenUpdatePolicy"))


def shares(routing: dict[str, Any]) -> list[float]:
    """The share of the traffic on the new fleet after each step."""
    kind = routing["Type"]
    if kind == "ALL_AT_ONCE":
        return [1.0]
    size = routing[STEP_PERCENTS[kind][0]]["Value"] / 100
    if kind == "CANARY":
        return [size, 1.0]
    return [min(1.0, size * (i + 1)) for i in range(math.ceil(round(1 / size, 9)))]


def time_scale() -> float:
    return float(os.environ.get(TIME_SCALE_ENV, "1"))


@dataclass
class Shift:
    """One endpoint's update in progress: its new fleet and the share of the traffic it takes."""

    green: dict[str, Any] = field(default_factory=dict)  # variant name -> its ModelServer
    share: float = 0.0
    ended: threading.Event = field(default_factory=threading.Event)  # deleted, or the sandbox closing


class BlueGreen:
    def __init__(self, hosting: Any) -> None:
        self.hosting = hosting
        self.shifts: dict[str, Shift] = {}  # endpoint name -> its update in progress
        self._lock = threading.Lock()
        self._random = random.Random(int(os.environ.get(SEED_ENV, "0")))

    # --- UpdateEndpoint --------------------------------------------------------------------------

    def check(self, backend: Any, deployment: dict[str, Any]) -> None:
        from moto.sagemaker.exceptions import ValidationError

        routing = deployment["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
        if routing["Type"] in STEP_PERCENTS:
            key, low, high = STEP_PERCENTS[routing["Type"]]
            size = routing.get(key) or {}
            if size.get("Type") != "CAPACITY_PERCENT" or not low <= size.get("Value", 0) <= high:
                raise ValidationError(message=f"{key} must be a CAPACITY_PERCENT of {low}-{high} here, not {size}.")
        missing = [name for name in self._alarm_names(deployment) if name not in self._alarms(backend)]
        if missing:
            raise ValidationError(message=f"CloudWatch alarm(s) not found: {', '.join(missing)}.")

    def run(self, backend: Any, endpoint: Any, config_name: str, deployment: dict[str, Any]) -> None:
        """The update from start to InService (on the new config, or on the old one rolled back)."""
        name = endpoint.endpoint_name
        policy = deployment["BlueGreenUpdatePolicy"]
        routing = policy["TrafficRoutingConfiguration"]
        variants = backend.endpoint_configs[config_name].production_variants
        pending = functools.partial(_pending, endpoint, config_name, [v["VariantName"] for v in variants])
        endpoint.last_deployment_config = deployment
        shift = Shift()
        with self._lock:
            self.shifts[name] = shift
        pending("Creating", "starting the new fleet")
        try:
            for variant in variants:
                folder = self.hosting.workdir / name / config_name / variant["VariantName"]
                shift.green[variant["VariantName"]] = self.hosting.start(backend, variant["ModelName"], folder)
        except Exception as exc:  # noqa: BLE001 - the update fails with the reason, as on SageMaker
            self._end(name, shift)
            endpoint.failure_reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            _settle(endpoint)
            return
        steps = shares(routing)
        last_wait = policy.get("TerminationWaitInSeconds", 0)  # the old fleet kept after the last step
        waits = [routing.get("WaitIntervalInSeconds", 0)] * (len(steps) - 1) + [last_wait]
        for share, wait in zip(steps, waits, strict=True):
            with self._lock:
                shift.share = share
            pending("Baking", f"{share:.0%} of the traffic, baking {wait} s")
            tripped = self._bake(backend, deployment, wait * time_scale(), shift.ended)
            if shift.ended.is_set():  # deleted, or the sandbox closing: drop() stopped the new fleet
                self._end(name, shift)
                return
            if tripped:
                endpoint.endpoint_status = "RollingBack"
                pending("Deleting", f"rolling back: {', '.join(tripped)} in ALARM")
                self._end(name, shift)
                _settle(endpoint)
                return
        endpoint.pending_deployment_summary = None
        self.hosting.switch(backend, endpoint, config_name, dict(shift.green))
        with self._lock:
            self.shifts.pop(name, None)

    def _bake(self, backend: Any, deployment: dict[str, Any], seconds: float, ended: threading.Event) -> list[str]:
        """Wait `seconds` unless an alarm goes off first (its names) or the update ends ([])."""
        deadline, names = time.monotonic() + seconds, self._alarm_names(deployment)
        while True:
            alarms = self._alarms(backend)
            tripped = [n for n in names if n in alarms and alarms[n].state_value == "ALARM"]
            left = deadline - time.monotonic()
            if tripped or left <= 0 or ended.wait(min(ALARM_CHECK_SECONDS, left)):
                return tripped

    @staticmethod
    def _alarm_names(deployment: dict[str, Any]) -> list[str]:
        return [a["AlarmName"] for a in deployment.get("AutoRollbackConfiguration", {}).get("Alarms", [])]

    @staticmethod
    def _alarms(backend: Any) -> dict[str, Any]:
        from moto.cloudwatch.models import cloudwatch_backends

        return cloudwatch_backends[backend.account_id][backend.region_name].alarms

    def _end(self, name: str, shift: Shift) -> None:
        """All traffic back to the old fleet; the new one stops."""
        with self._lock:
            if self.shifts.get(name) is shift:
                del self.shifts[name]
        for server in shift.green.values():
            server.stop()

    # --- serving, DeleteEndpoint, closing ------------------------------------------------------

    def fleet(self, name: str, blue: dict[str, Any], target: str | None) -> dict[str, Any]:
        """The servers one request to `name` may go to: mid-update, the new fleet's by its share."""
        with self._lock:
            shift = self.shifts.get(name)
            if shift is None or shift.share == 0.0:
                return blue
            if target:
                return {**blue, **shift.green}
            return dict(shift.green) if self._random.random() < shift.share else blue

    def drop(self, name: str) -> None:
        """DeleteEndpoint: its update ends and its new fleet stops."""
        with self._lock:
            shift = self.shifts.pop(name, None)
        if shift is not None:
            shift.ended.set()
            for server in shift.green.values():
                server.stop()

    def close(self) -> None:
        for name in list(self.shifts):
            self.drop(name)


def _pending(endpoint: Any, config_name: str, variants: list[str], status: str, message: str) -> None:
    """DescribeEndpoint's PendingDeploymentSummary: each new variant's status."""
    from moto.core.utils import utcnow

    now = utcnow()
    endpoint.pending_deployment_summary = {
        "EndpointConfigName": config_name,
        "ProductionVariants": [
            {"VariantName": v, "VariantStatus": [{"Status": status, "StatusMessage": message, "StartTime": now}]}
            for v in variants
        ],
        "StartTime": now,
    }


def _settle(endpoint: Any) -> None:
    """InService on the config it served before."""
    from moto.core.utils import utcnow

    endpoint.pending_deployment_summary = None
    endpoint.endpoint_status = "InService"
    endpoint.last_modified_time = utcnow()
