"""trainer.strategy=fsdp: the decision, the strategy Lightning gets, the memory estimate, and two CPU
processes (gloo, torchrun on this machine) that train sharded, stop on SIGTERM and resume to the
weights of a run that was never stopped, then export the whole model from rank 0."""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from project.aws import fit
from project.core.config.messages import ConfigError
from project.core.topology import TopologyError, decide
from tests.synthetic import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent
TOTAL_STEPS = 32  # 500 training samples in global batches of 16 (8 per rank), 1 epoch


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


@pytest.mark.slow
def test_two_cpu_processes_train_sharded_stop_on_sigterm_resume_and_export(tiny_data, tmp_path, composed):
    folder, files = tiny_data
    extra = {
        "trainer.strategy": "fsdp",
        "trainer.batch_size": 16,
        "trainer.deterministic": "true",
        "trainer.max_epochs": 1,
    }
    extra |= {"trainer.checkpoint_every_n_steps": 5, "run_name": "sharded"}

    def overrides(runs: str) -> list[str]:
        return tiny_overrides(folder, files, tmp_path / runs, **extra)

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
    assert {p.name for p in checkpoint.iterdir()} == {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"}
    assert not (run_dir / "model" / "model.pt").exists()

    resumed = finish(torchrun(overrides("runs")))
    assert f"resuming run sharded from step {step} ({checkpoint.name})" in resumed, resumed[-3000:]
    assert "done:" in (reference_out := finish(reference)), reference_out[-3000:]
    # The start line counts the whole network, as under DDP, not rank 0's shard inside FSDP's wrapper.
    assert re.search(r"^run sharded: SmallCNN \(\d+\.\dk parameters\), 1 epochs on 2 x cpu", reference_out, re.M)
    # Gathered on rank 0: full tensors of the network's shapes, the very weights of the run never stopped.
    exported = torch.load(run_dir / "model" / "model.pt")
    expected = torch.load(tmp_path / "reference" / "sharded" / "model" / "model.pt")
    assert exported.keys() == expected.keys()
    assert [name for name in exported if not torch.equal(exported[name], expected[name])] == []
    from project.training.modules import build_module

    cfg = composed(*overrides("runs"))
    net = build_module(cfg).net.eval()
    net.load_state_dict(exported)  # strict: every key, every shape whole
    pixels = torch.rand(4, 1, 28, 28) * 255
    with torch.no_grad():
        probs = torch.jit.load(str(run_dir / "model" / "model.ts"))(pixels)
    assert probs.shape == (4, 10) and torch.allclose(probs.sum(1), torch.ones(4))


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
