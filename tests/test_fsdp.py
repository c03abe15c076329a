"""trainer.strategy=fsdp: the decision, the strategy Lightning gets, the memory estimate, and two CPU
processes (gloo) that train sharded, stop on SIGTERM and resume to the weights of a run that was never
stopped, then export the whole model from rank 0: on one host (torchrun on this machine) and on two
(a job of two instances on the sandbox, stopped by StopTrainingJob and run again)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from project.aws import fit, startup_history, workflow
from project.core.config.messages import ConfigError
from project.core.topology import TopologyError, decide
from project.sandbox import service as emulator
from tests.cli import invoke_here
from tests.synthetic import tiny_overrides
from tests.test_sagemaker_e2e import invoke, job_overrides, wait_for_periodic_checkpoint, world  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
# Two CPU processes in all, 2 epochs of 32 steps (500 training samples in global batches of 16, 8 per rank).
SHARDED = {
    "trainer.strategy": "fsdp",
    "trainer.batch_size": 16,
    "trainer.max_epochs": 2,
    "trainer.deterministic": "true",
    "trainer.checkpoint_every_n_steps": 5,
}
TOTAL_STEPS = 2 * 32
RANK_FILES = {"algo-1": {"__0_0.distcp", ".metadata", "meta.pt"}, "algo-2": {"__1_0.distcp"}}  # rank 0: the rest


def trainer(gpus, strategy="fsdp", batch_size=64, precision="32-true"):
    return SimpleNamespace(gpus=gpus, batch_size=batch_size, strategy=strategy, precision=precision)


def test_fsdp_shards_over_every_process_and_refuses_one():
    four = decide(trainer(4), 4, nodes=2)
    assert (four.sharded, four.shards, four.trainer_kwargs()["strategy"]) == (True, 8, "fsdp")
    assert decide(trainer(4, "ddp"), 4).shards == 1
    assert decide(trainer(0), 0, nodes=1, launched=2).shards == 2  # torchrun's two CPU processes
    for one in ((1, 1, None), (0, 1, None)):  # one GPU; the CPU without a launcher
        with pytest.raises(
            TopologyError, match=r"^trainer.strategy=fsdp shards the model over processes, but this run has 1 process"
        ):
            decide(trainer(one[0]), one[1], launched=one[2])
    assert decide(trainer(2, precision="bf16-mixed"), 2).sharded  # GPUs: FSDP's mixed precision
    with pytest.raises(TopologyError, match=r"^trainer.strategy=fsdp on the CPU trains in full precision only"):
        decide(trainer(0, precision="bf16-mixed"), 0, launched=2)


def test_strategy_and_fsdp_settings_are_checked_when_composed(composed):
    with pytest.raises(ConfigError, match=r"^trainer.strategy=deepspeed is not one of ddp, fsdp$"):
        composed("trainer.strategy=deepspeed")
    with pytest.raises(ConfigError, match=r"trainer.fsdp.blocks is empty: name the layer classes"):
        composed("trainer.fsdp.activation_checkpointing=true")
    assert composed().trainer.strategy == "ddp"  # the default stays DDP


def test_the_strategy_lightning_gets(composed):
    """Blocks as FSDP units and checkpointed, sharded checkpoints, FSDP's mixed precision from
    trainer.precision, and a CPU topology Lightning accepts (its own FSDPStrategy it refuses there)."""
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.precision import FSDPPrecision
    from pytorch_lightning.strategies import FSDPStrategy

    from project.training import modules, sharding

    cfg = composed(
        "trainer.strategy=fsdp", "trainer.fsdp.blocks=[torch.nn.Linear]", "trainer.fsdp.activation_checkpointing=true"
    )
    modules.check(cfg)
    topology = decide(cfg.trainer, 0, launched=2)
    strategy = sharding.strategy(cfg.trainer.fsdp)
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "sharded"
    assert strategy.blocks == (torch.nn.Linear,)
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {torch.nn.Linear}
    t = pl.Trainer(**{**topology.trainer_kwargs(), "strategy": strategy}, precision="bf16-mixed", logger=False)
    assert (
        isinstance(t.precision_plugin, FSDPPrecision)
        and t.precision_plugin.mixed_precision_config.param_dtype == torch.bfloat16
    )
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        pl.Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy(), logger=False)
    with pytest.raises(
        modules.ModuleError, match=r"^trainer.fsdp.blocks=torch.nn.Lineer: module torch.nn has no class Lineer$"
    ):
        modules.check(composed("trainer.fsdp.blocks=[torch.nn.Lineer]"))


@pytest.fixture(scope="module")
def wide_net():
    """A network whose training state (~3.7 GiB: 245M parameters x 16 bytes) is over a 3 GiB GPU whole,
    under it in two or more shards."""
    from project.core import config as C

    cfg = C.compose(["model.net.width=1024"])
    estimate = fit.estimate_memory(cfg, 16)
    assert estimate is not None and 3.5 < estimate.state_gib < 4
    return estimate


def small_gpus(composed, instance):
    return composed(f"instance={instance}", "instance.gpu_memory_gib=3").instance  # a fake small GPU


def test_memory_estimate_divides_the_sharded_state_and_the_refusal_says_fsdp(wide_net, composed):
    warnings: list[str] = []
    four = small_gpus(composed, "ml.g5.12xlarge")  # 4 GPUs
    with pytest.raises(fit.InstanceFitError) as refused:
        fit.check_memory(wide_net, four, 4, warnings.append, world_size=4)
    assert re.fullmatch(
        r"the model needs ~4\.\d GiB per GPU \(245,439,498 parameters, batch 16 per device\) "
        r"on ml.g5.12xlarge's 3 GiB A10G: it does not fit one GPU whole, "
        r"but sharded over this run's 4 GPUs it needs ~2\.0 GiB per GPU: use trainer.strategy=fsdp",
        str(refused.value),
    )
    sharded = replace(wide_net, shards=4)
    assert sharded.state_gib == pytest.approx(wide_net.state_gib / 4)
    fit.check_memory(sharded, four, 4, warnings.append, world_size=4)  # fits: launched
    assert warnings == []
    one = small_gpus(composed, "ml.g5.xlarge")
    with pytest.raises(
        fit.InstanceFitError,
        match=r"sharded over 2\+ GPUs in all it would fit: use trainer.strategy=fsdp with more GPUs",
    ):
        fit.check_memory(wide_net, one, 1, warnings.append, world_size=1)
    # Activations that alone do not fit: sharding is not offered.
    huge_batch = replace(wide_net, per_device_batch=4096)
    with pytest.raises(fit.InstanceFitError, match=r"per device\) on .*: lower trainer.batch_size") as refused:
        fit.check_memory(huge_batch, four, 4, warnings.append, world_size=4)
    assert "fsdp" not in str(refused.value)


def torchrun(overrides: list[str]) -> subprocess.Popen:
    """Two CPU processes on this machine, as a job's launcher starts one per GPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "LOCAL_", "RANK", "WORLD_"))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.Popen(
        [*command, "-m", "project.training.train", *overrides],
        cwd=ROOT,
        env={**env, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"torchrun still running after {timeout:.0f} s:\n{proc.communicate()[0][-3000:]}")


def newest_step(checkpoint_dir: Path) -> int:
    steps = [int(m.group(1)) for p in checkpoint_dir.glob("*.ckpt") if (m := re.search(r"step=(\d+)", p.name))]
    return max(steps, default=-1)


def assert_same_weights(exported: dict, expected: dict) -> None:
    assert exported.keys() == expected.keys()
    assert [name for name in exported if not torch.equal(exported[name], expected[name])] == []


@pytest.mark.slow
def test_two_cpu_processes_train_sharded_stop_on_sigterm_resume_and_export(
    aws_infra, tiny_data, tmp_path, composed, request
):
    """On one host (two processes under torchrun, as `invoke local` runs them) and on two (a job of two
    instances on the sandbox, a process each): stopped mid-training, the ranks agree on a step and each
    writes its shard of one checkpoint folder; run again, they resume from it to the very weights of the
    run never stopped, and rank 0 exports them whole.

    The run never stopped is the one-host one, for both: the two hosts' run has the same world size,
    ranks, per-device batches, seed and gloo collectives, so the same arithmetic; whether the peer is on
    another host changes nothing of it. `aws_infra`: the two hosts' part runs on the Terraform-applied world.
    """
    folder, files = tiny_data

    def overrides(runs: str) -> list[str]:
        return tiny_overrides(folder, files, tmp_path / runs, run_name="sharded", **SHARDED)

    # Side by side, the same arithmetic: the reference runs on while the other stops and resumes.
    reference = torchrun(overrides("reference"))
    spot = torchrun(overrides("runs"))
    run_dir = tmp_path / "runs" / "sharded"
    deadline = time.monotonic() + 120
    while newest_step(run_dir / "checkpoints") < 10:  # periodic checkpoints: training is under way
        assert spot.poll() is None and time.monotonic() < deadline, "no periodic checkpoint"
        time.sleep(0.02)
    spot.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    out = finish(spot)
    step = int(re.search(r"sigterm_checkpoint_step=(\d+)", out).group(1))  # type: ignore[union-attr]
    assert 10 <= step < TOTAL_STEPS
    # The sharded format: a folder, one shard per rank, the index and the loops' state.
    checkpoint = next((run_dir / "checkpoints").glob(f"*-step={step:08d}.ckpt"))
    assert {p.name for p in checkpoint.iterdir()} == set().union(*RANK_FILES.values())
    assert not (run_dir / "model" / "model.pt").exists()

    resumed = finish(torchrun(overrides("runs")))
    assert f"resuming run sharded from step {step} ({checkpoint.name})" in resumed, resumed[-3000:]
    assert "done:" in (reference_out := finish(reference)), reference_out[-3000:]
    # The start line counts the whole network, as under DDP, not rank 0's shard inside FSDP's wrapper.
    assert re.search(r"^run sharded: SmallCNN \(\d+\.\dk parameters\), 2 epochs on 2 x cpu", reference_out, re.M)
    # Gathered on rank 0: full tensors of the network's shapes, the very weights of the run never stopped.
    exported = torch.load(run_dir / "model" / "model.pt")
    expected = torch.load(tmp_path / "reference" / "sharded" / "model" / "model.pt")
    assert_same_weights(exported, expected)
    from project.training.modules import build_module

    cfg = composed(*overrides("runs"))
    net = build_module(cfg).net.eval()
    net.load_state_dict(exported)  # strict: every key, every shape whole
    pixels = torch.rand(4, 1, 28, 28) * 255
    with torch.no_grad():
        probs = torch.jit.load(str(run_dir / "model" / "model.ts"))(pixels)
    assert probs.shape == (4, 10) and torch.allclose(probs.sum(1), torch.ones(4))

    # Two hosts: the sandbox's containers (skipped where they cannot run here, after the one host's part).
    world = request.getfixturevalue("world")  # noqa: F811
    fetched = stopped_and_run_again_on_two_hosts(world, tiny_data, tmp_path / "two-hosts")
    assert_same_weights(torch.load(fetched / "model" / "model.pt"), expected)


def stopped_and_run_again_on_two_hosts(world, data, tmp_path: Path) -> Path:  # noqa: F811
    """`invoke train ... instance.count=2`, StopTrainingJob mid-training (SIGTERM to both hosts), the same
    `invoke train` again, `invoke fetch`: the run folder it brought home. Each host writes its ranks'
    files of the checkpoint folder to its own disk; the hosts' checkpoints sync to the job's one
    checkpoint URI, where the folder is whole, and the re-run gives every host the whole folder."""
    name = f"e2e-spot-{uuid.uuid4().hex[:6]}"
    overrides = job_overrides(
        world, data, name, **SHARDED, **{"instance.count": 2, "+job.environment.OMP_NUM_THREADS": 1}
    )  # one thread per process, as torchrun gives the one host's
    assert invoke("upload", *overrides).returncode == 0
    sm, jobs = world["clients"].sagemaker, tmp_path / "jobs"
    with emulator.sagemaker_service(run_jobs=True, workdir=jobs) as service:
        first = invoke("train", *overrides, "--yes", "--no-wait")
        assert first.returncode == 0, first.stderr
        job = re.search(r"launched (\S+)", first.stdout).group(1)
        wait_for_periodic_checkpoint(service, jobs, job, "algo-1")
        # `invoke stop` in this process (its command line: tests/test_aws_cli.py): it lands steps, not seconds, later
        stop = invoke_here("stop", job, *world["infra_overrides"])
        assert stop.returncode == 0 and "stop requested" in stop.stdout, stop.stderr
        stopped = service.result(job)
        assert stopped.status == "Stopped", stopped.stdout[-3000:]
        assert stopped.returncode == 0, stopped.stdout[-3000:]  # a clean stop: the containers exit 0
        saved = re.search(r"^\[algo-1\] sigterm_checkpoint_step=(\d+)$", stopped.stdout, re.M)
        assert saved, stopped.stdout[-3000:]  # SIGTERM reached the training processes through torchrun
        step = int(saved.group(1))
        assert 10 <= step < TOTAL_STEPS
        assert "[algo-2] stopped by SIGTERM: all 1 worker(s) saved a checkpoint; exiting 0" in stopped.stdout
        desc = sm.describe_training_job(TrainingJobName=job)
        assert desc["TrainingJobStatus"] == "Stopped" and desc["ResourceConfig"]["InstanceCount"] == 2
        checkpoint = f"{desc['HyperParameters']['config_hash']}-step={step:08d}.ckpt"
        for host, expected in RANK_FILES.items():
            assert {p.name for p in (stopped.trees[host] / "checkpoints" / checkpoint).iterdir()} == expected, host
        bucket, prefix = desc["CheckpointConfig"]["S3Uri"].removeprefix("s3://").split("/", 1)
        listed = world["clients"].s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix.rstrip('/')}/{checkpoint}/")
        assert {o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]} == set().union(*RANK_FILES.values())

        why = invoke("why", job, *world["infra_overrides"])
        assert why.returncode == 0, why.stderr
        assert f"cause: stopped by StopTrainingJob; the training saved a checkpoint at step {step} (s3://" in why.stdout
        assert f"it resumes from step {step}" in why.stdout, why.stdout
        assert f"log-events/{job}$252Falgo-1-" in why.stdout  # the host whose log said so
        # the start-up of the host that took longest, and each host's
        assert re.search(rf"^start-up of {job}, host algo-[12]: .* to the first step, ", why.stdout, re.M), why.stdout
        assert re.search(r"^  hosts to the first step: algo-1 [\d.]+ s, algo-2 [\d.]+ s", why.stdout, re.M), why.stdout

        second = invoke("train", *overrides, "--yes", "--poll", "1")
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
        # The summary, before the launch, says what the job's checkpoint prefix holds of its config: the
        # sharded folder, as the hosts' shards met there.
        assert re.search(rf"earlier run +interrupted at step {step}: this job resumes from there", second.stdout)
        # The start-up predicted from the stopped job, the one earlier job of this base name, instance and image.
        predicted = r"start-up +~\d.* cold \(.* billed\), from your last {} on ml\.m5\.xlarge with this image$"
        assert re.search(predicted.format("1 job"), second.stdout, re.M), second.stdout[:3000]
        rerun = service.result(re.search(r"launched (\S+)", second.stdout).group(1))
    rerun.check()  # rank 1 resumed at rank 0's step too: a rank that did not would fail the job (checkpoints.py)
    assert re.search(rf"^\[algo-1\] resuming run \S+ from step {step} \({checkpoint}\)$", rerun.stdout, re.M), (
        rerun.stdout[-3000:]
    )
    metrics = json.loads((rerun.tree / "output" / "data" / "metrics.json").read_text())
    assert metrics["global_steps"] == TOTAL_STEPS and metrics["resumed_from"] == checkpoint
    # Once more, dry (it would bill a minute to train nothing): `invoke train`'s own function, in this process.
    said: list[str] = []
    workflow.train(overrides, dry_run=True, echo=said.append)
    third = "\n".join(said)
    assert re.search(predicted.format("2 jobs"), third, re.M), third[:3000]  # the rerun resumed: one more
    cached = startup_history.cache_dir() / f"{job}.json"  # ended: its start-up is read from AWS once
    assert json.loads(cached.read_text())["started"]["billed_seconds"] > 0
    assert re.search(
        r"earlier run +finished already \(config \w+\): this job would only test and export it again, billed; "
        r"to train anew pass a new trainer\.seed= or job\.base_name=",
        third,
    ), third[-3000:]

    fetched = invoke("fetch", rerun.job_name, *world["infra_overrides"], f"paths.runs_dir={tmp_path / 'runs'}")
    assert fetched.returncode == 0, fetched.stderr
    return tmp_path / "runs" / rerun.job_name


def test_invoke_trains_check_shards_the_estimate_by_the_planned_world_size():
    """What `invoke train` checks before launching (workflow.check_job), on four fake 3 GiB GPUs."""
    from project.aws.workflow import check_job
    from tests.test_jobs import plan

    wide = ["instance=ml.g5.12xlarge", "instance.gpu_memory_gib=3", "model.net.width=1024", "trainer.batch_size=64"]
    replicated, cfg = plan(*wide)
    with pytest.raises(fit.InstanceFitError, match=r"sharded over this run's 4 GPUs .*: use trainer.strategy=fsdp$"):
        check_job(cfg, replicated, print)
    sharded, cfg = plan(*wide, "trainer.strategy=fsdp")
    assert (sharded.topology.sharded, sharded.topology.shards, sharded.world_size) == (True, 4, 4)
    assert "4 per node, world size 4; fsdp: the model sharded over all 4" in sharded.summary()
    check_job(cfg, sharded, print)  # fits: nothing said, nothing refused
    with pytest.raises(TopologyError, match=r"^trainer.strategy=fsdp shards the model over processes"):
        plan("instance=ml.g5.xlarge", "trainer.strategy=fsdp")  # one GPU


def test_a_sharded_checkpoint_is_not_a_starting_point(tmp_path):
    from project.core.lineage import InitFromError, find_parent

    folder = tmp_path / "run" / "checkpoints" / "0123456789ab-step=00000010.ckpt"
    folder.mkdir(parents=True)
    with pytest.raises(InitFromError, match=r"a sharded checkpoint .* give its run once it finished"):
        find_parent(str(folder), tmp_path)
