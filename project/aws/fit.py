"""Can the chosen instance run this config? Precision against the GPU, memory against the model, the
role against the image. Refusals are one line; nothing here launches anything.

The memory estimate builds the network on PyTorch's meta device: shapes only, no memory, no data,
so it can run before every launch on a GPU instance. torch (and the network's module) is imported
inside the function, only then.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from project.core.errors import UserError

BF16_MIN_COMPUTE_CAPABILITY = 8.0  # bf16 tensor cores arrived with Ampere (A100, A10G); V100 is 7.0, T4 7.5
GIB = 1024**3
# Bytes per parameter while training with AdamW: fp32 weights (4) + fp32 gradients (4) + two fp32
# moment estimates (8). Lightning's mixed precision keeps fp32 master weights, so it is 16 either way.
TRAINING_BYTES_PER_PARAMETER = 16
# What CUDA, cuDNN workspaces and PyTorch's caching allocator take before the first tensor: ~0.5-1 GiB.
CUDA_OVERHEAD_GIB = 0.75
CLOSE_FRACTION = 0.8  # warn above this share of the GPU's memory: the estimate is rough


class InstanceFitError(UserError):
    """The instance cannot run the config as given; nothing was launched."""


def check_precision(precision: str, instance: Any, gpus_per_node: int) -> None:
    """bf16 on a GPU older than Ampere: refused (it would emulate bf16 slowly, or fail)."""
    capability = instance.gpu_compute_capability
    old_gpu = capability is not None and capability < BF16_MIN_COMPUTE_CAPABILITY
    if gpus_per_node and str(precision).startswith("bf16") and old_gpu:
        raise InstanceFitError(
            f"trainer.precision={precision} needs an Ampere or newer GPU (compute capability >= 8.0); "
            f"{instance.type} has {instance.gpu_model} ({capability}): use trainer.precision=16-mixed, "
            "or an Ampere+ instance (g5, g6, g6e, p4d, p4de, p5)"
        )


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    activation_elements_per_sample: int
    per_device_batch: int
    activation_bytes_per_element: int
    shards: int = 1  # trainer.strategy=fsdp: the training state split over this many GPUs (Topology.shards)

    @property
    def state_gib(self) -> float:
        """Weights, gradients and optimizer state: all of it on each GPU, or this GPU's shard of it."""
        return self.parameters * TRAINING_BYTES_PER_PARAMETER / self.shards / GIB

    @property
    def gib(self) -> float:
        """The training state, plus the activations kept for backward, plus CUDA's own.

        Activations: every module's output is counted once per sample (what autograd keeps for the
        backward pass, roughly; in-place ops and recomputation make it less, some ops' saved inputs
        more; activation checkpointing is not counted). Under FSDP the one unit gathered whole while
        it computes is not counted either. The dataset on the GPU (trainer.data_on_device) is not
        counted: MNIST is ~50 MB.
        """
        activations = self.activation_elements_per_sample * self.per_device_batch * self.activation_bytes_per_element
        return self.state_gib + activations / GIB + CUDA_OVERHEAD_GIB

    def shards_to_fit(self, have_gib: float) -> int | None:
        """The fewest GPUs the training state must be split over for it to fit `have_gib` per GPU
        (1: it fits whole); None when the rest (activations, CUDA's own) alone does not fit."""
        room = have_gib - (self.gib - self.state_gib)
        if room <= 0:
            return None
        return max(1, math.ceil(self.parameters * TRAINING_BYTES_PER_PARAMETER / GIB / room))


def estimate_memory(cfg: Any, per_device_batch: int, shards: int = 1) -> MemoryEstimate | None:
    """The estimate for the config's network (modules.sample_pass), or None where none can be made;
    `shards`: the topology's (project.core.topology.Topology.shards)."""
    from project.training.modules import sample_pass

    sampled = sample_pass(cfg)
    if sampled is None:
        return None
    net, outputs = sampled
    half = str(cfg.trainer.precision).startswith(("16", "bf16"))
    parameters = sum(p.numel() for p in net.parameters())
    return MemoryEstimate(parameters, sum(outputs), per_device_batch, 2 if half else 4, shards)


def check_memory(
    estimate: MemoryEstimate | None,
    instance: Any,
    gpus_per_node: int,
    warn: Callable[[str], None],
    world_size: int = 1,
) -> None:
    """Refuse only when clearly over the GPU's memory; warn when close (the estimate is rough).

    A model whose training state does not fit whole but fits sharded is refused with the way to
    shard it: trainer.strategy=fsdp over this run's `world_size` GPUs, or over more.
    """
    if estimate is None or not gpus_per_node or not instance.gpu_memory_gib:
        return
    need, have = estimate.gib, float(instance.gpu_memory_gib)
    sharded = f", sharded over {estimate.shards} GPUs" if estimate.shards > 1 else ""
    text = (
        f"~{need:.1f} GiB per GPU ({estimate.parameters:,} parameters{sharded}, batch {estimate.per_device_batch} "
        f"per device) on {instance.type}'s {have:.0f} GiB {instance.gpu_model}"
    )
    if need > have:
        raise InstanceFitError(f"the model needs {text}: {_fixes(estimate, have, world_size)}")
    if need > CLOSE_FRACTION * have:
        warn(f"warning: the model needs {text}: close to the limit, a CUDA out-of-memory is possible")


def _fixes(estimate: MemoryEstimate, have: float, world_size: int) -> str:
    """What would make it fit: sharding first where sharding is what it lacks, else a smaller batch or
    half precision, or a bigger GPU."""
    usual = (
        "lower trainer.batch_size, use trainer.precision=16-mixed (or bf16-mixed on Ampere+), "
        "or pick an instance with more GPU memory"
    )
    needed = estimate.shards_to_fit(have)
    if needed is None or needed <= estimate.shards:  # the activations are what does not fit
        return usual
    if needed <= world_size:
        whole = replace(estimate, shards=world_size)
        return (
            f"it does not fit one GPU whole, but sharded over this run's {world_size} GPUs it needs "
            f"~{whole.gib:.1f} GiB per GPU: use trainer.strategy=fsdp"
        )
    return (
        f"sharded over {needed}+ GPUs in all it would fit: use trainer.strategy=fsdp with more GPUs "
        f"(instance.count, or an instance with more; this run has {world_size}), or {usual}"
    )


# What pulling an ECR image takes (the SageMaker execution role does the pull).
PULL_ACTIONS = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability")


def repository_arn(image_uri: str) -> str | None:
    """arn:aws:ecr:<region>:<account>:repository/<name> for an ECR image URI, else None."""
    host, _, rest = image_uri.partition("/")
    parts = host.split(".")
    if len(parts) < 6 or parts[1:3] != ["dkr", "ecr"] or not rest:
        return None
    name = rest.split("@", 1)[0].rsplit(":", 1)[0]
    return f"arn:aws:ecr:{parts[3]}:{parts[0]}:repository/{name}"


def denied_actions(iam: Any, role_arn: str, actions: list[str], resource_arn: str) -> list[str] | None:
    """The actions IAM's policy simulator says the role may not take on the resource ([] when all
    are allowed), or None where it cannot say (not allowed to simulate, or no simulator).

    The simulator judges the role's identity policies, where a role of this account is granted
    what SageMaker does on its behalf (pull an image, read an input)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    try:
        results = iam.simulate_principal_policy(
            PolicySourceArn=role_arn, ActionNames=actions, ResourceArns=[resource_arn]
        )["EvaluationResults"]
    except (ClientError, BotoCoreError, ResponseParserError):  # not allowed to simulate, or no simulator: unknown
        return None
    return [r["EvalActionName"] for r in results if r.get("EvalDecision") != "allowed"]


def check_image_pull(iam: Any, role_arn: str, image_uri: str) -> None:
    """Refuse when IAM's policy simulator says the role may not pull the image; skip quietly where it cannot say.

    Works for our ECR repository and for the AWS Deep Learning Containers' registries alike: the
    URI names the registry. Any pull action not allowed refuses (denied_actions).
    """
    arn = repository_arn(image_uri)
    if arn is None:
        return
    denied = denied_actions(iam, role_arn, list(PULL_ACTIONS), arn)
    if denied:
        raise InstanceFitError(
            f"the execution role {role_arn} may not pull {image_uri} ({', '.join(denied)} denied): "
            f"allow those actions on {arn} in the role's policy (terraform/iam.tf)"
        )
