"""A sweep's jobs on SageMaker: what hydra/launcher=sagemaker does with each batch Hydra hands it.

For a batch: plan and validate every job (one bad combination refuses all, by name), check the
image and the data once, look up jobs that already completed with the same config hash (Search
API, tag `config-hash`: a re-run skips them; a stopped one is launched again and resumes from
its checkpoints, which are keyed by config hash), print one summary with the worst-case cost,
ask once, upload the code bundle once, then launch at most `max_parallel` jobs at a time and
follow them. Each job gets its own resolved config as a small channel (`config`), its name
`<base>-<sweep id>-<n>` and tags naming the sweep, the job number and its overrides. With
trainer.init_from, each job gets the `model` channel and parent tags a single `invoke train` gets
(project/aws/init_source.py): the parent found and its shapes checked against each job's model; a
local file uploaded once, before the first launch.

This module is over 300 lines because it is one flow, a sweep batch on SageMaker (plan, skip, launch, follow,
report), held by one SweepSession.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from project.aws import init_source, joblogs, monitor, sdk, startup_history, vpc
from project.aws.cost import budget_line, check_budget
from project.aws.errors import aws_errors
from project.aws.image import job_image
from project.aws.names import tag_value
from project.aws.plan import JobPlan, LaunchError, ModelChannel, plan_job
from project.aws.quotas import check_quotas, free_instances, usages
from project.aws.staging import source_revision, stage_code, staged_config
from project.aws.workflow import Context, check_job, context, fetch_completed, setup
from project.core.errors import UserError
from project.core.names import split_s3_uri
from project.core.sagemaker_names import CONFIG_CHANNEL
from project.core.sweep_jobs import Job, JobResult, refusal, scalar_metrics

DEFAULT_MAX_PARALLEL = 4  # jobs at once when launcher.max_parallel is not set
SWEEP_TAG, JOB_TAG, OVERRIDES_TAG, HASH_TAG = "sweep-id", "sweep-job", "sweep-overrides", "config-hash"


def sweep_job_name(base_name: str, sweep_id: str, num: int) -> str:
    return f"{base_name}-{sweep_id}-{num}"


def sweep_prefix(ctx: Context, plan: JobPlan, sweep_id: str) -> str:
    """Where a sweep's code and configs go: s3://<artifacts>/code/<base>-<sweep id>/."""
    return f"s3://{ctx.infra.artifacts_bucket}/code/{plan.base_name}-{sweep_id}/"


def launch_cost(plans: list[JobPlan]) -> float:
    """The worst case of launching these jobs: each billed for its whole max runtime, plus its warm pool."""
    return sum(p.cost.worst_case_usd for p in plans if p.cost)


def cost_line(plans: list[JobPlan], earlier: Sequence[JobPlan] = ()) -> str:
    """The confirmation's cost line: the summed worst case of the jobs to launch (and of those the
    sweep's earlier batches launched), and the budget."""
    before = f" and the {len(earlier)} launched before" if earlier else ""
    return (
        f"  budget: for the {len(plans)} job(s) to launch{before}, "
        f"{budget_line(launch_cost([*earlier, *plans]), plans[0].max_cost_usd if plans else None)} "
        "(each billed for its whole max runtime, plus its warm pool)"
    )


def parallel_limit(
    max_parallel: int | None, plans: list[JobPlan], ctx: Context, earlier: Sequence[JobPlan] = ()
) -> int:
    """How many of `plans` (the jobs to launch) run at once, after the checks that concern the sweep
    as a whole (before any launch).

    The budget (job.max_cost_usd) bounds the sum of every job's worst case, with the jobs `earlier`
    batches of the sweep launched (Optuna hands its trials in batches). Each instance type's
    quota must fit one job (the refusal names the increase command); without `max_parallel` the
    sweep runs as many jobs at once as the free quota allows, else DEFAULT_MAX_PARALLEL where
    quotas cannot be read.
    """
    every = [*earlier, *plans]
    check_budget(launch_cost(every), plans[0].max_cost_usd, what=f"this sweep of {len(every)} jobs")
    service_quotas = ctx.clients.client("service-quotas")
    fits: list[int] = []
    for plan in {p.instance_type: p for p in plans}.values():
        check_quotas(
            service_quotas,
            ctx.clients.sagemaker,
            plan.instance_type,
            plan.instance_count,
            plan.region,
            usages(plan.spot, plan.keep_alive_seconds),
            print,
        )
        free = free_instances(service_quotas, ctx.clients.sagemaker, plan.instance_type, usages(plan.spot, 0)[0])
        if free is not None:
            fits.append(max(1, free // plan.instance_count))
    if max_parallel:
        return max_parallel
    return min(fits) if fits else DEFAULT_MAX_PARALLEL


@dataclass
class Running:
    job: Job
    plan: JobPlan
    tail: joblogs.LogTail
    last: tuple[str, str | None] = ("", None)  # (status, secondary status) last printed

    def progress(self) -> Iterator[str]:
        """The job's new per-epoch metric lines (`epoch=1/3 ... val_acc=...`) from its log."""
        return (line for line in self.tail.poll() if line.startswith("epoch="))


class SweepSession:
    """One sweep's SageMaker side, across the batches Hydra's sweeper hands the launcher."""

    def __init__(
        self,
        sweep_id: str,
        sweep_dir: Path,
        cfg: Any,
        max_parallel: int | None = None,
        yes: bool = False,
        poll_seconds: float = 10.0,
        echo: Callable[[str], None] = print,
        confirm: Callable[[str], str] = input,
    ) -> None:
        self.sweep_id, self.sweep_dir = sweep_id, sweep_dir
        self.max_parallel, self.yes, self.poll_seconds = max_parallel, yes, poll_seconds
        self.echo, self.confirm = echo, confirm
        with aws_errors():
            self.ctx = context(cfg)
        self.revision = source_revision()  # one code bundle, one commit
        # The code bundles uploaded so far, by (the requirements it pip-installs, the user packages they hold):
        # one for the whole sweep, unless its jobs differ in image kind or tracker or need packages it lacks.
        self.bundles: dict[tuple[str | None, frozenset[str]], str] = {}
        self.checked: set[tuple[str, tuple[tuple[str, str], ...]]] = set()  # (image, data channels) checked
        self.networks: set[tuple[object, ...]] = set()  # (data channels, subnets, security groups) checked
        self.asked = False
        self.launched: list[JobPlan] = []  # the jobs earlier batches launched: the budget counts them
        self.packages: dict[int, dict[str, Path]] = {}  # job number -> the user packages it carries
        # trainer.init_from: job number -> its model channel, and the local file to upload to its URI (None: in S3)
        self.parents: dict[int, tuple[ModelChannel | None, Path | None]] = {}
        self.uploaded: set[str] = set()  # the model channels' URIs uploaded (or found readable) so far

    # --- before any launch -----------------------------------------------------------------------

    def plan(self, job: Job) -> JobPlan:
        try:
            infra = self.ctx.infra
            image = job_image(job.cfg, infra.repository_url, infra.region)
            parent = self.parent(job)
            plan = plan_job(job.cfg, infra, image, revision=self.revision, parent=parent)
            plan = replace(
                plan,
                job_name=sweep_job_name(plan.base_name, self.sweep_id, job.num),
                tags={
                    **plan.tags,
                    SWEEP_TAG: self.sweep_id,
                    JOB_TAG: str(job.num),
                    OVERRIDES_TAG: tag_value(" ".join(job.overrides)),
                },
            )
            # No budget per job: parallel_limit checks the sum of the jobs launched, skipped ones left out.
            self.packages[job.num] = check_job(job.cfg, plan, self.echo, budget=False)
        except UserError as exc:
            raise refusal(job.num, job.overrides, str(exc)) from None
        return plan

    def parent(self, job: Job) -> ModelChannel | None:
        """trainer.init_from as this job's model channel, found and checked once per job (afterwards the
        job's config names the channel's URI, as `invoke train`'s does)."""
        if job.num not in self.parents:
            self.parents[job.num] = init_source.model_channel(replace(self.ctx, cfg=job.cfg))
            parent = self.parents[job.num][0]
            if parent is not None:
                clients = self.ctx.clients
                init_source.check_readable(clients.client("iam"), self.ctx.infra.role_arn, parent)
        return self.parents[job.num][0]

    def upload_parents(self, jobs: list[Job]) -> None:
        """The local weights these jobs start from, each to its channel's URI once, before any launch."""
        for job in jobs:
            parent, weights = self.parents.get(job.num, (None, None))
            if parent is not None and weights is not None and parent.uri not in self.uploaded:
                init_source.upload(self.ctx, parent, weights, self.echo)
                self.uploaded.add(parent.uri)

    def check_remote(self, jobs: list[Job], plans: list[JobPlan]) -> None:
        for job, plan in zip(jobs, plans, strict=True):
            if (plan.image_uri, tuple(sorted(plan.channels.items()))) not in self.checked:
                sdk.check_remote(plan, job.cfg, self.ctx.clients.ecr, self.ctx.clients.s3)
                self.checked.add((plan.image_uri, tuple(sorted(plan.channels.items()))))
            network = (tuple(sorted(plan.channels.items())), plan.subnets, plan.security_groups)
            if plan.subnets and network not in self.networks:  # a file-system channel: the VPC's way to it
                vpc.check_network(plan, self.ctx.clients.client)
                self.networks.add(network)

    def earlier_jobs(self, plans: list[JobPlan]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Jobs of these config hashes launched before (Search API, by tag): hash -> the description
        of one that completed, and hash -> the name of one that was stopped (a relaunch resumes from
        the checkpoints it left: the checkpoint prefix is keyed by config hash)."""
        sm = self.ctx.clients.sagemaker
        found: dict[str, dict[str, Any]] = {}
        stopped: dict[str, str] = {}
        for digest in {p.config_hash for p in plans}:
            for job in search_jobs(sm, HASH_TAG, digest):
                tags = {t["Key"]: t["Value"] for t in job.get("Tags", [])}
                if tags.get(HASH_TAG) != digest:
                    continue
                if job.get("TrainingJobStatus") == "Completed":
                    found[digest] = monitor.describe(sm, job["TrainingJobName"])
                    break
                if job.get("TrainingJobStatus") == "Stopped":
                    stopped.setdefault(digest, job["TrainingJobName"])
        return found, stopped

    def summary(
        self, jobs: list[Job], plans: list[JobPlan], done: dict[str, Any], stopped: dict[str, str], limit: int
    ) -> str:
        launching = [p for p in plans if p.config_hash not in done]
        first = plans[0]
        lines = [
            f"SageMaker sweep {self.sweep_id}: {len(plans)} job(s), {len(launching)} to launch"
            + (f", {len(plans) - len(launching)} already completed (skipped)" if done else "")
            + f", at most {limit} at a time",
            f"  image {first.image_uri}; data {', '.join(first.channels.values())}; one code bundle for all jobs",
            *(f"  start from {line}" for line in dict.fromkeys(p.parent.line() for p in plans if p.parent)),
            *(f"  start-up {line}" for line in self.startup_prediction(plans)),
        ]
        for job, plan in zip(jobs, plans, strict=True):
            skip = done.get(plan.config_hash)
            cost = f"${plan.cost.on_demand_usd:.2f} at most" if plan.cost else "?"
            what = f"skip: completed as {skip['TrainingJobName']}" if skip else cost
            if not skip and plan.config_hash in stopped:
                what += f", resumes from the checkpoints of {stopped[plan.config_hash]}"
            lines.append(
                f"  {job.num:>3}  {plan.job_name}  config {plan.config_hash}  "
                f"{plan.instance_count} x {plan.instance_type}  {' '.join(job.overrides)}  {what}"
            )
        lines.append(cost_line(launching, self.launched))
        return "\n".join(lines)

    def startup_prediction(self, plans: list[JobPlan]) -> tuple[str, ...]:
        """Each job's start-up as the base name's earlier jobs predict it, where all run one instance type and image."""
        if len({(p.instance_type, p.image_uri) for p in plans}) != 1:
            return ()
        return startup_history.prediction(self.ctx.clients.sagemaker, self.ctx.clients.logs, plans[0])

    def ask(self, count: int) -> None:
        if self.yes or self.asked or not count:
            return
        if not sys.stdin.isatty():
            raise LaunchError("not a terminal, so no one to confirm the cost: pass --yes to launch")
        if self.confirm(f"Launch these {count} jobs? [y/N] ").strip().lower() not in ("y", "yes"):
            raise LaunchError("not launched (answered no)")
        self.asked = True

    # --- launching -----------------------------------------------------------------------------

    def bundle(self, job: Job, plan: JobPlan) -> str | None:
        """The uploaded code bundle this job can run from: its image kind, and every package it names."""
        wanted, needs = plan.requirements_file(), frozenset(self.packages[job.num])
        return next((uri for (kind, has), uri in self.bundles.items() if kind == wanted and needs <= has), None)

    def upload_code(self, pairs: list[tuple[Job, JobPlan]]) -> None:
        """Upload the bundles these jobs lack, before any of them launches: s3://.../code/<base>-<sweep>/code/.

        All the jobs that lack one share a new bundle holding the union of their packages (a sweep over
        model= choices whose classes live in different packages), so a sweep uploads its code once.
        """
        lacking: dict[str | None, list[tuple[Job, JobPlan]]] = {}  # by what the job pip-installs at start
        for job, plan in pairs:
            if self.bundle(job, plan) is None:
                lacking.setdefault(plan.requirements_file(), []).append((job, plan))
        for requirements, group in lacking.items():
            suffix = f"-{len(self.bundles)}" if self.bundles else ""
            uri = sweep_prefix(self.ctx, group[0][1], self.sweep_id) + f"code{suffix}/"
            bucket, prefix = split_s3_uri(uri)
            packages = {name: path for job, _ in group for name, path in self.packages[job.num].items()}
            with tempfile.TemporaryDirectory(prefix="sm-sweep-code-") as tmp, aws_errors(resource=uri):
                root = stage_code(Path(tmp) / "code", packages, requirements=requirements)
                for path in sorted(p for p in root.rglob("*") if p.is_file()):
                    self.ctx.clients.s3.upload_file(str(path), bucket, prefix + path.relative_to(root).as_posix())
            self.bundles[(requirements, frozenset(packages))] = uri

    def launch_one(self, job: Job, plan: JobPlan) -> None:
        code = self.bundle(job, plan)
        assert code is not None, "upload_code runs before any launch"
        config_uri = sweep_prefix(self.ctx, plan, self.sweep_id) + f"config/{job.num}/"
        bucket, key = split_s3_uri(config_uri + "config.yaml")
        with aws_errors(resource=config_uri):
            self.ctx.clients.s3.put_object(Bucket=bucket, Key=key, Body=staged_config(job.cfg, plan).encode())
        channels = {CONFIG_CHANNEL: config_uri}
        trainer = sdk.model_trainer(plan, code, self.ctx.clients.session, channels, self.sdk_session)
        sdk.launch(trainer, plan.job_name)

    @functools.cached_property
    def sdk_session(self) -> Any:
        """The SDK Session every job of the sweep shares (built before the launch threads)."""
        return sdk.sagemaker_session(self.ctx.clients.session, self.ctx.infra.artifacts_bucket)

    def launch_many(self, starting: list[tuple[Job, JobPlan]]) -> list[str | None]:
        """Launch these jobs at once (each launch waits on AWS round trips); per job, why SageMaker refused it.

        The threads print nothing: lines written from several threads interleave mid-line.
        """
        if not starting:
            return []
        self.upload_code(starting)  # before the threads
        self.upload_parents([job for job, _ in starting])
        _ = self.sdk_session  # built here, once: the threads share it

        def launch(pair: tuple[Job, JobPlan]) -> str | None:
            try:
                self.launch_one(*pair)
            except LaunchError as exc:
                return str(exc)
            return None

        with ThreadPoolExecutor(max_workers=len(starting), thread_name_prefix="sweep-launch") as pool:
            return list(pool.map(launch, starting))

    def follow(self, queue: deque[tuple[Job, JobPlan]], limit: int) -> list[JobResult]:
        """Launch up to `limit` at a time, poll them, one line per change; a failed job does not stop the rest."""
        sm, running, results = self.ctx.clients.sagemaker, dict[str, Running](), []
        try:
            while queue or running:
                starting = [queue.popleft() for _ in range(min(len(queue), limit - len(running)))]
                for (job, plan), refused in zip(starting, self.launch_many(starting), strict=True):
                    if refused is not None:  # SageMaker refused this one: a failed job, the sweep goes on
                        self.echo(f"[job {job.num}] Failed: {refused}")
                        results.append(JobResult(job.num, job.overrides, "Failed", plan.job_name, {}, reason=refused))
                        continue
                    self.echo(f"[job {job.num}] launched {plan.job_name}: {' '.join(job.overrides)}")
                    running[plan.job_name] = Running(job, plan, joblogs.LogTail(self.ctx.clients.logs, plan.job_name))
                time.sleep(self.poll_seconds)
                for name, state in list(running.items()):
                    desc = monitor.describe(sm, name)
                    status = (desc["TrainingJobStatus"], desc.get("SecondaryStatus"))
                    if desc["TrainingJobStatus"] in monitor.TERMINAL:
                        results.append(self.ended(state.job, desc))
                        del running[name]
                        continue
                    if status != state.last:
                        self.echo(f"[job {state.job.num}] {status[0]} / {status[1]}")
                        state.last = status
                    for line in state.progress():
                        self.echo(f"[job {state.job.num}] {line}")
        except KeyboardInterrupt:
            self.interrupted(list(running), len(queue))
            raise
        return results

    def ended(self, job: Job, desc: dict[str, Any]) -> JobResult:
        row = monitor.StatusRow.of(desc)
        reason = str(desc.get("FailureReason") or "").splitlines()[0] if desc.get("FailureReason") else ""
        if desc["TrainingJobStatus"] == "Completed":
            self.echo(f"[job {job.num}] {monitor.final_report(desc)}")
        else:
            self.echo(f"[job {job.num}] {row.name}: {desc['TrainingJobStatus']}: {reason or '-'}")
        return JobResult(
            job.num,
            job.overrides,
            desc["TrainingJobStatus"],
            row.name,
            scalar_metrics(row.metrics),
            row.duration_s,
            row.billable_s,
            row.cost_usd,
            reason,
        )

    def interrupted(self, running: list[str], queued: int) -> None:
        self.echo(f"\ninterrupted: {len(running)} job(s) running, {queued} not launched")
        stop = False
        if running and sys.stdin.isatty():
            try:
                stop = self.confirm("Stop the running jobs (each checkpoints on SIGTERM)? [y/N] ").strip().lower() in (
                    "y",
                    "yes",
                )
            except (EOFError, KeyboardInterrupt):
                stop = False
        for name in running if stop else []:
            self.echo(monitor.stop(self.ctx.clients.sagemaker, name))
        if running and not stop:
            self.echo(f"left running: {', '.join(running)} (`invoke stop <job>` stops one)")
        self.echo(
            "to resume, run the same command again: completed jobs are skipped (same config hash), "
            "stopped ones resume from their checkpoints"
        )

    # --- one batch -----------------------------------------------------------------------------

    def run(self, jobs: list[Job]) -> list[JobResult]:
        with aws_errors():
            plans = [self.plan(job) for job in jobs]
            self.check_remote(jobs, plans)
            done, stopped = self.earlier_jobs(plans)
            launching = [p for p in plans if p.config_hash not in done]  # completed before: skipped, unbilled
            limit = parallel_limit(self.max_parallel, launching, self.ctx, self.launched) if launching else 1
            self.echo(self.summary(jobs, plans, done, stopped, limit))
            todo = deque((j, p) for j, p in zip(jobs, plans, strict=True) if p.config_hash not in done)
            self.ask(len(todo))
            skipped = [
                JobResult(
                    j.num,
                    j.overrides,
                    "Skipped",
                    done[p.config_hash]["TrainingJobName"],
                    scalar_metrics(monitor.final_metrics(done[p.config_hash])),
                    reason=f"completed before as {done[p.config_hash]['TrainingJobName']}",
                )
                for j, p in zip(jobs, plans, strict=True)
                if p.config_hash in done
            ]
            self.launched.extend(launching)
            return skipped + self.follow(todo, limit)


def fetch_sweep(overrides: list[str], sweep_id: str, echo: Callable[[str], None] = print) -> Path:
    """`invoke fetch --sweep <id>`: every completed job of the sweep into runs/<id>/<n>/."""
    with aws_errors():
        ctx = setup(overrides)
        sm = ctx.clients.sagemaker
        jobs = sweep_jobs(sm, sweep_id)
        sweep_dir = Path(ctx.cfg.paths.runs_dir) / sweep_id
        fetched = 0
        for job in jobs:
            tags = {t["Key"]: t["Value"] for t in job.get("Tags", [])}
            name, status = job["TrainingJobName"], job["TrainingJobStatus"]
            if status != "Completed":
                echo(f"{name}: {status}, nothing to fetch")
                continue
            dest = sweep_dir / tags.get(JOB_TAG, name)
            fetch_completed(ctx, monitor.describe(sm, name), dest, echo)
            echo(f"{name} -> {dest}")
            fetched += 1
    echo(f"fetched {fetched} of {len(jobs)} job(s) of sweep {sweep_id} into {sweep_dir}")
    return sweep_dir


def sweep_jobs(sm: Any, sweep_id: str) -> list[dict[str, Any]]:
    """The training jobs of a sweep (Search results, by name), or a JobError naming where to look."""
    jobs = [
        job
        for job in search_jobs(sm, SWEEP_TAG, sweep_id)
        if {t["Key"]: t["Value"] for t in job.get("Tags", [])}.get(SWEEP_TAG) == sweep_id
    ]
    if not jobs:
        raise monitor.JobError(f"no training jobs of sweep {sweep_id!r}: `invoke runs` lists the sweeps")
    return sorted(jobs, key=lambda j: j["TrainingJobName"])


def sweep_job_results(sm: Any, sweep_id: str) -> list[JobResult]:
    """The sweep's jobs from SageMaker, each completed one with its final metrics (`invoke ship` ranks them)."""
    results = []
    for job in sweep_jobs(sm, sweep_id):
        tags = {t["Key"]: t["Value"] for t in job.get("Tags", [])}
        name, status = job["TrainingJobName"], job["TrainingJobStatus"]
        metrics = scalar_metrics(monitor.final_metrics(monitor.describe(sm, name))) if status == "Completed" else {}
        num = int(tags[JOB_TAG]) if tags.get(JOB_TAG, "").isdigit() else -1
        results.append(JobResult(num, tags.get(OVERRIDES_TAG, "").split(), status, name, metrics))
    return results


def search_jobs(sm: Any, tag: str, value: str) -> Iterator[dict[str, Any]]:
    """Training jobs tagged tag=value, every page of the Search API."""
    expression = {"Filters": [{"Name": f"Tags.{tag}", "Operator": "Equals", "Value": value}]}
    for page in sm.get_paginator("search").paginate(Resource="TrainingJob", SearchExpression=expression):
        for result in page.get("Results", []):
            if "TrainingJob" in result:
                yield result["TrainingJob"]
