"""dataset=imagefolder on the 10,000 MNIST test images written as PNGs (<digit>/<index>.png).

(a) Upload: `invoke upload dataset=imagefolder dataset.channels.train=<tree>` (packs the tree into
tar shards, sends them and the manifest last) against `aws s3 sync` of the raw tree, both to the
same moto S3 endpoint. Every round empties both prefixes and the pack cache first (untimed), so
each side makes a first upload.

(b) One training epoch (data set-up included: reading, decoding, one epoch of SmallCNN with batch
256 and validation on 10% held out) with ImageFolderDataModule reading the shards against the same
DataModule reading the folder directly. Both build the same uint8 tensors (tests/test_imagefolder.py
checks it), so the difference is reading 10,000 files against reading a few tar members.

Uses the real MNIST files; skipped without them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from .common import Skip, invoke_script, local_aws, mnist_dir, row, run_timed
from .transfers import _empty, awscli

PREFIX = "bench/imagefolder"


def write_pngs(folder: Path, root: Path) -> int:
    """The MNIST test images as <label>/<index>.png; returns how many."""
    from PIL import Image

    from project.training.data import parse_idx, read_bytes

    images = parse_idx(read_bytes(folder / "t10k-images-idx3-ubyte.gz"))
    labels = parse_idx(read_bytes(folder / "t10k-labels-idx1-ubyte.gz"))
    for label in range(10):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image, mode="L").save(root / str(label) / f"{i:05d}.png")
    return len(labels)


def _epoch(train_dir: Path) -> float:
    import pytorch_lightning as pl

    from project.training.imagefolder import ImageFolderDataModule
    from project.training.models import LitClassifier, SmallCNN
    from project.training.reporting import quiet_lightning

    quiet_lightning(False)  # Lightning's banners would bury the results
    pl.seed_everything(0, verbose=False)
    started = time.perf_counter()
    dm = ImageFolderDataModule(train_dir=str(train_dir), num_classes=10, batch_size=256, mean=0.1307, std=0.3081)
    module = LitClassifier(SmallCNN(in_channels=1, num_classes=10), num_classes=10, lr=0.01)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tempfile.gettempdir(),
    )
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - started


def run(reps: int) -> dict:
    folder = mnist_dir()
    if folder is None:
        raise Skip("real MNIST not found at ../shared/data/mnist: this benchmark writes its test images as PNGs")
    from project.training.imagetree import pack_tree

    aws_cli = awscli()
    scratch = Path(tempfile.mkdtemp(prefix="bench-imagefolder-"))
    try:
        tree, packed = scratch / "tree", scratch / "packed"
        count = write_pngs(folder, tree)
        with local_aws() as aws:
            s3 = aws.client("s3")
            ours = [invoke_script(), "upload", "dataset=imagefolder", f"dataset.channels.train={tree}"]
            ours += [f"dataset.s3_prefix={PREFIX}/shards", f"paths.data_dir={packed}", *aws.overrides()]
            sync = [aws_cli, "s3", "sync", str(tree), f"s3://{aws.data_bucket}/{PREFIX}/raw/", "--only-show-errors"]
            upload_times: dict[str, list[float]] = {"shards": [], "sync": []}
            for i in range(reps + 1):  # interleaved; round 0 is the warm-up and is dropped
                for prefix in ("shards/", "raw/"):
                    _empty_all(s3, aws.data_bucket, f"{PREFIX}/{prefix}")
                shutil.rmtree(packed, ignore_errors=True)
                sample = {"shards": run_timed(ours, aws.env), "sync": run_timed(sync, aws.env)}
                if i > 0:
                    for key, value in sample.items():
                        upload_times[key].append(value)
            objects = {side: _count(s3, aws.data_bucket, f"{PREFIX}/{side}/") for side in ("shards", "raw")}
        assert objects["raw"] == count, f"aws s3 sync sent {objects['raw']} objects for {count} images"
        manifest = pack_tree(tree, scratch / "epoch-shards")
        epoch_times: dict[str, list[float]] = {"shards": [], "folder": []}
        for i in range(reps + 1):
            sample = {"shards": _epoch(manifest.parent), "folder": _epoch(tree)}
            if i > 0:
                for key, value in sample.items():
                    epoch_times[key].append(value)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "data": f"real MNIST test images (../shared/data/mnist) as {count} PNGs",
        "objects": f"{objects['shards']} (shards + manifest) vs {objects['raw']} (raw tree)",
        "rows": [
            row(
                "imagefolder: upload 10,000 PNGs (moto S3)",
                "invoke upload (shards)",
                upload_times["shards"],
                "aws s3 sync raw tree",
                upload_times["sync"],
                0.25,
            ),
            row(
                "imagefolder: one epoch, data set-up included",
                "reading shards",
                epoch_times["shards"],
                "reading the folder",
                epoch_times["folder"],
                1.1,
            ),
        ],
    }


def _empty_all(s3, bucket: str, prefix: str) -> None:
    """transfers._empty deletes one listing (1,000 keys); the raw tree has 10,000."""
    while s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0):
        _empty(s3, bucket, prefix)


def _count(s3, bucket: str, prefix: str) -> int:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(page.get("KeyCount", 0) for page in pages)
