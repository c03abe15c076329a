"""Multi-node data-parallel training on CPU (gloo): two fake SageMaker hosts on this machine.

Each host gets the environment SageMaker gives it (SM_HOSTS, SM_CURRENT_HOST, its own
SM_MODEL_DIR, output and checkpoint directories) and the code channel `invoke train` uploads
(project.aws.staging: the package, the resolved config and sm_entry.py). Each host runs what a job's
command runs (`sm_entry.py --launch`: torchrun as PID 1), once straight through and once stopped
by SIGTERM mid-training and restarted. Only the master address differs from a real cluster: algo-1
does not resolve here, so it is 127.0.0.1.
"""

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from project.aws.image import JobImage
from project.aws.infra import Infra
from project.aws.plan import ENTRY_SCRIPT, plan_job
from project.aws.staging import stage_source
from project.aws.startup_times import job_breakdowns
from project.core import config as C
from project.core import startup
from project.core.identity import run_identity
from project.core.runtime import DEBUG_ENV, MASTER_PORT_ENV, launched_processes, sagemaker_env
from project.core.topology import TopologyError, decide
from project.training.data import IdxDataModule, parse_idx, read_bytes
from project.training.models import state_digest
from tests.synthetic import STEMS, idx_bytes, write_dataset

pytestmark = pytest.mark.xdist_group("distributed-runs")  # one worker: the module's runs are made once

HOSTS = ["algo-1", "algo-2"]
N_TEST = 203  # odd: the two ranks' shards (102/101) and their last batches are uneven
TOTAL_STEPS = 64  # 500 training samples in global batches of 16 (8 per rank), 2 epochs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def code_channel(tmp_path_factory):
    """(code dir, data channel, test images, test labels): a job staged for two CPU hosts.

    A fifth of the test labels are wrong on purpose, so accuracy is below 1 and a duplicated or
    dropped test sample would show in test_acc and test_loss.
    """
    root = tmp_path_factory.mktemp("ddp")
    channel = root / "data" / "train"
    files = write_dataset(channel, n_train=600, n_test=N_TEST)
    images = parse_idx(read_bytes(channel / f"{STEMS['test', 'images']}.gz"))
    labels = parse_idx(read_bytes(channel / f"{STEMS['test', 'labels']}.gz")).copy()
    noisy = np.random.default_rng(1).choice(N_TEST, N_TEST // 5, replace=False)
    labels[noisy] = (labels[noisy] + 1) % 10
    content = idx_bytes(labels)
    (channel / f"{STEMS['test', 'labels']}.gz").write_bytes(gzip.compress(content))
    files[STEMS["test", "labels"]] = hashlib.sha256(content).hexdigest()
    overrides = [
        "dataset.channels.train=s3://not-used-in-the-container/mnist",
        "dataset.val_size=100",
        "trainer.max_epochs=2",
        "trainer.batch_size=16",  # global: 8 per rank
        "trainer.deterministic=true",
        "trainer.checkpoint_every_n_steps=5",
        "model.net.width=8",
        "model.lr=0.03",
        "instance=ml.m5.xlarge",  # no GPU: trainer.gpus resolves to 0, one process per host
        f"instance.count={len(HOSTS)}",
    ] + [f"dataset.files.{stem}={sha}" for stem, sha in files.items()]
    cfg = C.compose(overrides)
    infra = Infra("data", "artifacts", "123456789012.dkr.ecr.us-east-1.amazonaws.com/repo", "arn:aws:iam::1:role/r", "")
    image = JobImage("custom", f"{infra.repository_url}:test", None)  # the code bundle without pip's requirements
    code = stage_source(cfg, root / "code", plan_job(cfg, infra, image))
    return code, channel, images[:, None], labels


def host_env(root: Path, channel: Path, host: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "MASTER_", "LOCAL_", "RANK", "WORLD_"))}
    return {
        **env,
        "SM_MODEL_DIR": str(root / host / "model"),
        "SM_OUTPUT_DATA_DIR": str(root / host / "output" / "data"),
        "SM_CHECKPOINT_DIR": str(root / host / "checkpoints"),
        "SM_CHANNEL_TRAIN": str(channel),
        "SM_NUM_GPUS": "0",
        "SM_HOSTS": json.dumps(HOSTS),
        "SM_CURRENT_HOST": host,
        "SM_MASTER_ADDR": "algo-1",  # as the SDK sets it; torchrun_hosts points it at loopback
        "SM_NETWORK_INTERFACE_NAME": "lo",
        "TRAINING_JOB_NAME": "job-ddp",
        "OMP_NUM_THREADS": "1",  # two ranks share this machine's cores
        DEBUG_ENV: "1",  # each rank prints its weights digest (assert_one_run_over_two_ranks)
        **extra,
    }


def start_hosts(commands_and_envs, cwd: Path):
    return [
        subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd, env in commands_and_envs
    ]


def _output_after_kill(proc) -> str:
    try:  # a killed torchrun's workers may still hold the pipe: do not wait for them long
        return proc.communicate(timeout=10)[0] or ""
    except subprocess.TimeoutExpired:
        return "(no output: the pipe stayed open)"


def finish(procs, check: bool = True, timeout: float = 240) -> list:
    """Each host's output once all have exited; on a hang, every host is killed and the failure
    shows what each one printed (a stuck rendezvous reads differently from a slow epoch)."""
    outputs = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            tails = [_output_after_kill(p)[-1500:] for p in procs]
            pytest.fail(f"hosts still running after {timeout:.0f} s:\n" + "\n---\n".join(tails))
    if check:
        for proc, out in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, out[-3000:]
    return outputs


def torchrun_hosts(root: Path, channel: Path) -> list:
    """What each host's container runs: `python3 sm_entry.py --launch`, which runs torchrun in-process
    with one process per GPU of the staged config (here trainer.gpus=0: one).

    The launcher takes master address and port from SM_MASTER_ADDR/PORT as on SageMaker; here
    they name loopback and a free port.
    """
    port = str(free_port())
    return [
        (
            [sys.executable, ENTRY_SCRIPT, "--launch"],
            host_env(root, channel, host, SM_MASTER_ADDR="127.0.0.1", SM_MASTER_PORT=port),
        )
        for host in HOSTS
    ]


def single_process_eval(model_ts: Path, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the exported model, alone, over the whole test set."""
    model = torch.jit.load(str(model_ts))
    with torch.no_grad():
        probs = model(torch.from_numpy(images.copy()).float()).double()
    y = torch.from_numpy(labels.astype(np.int64))
    correct = int((probs.argmax(1) == y).sum())
    loss = float(-probs[torch.arange(len(y)), y].log().mean())
    return correct / len(y), loss


def newest_step(checkpoint_dir: Path) -> int:
    steps = [int(m.group(1)) for p in checkpoint_dir.glob("*.ckpt") if (m := re.search(r"step=(\d+)", p.name))]
    return max(steps, default=-1)


def files_in(folder: Path) -> set:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def assert_one_run_over_two_ranks(root: Path, outputs, images, labels, worker_checkpoints=frozenset()) -> str:
    """Checks a finished two-host run; returns the weights' digest."""
    master, worker = (root / host for host in HOSTS)
    # Rank 0 alone wrote the model, the exports, plots, metrics and checkpoints.
    assert {"model.pt", "model.ts", "config.yaml"} <= files_in(master / "model")
    assert {"metrics.json", "confusion_matrix.png", "learning_curves.png"} <= files_in(master / "output" / "data")
    assert list((master / "checkpoints").glob("*.ckpt"))
    assert files_in(worker / "model") == files_in(worker / "output") == set()
    assert files_in(worker / "checkpoints") == set(worker_checkpoints)
    # Both ranks ended with the same weights, and those are the exported ones.
    digests = sorted(re.findall(r"rank=(\d) weights_sha256=(\w+)", "".join(outputs)))
    assert [rank for rank, _ in digests] == ["0", "1"]
    exported = state_digest(torch.load(master / "model" / "model.pt"))
    assert {digest for _, digest in digests} == {exported}
    # The sharded test metrics count each of the 203 samples exactly once: they equal a
    # single-process evaluation of the exported TorchScript model.
    metrics = json.loads((master / "output" / "data" / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["global_steps"]) == (2, TOTAL_STEPS)
    accuracy, loss = single_process_eval(master / "model" / "model.ts", images, labels)
    assert 0.3 < accuracy < 0.95  # learned, but not perfect (noisy labels)
    assert round(metrics["test_acc"] * N_TEST) == round(accuracy * N_TEST)
    assert metrics["test_loss"] == pytest.approx(loss, rel=1e-4)
    return exported


@pytest.fixture(scope="module")
def uninterrupted_run(code_channel, tmp_path_factory):
    """The reference run: both hosts under the launcher, as a job runs them, straight through."""
    code, channel, _, _ = code_channel
    root = tmp_path_factory.mktemp("uninterrupted")
    return root, finish(start_hosts(torchrun_hosts(root, channel), cwd=code))


@pytest.mark.slow
def test_two_hosts_under_torchrun_train_one_run(uninterrupted_run, code_channel):
    root, outputs = uninterrupted_run
    _, _, images, labels = code_channel
    assert_one_run_over_two_ranks(root, outputs, images, labels)
    # Each host's first process printed each start-up phase (the launcher's, then its torchrun worker's)
    # as whole lines, in order, once up to the first step: the breakdown has both hosts.
    for output in outputs:
        marks = [mark for mark in map(startup.parse_marker, output.splitlines()) if mark]
        first = dict(reversed(marks))  # each phase's first time
        assert list(dict.fromkeys(phase for phase, _ in marks)) == list(startup.LOGGED_PHASES), output[-3000:]
        assert [first[p] for p in startup.LOGGED_PHASES] == sorted(first.values())
        assert [phase for phase, _ in marks].count("first_step") == 1
    logs = {host: output.splitlines() for host, output in zip(HOSTS, outputs, strict=True)}
    created = min(t for output in outputs for _, t in filter(None, map(startup.parse_marker, output.splitlines())))
    found = job_breakdowns({"CreationTime": created - 1.0, "TrainingStartTime": created - 0.5}, logs)
    assert [b.host for b in found] == sorted(HOSTS) and all(b.reached_first_step for b in found)


@pytest.mark.slow
def test_two_hosts_under_torchrun_stop_on_sigterm_and_resume(uninterrupted_run, code_channel, tmp_path):
    code, channel, images, labels = code_channel
    master_checkpoints, worker_checkpoints = (tmp_path / host / "checkpoints" for host in HOSTS)
    procs = start_hosts(torchrun_hosts(tmp_path, channel), cwd=code)
    deadline = time.monotonic() + 180
    while newest_step(master_checkpoints) < 10:  # periodic checkpoints: training is under way
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "no periodic checkpoint"
        time.sleep(0.02)
    for proc in procs:
        proc.send_signal(
            signal.SIGTERM
        )  # SageMaker stops every instance; the launcher is torchrun now, which forwards it
    outputs = finish(procs, check=False)
    # A clean stop is not a failure: each host's launcher (PID 1 in its container) exits 0.
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert "stopped by SIGTERM: all 1 worker(s) saved a checkpoint; exiting 0" in out
    stopped = re.search(r"sigterm_checkpoint_step=(\d+)", outputs[0])
    assert stopped, outputs[0][-3000:]
    step = int(stopped.group(1))
    assert 10 <= step < TOTAL_STEPS
    checkpoint = f"{run_identity(C.load_resolved(code / 'config.yaml'))}-step={step:08d}.ckpt"
    assert (master_checkpoints / checkpoint).exists()
    assert files_in(worker_checkpoints) == set()  # only rank 0 writes checkpoints
    assert files_in(tmp_path / "algo-1" / "model") == {"config.yaml"}  # no model from an unfinished run
    assert files_in(tmp_path / "algo-2" / "model") == set()

    # Before a restart SageMaker downloads the job's checkpoint prefix (rank 0's uploads) to every host.
    shutil.copytree(master_checkpoints, worker_checkpoints, dirs_exist_ok=True)
    synced = files_in(worker_checkpoints)
    outputs = finish(start_hosts(torchrun_hosts(tmp_path, channel), cwd=code))
    assert f"from step {step} ({checkpoint})" in outputs[0]
    digest = assert_one_run_over_two_ranks(tmp_path, outputs, images, labels, worker_checkpoints=synced)
    # Interrupted and resumed, it ends with the very weights of the uninterrupted run.
    assert digest == assert_one_run_over_two_ranks(*uninterrupted_run, images, labels)


def test_sagemaker_env_ranks_hosts_like_the_sdk():
    env = {"SM_MODEL_DIR": "/opt/ml/model", "SM_HOSTS": '["algo-2", "algo-1"]', "SM_CURRENT_HOST": "algo-2"}
    sm = sagemaker_env(env)
    assert (sm.node_rank, sm.master, sm.master_port) == (1, "algo-1", "7777")
    sm = sagemaker_env({**env, "SM_MASTER_ADDR": "10.0.0.5", "SM_MASTER_PORT": "29500", "SM_CURRENT_HOST": "algo-1"})
    assert (sm.node_rank, sm.master, sm.master_port) == (0, "10.0.0.5", "29500")
    # the sandbox's hosts share one loopback: its free port wins over the SDK driver's SM_MASTER_PORT
    assert sagemaker_env({**env, "SM_MASTER_PORT": "7777", MASTER_PORT_ENV: "40123"}).master_port == "40123"


def test_devices_come_from_the_launcher():
    torchrun = {"LOCAL_WORLD_SIZE": "4"}
    assert launched_processes(torchrun) == 4 and launched_processes({}) is None
    # torchrun on CPU hosts: one Lightning device per launched process, one node per host.
    cpu = C.compose(["trainer.gpus=0", "trainer.batch_size=64"]).trainer
    assert decide(cpu, 0, nodes=2, launched=launched_processes(torchrun)).trainer_kwargs() == {
        "accelerator": "cpu",
        "devices": 4,
        "num_nodes": 2,
        "strategy": "ddp",
    }
    four = C.compose(["trainer.gpus=4", "trainer.batch_size=64"]).trainer
    assert decide(four, 4, launched=4).trainer_kwargs()["devices"] == 4
    with pytest.raises(TopologyError, match="trainer.gpus=4 but the launcher started 2 process"):
        decide(four, 4, launched=2)


def test_global_batch_must_split_evenly_over_processes(tiny_data, tmp_path):
    folder, files = tiny_data
    datamodule = IdxDataModule(str(folder), files, str(tmp_path), batch_size=64, val_size=100)
    cpu = types.SimpleNamespace(root_device=torch.device("cpu"))
    datamodule.trainer = types.SimpleNamespace(global_rank=0, world_size=3, num_nodes=1, strategy=cpu)
    with pytest.raises(TopologyError, match=r"batch_size=64 \(global\) does not split evenly over world size 3"):
        datamodule.setup("fit")
    datamodule.trainer = types.SimpleNamespace(global_rank=1, world_size=4, num_nodes=2, strategy=cpu)
    datamodule.setup("fit")
    assert len(next(iter(datamodule.train_dataloader()))[0]) == 16  # 64 global / 4 processes


def test_launcher_builds_the_sdk_drivers_torchrun_command():
    from project.core.runtime import network_env
    from project.training.launch import torchrun_argv

    one = {"SM_MODEL_DIR": "/opt/ml/model", "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1"}
    assert torchrun_argv(one, 4, "sm_entry.py")[1:] == [
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=4",
        "sm_entry.py",
    ]
    two = {
        "SM_MODEL_DIR": "/opt/ml/model",
        "SM_HOSTS": '["algo-2", "algo-1"]',
        "SM_CURRENT_HOST": "algo-2",
        "SM_MASTER_ADDR": "algo-1",
        "SM_MASTER_PORT": "7777",
    }
    assert torchrun_argv(two, 8, "sm_entry.py")[3:] == [
        "--nnodes=2",
        "--nproc_per_node=8",
        "--master_addr=algo-1",
        "--master_port=7777",
        "--node_rank=1",
        "sm_entry.py",
    ]
    env: dict = {}
    network_env(env, "eth0", "ml.p4d.24xlarge")
    assert (env["NCCL_SOCKET_IFNAME"], env["GLOO_SOCKET_IFNAME"], env["FI_PROVIDER"]) == ("eth0", "eth0", "efa")


def test_ranks_sharing_one_unbuffered_log_write_whole_lines():
    """Two processes under PYTHONUNBUFFERED=1 (as in a job) print many lines into one pipe."""
    script = (
        "import sys; from project.core.runtime import whole_lines; whole_lines()\n"
        "for i in range(3000): print('rank', sys.argv[1], 'line', i)\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    read, write = os.pipe()
    ranks = [subprocess.Popen([sys.executable, "-c", script, str(rank)], stdout=write, env=env) for rank in (0, 1)]
    os.close(write)
    with os.fdopen(read) as log:
        lines = log.read().splitlines()
    assert [rank.wait() for rank in ranks] == [0, 0]
    broken = [line for line in lines if not re.fullmatch(r"rank [01] line \d+", line)]
    assert not broken and len(lines) == 6000, broken[:5]
