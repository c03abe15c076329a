"""The one decision of devices, nodes and per-device batch (project.core.topology), as a table of cases."""

from types import SimpleNamespace

import pytest

from project.core.topology import Topology, TopologyError, check_resume, decide


def trainer(gpus, batch_size=256, strategy="ddp"):
    return SimpleNamespace(gpus=gpus, batch_size=batch_size, strategy=strategy, precision="32-true")


@pytest.mark.parametrize(
    "gpus,batch,available,nodes,launched,expected",
    [
        # CPU: one process, the whole batch
        (0, 256, 0, 1, None, ("cpu", 1, 1, 256, "auto")),
        (0, 256, 4, 1, None, ("cpu", 1, 1, 256, "auto")),  # GPUs there, CPU asked for
        (1, 256, 1, 1, None, ("gpu", 1, 1, 256, "auto")),
        (4, 256, 4, 1, None, ("gpu", 4, 1, 64, "ddp")),  # 4 GPUs on one node
        (8, 256, 8, 2, None, ("gpu", 8, 2, 16, "ddp")),  # 2 nodes x 8
        (None, 256, 4, 1, None, ("gpu", 4, 1, 64, "ddp")),  # null: every GPU there is
        (None, 256, 0, 1, None, ("cpu", 1, 1, 256, "auto")),  # null where there is none: CPU
        (2, 256, 4, 1, None, ("gpu", 2, 1, 128, "ddp")),  # fewer than there are
        (0, 64, 0, 2, 4, ("cpu", 4, 2, 8, "ddp")),  # torchrun on CPU hosts: its processes are the devices
        (8, 256, 8, 2, 8, ("gpu", 8, 2, 16, "ddp")),  # in the container: one launched process per GPU
    ],
)
def test_the_topology_of_each_case(gpus, batch, available, nodes, launched, expected):
    t = decide(trainer(gpus, batch), available, nodes=nodes, launched=launched)
    kwargs = t.trainer_kwargs()
    assert (t.accelerator, t.processes_per_node, t.nodes, t.per_device_batch, kwargs["strategy"]) == expected
    assert (kwargs["accelerator"], kwargs["devices"], kwargs["num_nodes"]) == (t.accelerator, *expected[1:3])
    assert t.per_device_batch * t.world_size == batch  # the global batch, whatever the world size


@pytest.mark.parametrize(
    "gpus,batch,available,nodes,launched,where,refusal",
    [
        (
            8,
            256,
            4,
            1,
            None,
            "ml.p3.8xlarge",
            "trainer.gpus=8 but ml.p3.8xlarge has 4 GPU(s); "
            "use trainer.gpus<=4 (null: all of them), or an instance type with more (instance=...)",
        ),
        (
            1,
            256,
            0,
            1,
            None,
            "",
            "trainer.gpus=1 but this machine has 0 GPU(s); "
            "use trainer.gpus<=0 (null: all of them), or an instance type with more (instance=...)",
        ),
        (-1, 256, 4, 1, None, "", "trainer.gpus must be >= 0 (0: CPU, null: every GPU there is), got -1"),
        (
            4,
            250,
            4,
            1,
            None,
            "",
            "trainer.batch_size=250 (global) does not split evenly over world size 4 "
            "(1 node(s) x 4 process(es)); use a multiple of 4",
        ),
        (
            8,
            256,
            8,
            3,
            None,
            "",
            "trainer.batch_size=256 (global) does not split evenly over world size 24 "
            "(3 node(s) x 8 process(es)); use a multiple of 24",
        ),
        (
            4,
            256,
            4,
            1,
            2,
            "",
            "trainer.gpus=4 but the launcher started 2 process(es) per node; launch one process per GPU",
        ),
    ],
)
def test_each_rule_refuses_in_one_line(gpus, batch, available, nodes, launched, where, refusal):
    with pytest.raises(TopologyError) as info:
        decide(trainer(gpus, batch), available, nodes=nodes, launched=launched, where=where)
    assert str(info.value) == refusal


def test_a_checkpoint_resumes_only_at_its_world_size():
    two = Topology(gpus_per_node=0, processes_per_node=2, nodes=1, per_device_batch=32)
    check_resume("ckpt", 2, two)
    check_resume("ckpt", None, two)  # written before checkpoints recorded it: resumed as before
    with pytest.raises(TopologyError) as info:
        check_resume("ckpt", 1, two)
    assert str(info.value) == (
        "ckpt was written by 1 process(es) in all, this run has 2: resume it with the trainer.gpus "
        "and instance.count it had, or train anew with trainer.resume=false"
    )
