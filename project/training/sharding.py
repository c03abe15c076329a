"""trainer.strategy=fsdp: Lightning's FSDPStrategy as the config asks for it, and the model gathered whole.

project.core.topology decides whether a run is sharded; this module builds the strategy object the
Trainer gets: the blocks (`trainer.fsdp.blocks`) each wrapped as one FSDP unit, their activations
recomputed in backward if asked, mixed precision from trainer.precision (Lightning maps it onto
FSDP's), and checkpoints in the sharded format (a folder: one file per rank and meta.pt, written
by all ranks at once, never gathered on one).

On the CPU (gloo: the tests, two processes on one machine) Lightning refuses FSDP in its
accelerator connector (`_check_strategy_and_fallback`: "The strategy `fsdp` requires a GPU
accelerator"), a check of the exact type FSDPStrategy only, which a subclass passes; and torch's
FullyShardedDataParallel refuses a module on the CPU unless `device_id` names the CPU ("FSDP needs
a non-CPU accelerator device"), while Lightning passes the root device's index, None there.
`RunFSDPStrategy` wraps with the CPU device there; on GPUs the wrapping is Lightning's.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.strategies import FSDPStrategy

CHECKPOINT_FORMAT = "sharded"  # a folder per checkpoint, each rank writes its own shard


class RunFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy with the units this project shards, on GPUs and on the CPU (gloo).

    Units: every `blocks` layer, and each top-level submodule of the LightningModule that holds
    parameters (its `net`). Never the LightningModule alone as one root unit: after fit its
    parameters are this rank's flat shards, and the Trainer's test pass would wrap those again as if
    they were whole (Lightning wraps a module anew unless it already holds FSDP units).
    """

    def __init__(self, blocks: tuple[type[torch.nn.Module], ...], **kwargs: Any):
        super().__init__(**kwargs)
        self.blocks = blocks

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import CustomPolicy

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            top = [child for child in model.children() if any(True for _ in child.parameters())]
            self.kwargs["auto_wrap_policy"] = CustomPolicy(
                lambda m: isinstance(m, self.blocks) or any(m is child for child in top)
            )
            if self.root_device.type == "cpu":  # Lightning would pass device_id=None: torch refuses the CPU then
                model = FullyShardedDataParallel(
                    module=model,
                    cpu_offload=self.cpu_offload,
                    mixed_precision=self.mixed_precision_config,
                    sharding_strategy=self.sharding_strategy,
                    device_id=torch.device("cpu"),
                    **self.kwargs,
                )
        return super()._setup_model(model)


def block_classes(fsdp: Any) -> tuple[type[torch.nn.Module], ...]:
    """trainer.fsdp.blocks as classes (modules.check has refused a path that does not import)."""
    from project.training.modules import locate

    return tuple(locate(path, "trainer.fsdp.blocks") for path in fsdp.blocks)


def strategy(fsdp: Any) -> FSDPStrategy:
    """The strategy object of a sharded topology (project.core.topology decides one), from trainer.fsdp."""
    blocks = block_classes(fsdp)
    return RunFSDPStrategy(
        blocks,
        activation_checkpointing_policy=set(blocks) if fsdp.activation_checkpointing else None,
        state_dict_type=CHECKPOINT_FORMAT,
    )


def whole_module(trainer: Any, module: Any, cfg: Any) -> Any:
    """The trained LightningModule whole, for the export: `module` itself when it is not sharded;
    under FSDP a new one built from the config on global rank 0, on the CPU, holding the full state
    dict gathered from every rank's shards (None on the other ranks).

    A collective under FSDP: every rank calls it.
    """
    if not isinstance(trainer.strategy, FSDPStrategy):
        return module
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from project.training.modules import build_module

    # One copy, in rank 0's host memory. Not "offloaded" from the CPU: torch 2.13 then clones
    # freed memory (a segmentation fault in _full_post_state_dict_hook).
    on_gpu = trainer.strategy.root_device.type != "cpu"
    gathered = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=True)
    root = trainer.strategy.model  # the LightningModule holding the FSDP units
    assert root is not None  # set up by the test pass
    with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, gathered):
        state = root.state_dict()
    if not trainer.is_global_zero:
        return None
    whole = build_module(cfg)
    whole.load_state_dict(state)
    return whole.eval()
