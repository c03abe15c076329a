"""What a finished run leaves behind: exported model, metrics.json and plots."""

from __future__ import annotations

import copy
import csv
import json
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from project.core.atomic import write_atomically
from project.core.lineage import WEIGHTS_FILE  # the network's state_dict
from project.serving.archive import (  # pixels -> probabilities, normalisation included
    CONTRACT_FILE,
    EXPORTED_BY,
    TORCHSCRIPT_FILE,
)
from project.training.models import Exported
from project.training.reporting import LEARNING_RATE, STEP_LOSS

CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
PLOTS = (CURVES_FILE, CONFUSION_FILE)  # under output/; a regressor has no confusion matrix


def example_input(datamodule: Any) -> Any:
    """One batch's input (its first element), from the DataModule's validation or training loader, on the CPU.

    None when neither loader yields a tensor input: then the model is scripted without an example.
    """
    for loader_name in ("val_dataloader", "train_dataloader"):
        try:
            batch = next(iter(getattr(datamodule, loader_name)()))
        except Exception:  # noqa: BLE001  a DataModule without that loader, or not set up for it
            continue
        first = batch[0] if isinstance(batch, (list, tuple)) else batch
        if isinstance(first, torch.Tensor):
            return first.detach().cpu()
    return None


def export_module(module: Any, model_dir: Path, example: Any) -> Path | None:
    """Any LightningModule: its weights (model.pt), and TorchScript (model.ts) when it can be had.

    Scripted first (Lightning's to_torchscript), traced on `example` (one batch's input) else; a
    module that allows neither still leaves its weights, and a one-line warning says why there is
    no model.ts.
    """
    module = module.cpu()
    torch.save(module.state_dict(), model_dir / WEIGHTS_FILE)
    problems = []
    for method in ("script", "trace"):
        try:
            if method == "trace" and example is None:
                raise ValueError("no example input: neither the val nor the train loader gave a tensor")
            inputs = example[:2] if method == "trace" else None
            with (
                warnings.catch_warnings()
            ):  # Lightning 2.6 announces to_torchscript's deprecation: not the user's to act on
                warnings.filterwarnings("ignore", message=r".*to_torchscript.* deprecated")
                exported = module.to_torchscript(method=method, example_inputs=inputs)
            return save_torchscript(exported, model_dir / TORCHSCRIPT_FILE)
        except Exception as exc:  # noqa: BLE001  TorchScript refuses many constructs, each with its own error
            text = str(exc).strip()
            problems.append(f"{method}: {text.splitlines()[0] if text else type(exc).__name__}")
    print(
        f"warning: no {TORCHSCRIPT_FILE}: the model can be neither scripted nor traced ({'; '.join(problems)}); "
        f"{WEIGHTS_FILE} holds its weights",
        file=sys.stderr,
        flush=True,
    )
    return None


def save_torchscript(module: torch.jit.ScriptModule, path: Path) -> Path:
    """model.ts, recording which PyTorch saved it (serving.EXPORTED_BY: deploy picks the image by it)."""
    module.save(str(path), _extra_files={EXPORTED_BY: torch.__version__})
    return path


def plain_stat(value: Any) -> float | list[float]:
    """A DataModule's pixel mean or std (a number, a sequence or a tensor) as one number or one per channel."""
    values = [float(v) for v in torch.as_tensor(value, dtype=torch.float32).flatten()]
    return values[0] if len(values) == 1 else values


def export_model(
    net: nn.Module, model_dir: Path, image_shape: list[int], mean: float | list[float], std: float | list[float]
) -> Path:
    """A classifier's network: its weights, a TorchScript module (pixels in, probabilities out) that
    needs neither this code nor the config, and its contract (what `invoke predict` relies on)."""
    net = copy.deepcopy(net).cpu().eval()
    torch.save(net.state_dict(), model_dir / WEIGHTS_FILE)
    example = torch.zeros(2, *image_shape)
    with torch.no_grad():
        scripted = torch.jit.trace(Exported(net, mean, std).eval(), example)
        num_classes = scripted(example).shape[1]
    path = save_torchscript(scripted, model_dir / TORCHSCRIPT_FILE)
    write_atomically(model_dir / CONTRACT_FILE, model_contract(image_shape, num_classes, mean, std))
    return path


def model_contract(
    image_shape: list[int], num_classes: int, mean: float | list[float], std: float | list[float]
) -> str:
    channels, height, width = image_shape
    return f"""# {TORCHSCRIPT_FILE}: the exported model

A TorchScript module: it needs PyTorch only, neither this project's code nor its config.

- **Input**: a `torch.float32` tensor of shape `N x {channels} x {height} x {width}` (N x C x H x W), pixel values
  in 0-255, a light digit on a dark background (MNIST's convention: ink 255, paper 0). The
  normalisation (mean {mean}, std {std} of pixels / 255) is inside the model: do not normalise.
- **Output**: class probabilities (softmax, each row sums to 1), shape `N x {num_classes}`; column i is class i.
- **Photos and scans** must first be brought into MNIST's format: grey-scale, background removed,
  inverted when the digit is dark on light, cropped to the digit, scaled into a 20x20 box and
  centred by centre of mass in {height}x{width}. `project/serving/predict.py` does this (`mnist_pixels`), and
  `invoke predict <run> <images>` runs it all.

```python
import torch
model = torch.jit.load("{TORCHSCRIPT_FILE}").eval()
probs = model(pixels)  # pixels: float32 N x {channels} x {height} x {width}, 0-255; probs: N x {num_classes}
```
"""


def write_metrics(metrics: dict[str, Any], paths: Iterable[Path]) -> None:
    text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    for path in paths:
        write_atomically(path, text)


EPOCH_SERIES = ("train_loss", "train_acc", "val_loss", "val_acc")  # one value per epoch, at its end
STEP_SERIES = (STEP_LOSS, LEARNING_RATE)  # every trainer.log_every_n_steps steps


def read_curves(metrics_csv: Path) -> tuple[dict[str, list[tuple[float, float]]], str]:
    """(x, value) series per metric from Lightning's CSVLogger file, and the unit of x.

    x is in epochs: an epoch's value sits at its 1-based number, the end of that epoch; a step's at
    its fractional epoch, (step + 1) / steps per epoch (a row of step k comes after k + 1 optimizer
    steps, and epoch E's rows are at step E * steps_per_epoch - 1). Without a finished epoch to
    measure an epoch by, x is the step count.
    """
    if not metrics_csv.is_file():
        return {}, "epoch"
    with metrics_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    per_epoch = [row for row in rows if any(row.get(name) for name in EPOCH_SERIES) and float(row["epoch"]) > 0]
    steps_per_epoch = (int(per_epoch[0]["step"]) + 1) / float(per_epoch[0]["epoch"]) if per_epoch else None
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        for name in EPOCH_SERIES:
            if row.get(name):
                curves.setdefault(name, []).append((float(row["epoch"]), float(row[name])))
        for name in STEP_SERIES:
            if row.get(name):
                steps = int(row["step"]) + 1
                x = steps / steps_per_epoch if steps_per_epoch else steps
                curves.setdefault(name, []).append((x, float(row[name])))
    return curves, "epoch" if steps_per_epoch else "step"


def _series(ax, curves: dict[str, list[tuple[float, float]]], name: str, label: str, style: str, **kwargs) -> None:
    if curves.get(name):
        xs, ys = zip(*curves[name], strict=True)
        ax.plot(xs, ys, style, label=label, **kwargs)


def plot_learning_curves(metrics_csv: Path, out: Path) -> Path:
    fig = learning_curves_figure(metrics_csv)  # selects the Agg backend before pyplot loads
    import matplotlib.pyplot as plt

    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def learning_curves_figure(metrics_csv: Path):
    """Loss (per step, with the epochs' train and validation values on top), accuracy, learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    curves, unit = read_curves(metrics_csv)
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(
        3, 1, figsize=(8, 8), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.2]}
    )
    _series(ax_loss, curves, STEP_LOSS, "train (mean per log interval)", "-", color="C0", lw=1, alpha=0.5)
    _series(ax_loss, curves, "train_loss", "train, epoch mean", "o", color="C0", mfc="white")
    _series(ax_loss, curves, "val_loss", "validation", "o-", color="C1")
    losses = [value for name in (STEP_LOSS, "train_loss", "val_loss") for _, value in curves.get(name, [])]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 10:
        ax_loss.set_yscale("log")  # a loss falls by orders of magnitude: each one gets the same room
    ax_loss.set_ylabel("loss (cross-entropy)")
    _series(ax_acc, curves, "train_acc", "train, epoch mean", "o--", color="C0", mfc="white")
    val_acc = curves.get("val_acc")
    _series(ax_acc, curves, "val_acc", f"validation (last {val_acc[-1][1]:.2%})" if val_acc else "", "o-", color="C1")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_acc.set_ylabel("accuracy")
    _series(ax_lr, curves, LEARNING_RATE, "learning rate", "-", color="C2")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.set_xlabel(unit)
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_lr.set_xlim(left=0)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and ax is not ax_lr:
            ax.legend(loc="best", fontsize=9)
    ax_loss.set_title("learning curves")
    fig.tight_layout()
    return fig


def plot_confusion(matrix: torch.Tensor, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = matrix.shape[0]
    accuracy = matrix.diag().sum().item() / max(1, matrix.sum().item())
    fig, ax = plt.subplots(figsize=(6, 5.5))
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    for i in range(n):
        for j in range(n):
            value = int(matrix[i, j])
            color = "white" if value > matrix.max().item() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true")
    ax.set_title(f"test confusion matrix (accuracy {accuracy:.2%})")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
