"""What a finished run leaves behind: exported model, metrics.json and plots."""

from __future__ import annotations

import copy
import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import Exported

WEIGHTS_FILE = "model.pt"  # the network's state_dict
TORCHSCRIPT_FILE = "model.ts"  # pixels -> probabilities, normalisation included
CONTRACT_FILE = "README.md"  # beside model.ts: what goes in and what comes out, for callers without this code
METRICS_FILE = "metrics.json"
CURVES_FILE = "learning_curves.png"
CONFUSION_FILE = "confusion_matrix.png"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_model(net: nn.Module, model_dir: Path, image_shape: list[int], mean: float, std: float) -> Path:
    """Save weights, a TorchScript module that needs neither this code nor the config, and its contract."""
    net = copy.deepcopy(net).cpu().eval()
    torch.save(net.state_dict(), model_dir / WEIGHTS_FILE)
    example = torch.zeros(2, *image_shape)
    with torch.no_grad():
        scripted = torch.jit.trace(Exported(net, mean, std).eval(), example)
        num_classes = scripted(example).shape[1]
    path = model_dir / TORCHSCRIPT_FILE
    scripted.save(str(path))
    write_atomically(model_dir / CONTRACT_FILE, model_contract(image_shape, num_classes, mean, std))
    return path


def model_contract(image_shape: list[int], num_classes: int, mean: float, std: float) -> str:
    channels, height, width = image_shape
    return f"""# {TORCHSCRIPT_FILE}: the exported model

A TorchScript module: it needs PyTorch only, neither this project's code nor its config.

- **Input**: a `torch.float32` tensor of shape `N x {channels} x {height} x {width}` (N x C x H x W), pixel values
  in 0-255, a light digit on a dark background (MNIST's convention: ink 255, paper 0). The
  normalisation (mean {mean}, std {std} of pixels / 255) is inside the model: do not normalise.
- **Output**: class probabilities (softmax, each row sums to 1), shape `N x {num_classes}`; column i is class i.
- **Photos and scans** must first be brought into MNIST's format: grey-scale, background removed,
  inverted when the digit is dark on light, cropped to the digit, scaled into a 20x20 box and
  centred by centre of mass in {height}x{width}. `project/predict.py` does this (`mnist_pixels`), and
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


def format_metrics(metrics: dict[str, Any]) -> str:
    """`name=value` pairs: what SageMaker's metric regexes scrape from the log."""
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def read_epoch_curves(metrics_csv: Path) -> dict[str, list[tuple]]:
    """(epoch, value) series per metric from Lightning's CSVLogger file."""
    curves: dict[str, list[tuple]] = {}
    if not metrics_csv.is_file():
        return curves
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            for name in ("train_loss", "val_loss", "train_acc", "val_acc"):
                if row.get(name):
                    curves.setdefault(name, []).append((int(row["epoch"]) + 1, float(row[name])))
    return curves


def plot_learning_curves(metrics_csv: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_epoch_curves(metrics_csv)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in curves.items():
        ax = ax_loss if name.endswith("loss") else ax_acc
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


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
