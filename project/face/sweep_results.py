"""A sweep's results: the table (best job first), results.csv, results.md and the objective plot.

Pure but for the files it writes (atomically: a reader never sees half a table). matplotlib is
imported inside plot_objective, with the Agg backend: no display is needed.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from project.core.atomic import write_atomically
from project.core.sweep_jobs import JobResult

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
OBJECTIVE_PNG = "objective.png"


def ranked(results: Sequence[JobResult], objective: str, direction: str) -> list[JobResult]:
    """Best first by the objective; jobs without it (failed) last, in job order."""

    def key(r: JobResult) -> tuple[int, float, int]:
        value = r.metrics.get(objective)
        if value is None or math.isnan(value):
            return (1, 0.0, r.num)
        return (0, -value if direction == "maximize" else value, r.num)

    return sorted(results, key=key)


def metric_columns(results: Sequence[JobResult], objective: str) -> list[str]:
    others = sorted({k for r in results for k in r.metrics} - {objective})
    return [objective, *others]


def _fmt(value: float | int | None, spec: str, before: str = "", after: str = "") -> str:
    return "-" if value is None else f"{before}{value:{spec}}{after}"


def rows(results: Sequence[JobResult], objective: str, direction: str) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows, best job first."""
    metrics = metric_columns(results, objective)
    header = ["job", "overrides", "status", *metrics, "duration", "billable", "cost", "run"]
    body = [
        [
            str(r.num),
            " ".join(r.overrides),
            r.status + (f": {r.reason}" if r.reason else ""),
            *(_fmt(r.metrics.get(m), ".4g") for m in metrics),
            _fmt(r.duration_s, ".0f", after="s"),
            _fmt(r.billable_s, "d", after="s"),
            _fmt(r.cost_usd, ".2f", before="$"),
            r.name,
        ]
        for r in ranked(results, objective, direction)
    ]
    return header, body


def text_table(header: list[str], body: list[list[str]]) -> str:
    lines = [header, *body]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in body)]) + "\n"


def csv_text(header: list[str], body: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(body)
    return out.getvalue()


def swept_values(results: Sequence[JobResult]) -> dict[str, list[str]]:
    """Per override key, the value each job had, for the keys whose value differs between jobs."""
    per_job = [dict(o.split("=", 1) for o in r.overrides if "=" in o) for r in results]
    keys = sorted({k for job in per_job for k in job})
    return {k: [job.get(k, "") for job in per_job] for k in keys if len({job.get(k) for job in per_job}) > 1}


def plot_objective(results: Sequence[JobResult], objective: str, out: Path) -> Path:
    """The objective against each swept parameter and against the job number (Optuna's trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if objective in r.metrics]
    swept = swept_values(done)
    panels = [*swept.items(), ("job number", [str(r.num) for r in done])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    values = [r.metrics[objective] for r in done]
    for ax, (name, xs) in zip(axes[0], panels, strict=True):
        numeric = all(_is_number(x) for x in xs)
        if numeric:
            ax.scatter([float(x) for x in xs], values)
            if len({float(x) for x in xs if float(x) > 0}) > 2 and min(float(x) for x in xs) > 0:
                span = max(float(x) for x in xs) / min(float(x) for x in xs)
                ax.set_xscale("log" if span >= 100 else "linear")
        else:
            labels = sorted(set(xs))
            ax.scatter([labels.index(x) for x in xs], values)
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_xlabel(name)
        ax.set_ylabel(objective)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_results(results: Sequence[JobResult], sweep_dir: Path, objective: str, direction: str) -> str:
    """results.csv, results.md and objective.png in sweep_dir; returns the table as text."""
    header, body = rows(results, objective, direction)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(sweep_dir / RESULTS_CSV, csv_text(header, body))
    write_atomically(sweep_dir / RESULTS_MD, markdown_table(header, body))
    if any(objective in r.metrics for r in results):
        plot_objective(results, objective, sweep_dir / OBJECTIVE_PNG)
    return text_table(header, body)
