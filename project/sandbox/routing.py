"""An endpoint's production variants as SageMaker routes to them, played for serving.py's Hosting.

* Each request goes to one variant: the one its TargetVariant names (a ValidationError if the
  endpoint has none of that name), else one drawn by the variants' current weights from a seeded
  generator (SANDBOX_ROUTING_SEED, default 0), so that a run of requests splits the same way each time;
* the answer names it (x-Amzn-Invoked-Production-Variant);
* each request is published to CloudWatch's AWS/SageMaker namespace per EndpointName and
  VariantName, as SageMaker does: Invocations, Invocation4XXErrors, Invocation5XXErrors (0 or 1)
  and ModelLatency (microseconds).
"""

from __future__ import annotations

import os
import random
import threading
from typing import Any

SEED_ENV = "SANDBOX_ROUTING_SEED"
TARGET_HEADER = "X-Amzn-SageMaker-Target-Variant"
INVOKED_HEADER = "x-Amzn-Invoked-Production-Variant"
NAMESPACE = "AWS/SageMaker"


class Router:
    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(int(os.environ.get(SEED_ENV, "0")) if seed is None else seed)
        self._lock = threading.Lock()

    def choose(self, endpoint: Any, serving: list[str], target: str | None) -> str:
        """The variant (of those `serving`) that answers a request to `endpoint`."""
        from moto.sagemaker.exceptions import ValidationError

        if target:
            if target not in serving:
                raise ValidationError(
                    message=f"Target variant {target} not found for endpoint {endpoint.endpoint_name}: "
                    f"its variants are {', '.join(serving)}."
                )
            return target
        weights = {v["VariantName"]: float(v.get("CurrentWeight", 0.0)) for v in endpoint.production_variants}
        names = [n for n in serving if weights.get(n, 0.0) > 0] or serving
        with self._lock:
            return self._random.choices(names, [weights.get(n, 1.0) or 1.0 for n in names])[0]


def live_variants(endpoint: Any, config: Any) -> list[dict[str, Any]]:
    """DescribeEndpoint's ProductionVariants for a config now served: moto's, with each weight kept
    (moto drops a weight of 0 and leaves an unset one unset; SageMaker's default is 1.0)."""
    variants = endpoint._process_production_variants(config.production_variants)
    for live, asked in zip(variants, config.production_variants, strict=True):
        weight = float(asked.get("InitialVariantWeight", 1.0))
        if "ServerlessConfig" not in asked:
            live["CurrentWeight"] = live["DesiredWeight"] = weight
    return variants


def publish(account: str, region: str, endpoint: str, variant: str, status: int, seconds: float) -> None:
    """One request's metrics in moto's CloudWatch, as SageMaker publishes them."""
    from moto.cloudwatch.models import cloudwatch_backends

    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
    values = {
        "Invocations": (1.0, "None"),
        "Invocation4XXErrors": (float(400 <= status < 500), "None"),
        "Invocation5XXErrors": (float(status >= 500), "None"),
        "ModelLatency": (seconds * 1e6, "Microseconds"),
    }
    metrics = [
        {"MetricName": name, "Value": value, "Unit": unit, "Dimensions": dimensions}
        for name, (value, unit) in values.items()
    ]
    cloudwatch_backends[account][region].put_metric_data(NAMESPACE, metrics)
