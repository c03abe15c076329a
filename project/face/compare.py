"""`invoke compare A B`: two finished runs side by side: config diff, final metrics, one PNG of both
learning curves. A run is a folder, a run under paths.runs_dir, or a SageMaker job (fetched first).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from project.core.config import RESOLVED_CONFIG_NAME
from project.core.errors import UserError
from project.core.sagemaker_names import JOB_NAME, METRICS_FILE
from project.face.catalog import CatalogError, config_diff, load_yaml, parent_of


def run_folder(spec: str, overrides: list[str], echo: Callable[[str], None] = print) -> Path:
    """A finished run's folder: a path, a run under paths.runs_dir, or a SageMaker job (fetched there first)."""
    from project.core.config import compose
    from project.core.run_ref import resolve_run

    runs_dir = Path(compose(overrides).paths.runs_dir)
    ref = resolve_run(spec, runs_dir)
    if (ref.folder / METRICS_FILE).is_file():
        return ref.folder
    if ref.exists:
        raise CatalogError(
            f"{ref.folder} has no {METRICS_FILE}: its training did not finish (`invoke runs` lists the finished runs)"
        )
    if ref.as_path or not JOB_NAME.match(ref.name):
        raise CatalogError(f"no run {spec}: no such folder (`invoke runs` lists the runs)")
    from project.aws import workflow

    try:
        return workflow.fetch(overrides, ref.name, echo=echo)
    except UserError as problem:  # no Terraform outputs, no credentials, no such job
        raise CatalogError(f"no run {spec} in {runs_dir}, and none fetched from SageMaker: {problem}") from None


def compare(a: str, b: str, overrides: list[str], echo: Callable[[str], None] = print) -> Path:
    """`invoke compare A B`: config diff, metrics side by side, one PNG of both learning curves."""
    ra, rb = run_folder(a, overrides, echo), run_folder(b, overrides, echo)
    echo(comparison(ra, rb))
    out = ra.parent / f"compare-{ra.name}-vs-{rb.name}.png"
    plot_compare(ra, rb, out)
    echo(f"learning curves: {out}")
    return out


def comparison(a: Path, b: Path) -> str:
    """The config diff and the final metrics of two run folders, side by side."""
    ca, cb = (load_yaml(p / "model" / RESOLVED_CONFIG_NAME) for p in (a, b))
    ma, mb = (json.loads((p / METRICS_FILE).read_text()) for p in (a, b))
    lines = [f"config: {a.name} vs {b.name}"]
    diff = config_diff(ca, cb, ignored=("paths.", "run_name"))
    lines += [f"  {k}: {va} | {vb}" for k, (va, vb) in diff.items()] or ["  (the same config)"]
    if "parent" in ma or "parent" in mb:  # trainer.init_from: the run each started from
        lines.append(f"lineage: {parent_of(ma.get('parent'))} | {parent_of(mb.get('parent'))}")
    lines.append("metrics:")
    for key in sorted(k for k in set(ma) | set(mb) if isinstance(ma.get(k, mb.get(k)), int | float)):
        va, vb = ma.get(key), mb.get(key)
        lines.append(f"  {key}: {_num(va)} | {_num(vb)}")
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def plot_compare(a: Path, b: Path, out: Path) -> Path:
    """Both runs' learning curves (loss and accuracy per epoch) on one figure."""
    import matplotlib

    from project.training.artifacts import read_curves  # the one reader of Lightning's metrics.csv

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for run, color in ((a, "C0"), (b, "C1")):
        curves, unit = read_curves(run / "output" / "metrics.csv")
        for ax, names in ((ax_loss, ("train_loss", "val_loss")), (ax_acc, ("train_acc", "val_acc"))):
            for name, style in zip(names, ("--", "-"), strict=True):
                if curves.get(name):
                    xs, ys = zip(*curves[name], strict=True)
                    ax.plot(xs, ys, style, color=color, marker="o", label=f"{run.name} {name}")
            ax.set_xlabel(unit)
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
