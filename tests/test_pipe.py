"""Pipe mode (project/training/pipe.py, project/sandbox/pipes.py): an image-folder channel's shards
streamed through real FIFOs, one per pass, fed by the sandbox from the session's moto S3.

Two "hosts" are two FIFO folders, each fed the whole channel (FullyReplicated), as SageMaker feeds
each instance; each reader keeps its rank's share. One process trains in Pipe mode on File mode's
very batches (a run in this process); a job of two instances streams it on the sandbox in
tests/test_sagemaker_e2e.py.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import pytest
import torch

from project.aws import plan as jobs
from project.aws import sdk
from project.aws.channels import channel_uris, manifest_uri
from project.aws.session import aws_clients
from project.aws.staging import ENTRY_SOURCE
from project.core.config import compose, to_yaml
from project.core.errors import UserError
from project.core.sagemaker_names import CONFIG_CHANNEL
from project.sandbox.pipes import PipeFeed
from project.training import imagetree, pipe, pipe_relay
from project.training.imagefolder import ImageFolderDataModule
from tests.cli import refusal
from tests.conftest import ROOT
from tests.failing_runs import free_port
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


@pytest.mark.parametrize("buffer", [10, 1000])  # a streaming shuffle; the whole share held (File mode's order)
def test_a_pass_resumed_mid_epoch_goes_on_with_the_first_batch_not_trained_on(channel, tmp_path, buffer):
    """A job stopped mid-epoch (spot, SIGTERM) and re-run reads train_0 again from its head: the
    loader's position travels in the checkpoint (the DataModule's state) and the resumed pass
    yields exactly the batches the stopped one had not, as an uninterrupted pass does."""
    tree, s3, described, _ = channel

    def module(folder: Path) -> ImageFolderDataModule:
        train = str(folder / "train")
        return ImageFolderDataModule(
            train_dir=train, validation_dir=str(tree), num_classes=3, batch_size=8, shuffle_buffer=buffer
        )

    def one_pass(folder: Path, stop_after: int | None = None, state: dict | None = None) -> tuple[list, dict]:
        folder.mkdir()
        feed, dm = PipeFeed(s3, described, folder), module(folder)
        try:
            if state is not None:
                dm.load_state_dict(state)  # as Lightning restores a checkpoint: before or after setup
            dm.setup("fit")
            batches = []
            for batch in dm.train_dataloader():
                batches.append(batch)
                if len(batches) == stop_after:
                    break
            return batches, dm.state_dict()
        finally:
            dm.teardown("fit")
            feed.stop()

    whole, _ = one_pass(tmp_path / "whole")
    stopped, state = one_pass(tmp_path / "stopped", stop_after=2)
    assert state == {"train_position": {"epoch": 0, "batches": 2}}
    resumed, after = one_pass(tmp_path / "resumed", state=state)
    assert len(whole) == 5 and len(resumed) == 3 and after == {"train_position": {"epoch": 0, "batches": 5}}
    for (x, y), (wx, wy) in zip(stopped + resumed, whole, strict=True):
        assert torch.equal(x, wx) and torch.equal(y, wy)
    # A position of another epoch is not applied: that pass starts at its first batch.
    other, _ = one_pass(tmp_path / "other", state={"train_position": {"epoch": 1, "batches": 2}})
    assert len(other) == 5 and all(torch.equal(a[1], b[1]) for a, b in zip(other, whole, strict=True))


# --- the relay: one instance, several processes (project/training/pipe_relay.py) -------------------

PAGE = 4096  # the smallest pipe Linux makes (F_SETPIPE_SZ)


@dataclass
class Relayed:
    order: list[str]  # the samples as the channel streams them
    size: int  # the bytes of one pass
    feed: PipeFeed
    relay: pipe_relay.Relay

    def rank_dir(self, rank: int) -> Path:
        """Where local rank `rank` reads, as a rank started under the launcher finds it."""
        environ = {pipe.RELAY_ENV: str(self.relay.root), "LOCAL_RANK": str(rank)}
        return pipe.reader_dir(self.relay.channel_dir, environ)


@pytest.fixture
def relayed(channel, tmp_path):
    """SageMaker's FIFOs of the channel (a PipeFeed) under data/, relayed to 2 local ranks under relay/."""
    tree, s3, described, _ = channel
    (tmp_path / "data").mkdir()
    feed = PipeFeed(s3, described, tmp_path / "data")
    relay = pipe_relay.Relay(tmp_path / "data" / "train", tmp_path / "relay", 2).start()
    size = sum(s3.head_object(Bucket=b, Key=k)["ContentLength"] for b, k in feed.objects)
    yield Relayed(stream_order(tree), size, feed, relay)
    relay.close()
    feed.stop()


def whole_passes(folder: Path, passes: int, out: dict, key: object) -> None:
    """Every sample of each pass, in the stream's order, as one rank reads them (before it keeps its share)."""
    streams = pipe.EpochStreams(folder)
    out[key] = [[s.relpath for s in streams.next_pass()] for _ in range(passes)]


def opened_small(folder: Path, ready: threading.Event) -> IO[bytes]:
    """A rank's first FIFO opened with a pipe of one page (full at once), and only then `ready`: the
    relay streams once every rank has opened, so the other opens after this."""
    fifo = open(pipe.fifo_path(folder, 0), "rb")  # noqa: SIM115  the caller closes it
    fcntl.fcntl(fifo.fileno(), fcntl.F_SETPIPE_SZ, PAGE)
    ready.set()
    return fifo


def after(event: threading.Event, target: Callable[..., None], *args: object) -> threading.Thread:
    def run() -> None:
        if event.wait(30):
            target(*args)

    return threading.Thread(target=run)


def joined(threads: list[threading.Thread], timeout: float = 30) -> None:
    """Run the ranks' threads to their end; a rank still waiting fails the test instead of hanging it."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), f"a rank still waits after {timeout:.0f} s"


def test_the_relay_gives_each_local_rank_every_pass_and_each_keeps_its_global_share(relayed):
    got: dict = {}
    joined([threading.Thread(target=whole_passes, args=(relayed.rank_dir(r), 2, got, r)) for r in (0, 1)])
    order, count = relayed.order, len(relayed.order)  # 33 samples: a share leaves count % world out
    assert got[0] == got[1] == [order, order]
    for world, first in ((2, 0), (4, 2)):  # one host of 2 GPUs; the second host of a job of 2 x 2 GPUs
        for samples in got[0]:
            shares = {first + r: list(pipe.share(samples, first + r, world, count)) for r in (0, 1)}
            assert not set(shares[first]) & set(shares[first + 1])
            assert shares == {rank: order[rank::world][: count // world] for rank in shares}  # equal, in place
    relayed.feed.stop()  # the feed's thread ends: what it left is final
    # SageMaker's train_0 and train_1 each read to its end, in turn; train_2 waits: no rank opened a third pass
    assert relayed.relay.passes == 2
    assert [p.name for p in relayed.relay.channel_dir.parent.iterdir()] == ["train_2"]
    assert sorted(p.name for p in relayed.rank_dir(1).parent.iterdir()) == ["train_0", "train_1", "train_2"]


def test_a_rank_that_reads_nothing_until_the_other_has_read_its_whole_pass_holds_nobody_back(relayed):
    """Under DDP rank 0 may wait (in an all-reduce) for rank 1, which waits for its bytes: a tee that
    wrote each chunk to every rank in turn would stop at rank 0's full pipe and never reach rank 1."""
    ready, other_done, got = threading.Event(), threading.Event(), {}

    def late() -> None:
        with opened_small(relayed.rank_dir(0), ready) as fifo:  # opened (the relay waits for that), not read
            done = other_done.wait(20)  # a lock-step tee: rank 1 waits until rank 0 closes its end
            got["late"] = len(fifo.read()) if done else "rank 1 still waited for its pass after 20 s"

    def early() -> None:
        whole_passes(relayed.rank_dir(1), 1, got, "early")
        other_done.set()

    joined([threading.Thread(target=late), after(ready, early)])
    assert got["early"] == [relayed.order]
    assert got["late"] == relayed.size > 4 * PAGE  # far more than its pipe holds: it waited in the relay


def test_a_rank_that_leaves_a_pass_is_dropped_from_it_and_the_other_reads_on(relayed):
    ready, got = threading.Event(), {}

    def leaves() -> None:
        with opened_small(relayed.rank_dir(1), ready) as fifo:
            fifo.read(100)  # then closes its end mid-pass: the relay's next write to it breaks
        with pipe.open_fifo(pipe.fifo_path(relayed.rank_dir(1), 1)) as fifo:  # back for the next pass: all of it
            got["again"] = len(fifo.read())

    joined([threading.Thread(target=leaves), after(ready, whole_passes, relayed.rank_dir(0), 2, got, 0)])
    assert got[0] == [relayed.order] * 2  # the other rank: both passes whole
    assert got["again"] == relayed.size and relayed.relay.passes == 2


def test_the_launcher_relays_the_stream_to_two_processes_that_each_train_on_their_share(channel, tmp_path):
    """What one instance of a Pipe job with 2 GPUs runs, on 2 CPU processes: the container's launcher
    (PID 1: launch(2, sm_entry.py) as `sm_entry.py --launch` makes it for trainer.gpus=2) over SageMaker's
    variables, its train channel fed by a PipeFeed, its validation channel a folder (File mode)."""
    tree, s3, described, _ = channel
    opt = tmp_path / "opt-ml"
    for folder in ("input/data", "model", "output/data", "checkpoints", "code"):
        (opt / folder).mkdir(parents=True)
    validation = write_tree(tmp_path / "validation", per_class=4, seed=1)
    overrides = ["dataset=imagefolder", f"dataset.channels.train={tree}", f"+dataset.channels.validation={validation}"]
    overrides += ["+dataset.input_modes.train=Pipe", "dataset.num_classes=3", "trainer.gpus=0"]
    overrides += ["trainer.max_epochs=2", "trainer.batch_size=8", f"paths.runs_dir={tmp_path / 'runs'}"]
    (opt / "code" / "config.yaml").write_text(to_yaml(compose(overrides)))
    entry = shutil.copy(ENTRY_SOURCE, opt / "code" / "sm_entry.py")  # as staging puts it
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MASTER_", "LOCAL_", "RANK", "WORLD_"))}
    environ |= {
        "SM_MODEL_DIR": str(opt / "model"),
        "SM_OUTPUT_DATA_DIR": str(opt / "output/data"),
        "SM_CHECKPOINT_DIR": str(opt / "checkpoints"),
        "SM_CHANNEL_TRAIN": str(opt / "input/data/train"),  # no folder: train_0, train_1, ... beside it
        "SM_CHANNEL_VALIDATION": str(validation),
        f"SM_CHANNEL_{CONFIG_CHANNEL.upper()}": str(opt / "code"),
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        "PET_MASTER_PORT": str(free_port()),  # torchrun's own variable: one host's rendezvous, not on 29500
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(tmp_path),  # where the launcher puts the relay's FIFOs
    }
    feed = PipeFeed(s3, described, opt / "input/data")
    launcher = "import sys; from project.training.launch import launch; launch(2, sys.argv[1])"
    run = subprocess.Popen(
        [sys.executable, "-c", launcher, entry],
        cwd=opt / "code",
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its workers with it: a run that hangs is ended whole
    )
    try:
        out = run.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        pytest.fail(f"the job still ran after 120 s:\n{run.communicate()[0][-3000:]}")
    finally:
        feed.stop()
    assert run.returncode == 0, out[-3000:]
    assert f"pipe: {opt}/input/data/train_<k> relayed to 2 processes" in out
    # each rank: pass k of its own relayed FIFOs in epoch k, and its half of the 33 samples of each
    shares = re.findall(r"pipe: (train_\d) epoch (\d) rank (\d)/2: (\d+) of 33 samples", out)
    assert sorted(shares) == [(f"train_{e}", str(e), str(r), "16") for e in (0, 1) for r in (0, 1)]
    assert not list(tmp_path.glob("pipe-relay-*"))  # the launcher removed its folder


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
    ],
)
def test_pipe_where_it_does_not_help_is_one_line(overrides, message):
    with pytest.raises(UserError) as info:
        plan(*overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_pipe_on_an_instance_of_several_gpus_is_relayed_to_each_process():
    pipe_channel = ["dataset=imagefolder", "+dataset.channels.validation=/v", "+dataset.input_modes.train=Pipe"]
    p, _ = plan(*pipe_channel, "instance=ml.g5.12xlarge")
    assert p.processes_per_node == 4 and p.input_modes["train"] == "Pipe"
    assert "(Pipe: the shards train.manifest names, relayed to 4 processes per instance)" in p.summary()
    p, _ = plan(*pipe_channel, "instance=ml.g5.xlarge")  # one process reads SageMaker's FIFO itself
    assert "(Pipe: the shards train.manifest names)" in p.summary()


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
