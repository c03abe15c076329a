"""Spot interruption and resume, on real training runs.

SIGTERM mid-epoch saves a checkpoint within seconds and exits 143 (a SageMaker container's exit 0
is tests/test_distributed.py's); the next start of the same
config resumes from it and ends bit-for-bit where a never-interrupted run ends (deterministic
mode). A truncated newest checkpoint falls back to the previous one; another config's
checkpoints in the same folder are never resumed, and its folder takes no other config's run.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from project.core.identity import RunNameError, run_identity
from project.core.topology import TopologyError
from project.training.checkpoints import candidates, newest_valid
from project.training.data import IndexBatches, ResumableLoader, TensorSplit
from project.training.train import run_composed
from tests.synthetic import tiny_overrides, write_dataset

ROOT = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH = 63  # 1,000 training samples (1,100 minus 100 held out) in batches of 16


@pytest.fixture(autouse=True)
def one_thread():
    """Every run here, in this process and in subprocesses, computes with one thread: the same
    arithmetic in all of them, and no stalls when other work shares this machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {**os.environ, "OMP_NUM_THREADS": "1"}
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def epoch_of_seconds(tmp_path_factory):
    """A dataset whose epoch takes a second or two at batch 16: room to interrupt mid-epoch."""
    folder = tmp_path_factory.mktemp("long-idx")
    return folder, write_dataset(folder, n_train=1100, n_test=200)


def spot_overrides(data, runs_dir: Path) -> list:
    folder, files = data
    extra = {
        "run_name": "spot",
        "trainer.batch_size": 16,
        "trainer.deterministic": "true",
        "trainer.checkpoint_every_n_steps": 10,
        "trainer.log_every_n_steps": 10,
    }
    return tiny_overrides(folder, files, runs_dir, **extra)


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "model" / "model.pt")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, different


def newest_step(checkpoint_dir: Path) -> int:
    steps = [int(m.group(1)) for p in checkpoint_dir.glob("*.ckpt") if (m := re.search(r"step=(\d+)", p.name))]
    return max(steps, default=-1)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(composed, epoch_of_seconds, tmp_path, one_thread):
    reference = run_composed(composed(*spot_overrides(epoch_of_seconds, tmp_path / "reference")))
    assert reference["global_steps"] == 2 * STEPS_PER_EPOCH

    command = [sys.executable, "-m", "project.training.train", *spot_overrides(epoch_of_seconds, tmp_path / "runs")]
    run_dir = tmp_path / "runs" / "spot"
    spot = subprocess.Popen(
        command, cwd=ROOT, env=one_thread, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while newest_step(run_dir / "checkpoints") < 20:  # a periodic checkpoint: training is under way
        assert spot.poll() is None and time.monotonic() < deadline, "no periodic checkpoint appeared"
        time.sleep(0.02)
    spot.send_signal(signal.SIGTERM)  # what SageMaker sends before reclaiming a spot instance
    sent = time.monotonic()
    out, _ = spot.communicate(timeout=60)
    stopped_after = time.monotonic() - sent

    assert spot.returncode == 143, out[-3000:]  # outside a container a stopped run is not a success
    assert stopped_after < 15, stopped_after  # SageMaker allows 120 s before SIGKILL
    step = int(re.search(r"sigterm_checkpoint_step=(\d+)", out).group(1))
    assert 20 <= step < 2 * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH, "stopped mid-way through an epoch"
    assert newest_step(run_dir / "checkpoints") == step
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model" / "model.pt").exists()

    again = subprocess.run(command, cwd=ROOT, env=one_thread, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(rf"^resuming run spot from step {step} \(\w+-step={step:08d}\.ckpt\)$", again.stdout, re.M)
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["resumed_from"].endswith(f"step={step:08d}.ckpt")
    # The same optimizer steps on the same batches: the resumed epoch skipped the batches it had
    # already trained on (and, stopped in the first epoch, went on to the second one's shuffle).
    assert resumed["global_steps"] == reference["global_steps"]
    assert_same_weights(weights(run_dir), weights(tmp_path / "reference" / "spot"))
    assert (resumed["test_loss"], resumed["test_acc"]) == (reference["test_loss"], reference["test_acc"])


def mlp_overrides(tiny_run, **extra) -> list:
    """The MLP (dropout: draws from the global RNG) on the tiny data: 8 steps an epoch, 16 in all."""
    overrides = [o for o in tiny_run() if not o.startswith("model.net.width")]
    extra = {"model": "mlp", "model.net.hidden": 32, "trainer.deterministic": "true", **extra}
    return overrides + [f"{k}={v}" for k, v in extra.items()]


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(composed, tiny_run, tmp_path, caplog):
    cfg = composed(*mlp_overrides(tiny_run, run_name="fallback", **{"trainer.checkpoint_every_n_steps": 3}))
    finished = run_composed(cfg)
    run_dir = tmp_path / "runs" / "fallback"
    uninterrupted = weights(run_dir)
    identity = run_identity(cfg)
    newest, previous = candidates(run_dir / "checkpoints", identity)  # keep=2: the epoch end and step 15
    assert (newest.name, previous.name) == (f"{identity}-step=00000016.ckpt", f"{identity}-step=00000015.ckpt")

    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a partial sync from S3
    with caplog.at_level(logging.WARNING, logger="project.training.checkpoints"):
        assert newest_valid(run_dir / "checkpoints", identity) == previous
    assert f"checkpoint {newest.name} is unreadable" in caplog.text

    # Step 15 is mid-way through the second epoch: one batch (with dropout) is left to train.
    resumed = run_composed(cfg)
    assert resumed["resumed_from"] == previous.name
    assert resumed["global_steps"] == finished["global_steps"] == 16
    assert_same_weights(weights(run_dir), uninterrupted)


def test_another_configs_checkpoints_are_never_resumed_nor_mixed_in(composed, tiny_run, tmp_path):
    first = composed(*tiny_run(run_name="shared"))
    run_composed(first)
    run_dir = tmp_path / "runs" / "shared"
    theirs = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    other = composed(*tiny_run(run_name="shared", **{"model.lr": 0.02}))  # same folder, another run
    assert run_identity(other) != run_identity(first)
    assert newest_valid(run_dir / "checkpoints", run_identity(other)) is None
    with pytest.raises(RunNameError, match=r"^run_name=shared is taken by another config's run in "):
        run_composed(other)  # refused before anything is written: one folder, one config
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == theirs


def test_loader_position_resumes_the_same_epoch_only():
    split = TensorSplit(torch.arange(10).float()[:, None], torch.arange(10))

    def loader():
        return ResumableLoader(
            split, sampler=IndexBatches(10, 3, True, seed=0), batch_size=None, generator=torch.Generator()
        )

    full = loader()
    full.sampler.set_epoch(2)
    epoch = [labels.tolist() for _, labels in full]
    partial = loader()
    partial.sampler.set_epoch(2)
    it = iter(partial)
    next(it), next(it)
    position = partial.state_dict()
    assert position == {"epoch": 2, "batches": 2}

    restarted = loader()
    restarted.load_state_dict(position)
    assert [labels.tolist() for _, labels in restarted] == epoch[2:]
    assert restarted.state_dict() == {"epoch": 2, "batches": len(epoch)}
    restarted.sampler.set_epoch(3)  # the next epoch is whole again
    assert sorted(np.concatenate([labels for _, labels in restarted]).tolist()) == list(range(10))

    end_of_epoch = loader()
    end_of_epoch.load_state_dict({"epoch": 2, "batches": len(epoch)})
    end_of_epoch.sampler.set_epoch(3)  # what Lightning does after restoring an epoch-end checkpoint
    assert len(list(end_of_epoch)) == len(epoch)


def test_a_checkpoint_of_another_world_size_is_refused_in_one_line(composed, tiny_run, tmp_path):
    """The GPU count is in the identity only as the config holds it (null locally: "every GPU here"),
    so a checkpoint records the world size it was written at and resumes at that one only."""
    cfg = composed(*tiny_run(run_name="elsewhere"))
    run_composed(cfg)
    run_dir = tmp_path / "runs" / "elsewhere"
    newest = candidates(run_dir / "checkpoints", run_identity(cfg))[0]
    state = torch.load(newest, weights_only=False)
    (recorded,) = [s for s in state["callbacks"].values() if "world_size" in s]
    assert recorded["world_size"] == 1  # this CPU run's

    recorded["world_size"] = 2  # as a two-process run of this config (trainer.gpus=2, or 2 hosts) wrote it
    torch.save(state, newest)
    kept = newest.read_bytes()
    with pytest.raises(TopologyError) as info:
        run_composed(cfg)
    assert str(info.value) == (
        f"the checkpoint of run {run_identity(cfg)} in {run_dir / 'checkpoints'} was written by 2 process(es) in "
        "all, this run has 1: resume it with the trainer.gpus and instance.count it had, "
        "or train anew with trainer.resume=false"
    )
    assert newest.read_bytes() == kept  # nothing saved over it
