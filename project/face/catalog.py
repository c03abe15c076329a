"""One catalog of every run: `invoke runs` (local runs and SageMaker jobs, newest first); `invoke compare`: compare.py.

Local runs are the folders under paths.runs_dir that hold a metrics.json (finished) or checkpoints
(interrupted, resumable: identity.run_progress says at which step), each listed once, a sweep's
runs one level deeper (runs/<sweep>/<n>/); SageMaker jobs come from the Search API (every page), with
their tags (config hash, git sha, sweep, the parent it started from) and final metrics. The pure
parts (rows, filters, the config diff) take plain values; only `sagemaker_entries` talks to AWS.

This module is over 300 lines because it is one catalog: the entries of its three sources (local run folders,
SageMaker's Search API, an MLflow server), the filters of `invoke runs` and the one table it prints;
compare.py shares its readers and its config diff.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from project.core.config import RESOLVED_CONFIG_NAME
from project.core.errors import UserError
from project.core.identity import run_progress
from project.core.sagemaker_names import METRICS_FILE, PARENT_HASH_TAG, PARENT_RUN_TAG, PROJECT_TAG

SHOWN_METRICS = ("val_acc", "test_acc", "val_loss")
# Where a run ran or its data's checksums (long, and the same data whatever the mirror), where it logged (logger), not
# what it trained.
IGNORED_KEYS = ("paths.", "run_name", "aws.", "job.image_tag", "dataset.files.", "trainer.gpus", "logger.")
THRESHOLD = re.compile(r"^(\w+)\s*(>=|<=|>|<|=)\s*([-+0-9.eE]+)$")
SINCE = re.compile(r"^(\d+)([mhd])$")


class CatalogError(UserError):
    pass


@dataclass
class Entry:
    name: str
    where: str  # "local" or "sagemaker"
    status: str
    created: datetime
    config_hash: str = "-"
    git_sha: str = "-"
    sweep: str = "-"
    overrides: str = "-"
    metrics: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    cost_usd: float | None = None
    parent: str = "-"  # trainer.init_from's run and config hash: `A (3e5ab01b8a52)`


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_diff(a: dict[str, Any], b: dict[str, Any], ignored: Sequence[str] = IGNORED_KEYS) -> dict[str, tuple]:
    """key -> (value in a, value in b) for every flattened key whose values differ."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(k for k in set(fa) | set(fb) if not k.startswith(tuple(ignored)) and fa.get(k) != fb.get(k))
    return {k: (fa.get(k, "-"), fb.get(k, "-")) for k in keys}


def defaults() -> dict[str, Any]:
    from omegaconf import OmegaConf

    from project.core.config import compose

    return OmegaConf.to_container(compose([]), resolve=True)  # type: ignore[return-value]


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def _is_run(folder: Path) -> bool:
    """A run's own folder (runtime.local_layout; `invoke fetch` writes the same), not one inside it."""
    return (folder / METRICS_FILE).is_file() or (folder / "checkpoints").is_dir()


def run_folders(runs_dir: Path) -> list[Path]:
    """Every local run once: runs/<run>/, and runs/<sweep>/<n>/ in a folder that is not a run itself."""
    found = []
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
        if _is_run(folder):
            found.append(folder)
        else:
            found += sorted(p for p in folder.iterdir() if p.is_dir() and _is_run(p))
    return found


def local_entries(runs_dir: Path, base: dict[str, Any]) -> list[Entry]:
    entries = []
    for run in run_folders(runs_dir):
        entry = _finished_entry(run) if (run / METRICS_FILE).is_file() else _interrupted_entry(run)
        if entry is None:
            continue
        config = run / "model" / RESOLVED_CONFIG_NAME
        changed = config_diff(base, load_yaml(config)) if config.is_file() else {}
        entry.overrides = " ".join(f"{k}={v[1]}" for k, v in changed.items()) or "-"
        entry.sweep = run.parent.name if run.parent != runs_dir else "-"
        entry.name = str(run.relative_to(runs_dir))
        entries.append(entry)
    return entries


def _finished_entry(run: Path) -> Entry | None:
    metrics_file = run / METRICS_FILE
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError):
        return None
    return Entry(
        name=run.name,
        where="local",
        status="Completed",
        created=datetime.fromtimestamp(metrics_file.stat().st_mtime, UTC),
        config_hash=str(metrics.get("config_hash", "-")),
        metrics={k: float(v) for k, v in metrics.items() if k in SHOWN_METRICS},
        duration_s=metrics.get("fit_seconds"),
        parent=parent_of(metrics.get("parent")),
    )


def parent_of(record: Any) -> str:
    """metrics.json's `parent` (project/core/lineage.py Parent.record), or a job's tags of it, as shown."""
    if not isinstance(record, dict):
        return "-"
    return f"{record.get('run')} ({record.get('config_hash') or 'hash unknown'})"


def _interrupted_entry(run: Path) -> Entry | None:
    """A run with checkpoints and no metrics.json: stopped, and the same command resumes it."""
    unfinished = [p for p in run_progress(run).values() if not p.finished and p.step >= 0]
    if not unfinished:
        return None  # no checkpoint yet (starting, or running its first steps): nothing to resume
    newest = max(unfinished, key=lambda p: p.step)
    return Entry(
        name=run.name,
        where="local",
        status=newest.status,
        created=datetime.fromtimestamp((run / "checkpoints").stat().st_mtime, UTC),
        config_hash=newest.identity,
    )


def sagemaker_entries(sm: Any) -> list[Entry]:
    """Every training job of this project (Search API, all pages), with its tags and final metrics."""
    from project.aws.cost import job_cost
    from project.aws.monitor import StatusRow
    from project.aws.sweep import search_jobs

    entries = []
    for job in search_jobs(sm, *PROJECT_TAG):
        tags = {t["Key"]: t["Value"] for t in job.get("Tags", [])}
        row = StatusRow.of(job)
        entries.append(
            Entry(
                name=job["TrainingJobName"],
                where="sagemaker",
                status=job["TrainingJobStatus"],
                created=job["CreationTime"],
                config_hash=tags.get("config-hash", "-"),
                git_sha=tags.get("git-sha", "-"),
                sweep=tags.get("sweep-id", "-"),
                overrides=tags.get("sweep-overrides", "-"),
                metrics={k: v for k, v in row.metrics.items() if k in SHOWN_METRICS},
                duration_s=row.duration_s,
                cost_usd=job_cost(job),
                parent=parent_of({"run": tags[PARENT_RUN_TAG], "config_hash": tags.get(PARENT_HASH_TAG)})
                if PARENT_RUN_TAG in tags
                else "-",
            )
        )
    return entries


def mlflow_entries(uri: str, limit: int = 1000) -> list[Entry]:
    """The runs of every experiment of an MLflow tracking server or folder (logger=mlflow), newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=limit)
    return [
        Entry(
            name=run.info.run_name or run.info.run_id,
            where="mlflow",
            status=run.info.status.capitalize(),
            created=datetime.fromtimestamp(run.info.start_time / 1000, UTC),
            config_hash=run.data.tags.get("config-hash", "-"),
            git_sha=run.data.tags.get("git-sha", "-"),
            metrics={k: v for k, v in run.data.metrics.items() if k in SHOWN_METRICS},
            duration_s=(run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
        )
        for run in found
    ]


def mlflow_uri(cfg: Any, terraform_arn: str | None) -> str:
    """Where `invoke runs --mlflow` looks: logger.mlflow.tracking_uri as given, else Terraform's tracking
    server (enable_mlflow), else the local mlruns/ folder."""
    from project.training.tracking import LOCAL_MLRUNS, tracking_uri

    given = cfg.logger.mlflow.tracking_uri if "mlflow" in cfg.logger else None
    return tracking_uri(given or terraform_arn or LOCAL_MLRUNS, Path.cwd(), in_container=False)


def since_cutoff(since: str, now: datetime | None = None) -> datetime:
    """`3d`, `12h`, `30m` or an ISO date/time (UTC)."""
    now = now or datetime.now(UTC)
    match = SINCE.match(since)
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise CatalogError(f"--since {since!r}: give 30m, 12h, 3d or an ISO date like 2026-12-01") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def metric_filter(threshold: str) -> Callable[[Entry], bool]:
    """`val_acc>=0.9`: entries with that final metric passing the test."""
    match = THRESHOLD.match(threshold.replace(" ", ""))
    if not match:
        raise CatalogError(f"--metric {threshold!r}: give name, comparison and number, e.g. val_acc>=0.9")
    name, op, value = match.group(1), match.group(2), float(match.group(3))
    tests = {
        ">=": lambda x: x >= value,
        "<=": lambda x: x <= value,
        ">": lambda x: x > value,
        "<": lambda x: x < value,
        "=": lambda x: x == value,
    }
    return lambda e: name in e.metrics and tests[op](e.metrics[name])


def select(
    entries: Iterable[Entry], sweep: str | None = None, since: str | None = None, metric: str | None = None
) -> list[Entry]:
    chosen = list(entries)
    if sweep:
        chosen = [e for e in chosen if e.sweep == sweep]
    if since:
        cutoff = since_cutoff(since)
        chosen = [e for e in chosen if e.created >= cutoff]
    if metric:
        passes = metric_filter(metric)
        chosen = [e for e in chosen if passes(e)]
    return sorted(chosen, key=lambda e: e.created, reverse=True)


def table(entries: Sequence[Entry]) -> str:
    def fmt(value: float | None, spec: str, before: str = "", after: str = "") -> str:
        return "-" if value is None else f"{before}{value:{spec}}{after}"

    lineage = any(e.parent != "-" for e in entries)  # the parent column only where a run has one
    header = (
        "run",
        "where",
        "status",
        "created",
        "config",
        *(["parent"] if lineage else []),
        "git",
        "overrides",
        *SHOWN_METRICS,
        "duration",
        "cost",
    )
    lines = [header] + [
        (
            e.name,
            e.where,
            e.status,
            f"{e.created:%Y-%m-%d %H:%M}",
            e.config_hash,
            *([e.parent] if lineage else []),
            e.git_sha,
            e.overrides,
            *(fmt(e.metrics.get(m), ".4f") for m in SHOWN_METRICS),
            fmt(e.duration_s, ".0f", after="s"),
            fmt(e.cost_usd, ".2f", before="$"),
        )
        for e in entries
    ]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def list_runs(
    overrides: list[str],
    sweep: str | None,
    since: str | None,
    metric: str | None,
    echo: Callable[[str], None] = print,
    mlflow: bool = False,
) -> list[Entry]:
    """`invoke runs`: local runs and SageMaker jobs (and with `mlflow`, the MLflow runs), newest first, filtered."""
    from project.aws.errors import aws_errors
    from project.aws.workflow import context
    from project.core.config import compose
    from project.training import tracking

    cfg = compose(overrides)
    entries = local_entries(Path(cfg.paths.runs_dir), defaults())
    arn = None
    try:
        with aws_errors():
            ctx = context(cfg)
            arn = ctx.infra.mlflow_tracking_server_arn
            entries += sagemaker_entries(ctx.clients.sagemaker)
    except UserError as problem:  # no Terraform outputs or no credentials: the local runs still list
        echo(f"(SageMaker jobs not listed: {problem})")
    if mlflow:  # a tracker not installed or a server that does not answer: one line, nothing listed
        tracking.need("mlflow", "invoke runs --mlflow", tracking.MLFLOW_INSTALL)
        uri = mlflow_uri(cfg, arn)
        tracking.check_mlflow_uri(uri, Path.cwd(), in_container=False)
        entries += mlflow_entries(uri)
    chosen = select(entries, sweep, since, metric)
    echo(table(chosen) if chosen else "no runs match")
    if any(e.where == "local" and e.status.startswith("interrupted") for e in chosen):
        echo("interrupted runs resume where they stopped: run the same `invoke local` command again")
    return chosen
