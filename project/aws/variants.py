"""A/B traffic on one endpoint: `invoke deploy B deploy.endpoint_name=EP --traffic 10` adds run B as a
second production variant (a new endpoint config holding both, UpdateEndpoint: no downtime);
`invoke traffic EP B=50 A=50` shifts the weights (UpdateEndpointWeightsAndCapacities) and
`--retire A` ends with the others only (a new config, UpdateEndpoint); `invoke compare --endpoint
EP labelled/` scores each variant on the same labelled images. Requests and statistics:
variant_requests.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from project.aws.deploy import _confirm, wait_endpoint
from project.aws.deploy_image import echo_image, serving_image
from project.aws.deploy_requests import (
    DeployError,
    Echo,
    check_instance,
    model_request,
    price_line,
    resource_tags,
    safe_name,
    versioned_name,
)
from project.aws.deploy_source import model_data_for, resolve_source
from project.aws.endpoints import delete_resources, endpoint_status
from project.aws.variant_requests import (
    WEIGHT_TOTAL,
    Accuracy,
    check_traffic,
    check_variant,
    parse_weights,
    split_weights,
    variant_name,
    variants_config_request,
    verdict,
)
from project.aws.workflow import aws_task, setup


def _live(sm: Any, endpoint: str, doing: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The endpoint (InService) and its config's variants; one line if there is none to change."""
    desc = endpoint_status(sm, endpoint)
    if desc is None:
        raise DeployError(
            f"no endpoint {endpoint} to {doing}: `invoke endpoints` lists them; `invoke deploy` makes one"
        )
    if desc["EndpointStatus"] != "InService":
        raise DeployError(f"endpoint {endpoint} is {desc['EndpointStatus']}: wait until it is InService")
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    return desc, config["ProductionVariants"]


def _current_weights(desc: dict[str, Any], variants: list[dict[str, Any]]) -> dict[str, float]:
    live = {v["VariantName"]: float(v.get("CurrentWeight", 1.0)) for v in desc.get("ProductionVariants", [])}
    return {v["VariantName"]: live.get(v["VariantName"], float(v.get("InitialVariantWeight", 1.0))) for v in variants}


def _move(sm: Any, endpoint: str, desc: dict[str, Any], request: dict[str, Any], dc: Any, echo: Echo) -> None:
    """UpdateEndpoint to the config `request` makes, wait, then delete the old config (not its models)."""
    name = request["EndpointConfigName"]
    sm.create_endpoint_config(**request)
    try:
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=name)
    except BaseException:
        delete_resources(sm, [("config", name)])
        raise
    done = wait_endpoint(sm, endpoint, dc, echo)
    if done["EndpointStatus"] != "InService" or done["EndpointConfigName"] != name:
        raise DeployError(
            f"endpoint {endpoint} did not move to {name}: {done.get('FailureReason', done['EndpointStatus'])}"
        )
    delete_resources(sm, [("config", desc["EndpointConfigName"])])


def add_variant(
    ctx: Any, spec: str | None, percent: str | int, yes: bool, confirm: Callable[[str], str] = input, echo: Echo = print
) -> str | None:
    """Serve run `spec` beside the endpoint's variants with `percent` of the traffic."""
    dc, sm = ctx.cfg.deploy, ctx.clients.sagemaker
    share = check_traffic(percent)
    check_instance(dc.instance, dc)
    if not dc.endpoint_name:
        raise DeployError("--traffic adds a variant to an endpoint: name it with deploy.endpoint_name=...")
    endpoint = safe_name(dc.endpoint_name)
    desc, variants = _live(sm, endpoint, "add a variant to")
    source = resolve_source(ctx, spec)
    variant = variant_name(source.name)
    if variant in [v["VariantName"] for v in variants]:
        raise DeployError(
            f"endpoint {endpoint} already serves {variant}: `invoke traffic {endpoint} ...` sets its share"
        )
    if any("ServerlessConfig" in v for v in variants):
        raise DeployError(f"endpoint {endpoint} is serverless: variants with traffic shares need instances")
    image, why = serving_image(ctx.infra.region, dc, dc.instance, source)
    echo(f"add {source.name} (config {source.config_hash}) to endpoint {endpoint} as variant {variant}, {share:g}%")
    echo_image(image, why, echo)
    echo(f"cost: {price_line(dc, False)}, beside what the endpoint costs now")
    if not _confirm(yes, "Deploy?", confirm, echo):
        return None
    # The others keep their proportions among themselves and share the rest.
    old = _current_weights(desc, variants)
    total = sum(old.values()) or 1.0
    kept = [{**v, "InitialVariantWeight": old[v["VariantName"]] / total * (WEIGHT_TOTAL - share)} for v in variants]
    now = datetime.now(UTC)
    tags = resource_tags(source, dc, False, now)
    model_data = model_data_for(ctx, source, echo)
    name = versioned_name(endpoint, now)
    sm.create_model(**model_request(name, image, model_data, ctx.infra.role_arn, tags))
    new = {
        "VariantName": variant,
        "ModelName": name,
        "InstanceType": dc.instance,
        "InitialInstanceCount": int(dc.instance_count),
        "InitialVariantWeight": share,
    }
    endpoint_tags = {k: v for k, v in tags.items() if k != "run"}  # the endpoint's run tag stays its first run's
    try:
        _move(sm, endpoint, desc, variants_config_request(name, [*kept, new], endpoint_tags), dc, echo)
    except BaseException:
        if (endpoint_status(sm, endpoint) or {}).get("EndpointConfigName") != name:
            delete_resources(sm, [("model", name)])
        raise
    echo(f"endpoint {endpoint} serves {variant} with {share:g}% of the traffic")
    echo(f"shift it: invoke traffic {endpoint} {variant}=50 {' '.join(f'{v}=...' for v in old)}")
    return variant


def traffic(ctx: Any, endpoint: str, pairs: list[str], retire: list[str], echo: Echo = print) -> None:
    """Set the variants' weights (percent); retire the named ones (they must get 0)."""
    sm, dc = ctx.clients.sagemaker, ctx.cfg.deploy
    desc, variants = _live(sm, endpoint, "shift traffic on")
    names = [v["VariantName"] for v in variants]
    retired = [check_variant(r, names, endpoint) for r in retire]
    weights = parse_weights(pairs, names, endpoint)
    for name in retired:
        if weights.get(name, 0.0) != 0.0:
            raise DeployError(f"--retire {name} but {name}={weights[name]:g}: a retired variant gets no traffic")
    staying = [n for n in names if n not in retired]
    if not staying:
        raise DeployError(f"--retire would leave endpoint {endpoint} no variant: `invoke undeploy {endpoint}` ends it")
    missing = [n for n in staying if n not in weights]
    if missing:
        raise DeployError(f"give every variant that stays a weight: {', '.join(missing)} has none")
    if retired:
        gone = [v for v in variants if v["VariantName"] in retired]
        kept = [{**v, "InitialVariantWeight": weights[v["VariantName"]]} for v in variants if v not in gone]
        now = datetime.now(UTC)
        old = sm.list_tags(ResourceArn=desc["EndpointArn"])["Tags"]
        tags = {t["Key"]: t["Value"] for t in old if not t["Key"].startswith("aws:")}
        _move(sm, endpoint, desc, variants_config_request(versioned_name(endpoint, now), kept, tags), dc, echo)
        delete_resources(sm, [("model", v["ModelName"]) for v in gone])
        echo(f"retired {', '.join(retired)}: its model and the old endpoint config are deleted")
    else:
        live = {v["VariantName"]: v for v in desc.get("ProductionVariants", [])}
        desired = []
        for name, weight in weights.items():
            entry: dict[str, Any] = {"VariantName": name, "DesiredWeight": weight}
            if live.get(name, {}).get("CurrentInstanceCount"):
                entry["DesiredInstanceCount"] = int(live[name]["CurrentInstanceCount"])
            desired.append(entry)
        sm.update_endpoint_weights_and_capacities(EndpointName=endpoint, DesiredWeightsAndCapacities=desired)
        wait_endpoint(sm, endpoint, dc, echo)
    shares = ", ".join(f"{n} {weights[n]:g}%" for n in staying)
    echo(f"endpoint {endpoint}: {shares}")


# --- compare the variants on labelled images ------------------------------------------------------


def labelled_images(folder: Path) -> list[tuple[Path, int]]:
    """(image, class) of a folder of class subfolders: named by class index, else indexed in sorted order."""
    from project.serving.predict import expand_images

    if not folder.is_dir():
        raise DeployError(f"{folder} is not a folder: give a folder of class subfolders (0/, 1/, ...) of images")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DeployError(f"{folder} has no class subfolders: put each class's images in <folder>/<class>/")
    numbered = all(c.name.isdigit() for c in classes)
    found: list[tuple[Path, int]] = []
    for index, sub in enumerate(classes):
        images = expand_images(str(sub)) if any(sub.iterdir()) else []
        found += [(image, int(sub.name) if numbered else index) for image in images]
    if not found:
        raise DeployError(f"{folder}'s class subfolders hold no PNG or JPEG images")
    return found


def compare_variants(ctx: Any, endpoint: str, folder: Path, echo: Echo = print) -> list[Accuracy]:
    from project.aws.endpoint_predict import answer_label, call_endpoint
    from project.serving.predict import check_images

    sm = ctx.clients.sagemaker
    _, variants = _live(sm, endpoint, "compare the variants of")
    images = labelled_images(folder)
    check_images([p for p, _ in images])
    scores = []
    for variant in [v["VariantName"] for v in variants]:
        correct = 0
        for path, label in images:
            answer, served = call_endpoint(ctx, endpoint, path, False, variant)
            if served != variant:
                raise DeployError(f"endpoint {endpoint} answered {path} with {served}, not the variant {variant} asked")
            correct += answer_label(answer, path, endpoint) == label
        scores.append(Accuracy(variant, correct, len(images)))
    echo(f"{len(images)} labelled images from {folder}, each sent to every variant of {endpoint}")
    for score in scores:
        echo(score.line())
    if len(scores) == 2:
        echo(verdict(scores[0], scores[1]))
    return scores


@aws_task
def add_variant_task(overrides: list[str], spec: str | None, percent: str, yes: bool, others: bool) -> None:
    """`invoke deploy ... --traffic N`; others: --serverless or --update given too."""
    if others:
        raise DeployError("--traffic adds a variant to a live endpoint: drop --serverless/--update")
    check_traffic(percent)
    add_variant(setup(overrides), spec, percent, yes)


@aws_task
def traffic_task(tokens: list[str], endpoint: str, retire: list[str]) -> None:
    pairs, overrides = split_weights(tokens)
    traffic(setup(overrides), endpoint, pairs, retire)


@aws_task
def compare_task(overrides: list[str], endpoint: str, folder: str) -> None:
    compare_variants(setup(overrides), endpoint, Path(folder))
