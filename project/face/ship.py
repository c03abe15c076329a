"""`invoke ship <sweep> deploy.endpoint_name=EP`: a SageMaker sweep's best job to a guarded endpoint.

The stages, each the command another task runs alone:
1. choose: the sweep's best completed job by sweep.objective / sweep.direction (its results table's order);
2. register: `invoke register <job>`, through the evaluation gate (deploy.gate), as PendingManualApproval;
3. deploy: `invoke deploy model:N --update --canary N --bake M` of that version (a canary that the
   rollout's alarms roll back), or a new endpoint where there is none;
4. promote: `invoke approve` of the version once the endpoint serves it.

Each stage, once done, is written to runs/<sweep>/ship-<endpoint>.json (`record_path`), beside the
sweep's results table where `invoke fetch --sweep` puts it: a re-run reads it and skips what is done.
A local file, not tags on the model package or the endpoint: it is written before anything exists
to tag (the choice), it needs no IAM grant, and a file is what a user finds and removes. The state it
records is checked against AWS on a re-run (a canary interrupted while baking is followed to its end).
A failed gate leaves nothing; a canary rolled back leaves the endpoint on its old model and the version
Rejected, and removes the record, so that the same command tries anew.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from project.core.atomic import write_atomically
from project.core.errors import UserError
from project.core.sweep_jobs import JobResult
from project.face.sweep_results import ranked

Echo = Callable[[str], None]
STAGES = ("registered", "deploying", "deployed", "promoted")  # in order; "" before the first
RECORD_PREFIX = "ship-"


class ShipError(UserError):
    pass


@dataclass
class Record:
    """What `invoke ship` of one sweep to one endpoint has done so far."""

    sweep: str
    endpoint: str
    job: str  # the best completed job (a SageMaker training job name)
    objective: str
    value: float
    completed: int  # the sweep's completed jobs it was chosen from
    stage: str = ""  # the last stage done
    version: str | None = None  # GROUP/VERSION, once registered
    config: str | None = None  # the endpoint config (and model) the deploy created, once sent
    previous: str | None = None  # the config the endpoint served before (None: the deploy created it)

    def done(self, stage: str) -> bool:
        return bool(self.stage) and STAGES.index(self.stage) >= STAGES.index(stage)


def record_path(runs_dir: Path, sweep: str, endpoint: str) -> Path:
    return runs_dir / sweep / f"{RECORD_PREFIX}{endpoint}.json"


def read_record(path: Path) -> Record | None:
    if not path.is_file():
        return None
    try:
        return Record(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        raise ShipError(f"{path} is not a record of `invoke ship`: remove it to start the ship anew") from None


def write_record(path: Path, record: Record) -> None:
    write_atomically(path, json.dumps(asdict(record), indent=2) + "\n")


def best_job(results: Sequence[JobResult], objective: str, direction: str, sweep: str) -> JobResult:
    """The sweep's best completed job by its objective, or a ShipError saying why there is none."""
    done = [r for r in results if r.ok]
    if not done:
        statuses = ", ".join(sorted({r.status for r in results})) or "none"
        raise ShipError(f"sweep {sweep} has no completed job (its {len(results)} job(s): {statuses}): nothing to ship")
    scored = [r for r in done if not math.isnan(r.metrics.get(objective, math.nan))]
    if not scored:
        reported = ", ".join(sorted({k for r in done for k in r.metrics})) or "no metrics"
        raise ShipError(
            f"sweep.objective={objective}: no completed job of sweep {sweep} reported it "
            f"(they report {reported}): give sweep.objective=<one of those>"
        )
    return ranked(scored, objective, direction)[0]


def summary(record: Record, ctx: Any, rollout: Any) -> list[str]:
    """The plan, each stage done or next, and the cost (`rollout` None: the endpoint is created)."""
    from project.aws.deploy_requests import price_line
    from project.aws.rollout_requests import bake_cost_line

    dc = ctx.cfg.deploy

    def step(stage: str, text: str) -> str:
        return f"  {'done' if record.done(stage) else 'next'}: {text}"

    if rollout is None:
        how = f"create endpoint {record.endpoint} serving it (there is none)"
    else:
        how = f"{rollout.plan()} on endpoint {record.endpoint}; an alarm rolls it back"
    lines = [
        f"ship sweep {record.sweep} to endpoint {record.endpoint}:",
        f"  best of {record.completed} completed job(s) by sweep.objective={record.objective} "
        f"({ctx.cfg.sweep.direction}): {record.job}, {record.objective}={record.value:.4g}",
        step(
            "registered",
            f"register it in model group {dc.model_group} through the gate "
            f"(deploy.gate.metric={dc.gate.metric}, tolerance {dc.gate.tolerance:g})",
        )
        + (f": {record.version}" if record.version else ""),
        step("deployed", how),
        step("promoted", "approve the version once the endpoint serves it"),
        f"cost: {price_line(dc, False)}",
    ]
    if rollout is not None:
        lines.append(f"cost: {bake_cost_line(rollout, dc)}")
    return lines


def ship(
    ctx: Any, sweep: str, rollout: Any, yes: bool = False, confirm: Callable[[str], str] = input, echo: Echo = print
) -> Record | None:
    """Choose, register, deploy and promote (each skipped when the record says it is done); the record."""
    from project.aws.deploy import _confirm
    from project.aws.deploy_requests import safe_name
    from project.aws.endpoints import endpoint_status
    from project.aws.sweep import sweep_job_results

    sm, cfg = ctx.clients.sagemaker, ctx.cfg
    endpoint = safe_name(str(cfg.deploy.endpoint_name))
    path = record_path(Path(cfg.paths.runs_dir), sweep, endpoint)
    record = read_record(path)
    if record is not None and record.done("promoted"):
        echo(f"sweep {sweep} is shipped to {endpoint} already: {record.version} ({record.job}) serves it ({path})")
        return record
    if record is None:
        results = sweep_job_results(sm, sweep)
        objective = str(cfg.sweep.objective)
        best = best_job(results, objective, str(cfg.sweep.direction), sweep)
        record = Record(sweep, endpoint, best.name, objective, best.metrics[objective], sum(r.ok for r in results))
    else:
        echo(f"resuming from {path}: done up to stage {record.stage or 'choose'}")
    # A canary where the endpoint serves something; once sent, what was sent (the endpoint exists now).
    creates = record.previous is None if record.done("deploying") else endpoint_status(sm, endpoint) is None
    guarded = None if creates else rollout
    for line in summary(record, ctx, guarded):
        echo(line)
    if not _confirm(yes, "Ship?", confirm, echo):
        return None
    if not record.done("registered"):
        _register(ctx, record, path, echo)
    if not record.done("deployed"):
        _deploy(ctx, record, path, guarded, echo)
    _promote(ctx, record, path, echo)
    return record


def _register(ctx: Any, record: Record, path: Path, echo: Echo) -> None:
    from project.aws.registry import register

    record.version = register(ctx, record.job, echo=echo)
    record.stage = "registered"
    write_record(path, record)


def _version(ctx: Any, record: Record) -> Any:
    from project.aws.registry import find_version, parse_ref

    assert record.version is not None
    return find_version(ctx.clients.sagemaker, *parse_ref(record.version, str(ctx.cfg.deploy.model_group)))


def _deploy(ctx: Any, record: Record, path: Path, rollout: Any, echo: Echo) -> None:
    """Send the create or canary update (unless an interrupted one was sent already), follow it to its end."""
    from project.aws.deploy import ENDPOINT_BUSY, deploy
    from project.aws.deploy_requests import DeployError
    from project.aws.endpoints import endpoint_status
    from project.aws.registry import REJECTED, version_source

    version = _version(ctx, record)
    source = version_source(ctx.clients.sagemaker, version)

    def started(config: str, previous: str | None) -> None:
        record.config, record.previous, record.stage = config, previous, "deploying"
        write_record(path, record)

    try:
        if record.done("deploying"):
            _follow(ctx, record, source, rollout, echo)
        else:
            update = rollout is not None
            deploy(ctx, None, update=update, yes=True, echo=echo, rollout=rollout, source=source, started=started)
    except KeyboardInterrupt:
        if not record.done("deploying"):
            raise
        raise KeyboardInterrupt(
            f"endpoint {record.endpoint} goes on deploying {record.version} ({record.job}); "
            "run the same command to follow it and promote it"
        ) from None
    except DeployError as exc:
        if not record.done("deploying"):
            raise
        now = endpoint_status(ctx.clients.sagemaker, record.endpoint)
        if now is not None and now["EndpointStatus"] in ENDPOINT_BUSY:  # waited deploy.wait_minutes: it goes on
            raise ShipError(f"{exc}; run the same command to follow it and promote it") from None
        ctx.clients.sagemaker.update_model_package(ModelPackageArn=version.arn, ModelApprovalStatus=REJECTED)
        path.unlink(missing_ok=True)
        raise ShipError(
            f"{exc}; {record.version} is Rejected and nothing is shipped (the same command tries anew)"
        ) from None
    record.stage = "deployed"
    write_record(path, record)


def _follow(ctx: Any, record: Record, source: Any, rollout: Any, echo: Echo) -> None:
    """A create or update sent by an interrupted ship: waited for, then concluded as `invoke deploy` does."""
    from project.aws.deploy import conclude, wait_endpoint
    from project.aws.deploy_requests import resource_tags, tag_list
    from project.aws.rollout_requests import alarm_names

    sm, dc = ctx.clients.sagemaker, ctx.cfg.deploy
    assert record.config is not None
    echo(f"following endpoint {record.endpoint}: its deploy of {record.version} was sent before")
    desc = wait_endpoint(sm, record.endpoint, dc, echo, rollout)
    created = [("model", record.config), ("config", record.config)]
    if record.previous is None:
        created.append(("endpoint", record.endpoint))
    alarms = list(alarm_names(dc.rollout.alarm_prefix, record.endpoint).values()) if rollout else []
    tags = tag_list(resource_tags(source, dc, False, datetime.now(UTC)))
    conclude(
        sm,
        ctx.clients.client("cloudwatch"),
        dc,
        record.endpoint,
        source.name,
        created,
        record.previous,
        desc,
        alarms,
        tags,
    )
    echo(f"endpoint {record.endpoint} is InService ({source.name})")


def _promote(ctx: Any, record: Record, path: Path, echo: Echo) -> None:
    from project.aws.registry import APPROVED

    version = _version(ctx, record)
    if version.status != APPROVED:
        ctx.clients.sagemaker.update_model_package(ModelPackageArn=version.arn, ModelApprovalStatus=APPROVED)
    record.stage = "promoted"
    write_record(path, record)
    echo(
        f"shipped: {version.ref} ({record.job}, {record.objective}={record.value:.4g}) serves endpoint "
        f"{record.endpoint} and is {APPROVED}"
    )
    echo(f"remove it: invoke undeploy {record.endpoint}")


def ship_task(overrides: list[str], sweep: str, canary: str | None, bake: str | None, yes: bool) -> None:
    """Checked before the first AWS call: the endpoint's name, the instance, the canary's flags."""
    from project.aws.deploy_requests import check_instance
    from project.aws.errors import aws_errors
    from project.aws.rollout_requests import check_rollout
    from project.aws.workflow import context
    from project.core.config import compose

    cfg = compose(overrides)
    dc = cfg.deploy
    if not dc.endpoint_name:
        raise ShipError("give the endpoint to ship to: deploy.endpoint_name=<name> (`invoke endpoints` lists them)")
    if not sweep.strip():
        raise ShipError("give the sweep to ship: its id (`invoke runs` lists the sweeps)")
    check_instance(dc.instance, dc)
    percent = str(dc.rollout.canary_percent) if canary is None else canary
    rollout = check_rollout(percent, None, bake, True, False, dc)
    with aws_errors():  # missing credentials, an unreachable endpoint: one line
        ship(context(cfg), sweep, rollout, yes=yes)
