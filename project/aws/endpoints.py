"""This project's endpoints: what `invoke endpoints` lists (status, uptime, cost so far, EXPIRED/IDLE)
and what `invoke undeploy` removes (an endpoint with its endpoint config and models, idempotently).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from project.aws.deploy_requests import EXPIRES_TAG, RUN_TAG, DeployError, Echo
from project.aws.rollout import remove_alarms
from project.aws.workflow import aws_task, setup
from project.core.sagemaker_names import PROJECT_TAG


def endpoint_status(sm: Any, name: str) -> dict[str, Any] | None:
    try:
        return sm.describe_endpoint(EndpointName=name)
    except sm.exceptions.ClientError as exc:
        if "Could not find" in str(exc):
            return None
        raise


@dataclass(frozen=True)
class EndpointRow:
    name: str
    status: str
    kind: str  # "ml.m5.large x 1" or "serverless 2 GB"
    run: str
    uptime_hours: float
    cost_so_far: float | None  # None: serverless, billed per request
    expired: bool
    idle: bool
    variants: tuple[Any, ...] = ()  # VariantRow, one per production variant

    def line(self) -> str:
        cost = "per request" if self.cost_so_far is None else f"${self.cost_so_far:.2f}"
        flags = " ".join(f for f, on in (("EXPIRED", self.expired), ("IDLE", self.idle)) if on)
        return (
            f"{self.name:<40} {self.status:<10} {self.kind:<18} {self.run:<30} "
            f"{self.uptime_hours:>7.2f} h {cost:>11} {flags}".rstrip()
        )


HEADER = f"{'endpoint':<40} {'status':<10} {'serving on':<18} {'run':<30} {'uptime':>9} {'cost so far':>11} flags"


def endpoint_row(ctx: Any, desc: dict[str, Any], tags: dict[str, str], now: datetime) -> EndpointRow:
    sm, dc = ctx.clients.sagemaker, ctx.cfg.deploy
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    variants = config["ProductionVariants"]
    hours = (now - desc["CreationTime"]).total_seconds() / 3600
    variant = variants[0]
    if "ServerlessConfig" in variant:
        kind, cost = f"serverless {variant['ServerlessConfig']['MemorySizeInMB'] / 1024:g} GB", None
    else:
        count = sum(int(v.get("InitialInstanceCount", 1)) for v in variants)
        kind = f"{variant['InstanceType']} x {count}"
        prices = dict(dc.prices_per_hour)
        cost = sum(
            float(prices.get(v.get("InstanceType"), 0.0)) * int(v.get("InitialInstanceCount", 1)) * hours
            for v in variants
        )
    expires = tags.get(EXPIRES_TAG)
    expired = expires is not None and now >= datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    rows = variant_rows(ctx, desc, variants, now)
    return EndpointRow(
        desc["EndpointName"],
        desc["EndpointStatus"],
        kind,
        tags.get(RUN_TAG, "?"),
        hours,
        cost,
        expired,
        sum(r.invocations for r in rows) == 0,
        tuple(rows),
    )


@dataclass(frozen=True)
class VariantRow:
    """One production variant of an endpoint, with its CloudWatch numbers over the last hour."""

    name: str
    run: str
    weight: float  # percent of the endpoint's traffic
    instances: str
    invocations: float
    errors_4xx: float
    errors_5xx: float
    latency_ms: float | None  # ModelLatency's average; None: no invocations

    def line(self) -> str:
        latency = "-" if self.latency_ms is None else f"{self.latency_ms:.1f} ms"
        return (
            f"  variant {self.name:<30} run {self.run:<24} {self.weight:>5.1f}% {self.instances:<18} "
            f"{self.invocations:>6.0f} calls {self.errors_4xx:>4.0f} 4xx {self.errors_5xx:>4.0f} 5xx {latency:>10}"
        )


VARIANT_METRICS = {  # CloudWatch AWS/SageMaker metric -> (statistic, VariantRow field)
    "Invocations": ("Sum", "invocations"),
    "Invocation4XXErrors": ("Sum", "errors_4xx"),
    "Invocation5XXErrors": ("Sum", "errors_5xx"),
    "ModelLatency": ("Average", "latency_ms"),
}


def variant_rows(ctx: Any, desc: dict[str, Any], variants: list[dict[str, Any]], now: datetime) -> list[VariantRow]:
    sm, cloudwatch = ctx.clients.sagemaker, ctx.clients.client("cloudwatch")
    live = {v["VariantName"]: v for v in desc.get("ProductionVariants", [])}
    weights = {
        v["VariantName"]: float(live.get(v["VariantName"], {}).get("CurrentWeight", v.get("InitialVariantWeight", 1.0)))
        for v in variants
    }
    total = sum(weights.values()) or 1.0
    rows = []
    for variant in variants:
        name = variant["VariantName"]
        numbers = {
            field: variant_metric(cloudwatch, desc["EndpointName"], name, metric, statistic, now)
            for metric, (statistic, field) in VARIANT_METRICS.items()
        }
        if numbers["latency_ms"] is not None:
            numbers["latency_ms"] /= 1000  # ModelLatency is in microseconds
        count = live.get(name, {}).get("CurrentInstanceCount", variant.get("InitialInstanceCount"))
        instances = "serverless" if "ServerlessConfig" in variant else f"{variant.get('InstanceType')} x {count}"
        rows.append(
            VariantRow(
                name,
                model_run(sm, variant["ModelName"]),
                weights[name] / total * 100,
                instances,
                numbers["invocations"] or 0.0,
                numbers["errors_4xx"] or 0.0,
                numbers["errors_5xx"] or 0.0,
                numbers["latency_ms"],
            )
        )
    return rows


def model_run(sm: Any, model: str) -> str:
    """The run a model serves (its run tag; ? if the model is gone)."""
    try:
        arn = sm.describe_model(ModelName=model)["ModelArn"]
    except sm.exceptions.ClientError:
        return "?"
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}.get(RUN_TAG, "?")


def variant_metric(
    cloudwatch: Any, endpoint: str, variant: str, metric: str, statistic: str, now: datetime
) -> float | None:
    """A variant's metric over the last hour (Sum or Average); None where there are no data points."""
    points = cloudwatch.get_metric_statistics(
        Namespace="AWS/SageMaker",
        MetricName=metric,
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}],
        StartTime=now - timedelta(hours=1),
        EndTime=now,
        Period=3600,
        Statistics=[statistic],
    )["Datapoints"]
    if not points:
        return None
    if statistic == "Sum":
        return sum(p["Sum"] for p in points)
    return sum(p["Average"] * p.get("SampleCount", 1) for p in points) / sum(p.get("SampleCount", 1) for p in points)


def project_endpoints(ctx: Any) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(DescribeEndpoint, tags) of every endpoint tagged with this project."""
    sm, found = ctx.clients.sagemaker, []
    for page in sm.get_paginator("list_endpoints").paginate():
        for summary in page["Endpoints"]:
            tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=summary["EndpointArn"])["Tags"]}
            if tags.get(PROJECT_TAG[0]) == PROJECT_TAG[1]:
                desc = endpoint_status(sm, summary["EndpointName"])
                if desc is not None:
                    found.append((desc, tags))
    return found


def endpoint_rows(ctx: Any) -> list[EndpointRow]:
    now = datetime.now(UTC)
    return [endpoint_row(ctx, desc, tags, now) for desc, tags in project_endpoints(ctx)]


# --- undeploy ----------------------------------------------------------------------------------


def _gone(exc: Exception) -> bool:
    return "Could not find" in str(exc) or "does not exist" in str(exc)


def delete_resources(sm: Any, created: Iterable[tuple[str, str]]) -> None:
    for kind, name in reversed(list(created)):
        delete = {"model": sm.delete_model, "config": sm.delete_endpoint_config, "endpoint": sm.delete_endpoint}[kind]
        key = {"model": "ModelName", "config": "EndpointConfigName", "endpoint": "EndpointName"}[kind]
        try:
            delete(**{key: name})
        except sm.exceptions.ClientError as exc:
            if not _gone(exc):
                raise


def remove_config(sm: Any, config: str) -> None:
    """An endpoint config and the models it names."""
    try:
        models = [v["ModelName"] for v in sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]]
    except sm.exceptions.ClientError as exc:
        if not _gone(exc):
            raise
        return
    delete_resources(sm, [*(("model", m) for m in models), ("config", config)])


def undeploy_one(sm: Any, name: str, echo: Echo, ctx: Any = None) -> None:
    """An endpoint, its config and models; with ctx, an async endpoint's scaling too (async_endpoints)."""
    desc = endpoint_status(sm, name)
    if desc is None:
        echo(f"{name}: no such endpoint (nothing to remove)")
        return
    scaled = ctx is not None and _remove_async_scaling(ctx, desc)
    delete_resources(sm, [("endpoint", name)])
    remove_config(sm, desc["EndpointConfigName"])
    echo(
        f"{name}: endpoint, endpoint config and model deleted"
        + ("; its scaling target, policies and alarm" if scaled else "")
    )


def _remove_async_scaling(ctx: Any, desc: dict[str, Any]) -> bool:
    from project.aws.async_endpoints import async_config_of, remove_scaling

    sm = ctx.clients.sagemaker
    try:
        if not async_config_of(sm, desc["EndpointConfigName"]):
            return False
    except sm.exceptions.ClientError as exc:
        if not _gone(exc):
            raise
        return False
    remove_scaling(ctx, desc["EndpointName"], [v["VariantName"] for v in desc.get("ProductionVariants", [])])
    return True


@aws_task
def endpoints_task(overrides: list[str]) -> None:
    rows = endpoint_rows(setup(overrides))
    if not rows:
        print("no endpoints of this project are up")
        return
    print(HEADER)
    for row in rows:
        print(row.line())
        for variant in row.variants:
            print(variant.line())
    if any(row.expired or row.idle for row in rows):
        print(
            "EXPIRED: older than deploy.ttl_hours (`invoke undeploy --expired`); IDLE: no invocations in the last hour"
        )


@aws_task
def undeploy_task(overrides: list[str], names: list[str], everything: bool, expired: bool) -> None:
    if not (names or everything or expired):
        raise DeployError("name the endpoint(s) to remove, or pass --all or --expired; `invoke endpoints` lists them")
    ctx = setup(overrides)
    chosen = list(names)
    if everything or expired:
        chosen += [row.name for row in endpoint_rows(ctx) if everything or row.expired]
        if not chosen:
            print("no endpoints to remove")
    cloudwatch, prefix = ctx.clients.client("cloudwatch"), ctx.cfg.deploy.rollout.alarm_prefix
    for name in dict.fromkeys(chosen):
        undeploy_one(ctx.clients.sagemaker, name, print, ctx)
        removed = remove_alarms(cloudwatch, prefix, name)  # a guarded rollout's (project/aws/rollout.py)
        if removed:
            print(f"{name}: alarms {', '.join(removed)} deleted")
