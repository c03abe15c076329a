"""The plain-PyTorch baseline of bench/time_to_accuracy.py: MNIST with SmallCNN in one short script.

    python bench/plain_mnist.py --data ../shared/data/mnist --seed 42

No framework, no config system (only torch, numpy and the standard library are imported), no
validation pass, checkpoints, loggers or exported model:
read the four IDX files, train the product's default network the way the product does (same
55,000 training images of the seeded split, batch 256 in the same per-epoch order, AdamW with a
one-cycle schedule stepped per batch), then measure accuracy on the 10,000 test images. The
defaults are conf/'s (model=cnn, trainer=default, dataset=mnist); the benchmark passes the
composed values explicitly. Prints one JSON line: epochs, seconds (all of it), train_seconds (the epochs), test_acc.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TRACE = os.environ.get("LIGHTNING_SAGEMAKER_STARTUP_TRACE")  # project/core/startup.py's trace, same format


def mark(phase: str, **extra: object) -> None:
    """Append `phase` reached now to the run trace (bench/time_to_first_step.py, time_to_accuracy.py), when on."""
    if TRACE:
        with open(TRACE, "a") as trace:
            trace.write(json.dumps({"phase": phase, "t": time.time(), "pid": os.getpid(), **extra}) + "\n")


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """project.training.models.SmallCNN, written out so that this script imports only torch (importing
    project.training.models would load Lightning); the benchmark checks both give the same weights."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            block(in_channels, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 4 * width),
            block(4 * width, 4 * width),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def load(folder: Path, stem: str, header: int) -> np.ndarray:
    """An MNIST IDX file: a fixed header (16 bytes for images, 8 for labels), then uint8 data."""
    return np.frombuffer(gzip.decompress((folder / f"{stem}.gz").read_bytes()), np.uint8, offset=header)


def images(folder: Path, stem: str, mean: float, std: float) -> torch.Tensor:
    x = torch.from_numpy(load(folder, stem, 16).astype(np.float32)).view(-1, 1, 28, 28)
    return x.div_(255.0).sub_(mean).div_(std)


def labels(folder: Path, stem: str) -> torch.Tensor:
    return torch.from_numpy(load(folder, stem, 8).astype(np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with the four MNIST .gz files")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--val-size", type=int, default=5000, help="held out of training, as the product does")
    parser.add_argument("--mean", type=float, default=0.1307)
    parser.add_argument("--std", type=float, default=0.3081)
    parser.add_argument("--max-steps", type=int, default=0, help="stop training after this many steps (0: all)")
    args = parser.parse_args()
    mark("imported")
    started = time.perf_counter()
    torch.set_flush_denormal(True)  # as the product does (see bench/README.md, "Denormals")

    x = images(args.data, "train-images-idx3-ubyte", args.mean, args.std)
    y = labels(args.data, "train-labels-idx1-ubyte")
    keep = np.sort(np.random.default_rng(args.seed).permutation(len(y))[args.val_size :])  # the product's split
    x, y = x[keep], y[keep]
    mark("data_loaded")

    torch.manual_seed(args.seed)  # the same initial weights as the product's run with this seed
    net = SmallCNN(in_channels=1, num_classes=10, width=args.width)
    steps = -(-len(y) // args.batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps)
    mark("built")
    train_started = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed + epoch))
        for start in range(0, len(y), args.batch_size):
            idx = order[start : start + args.batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if epoch == 0 and start == 0:
                mark("first_step", threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads())
            if args.max_steps and schedule.last_epoch >= args.max_steps:
                break
    train_seconds = time.perf_counter() - train_started
    mark("fit_end")

    test_x = images(args.data, "t10k-images-idx3-ubyte", args.mean, args.std)
    test_y = labels(args.data, "t10k-labels-idx1-ubyte")
    net.eval()
    with torch.no_grad():
        correct = sum(
            int((net(test_x[i : i + 1000]).argmax(1) == test_y[i : i + 1000]).sum())
            for i in range(0, len(test_y), 1000)
        )
    mark("tested")
    result = {
        "epochs": args.epochs,
        "seconds": round(time.perf_counter() - started, 3),
        "train_seconds": round(train_seconds, 3),
        "test_acc": correct / len(test_y),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
