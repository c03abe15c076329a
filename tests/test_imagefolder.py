"""dataset=imagefolder: a generated tree of small PNGs in class folders, read directly and as shards.

The tree: three classes of simple shapes (a horizontal bar, a vertical bar, a square) at jittered
places, in a few sizes and one JPEG per class, so a tiny CNN learns them in a few epochs. Packing
and the shard upload run against the session's moto server over real HTTP.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from project.aws.session import aws_clients
from project.aws.upload import UPLOAD, plan_packed_upload, upload
from project.training import imagetree
from project.training.imagefolder import ImageFolderDataModule
from project.training.models import LitClassifier, SmallCNN
from project.training.raw import DataError
from tests.cli import invoke, one_error_line
from tests.imagetrees import CLASSES, shape_image, write_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree"))


def loaded(folder: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(train_dir=str(folder), num_classes=3, batch_size=32, **kwargs)
    dm.setup("fit")
    return dm


# --- packing ------------------------------------------------------------------------------------


def test_packing_is_deterministic(tree, tmp_path):
    first = imagetree.pack_tree(tree, tmp_path / "a", shard_mb=0.01)
    second = imagetree.pack_tree(tree, tmp_path / "b", shard_mb=0.01)
    assert first.read_bytes() == second.read_bytes()
    names = [e["name"] for e in json.loads(first.read_text())["shards"]]
    assert len(names) > 2  # the test means something only with several shards
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)


def test_shards_give_the_same_samples_as_the_folder(tree, tmp_path):
    packed = imagetree.pack_tree(tree, tmp_path / "packed", shard_mb=0.01).parent
    direct, sharded = loaded(tree), loaded(packed)
    for split in ("train", "val"):
        assert torch.equal(direct.splits[split].images, sharded.splits[split].images)
        assert torch.equal(direct.splits[split].labels, sharded.splits[split].labels)
    assert direct.classes == sharded.classes == list(CLASSES)
    assert direct.splits["train"].images.dtype == torch.uint8
    assert direct.splits["train"].images.shape[1:] == (1, 28, 28)


def test_long_and_odd_names_survive_the_shards(tmp_path):
    root = write_tree(tmp_path / "tree", per_class=3)
    deep = root / "vbar" / ("sub folder " * 12).strip() / f"{'x' * 150}.v2.é.png"
    deep.parent.mkdir(parents=True)
    shape_image("vbar", np.random.default_rng(3), 28).save(deep)
    folder = imagetree.pack_tree(root, tmp_path / "packed").parent
    _, from_tree = imagetree.read_tree(root)
    _, from_shards = imagetree.read_shards(folder)
    assert from_shards == from_tree and deep.relative_to(root).as_posix() in {s.relpath for s in from_shards}


def test_a_damaged_shard_is_refused(tree, tmp_path):
    folder = imagetree.pack_tree(tree, tmp_path / "packed").parent
    (shard,) = folder.glob("shard-*.tar")
    shard.write_bytes(shard.read_bytes()[:-1024])
    with pytest.raises(DataError, match=f"shard .*{shard.name} does not match the SHA256"):
        loaded(folder)


def test_changing_one_image_changes_exactly_one_shard(tmp_path):
    root = write_tree(tmp_path / "tree", per_class=40)
    before = json.loads(imagetree.pack_tree(root, tmp_path / "out", shard_mb=0.005).read_text())
    shape_image("square", np.random.default_rng(99), 28).save(root / "square" / "img_005.png")
    after = json.loads(imagetree.pack_tree(root, tmp_path / "out", shard_mb=0.005).read_text())
    old, new = {e["name"] for e in before["shards"]}, {e["name"] for e in after["shards"]}
    assert len(old) > 3 and len(new - old) == 1 and len(old - new) == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*")) == sorted(new)  # stale shard removed


def test_webdataset_layout(tree, tmp_path):
    """Each sample is <key>.<ext> then <key>.cls, the keys carry no dot: WebDataset's grouping."""
    import tarfile

    folder = imagetree.pack_tree(tree, tmp_path / "p").parent
    (entry,) = imagetree.read_manifest(folder)["shards"]
    with tarfile.open(folder / entry["name"]) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 and m.uname == "" for m in tar.getmembers())
    assert names[:2] == ["hbar/img%2E000.jpg", "hbar/img%2E000.cls"]
    assert [name for name, _ in imagetree._tar_members((folder / entry["name"]).read_bytes())] == names
    assert len(names) == 2 * len(CLASSES) * 80


# --- training -----------------------------------------------------------------------------------


def test_a_tiny_cnn_learns_the_shapes(tree, tmp_path):
    pl.seed_everything(0)
    dm = ImageFolderDataModule(train_dir=str(tree), num_classes=3, batch_size=32, val_size=0.25, augment=True)
    module = LitClassifier(SmallCNN(in_channels=1, num_classes=3, width=8), num_classes=3, lr=0.01)
    trainer = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    assert float(trainer.callback_metrics["val_acc"]) > 0.6  # chance is 1/3


def test_augmentation_changes_batches_but_not_labels(tree):
    plain, augmented = loaded(tree), loaded(tree, augment=True)
    idx = np.arange(16)
    (x0, y0), (x1, y1) = plain.splits["train"][idx], augmented.splits["train"][idx]
    assert torch.equal(y0, y1) and x0.shape == x1.shape and not torch.equal(x0, x1)
    assert torch.equal(augmented.splits["val"][idx][0], plain.splits["val"][idx][0])  # never on val


def test_the_training_position_resumes_mid_epoch(tree):
    """ResidentDataModule's resumable loader, as for MNIST: the restarted run starts at batch 3."""
    first = loaded(tree)
    batches = iter(first.train_dataloader())
    seen = [next(batches)[1] for _ in range(3)]
    state = first.state_dict()
    state["train_position"]["batches"] = 2  # as if stopped after two batches
    resumed = loaded(tree)
    resumed.load_state_dict(state)
    assert torch.equal(next(iter(resumed.train_dataloader()))[1], seen[2])


def test_rgb_size_and_validation_channel(tree):
    dm = ImageFolderDataModule(
        train_dir=str(tree), validation_dir=str(tree), image_shape=[3, 20, 24], mean=[0.5] * 3, batch_size=32
    )
    dm.setup("fit")  # 240 samples: the default batch of 256 would be refused as larger than the set
    assert len(dm.splits["train"]) == len(dm.splits["val"]) == 240
    assert dm.splits["train"][np.arange(4)][0].shape == (4, 3, 20, 24)
    assert dm.image_shape == [3, 20, 24]


def test_the_default_cnn_takes_its_input_channels_from_the_image_shape(composed, tree, tmp_path):
    """dataset.image_shape is the one home of the colour channels: the DataModule converts every
    image to it and conf/model/cnn.yaml's in_channels follows it, with no model override."""
    from project.training import modules
    from project.training.resolve import resolve

    # 240 samples: a batch under the training set's size (the default 256 is refused as larger)
    base = ["dataset=imagefolder", f"dataset.channels.train={tree}", "dataset.num_classes=3", "trainer.batch_size=32"]
    cfg = composed(*base, "dataset.image_shape=[3,20,24]", "dataset.mean=[0.4,0.5,0.6]")
    assert cfg.model.net.in_channels == 3
    module, datamodule = modules.build(cfg, resolve(cfg))
    datamodule.setup("fit")
    x, _ = datamodule.splits["train"][np.arange(2)]
    assert x.shape == (2, 3, 20, 24) and module(x).shape == (2, 3)
    assert composed(*base).model.net.in_channels == 1  # grey by default
    assert composed().model.net.in_channels == 1  # MNIST


@pytest.mark.parametrize("shape", [[2, 28, 28], [28, 28], [1, 0, 28]])
def test_an_image_shape_that_is_not_grey_or_rgb_is_refused(tree, shape):
    with pytest.raises(DataError, match=r"dataset.image_shape=.* is not \[channels, height, width\] with 1"):
        ImageFolderDataModule(train_dir=str(tree), image_shape=shape)


# --- bad input: one clear line, nothing written -------------------------------------------------


def test_one_class_is_refused(tmp_path):
    root = write_tree(tmp_path / "tree", per_class=3, classes=("only",))
    with pytest.raises(DataError, match="1 class folder.*at least two"):
        imagetree.pack_tree(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_image_is_named(tmp_path):
    root = write_tree(tmp_path / "tree", per_class=3)
    (root / "vbar" / "img_002.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"unreadable image .*vbar/img_002\.png"):
        imagetree.pack_tree(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match=r"unreadable image vbar/img_002\.png in ") as info:
        loaded(root)
    assert str(root) in str(info.value) and "0x" not in str(info.value)  # the folder, not Pillow's buffer


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_a_missing_or_empty_channel_is_refused(make, tmp_path):
    if make == "empty":
        (tmp_path / "tree").mkdir()
    with pytest.raises(DataError, match="does not exist|holds no images"):
        imagetree.pack_tree(tmp_path / "tree", tmp_path / "out")
    with pytest.raises(DataError, match="does not exist|holds no images"):
        loaded(tmp_path / "tree")
    assert not (tmp_path / "out").exists()


def test_num_classes_must_match_the_folders(tree):
    with pytest.raises(
        DataError, match=r"dataset.num_classes=5 but .* has 3 class folders .*set dataset.num_classes=3"
    ):
        ImageFolderDataModule(train_dir=str(tree), num_classes=5).setup("fit")


# --- upload: shards and manifest to S3, incrementally -------------------------------------------


def test_upload_sends_only_changed_shards_and_the_manifest_last(moto_endpoint, tmp_path):
    s3 = aws_clients("us-east-1", moto_endpoint).s3
    bucket = f"img-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    root = write_tree(tmp_path / "tree", per_class=40)
    lines: list[str] = []

    def send() -> list[str]:
        folder = imagetree.pack_tree(root, tmp_path / "packed", shard_mb=0.005).parent
        shards, manifest = plan_packed_upload(folder, bucket, "datasets/shapes/train", s3)
        summary = upload(shards, s3, progress=False, echo=lines.append, then=manifest)
        return [item.key.rsplit("/", 1)[1] for item in summary.uploaded]

    first = send()
    assert first[-1] == imagetree.MANIFEST and len(first) > 4  # the manifest after every shard
    assert send() == []  # nothing changed: nothing moves
    shape_image("hbar", np.random.default_rng(7), 32).save(root / "hbar" / "img_010.png")
    second = send()
    assert len(second) == 2 and second[0].startswith("shard-") and second[1] == imagetree.MANIFEST
    assert lines[-1].startswith("uploaded 2 file(s)")
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"datasets/shapes/train/{second[0]}" in listed


def test_a_packed_upload_plan_skips_unchanged_objects(moto_endpoint, tree, tmp_path):
    s3 = aws_clients("us-east-1", moto_endpoint).s3
    bucket = f"img-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    folder = imagetree.pack_tree(tree, tmp_path / "p").parent
    shards, manifest = plan_packed_upload(folder, bucket, "x", s3)
    assert {item.action for item in shards + manifest} == {UPLOAD}


# --- the config and the upload hook -------------------------------------------------------------


def test_the_config_names_only_datamodule_arguments():
    """conf/dataset/imagefolder.yaml: every key but the tool's own is an __init__ argument."""
    import inspect

    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "dataset" / "imagefolder.yaml")
    assert conf._target_ == imagetree.IMAGEFOLDER_TARGET == f"{ImageFolderDataModule.__module__}.ImageFolderDataModule"
    accepted = set(inspect.signature(ImageFolderDataModule).parameters)
    assert set(conf) - {"_target_", "name", "s3_prefix", "channels", "input_modes"} <= accepted
    assert {f"{channel}_dir" for channel in ("train", "validation", "test")} <= accepted


def test_pack_channel_packs_only_imagefolder_datasets(tree, tmp_path):
    dataset = {"_target_": imagetree.IMAGEFOLDER_TARGET, "name": "shapes", "shard_mb": 0.01}
    folder = imagetree.pack_channel(dataset, "train", tree, tmp_path)
    assert folder == tmp_path / "shards" / "shapes" / "train" and imagetree.is_packed(folder)
    other = {"_target_": "project.training.data.IdxDataModule", "name": "mnist"}
    assert imagetree.pack_channel(other, "train", tree, tmp_path / "other") is None
    assert not (tmp_path / "other").exists()


# --- through the CLI: invoke local and invoke upload --------------------------------------------


def local_args(tree: Path, tmp_path: Path, run_name: str, *extra: str) -> list[str]:
    return [
        "dataset=imagefolder",
        f"dataset.channels.train={tree}",
        "dataset.num_classes=3",
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"run_name={run_name}",
        "trainer.max_epochs=1",
        "trainer.batch_size=32",
        "trainer.gpus=0",
        *extra,
    ]


@pytest.mark.slow
def test_invoke_local_trains_on_an_image_folder(tree, tmp_path):
    result = invoke("local", *local_args(tree, tmp_path, "shapes"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "shapes" / "metrics.json").read_text())
    assert {"train_loss", "val_acc", "test_acc"} <= set(metrics)


@pytest.mark.slow
def test_an_rgb_run_with_per_channel_statistics_exports_its_normalisation(tree, tmp_path):
    import torch

    rgb = ["dataset.image_shape=[3,28,28]", "dataset.mean=[0.4,0.5,0.6]", "dataset.std=[0.2,0.25,0.3]"]
    result = invoke("local", *local_args(tree, tmp_path, "rgb", *rgb))
    assert result.returncode == 0, result.stderr[-3000:]
    model = torch.jit.load(str(tmp_path / "runs" / "rgb" / "model" / "model.ts"))
    assert model.mean.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])
    assert model.std.flatten().tolist() == pytest.approx([0.2, 0.25, 0.3])
    probs = model(torch.full((2, 3, 28, 28), 128.0))
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(dim=1), torch.ones(2))


@pytest.mark.parametrize(
    "make,expected",
    [
        ("one_class", "has 1 class folder(s) (only): a classifier needs at least two"),
        ("corrupt", "unreadable image vbar/img_002.png"),
        ("three_classes", "dataset.num_classes=5 but"),
        (
            "mlp_rgb",
            "model.net=project.training.models.MLP cannot take dataset=imagefolder's samples (image_shape [3, 28, 28])",
        ),
    ],
)
def test_invoke_local_bad_trees_are_one_line(make, expected, tmp_path):
    root = write_tree(tmp_path / "tree", per_class=3, classes=("only",) if make == "one_class" else CLASSES)
    if make == "corrupt":
        (root / "vbar" / "img_002.png").write_bytes(b"not an image")
    extra = {
        "three_classes": ["dataset.num_classes=5"],
        "mlp_rgb": ["model=mlp", "dataset.image_shape=[3,28,28]"],  # the MLP is sized for 1x28x28
    }.get(make, [])
    line = one_error_line(invoke("local", *local_args(root, tmp_path, "bad", *extra)))
    assert line.startswith("error: ") and expected in line, line
    assert not (tmp_path / "runs" / "bad").exists()


def test_invoke_upload_sends_shards_incrementally(moto_endpoint, tmp_path):
    s3 = aws_clients("us-east-1", moto_endpoint).s3
    bucket = f"img-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    root = write_tree(tmp_path / "tree", per_class=40)
    args = [
        "dataset=imagefolder",
        f"dataset.channels.train={root}",
        "dataset.num_classes=3",
        "dataset.shard_mb=0.005",
        f"paths.data_dir={tmp_path / 'cache'}",
        f"aws.data_bucket={bucket}",
        f"aws.artifacts_bucket={bucket}",
        "aws.repository_url=123456789012.dkr.ecr.us-east-1.amazonaws.com/img",
        "aws.role_arn=arn:aws:iam::123456789012:role/img",
        "aws.region=us-east-1",
    ]

    def sent() -> list[str]:
        result = invoke("upload", *args)
        assert result.returncode == 0, result.stderr[-3000:]
        return [line.split(" -> ")[1].rsplit("/", 1)[1] for line in result.stdout.splitlines() if " -> s3://" in line]

    first = sent()
    # The manifests last: shards.json names the shards, SageMaker's train.manifest lists them for the job.
    assert len(first) > 4 and first[-2:] == [imagetree.MANIFEST, "train.manifest"]
    assert sent() == []
    shape_image("vbar", np.random.default_rng(5), 28).save(root / "vbar" / "img_020.png")
    second = sent()
    assert len(second) == 3 and second[0].startswith("shard-") and second[1:] == [imagetree.MANIFEST, "train.manifest"]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="datasets/imagefolder/train/")["Contents"]}
    assert f"datasets/imagefolder/train/{imagetree.MANIFEST}" in keys

    # The replaced shard stays under the prefix (a running job may read it), but a File-mode job
    # is given the manifest (ManifestFile) and downloads only the current shards, as the sandbox does.
    from project.aws.channels import manifest_uri
    from project.sandbox.optml import _download_channel

    current = {
        entry["name"]
        for entry in imagetree.read_manifest(tmp_path / "cache" / "shards" / "imagefolder" / "train")["shards"]
    }
    assert len(keys) == len(current) + 2  # one stale shard, and shards.json
    channel = {
        "ChannelName": "train",
        "InputMode": "File",
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "ManifestFile",
                "S3Uri": manifest_uri(f"s3://{bucket}/datasets/imagefolder/train/"),
            }
        },
    }
    _download_channel(s3, channel, tmp_path / "opt-ml")
    got = {p.name for p in (tmp_path / "opt-ml" / "input/data/train").iterdir()}
    assert got == current | {imagetree.MANIFEST}
