"""Topology: how many devices and nodes a run trains on, and each device's share of the batch (pure).

One function decides it, `decide`, from the trainer config, the GPUs available and the hosts:
the laptop calls it with the instance's GPUs (the job summary, the memory estimate, the staged
config and the launch command follow from its answer); the training process calls it with the
GPUs it sees and the processes its launcher started (torchrun's LOCAL_WORLD_SIZE), and builds the
Trainer from the answer. Each rule has one refusal text, here.

The GPU count is part of a run's identity only as the config holds it (project/core/identity.py); what
a checkpoint depends on is the world size, recorded in it and checked on resume (`check_resume`):
a checkpoint resumes only on the world size it was written at.

How the processes share the model is decided here too (`trainer.strategy`): `ddp` replicates it
on every device, `fsdp` shards its parameters, gradients and optimizer state over all of them
(project/training/sharding.py builds Lightning's strategy object from the answer).

Standard library only: the invoke process and the container's launcher decide without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from project.core.errors import UserError


class TopologyError(UserError, ValueError):
    """The run cannot be laid out on these devices as configured; one line says how to fix it."""


FULL_PRECISION = ("32-true", "32")  # Lightning's names of float32 training
STRATEGIES = ("ddp", "fsdp")  # trainer.strategy: replicate the model on every device, or shard it over all


@dataclass(frozen=True)
class Topology:
    gpus_per_node: int  # 0: the run trains on the CPU
    processes_per_node: int  # one per GPU; on the CPU one, or as many as a launcher started
    nodes: int  # hosts: one node each
    per_device_batch: int  # each process's share of trainer.batch_size, which is global
    sharded: bool = False  # trainer.strategy=fsdp: parameters, gradients and optimizer state split over world_size

    @property
    def accelerator(self) -> str:
        return "gpu" if self.gpus_per_node else "cpu"

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.nodes

    @property
    def shards(self) -> int:
        """Into how many parts the training state (weights, gradients, optimizer state) is split."""
        return self.world_size if self.sharded else 1

    def trainer_kwargs(self) -> dict[str, Any]:
        """Lightning 2.x's accelerator, devices, num_nodes and strategy for this topology (fsdp: the
        name; the training storey replaces it by the configured strategy object, sharding.strategy)."""
        return {
            "accelerator": self.accelerator,
            "devices": self.processes_per_node,
            "num_nodes": self.nodes,
            "strategy": "fsdp" if self.sharded else "ddp" if self.world_size > 1 else "auto",
        }


def check_gpus(requested: int | None) -> None:
    """The part of the decision a config alone can fail: a negative count (config.validate calls it)."""
    if requested is not None and requested < 0:
        raise TopologyError(f"trainer.gpus must be >= 0 (0: CPU, null: every GPU there is), got {requested}")


def check_strategy(strategy: str) -> None:
    """trainer.strategy names one of STRATEGIES (config.validate calls it)."""
    if strategy not in STRATEGIES:
        raise TopologyError(f"trainer.strategy={strategy} is not one of {', '.join(STRATEGIES)}")


def check_sharding(strategy: str, world_size: int, gpus: int, precision: str) -> None:
    """FSDP shards over processes: with one there is nothing to shard over. On the CPU (gloo, for
    tests) it trains in full precision only: FSDP's mixed precision there casts the weights to
    half but not the inputs, and the first layer fails."""
    if strategy != "fsdp":
        return
    if world_size < 2:
        raise TopologyError(
            "trainer.strategy=fsdp shards the model over processes, but this run has 1 process: use 2 or more GPUs "
            "(trainer.gpus, an instance with more, or instance.count=2+), or trainer.strategy=ddp"
        )
    if not gpus and precision not in FULL_PRECISION:
        raise TopologyError(
            f"trainer.strategy=fsdp on the CPU trains in full precision only, not trainer.precision={precision}: "
            "use trainer.precision=32-true, or GPUs"
        )


def processes_per_node(gpus: int) -> int:
    """One process per GPU; one on the CPU (without a launcher that starts more)."""
    return max(gpus, 1)


def per_device_batch(global_batch: int, nodes: int, processes_per_node: int) -> int:
    """Each process's share of trainer.batch_size, which is global; it must split evenly.

    The optimizer sees the same batch whatever the world size, so the learning rate that suits it
    stays right; an uneven split would silently train with a different global batch. Public: a
    user's DataModule splits its batch with it too (README).
    """
    world = nodes * processes_per_node
    if global_batch % world:
        raise TopologyError(
            f"trainer.batch_size={global_batch} (global) does not split evenly over world size {world} "
            f"({nodes} node(s) x {processes_per_node} process(es)); use a multiple of {world}"
        )
    return global_batch // world


def decide(trainer: Any, available: int, nodes: int = 1, launched: int | None = None, where: str = "") -> Topology:
    """The run's topology: `trainer` is the config's trainer group (gpus, batch_size, strategy).

    `available`: GPUs per node (the instance type's, or torch.cuda.device_count() where the run
    trains); `nodes`: the hosts; `launched`: the processes per node an external launcher started
    (torchrun's LOCAL_WORLD_SIZE), trusted as the devices, one each; None without one, where
    Lightning starts one process per GPU itself. `where`: the machine the GPUs are on, for the
    refusal (an instance type; "this machine" by default).
    """
    requested = trainer.gpus
    check_gpus(requested)
    gpus = available if requested is None else int(requested)
    if gpus > available:
        raise TopologyError(
            f"trainer.gpus={gpus} but {where or 'this machine'} has {available} GPU(s); "
            f"use trainer.gpus<={available} (null: all of them), or an instance type with more (instance=...)"
        )
    processes = processes_per_node(gpus)
    if launched is not None:
        if gpus and launched != gpus:
            raise TopologyError(
                f"trainer.gpus={gpus} but the launcher started {launched} process(es) per node; "
                "launch one process per GPU"
            )
        processes = launched  # on the CPU, as many as the launcher started
    strategy = str(trainer.strategy)
    check_strategy(strategy)
    check_sharding(strategy, processes * nodes, gpus, str(trainer.precision))
    batch = per_device_batch(int(trainer.batch_size), nodes, processes)
    return Topology(gpus, processes, nodes, batch, sharded=strategy == "fsdp")


def check_resume(checkpoint: str, saved_world_size: int | None, topology: Topology) -> None:
    """A checkpoint resumes only at the world size it was written at: its loader position counts
    each rank's batches, and the ranks' shards and padding follow the world size. None: written
    before checkpoints recorded it, resumed as before."""
    if saved_world_size is not None and saved_world_size != topology.world_size:
        raise TopologyError(
            f"{checkpoint} was written by {saved_world_size} process(es) in all, this run has "
            f"{topology.world_size}: resume it with the trainer.gpus and instance.count it had, "
            "or train anew with trainer.resume=false"
        )
