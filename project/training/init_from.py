"""`trainer.init_from`: a new run starts from an earlier model's weights (fine-tuning, incremental training).

The weights only: the optimizer and its schedule start fresh, the data and config are this run's.
project/core/lineage.py finds the file; here its tensors are matched against the module's before
anything is written. A layer whose shape differs is one line naming it and both shapes; with
`trainer.init_strict=false` the layers that match load and one line lists the others (a new head
for another number of classes, the usual fine-tune).

A run's model.pt holds a classifier's network (`net`'s state_dict, unprefixed); a `.ckpt` holds
the LightningModule's (`net.` prefixed): both load into the module.
"""

from __future__ import annotations

from typing import Any

import torch

from project.core.errors import UserError
from project.core.lineage import Parent, find_parent

COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper in a state_dict's keys


class InitShapeError(UserError):
    pass


def _weights(parent: Parent) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(parent.weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  a damaged or foreign file: say which
        raise UserError(f"trainer.init_from: cannot read {parent.weights} ({type(exc).__name__}: {exc})") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"trainer.init_from: {parent.weights} holds no state_dict")
    return {k.replace(COMPILED_PREFIX, ""): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _aligned(source: dict[str, torch.Tensor], target: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The source's keys as the module names them: a network's bare keys get the module's `net.`."""
    if any(k in target for k in source):
        return source
    return {f"net.{k}": v for k, v in source.items()}


def apply(cfg: Any, module: Any, say: bool = True) -> Parent | None:
    """Load `trainer.init_from`'s weights into `module` (on rank 0 and every other: each builds its own);
    the parent, for metrics.json. None without init_from. `say`: print what was not loaded (rank 0)."""
    spec = cfg.trainer.init_from
    if spec is None:
        return None
    parent = find_parent(str(spec), cfg.paths.runs_dir)
    matching = _matching(cfg, parent, module, say)
    names = {k.replace(COMPILED_PREFIX, ""): k for k in module.state_dict()}
    module.load_state_dict({names[k]: v for k, v in matching.items()}, strict=False)
    return parent


def check(cfg: Any, parent: Parent) -> None:
    """What apply() would refuse, on the laptop before a job is launched: the module built on the meta
    device (shapes only) against `parent`'s weights, as the job will find them in its model channel."""
    from project.training.modules import build_module

    with torch.device("meta"):
        module = build_module(cfg)
    _matching(cfg, parent, module, say=True)


def _matching(cfg: Any, parent: Parent, module: Any, say: bool) -> dict[str, torch.Tensor]:
    """The tensors of `parent` that fit `module`; a refusal in one line where init_strict says so."""
    spec = cfg.trainer.init_from
    target = {k.replace(COMPILED_PREFIX, ""): v for k, v in module.state_dict().items()}
    source = _aligned(_weights(parent), target)
    matching = {k: v for k, v in source.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
    differ = [k for k in source if k in target and k not in matching]
    absent = [k for k in target if k not in source]  # the module's, not in the file
    extra = [k for k in source if k not in target]
    if not matching:
        raise InitShapeError(
            f"trainer.init_from={spec}: no layer of {parent.source or parent.weights} matches this model "
            f"(it has {', '.join(list(source)[:3])}...; this model {', '.join(list(target)[:3])}...): "
            "is it another architecture?"
        )
    if cfg.trainer.init_strict and (differ or absent or extra):
        raise InitShapeError(
            f"trainer.init_from={spec}: {_mismatch(source, target, differ, absent, extra)}; "
            "trainer.init_strict=false loads the layers that match"
        )
    if say and (differ or absent or extra):
        print(
            f"init_from {parent.run}: loaded {len(matching)} of {len(target)} tensors; not loaded: "
            f"{_mismatch(source, target, differ, absent, extra)}",
            flush=True,
        )
    return matching


def _mismatch(
    source: dict[str, Any], target: dict[str, Any], differ: list[str], absent: list[str], extra: list[str]
) -> str:
    parts = [f"{k} is {list(source[k].shape)} there, {list(target[k].shape)} here" for k in differ]
    if absent:
        parts.append(f"not in the file: {', '.join(absent)}")
    if extra:
        parts.append(f"not in this model: {', '.join(extra)}")
    return "; ".join(parts)
