"""Pipe mode (project/training/pipe.py, project/sandbox/pipes.py): an image-folder channel's shards
streamed through real FIFOs, one per pass, fed by the sandbox from the session's moto S3.

Two "hosts" are two FIFO folders, each fed the whole channel (FullyReplicated), as SageMaker feeds
each instance; each reader keeps its rank's share. One process trains in Pipe mode on File mode's
very batches (a run in this process); a job of two instances streams it on the sandbox in
tests/test_sagemaker_e2e.py.
"""

from __future__ import annotations

import random
import re
import threading
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from project.aws import plan as jobs
from project.aws import sdk
from project.aws.channels import channel_uris, manifest_uri
from project.aws.session import aws_clients
from project.core.config import compose
from project.core.errors import UserError
from project.sandbox.pipes import PipeFeed
from project.training import imagetree, pipe
from project.training.imagefolder import ImageFolderDataModule
from tests.cli import refusal
from tests.imagetrees import write_tree
from tests.service_model import problems
from tests.test_jobs import CUSTOM, INFRA, plan


@pytest.fixture(scope="module")
def channel(moto_endpoint, tmp_path_factory):
    """A tree of 3 x 11 images packed into several shards and uploaded as `invoke upload` does
    (shards, shards.json, SageMaker's manifest): (tree, S3 client, the Pipe channel's description,
    the packed folder uploaded)."""
    root = tmp_path_factory.mktemp("pipe")
    tree = write_tree(root / "tree", per_class=11)
    folder = imagetree.pack_tree(tree, root / "packed", shard_mb=0.002).parent
    s3, bucket = aws_clients("us-east-1", moto_endpoint).s3, f"pipe-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    uri = channel_uris(bucket, "datasets/pipe", ["train"])["train"]
    listing = imagetree.write_sagemaker_manifest(folder, uri, "train.manifest")
    for path in folder.iterdir():
        s3.upload_file(str(path), bucket, f"datasets/pipe/train/{path.name}")
    s3.upload_file(str(listing), bucket, "datasets/pipe/train.manifest")
    source = {"S3DataType": "ManifestFile", "S3Uri": manifest_uri(uri)}
    described = {"ChannelName": "train", "InputMode": "Pipe", "DataSource": {"S3DataSource": source}}
    assert len(imagetree.read_manifest(folder)["shards"]) > 2
    return tree, s3, described, folder


def stream_order(tree: Path) -> list[str]:
    """The samples as the channel streams them: the packed order (class, then path)."""
    return [f.relpath for f in imagetree.scan_tree(tree)[1]]


# --- the pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize("count,world", [(33, 1), (33, 2), (33, 4), (8, 8)])
def test_shares_are_disjoint_equal_and_cover_all_but_the_remainder(count, world):
    shares = [list(pipe.share(range(count), rank, world, count)) for rank in range(world)]
    assert {len(s) for s in shares} == {count // world}  # every rank takes as many steps
    assert sorted(sum(shares, [])) == list(range(count // world * world))


def test_a_shares_fingerprint_is_blind_to_its_order_and_tells_shares_apart():
    names = [f"{label}/{i:04d}.png" for label in ("hbar", "square", "vbar") for i in range(11)]
    first, second = (list(pipe.share(names, rank, 2, len(names))) for rank in (0, 1))
    assert re.fullmatch(r"[0-9a-f]{16}", pipe.Fingerprint.of(first))
    assert pipe.Fingerprint.of(first) == pipe.Fingerprint.of(reversed(first))  # the shuffle does not show
    assert pipe.Fingerprint.of(first) != pipe.Fingerprint.of(second)
    assert pipe.Fingerprint.of(first) != pipe.Fingerprint.of([*first[1:], second[0]])  # one sample swapped
    assert pipe.Fingerprint.of([]) == "0" * 16


def test_the_shuffle_buffer_permutes_within_its_size_and_keeps_the_order_at_one():
    items = list(range(200))
    mixed = list(pipe.shuffled(items, 16, random.Random("42-0-0")))
    assert sorted(mixed) == items and mixed != items
    assert mixed == list(pipe.shuffled(items, 16, random.Random("42-0-0")))  # seeded: reproducible
    assert all(position <= mixed.index(item) + 16 for position, item in enumerate(items))  # leaves within the buffer
    assert list(pipe.shuffled(items, 1, random.Random(0))) == list(pipe.shuffled(items, 0, random.Random(0))) == items


# --- real FIFOs -----------------------------------------------------------------------------------


def read_passes(data_dir: Path, rank: int, world: int, passes: int, out: dict) -> None:
    streams = pipe.EpochStreams(data_dir / "train")
    count = streams.head()["samples"]
    out[rank] = [[s.relpath for s in pipe.share(streams.next_pass(), rank, world, count)] for _ in range(passes)]
    out[f"opened{rank}"] = streams.opened


def test_two_hosts_read_disjoint_shares_of_each_pass_in_fifo_order(channel, tmp_path):
    tree, s3, described, _ = channel
    order = stream_order(tree)
    hosts = [tmp_path / f"algo-{n}" for n in (1, 2)]
    feeds = []
    for host in hosts:
        host.mkdir()
        feeds.append(PipeFeed(s3, described, host))
    assert pipe.is_piped(hosts[0] / "train") and not (hosts[0] / "train").exists()
    got: dict = {}
    readers = [threading.Thread(target=read_passes, args=(host, rank, 2, 2, got)) for rank, host in enumerate(hosts)]
    try:
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(60)
    finally:
        for feed in feeds:
            feed.stop()
    assert not any(r.is_alive() for r in readers) and not any(f.thread.is_alive() for f in feeds)
    for epoch in range(2):
        first, second = got[0][epoch], got[1][epoch]
        assert not set(first) & set(second) and len(first) == len(second) == len(order) // 2
        assert sorted(first + second) == sorted(order[: len(order) // 2 * 2])  # 33 samples: the last one waits
        assert first == order[0::2][: len(first)]  # rank 0: stream positions 0, 2, 4, ...
    # each host: train_0, then train_1, each drained and removed; train_2 waits for a third pass
    assert got["opened0"] == got["opened1"] == 2
    assert sorted(p.name for p in hosts[0].iterdir()) == ["train_2"]


def test_a_pass_left_early_is_drained_before_the_next(channel, tmp_path):
    """limit_train_batches: the reader stops early; the next pass still opens (SageMaker makes the
    next FIFO only when the last is read), and reads from its own head."""
    tree, s3, described, _ = channel
    feed = PipeFeed(s3, described, tmp_path)
    try:
        streams = pipe.EpochStreams(tmp_path / "train")
        first = streams.next_pass()
        assert next(first).relpath == stream_order(tree)[0]
        assert [s.relpath for s in streams.next_pass()] == stream_order(tree)
        streams.close()
    finally:
        feed.stop()
    assert streams.opened == 2 and not feed.thread.is_alive()


def test_the_datamodule_streams_equal_batches_per_rank_with_its_validation_read_once(channel, tmp_path):
    tree, s3, described, _ = channel
    feed = PipeFeed(s3, described, tmp_path)
    try:
        dm = ImageFolderDataModule(
            train_dir=str(tmp_path / "train"), validation_dir=str(tree), num_classes=3, batch_size=8, shuffle_buffer=10
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert loader.num_workers == 0 and len(loader) == 5  # 33 samples, batches of 8
        epochs = [list(loader) for _ in range(2)]
    finally:
        dm.teardown("fit")
        feed.stop()
    labels = [torch.cat([y for _, y in batches]) for batches in epochs]
    assert [len(batches) for batches in epochs] == [5, 5] and epochs[0][0][0].shape == (8, 1, 28, 28)
    assert Counter(labels[0].tolist()) == Counter(labels[1].tolist()) == {0: 11, 1: 11, 2: 11}
    assert not torch.equal(labels[0], torch.tensor([0] * 11 + [1] * 11 + [2] * 11))  # shuffled in the buffer
    assert len(dm.splits["val"]) == 33 and dm.classes == ["hbar", "square", "vbar"]


def test_one_process_in_pipe_mode_trains_on_file_modes_batches_to_the_same_weights(channel, composed, tmp_path, capsys):
    """A job's one process, its train channel the shards downloaded (File) or streamed through its FIFOs
    (Pipe, the sandbox's feed from S3): the 33 samples fit dataset.shuffle_buffer (1000), so Pipe mode
    puts them in File mode's own order (data.epoch_order), batch for batch, epoch after epoch, and the
    run ends with the very same weights and test metrics. A tolerance would hide little: on such data
    the metrics move with the order alone. Lightning's loop and `train` as a job runs it (its channels
    as `sources`), in this process."""
    from project.core.runtime import local_layout
    from project.training.train import train

    tree, s3, described, packed = channel
    validation = write_tree(tmp_path / "validation", per_class=5, seed=1)
    cfg = composed(
        "dataset=imagefolder",
        f"dataset.channels.train={packed}",
        f"+dataset.channels.validation={validation}",
        "dataset.num_classes=3",
        "trainer.max_epochs=2",
        "trainer.batch_size=8",
        "trainer.gpus=0",
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"paths.data_dir={tmp_path / 'cache'}",
    )

    def run(mode: str, train_dir: Path) -> dict:
        return train(cfg, local_layout(tmp_path / mode), mode, {"train": train_dir, "validation": validation})

    metrics = {"File": run("File", packed)}
    fifos = tmp_path / "fifos"
    fifos.mkdir()
    feed = PipeFeed(s3, described, fifos)
    try:
        metrics["Pipe"] = run("Pipe", fifos / "train")
    finally:
        feed.stop()
    assert sorted(p.name for p in fifos.iterdir()) == ["train_2"]  # train_0, train_1 read; a third pass waits
    whole = pipe.Fingerprint.of(stream_order(tree))  # one rank: every sample of each pass
    assert re.findall(
        r"^pipe: (train_\d) epoch \d rank 0/1: 33 of 33 samples, fingerprint (\w+)$", capsys.readouterr().out, re.M
    ) == [
        ("train_0", whole),
        ("train_1", whole),
    ]
    assert metrics["Pipe"]["global_steps"] == metrics["File"]["global_steps"] == 2 * 5  # 33 in batches of 8
    pipe_metrics, file_metrics = (
        {k: m[k] for k in ("test_loss", "test_acc")} for m in (metrics["Pipe"], metrics["File"])
    )
    assert pipe_metrics == file_metrics
    weights = {mode: torch.load(tmp_path / mode / "model" / "model.pt") for mode in metrics}
    assert [name for name in weights["File"] if not torch.equal(weights["File"][name], weights["Pipe"][name])] == []


# --- configuration and the request ----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["+dataset.input_modes.train=Pipe"], "FastFile or File is the better choice"),
        (["dataset=imagefolder", "+dataset.input_modes.train=Pipe"], "add +dataset.channels.validation="),
        (
            ["dataset=imagefolder", "+dataset.channels.validation=/v", "+dataset.input_modes.validation=Pipe"],
            "only the train channel is streamed",
        ),
        (
            ["dataset=imagefolder", "+dataset.channels.validation=/v", "+dataset.input_modes.train=Pipe"]
            + ["instance=ml.p3.8xlarge"],
            "use FastFile, or one GPU per instance",
        ),
    ],
)
def test_pipe_where_it_does_not_help_is_one_line(overrides, message):
    with pytest.raises(UserError) as info:
        plan(*overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_invoke_local_refuses_pipe_on_mnist_and_a_bad_mode_in_one_line():
    line = refusal("local", "+dataset.input_modes.train=Pipe")
    assert "dataset mnist is a few files read once" in line and "FastFile or File is the better choice" in line
    line = refusal("local", "+dataset.input_modes.train=Stream")
    assert "dataset.input_modes.train=Stream" in line and "File, FastFile, Pipe" in line


def test_the_pipe_channel_is_a_valid_create_training_job_channel(moto_endpoint):
    import boto3

    pipe_channel = ["dataset=imagefolder", "+dataset.channels.validation=/v", "+dataset.input_modes.train=Pipe"]
    p, _ = plan(*pipe_channel, "+dataset.input_modes.validation=FastFile")
    assert p.manifests == {"train": "s3://data-b/datasets/imagefolder/train.manifest"}
    assert "s3://data-b/datasets/imagefolder/train/  (Pipe: the shards train.manifest names)" in p.summary()
    infra = replace(INFRA, artifacts_bucket=f"art-{uuid.uuid4().hex[:12]}")  # this test's own, in the stand-in
    boto3.client("s3").create_bucket(Bucket=infra.artifacts_bucket)
    p = jobs.plan_job(compose([*pipe_channel, "+dataset.input_modes.validation=FastFile"]), infra, CUSTOM)
    trainer = sdk.model_trainer(p, f"s3://{infra.artifacts_bucket}/code/{p.job_name}/", boto3.Session())
    request = sdk.create_request(trainer, p.job_name)
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert channels["train"]["InputMode"] == "Pipe" and channels["validation"]["InputMode"] == "FastFile"
    assert channels["train"]["DataSource"]["S3DataSource"] == {
        "S3DataType": "ManifestFile",
        "S3Uri": "s3://data-b/datasets/imagefolder/train.manifest",
        "S3DataDistributionType": "FullyReplicated",
    }
    assert problems("sagemaker", "CreateTrainingJob", request) == []
