"""`invoke deploy`: serve a run on a SageMaker endpoint: say the image and the cost, confirm, create the
model, endpoint config and endpoint (or move an endpoint to a new config with --update), wait, and say
how to remove it; what it created is removed again if it fails.

The rest of serving, beside this module: deploy_requests (names, tags, requests, prices: pure),
deploy_image (the inference image), deploy_source (the run or job served, its model archive),
endpoints (`invoke endpoints`, `invoke undeploy`), endpoint_predict (`invoke predict --endpoint`),
batch (`invoke batch-predict`).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from project.aws.async_endpoints import (
    add_scaling,
    async_config_of,
    async_inference_config,
    async_price_line,
    check_async,
    check_async_config,
    remove_scaling,
)
from project.aws.deploy_image import echo_image, serving_image
from project.aws.deploy_requests import (
    DeployError,
    Echo,
    Source,
    check_instance,
    check_serverless,
    endpoint_config_request,
    model_request,
    price_line,
    resource_tags,
    safe_name,
    tag_list,
    versioned_name,
)
from project.aws.deploy_source import model_data_for, resolve_source
from project.aws.endpoints import delete_resources, endpoint_status, remove_config
from project.aws.registry import MODEL_SPEC, registry_source
from project.aws.rollout import put_alarms, remove_alarms, rolled_back
from project.aws.rollout_requests import Rollout, bake_cost_line, check_rollout, deployment_config, progress
from project.aws.workflow import aws_task, context
from project.core.config import compose

ENDPOINT_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")


def _confirm(yes: bool, question: str, confirm: Callable[[str], str], echo: Echo) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise DeployError("not a terminal, so no one to confirm the cost: pass --yes")
    if confirm(f"{question} [y/N] ").strip().lower() in ("y", "yes"):
        return True
    echo("nothing created")
    return False


def deploy(
    ctx: Any,
    spec: str | None,
    serverless: bool = False,
    update: bool = False,
    yes: bool = False,
    async_: bool = False,
    confirm: Callable[[str], str] = input,
    echo: Echo = print,
    rollout: Rollout | None = None,
    source: Source | None = None,
    started: Callable[[str, str | None], None] | None = None,
) -> str | None:
    """Serve `spec` (or `source`, resolved already) on deploy.endpoint_name; the endpoint's name, None if
    not confirmed. `started(config, previous config)` is told once the create or update is sent."""
    dc, sm = ctx.cfg.deploy, ctx.clients.sagemaker
    if async_:
        check_async(serverless, update, None)
        check_async_config(dc)
    if serverless:
        check_serverless(dc)
    else:
        check_instance(dc.instance, dc)
    from_registry = spec and spec.startswith(MODEL_SPEC)  # model:latest, model:N
    if source is None:
        source = registry_source(ctx, spec) if spec and from_registry else resolve_source(ctx, spec)
    if source.image:  # a registered version: the image it was registered (and evaluated) with
        image, why = source.image, f"registered with {source.version}"
    else:
        image, why = serving_image(ctx.infra.region, dc, None if serverless else dc.instance, source)
    endpoint = safe_name(dc.endpoint_name or source.name)
    existing = endpoint_status(sm, endpoint)
    if existing and not update:
        raise DeployError(
            f"endpoint {endpoint} exists ({existing['EndpointStatus']}): pass --update to move it to {source.name} "
            "with no downtime, or name a new one with deploy.endpoint_name=..."
        )
    if update and not existing:
        raise DeployError(f"no endpoint {endpoint} to update: drop --update to create it")
    if update and existing and async_config_of(sm, existing["EndpointConfigName"]):
        raise DeployError(
            f"endpoint {endpoint} is asynchronous and is not moved to another run: "
            f"`invoke undeploy {endpoint}` and deploy again, or name a new one with deploy.endpoint_name=..."
        )
    registered = f", {source.version}" if source.version else ""
    echo(
        f"{'update' if existing else 'deploy'} {source.name} (config {source.config_hash}{registered}) "
        f"as endpoint {endpoint}"
    )
    echo_image(image, why, echo)
    if rollout:
        echo(rollout.plan())
    cost = async_price_line(dc) if async_ else price_line(dc, serverless)
    echo(f"cost: {cost}")
    if rollout:
        echo(f"cost: {bake_cost_line(rollout, dc)}")
    if not _confirm(yes, "Deploy?", confirm, echo):
        return None
    now = datetime.now(UTC)
    tags = resource_tags(source, dc, serverless or async_, now)  # no expiry where idle costs nothing
    model_data = model_data_for(ctx, source, echo)
    name = versioned_name(endpoint, now)
    created: list[tuple[str, str]] = []
    cloudwatch, alarms = ctx.clients.client("cloudwatch"), []
    guard: dict[str, Any] = {}  # UpdateEndpoint's DeploymentConfig for a guarded rollout
    try:
        sm.create_model(**model_request(name, image, model_data, ctx.infra.role_arn, tags))
        created.append(("model", name))
        config = endpoint_config_request(name, name, dc, serverless, tags, safe_name(source.name))
        if async_:
            config["AsyncInferenceConfig"] = async_inference_config(dc, ctx.infra.artifacts_bucket, endpoint)
        sm.create_endpoint_config(**config)
        created.append(("config", name))
        if existing:
            if rollout:
                alarms = put_alarms(cloudwatch, dc.rollout, endpoint, safe_name(source.name))
                echo(f"alarms on the new fleet: {', '.join(alarms)}")
                guard = {"DeploymentConfig": deployment_config(rollout, alarms, dc)}
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=name, **guard)
        else:
            sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=name, Tags=tag_list(tags))
            created.append(("endpoint", endpoint))
    except BaseException:
        delete_resources(sm, created)
        if rollout:  # any alarm put before the failure
            remove_alarms(cloudwatch, dc.rollout.alarm_prefix, endpoint)
        raise
    previous = existing["EndpointConfigName"] if existing else None
    if started:  # sent: from here the endpoint goes on whether this process waits or not
        started(name, previous)
    try:
        desc = wait_endpoint(sm, endpoint, dc, echo, rollout)
    except KeyboardInterrupt:
        if existing:
            raise KeyboardInterrupt(
                f"endpoint {endpoint} goes on updating to {source.name} (endpoint config {name}); "
                f"its previous config {existing['EndpointConfigName']} and model stay (they cost nothing): "
                f"`invoke endpoints` shows it"
            ) from None
        raise KeyboardInterrupt(
            f"endpoint {endpoint} goes on being created and bills once InService: "
            f"`invoke undeploy {endpoint}` removes it"
        ) from None
    conclude(sm, cloudwatch, dc, endpoint, source.name, created, previous, desc, alarms, tag_list(tags))
    if async_:
        _scale_async(ctx, endpoint, safe_name(source.name), created, echo)
    echo(f"endpoint {endpoint} is InService ({source.name})")
    if alarms:
        echo(f"alarms {', '.join(alarms)} stay on {source.name} until `invoke undeploy {endpoint}`")
    echo(f"cost: {cost}")
    echo(f"try it: invoke predict --endpoint {endpoint} examples/digits")
    echo(f"remove it: invoke undeploy {endpoint}")
    return endpoint


def conclude(
    sm: Any,
    cloudwatch: Any,
    dc: Any,
    endpoint: str,
    run: str,
    created: list[tuple[str, str]],
    previous: str | None,
    desc: dict[str, Any],
    alarms: list[str],
    tags: list[dict[str, str]],
) -> None:
    """An endpoint settled (`desc`) after the create or update that `created` its model and config: unless it
    serves that config, they (and the rollout's alarms) are deleted and the error raised; else the
    `previous` config and its model, which serve nothing now, are deleted and the endpoint is re-tagged."""
    name = next(n for kind, n in created if kind == "config")
    if desc["EndpointStatus"] != "InService" or desc["EndpointConfigName"] != name:
        failed = (
            rolled_back(cloudwatch, alarms, run, endpoint, desc)  # an update, InService on the old config
            if desc["EndpointStatus"] == "InService"
            else DeployError(
                f"endpoint {endpoint} is {desc['EndpointStatus']}: {desc.get('FailureReason', 'no reason given')}"
            )
        )
        delete_resources(sm, created)
        if alarms:
            remove_alarms(cloudwatch, dc.rollout.alarm_prefix, endpoint)
        raise failed
    if previous:
        remove_config(sm, previous)
        sm.add_tags(ResourceArn=desc["EndpointArn"], Tags=tags)


def _scale_async(ctx: Any, endpoint: str, variant: str, created: list[tuple[str, str]], echo: Echo) -> None:
    """The async endpoint's scaling; if that fails, nothing of this deploy is left."""
    try:
        add_scaling(ctx, endpoint, variant, echo)
    except BaseException:
        remove_scaling(ctx, endpoint, [variant])
        delete_resources(ctx.clients.sagemaker, created)
        raise


def wait_until_settled(
    describe: Callable[[], dict[str, Any]],
    status_key: str,
    busy: Any,
    what: str,
    dc: Any,
    echo: Echo,
    give_up: str,
    line: Callable[[dict[str, Any]], str] | None = None,
    extra_seconds: float = 0.0,
) -> dict[str, Any]:
    """Poll `describe` until its status leaves `busy`, printing each change (of `line`, where given); after
    deploy.wait_minutes (and `extra_seconds`) give up with `give_up` (the resource goes on)."""
    start, last = time.monotonic(), None
    while True:
        desc = describe()
        status, elapsed = desc[status_key], time.monotonic() - start
        said = line(desc) if line else status
        if said != last:
            echo(f"{what}: {said} ({elapsed:.0f} s)")
            last = said
        if status not in busy:
            return desc
        if elapsed > float(dc.wait_minutes) * 60 + extra_seconds:
            waited = float(dc.wait_minutes) + extra_seconds / 60
            raise DeployError(f"{what} still {status} after {waited:g} min{give_up}")
        time.sleep(float(dc.poll_seconds))


def wait_endpoint(sm: Any, name: str, dc: Any, echo: Echo, rollout: Rollout | None = None) -> dict[str, Any]:
    """Until the endpoint settles; a rollout's steps are printed as they change and its bakes waited for too."""
    hint = f": see `invoke endpoints`; `invoke undeploy {name}` removes it"
    describe = functools.partial(sm.describe_endpoint, EndpointName=name)
    planned = rollout.planned_seconds() if rollout else 0
    return wait_until_settled(
        describe, "EndpointStatus", ENDPOINT_BUSY, f"endpoint {name}", dc, echo, hint, progress, planned
    )


@aws_task
def deploy_task(
    overrides: list[str],
    spec: str | None,
    serverless: bool,
    update: bool,
    yes: bool,
    async_: bool = False,
    canary: str | None = None,
    linear: str | None = None,
    bake: str | None = None,
) -> None:
    cfg = compose(overrides)  # the rollout's flags are checked before the first AWS call
    rollout = check_rollout(canary, linear, bake, update, serverless, cfg.deploy)
    deploy(context(cfg), spec, serverless=serverless, update=update, yes=yes, async_=async_, rollout=rollout)
