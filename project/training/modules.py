"""The run's LightningModule and LightningDataModule, built from `model` and `dataset` configs.

`dataset._target_` names any LightningDataModule: it receives every key of its config but the
tool's (config.TOOL_DATASET_KEYS) and, injected, only where the data is: `data_dir` (the train
channel's folder), `<channel>_dir` for each declared channel, and `resolved` (the run's
project.training.resolve.Resolved: the verified files, read without verifying them again), each where its
`__init__` accepts it. The tool's `image_shape` is passed on too where `__init__` takes it (imagefolder's
DataModule converts every image to it, and the default CNN's input channels follow it).

`model._target_` names any LightningModule, built by hydra.utils.instantiate from the other keys
(but `name`); a model config without `_target_` is an nn.Module (`net`) trained by
project.training.models.LitClassifier, as the built-in cnn and mlp are.

`check` imports both classes and matches the config against their signatures before anything is
built or written, so a typo is one line naming the class and the arguments it takes, not a
TypeError from deep inside a run. Importing this module is cheap: the classes are imported
when checked.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from project.core.config import CHANNELS, CLASSIFIER, TOOL_DATASET_KEYS, TOOL_MODEL_KEYS, ConfigError, is_classifier
from project.training.resolve import Resolved

# LitClassifier's execution levers, set from trainer.* (they do not change what is computed).
CLASSIFIER_LEVERS = {"channels_last": "channels_last", "compile": "compile"}


class ModuleError(ConfigError):
    """A `_target_` that does not import, is not the right kind of class, or gets arguments it lacks."""


def locate(path: str, key: str) -> type:
    """The class at dotted `path`; an import failure names the module and the error."""
    module_path, _, name = str(path).rpartition(".")
    if not module_path:
        raise ModuleError(f"{key}={path}: expected a dotted path such as mypackage.module.ClassName")
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:  # noqa: BLE001  a user's module may raise anything on import
        raise ModuleError(
            f"{key}={path}: cannot import module {module_path} ({type(exc).__name__}: {exc}); "
            "check the name and that its package is importable from the repository root"
        ) from None
    found = getattr(module, name, None)
    if not isinstance(found, type):
        raise ModuleError(f"{key}={path}: module {module_path} has no class {name}")
    return found


def _require(cls: type, base: type, key: str, kind: str) -> None:
    if not issubclass(cls, base):
        raise ModuleError(
            f"{key}={cls.__module__}.{cls.__qualname__} is not a {kind} (it derives from "
            f"{', '.join(b.__name__ for b in cls.__mro__[1:-1]) or 'object'}); name a {kind} subclass"
        )


def accepted(cls: type) -> tuple[list[str], bool]:
    """The keyword arguments `cls.__init__` names, and whether it takes **kwargs too."""
    params = list(inspect.signature(cls).parameters.values())  # __init__'s, past self
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def check_arguments(cls: type, given: Mapping[str, Any], key: str) -> None:
    """Every given argument is one `cls` takes, and every argument it requires is given."""
    named, var_kw = accepted(cls)
    label = f"{cls.__module__}.{cls.__qualname__}"
    unknown = [k for k in given if k not in named]
    if unknown and not var_kw:
        raise ModuleError(
            f"{key}: {label} takes no argument {', '.join(sorted(unknown))}; it accepts: {', '.join(named) or 'none'}"
        )
    params = list(inspect.signature(cls).parameters.values())
    required = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [name for name in required if name not in given]
    if missing:
        raise ModuleError(f"{key}: {label} requires {', '.join(missing)}; add it to the config")


def _container(node: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]  # a config group is a mapping


RESOLVED_ARGUMENT = "resolved"  # a DataModule argument the tool fills with the run's Resolved


def injected_names(channels: Mapping[str, Any]) -> list[str]:
    """The arguments the tool may inject: data_dir, one <channel>_dir per declared channel, resolved."""
    return ["data_dir", *(f"{channel}_dir" for channel in CHANNELS if channel in channels), RESOLVED_ARGUMENT]


def datamodule_arguments(cfg: Any, cls: type, data: Resolved | None) -> dict[str, Any]:
    """The DataModule's keyword arguments: its config without the tool's keys, plus the data as resolved
    (None: only checking the arguments, before the data is resolved)."""
    from omegaconf import OmegaConf

    node = cfg.dataset
    given = {k: v for k, v in _container(node).items() if k not in TOOL_DATASET_KEYS}
    clash = [name for name in given if name in ("data_dir", *(f"{c}_dir" for c in CHANNELS))]
    if clash:
        raise ModuleError(
            f"dataset.{clash[0]} is set by the tool from dataset.channels: remove it and set "
            f"dataset.channels.{'train' if clash[0] == 'data_dir' else clash[0][:-4]} instead"
        )
    if RESOLVED_ARGUMENT in given:
        raise ModuleError(f"dataset.{RESOLVED_ARGUMENT} is set by the tool (the data as resolved): remove it")
    named, _ = accepted(cls)
    if "image_shape" in named and node.get("image_shape") is not None:  # the one home of a sample's shape
        given["image_shape"] = list(node.image_shape)
    channels = dict(OmegaConf.to_container(node.channels, resolve=True))  # type: ignore[arg-type]
    places = {name: str(Path(data.folders[name])) if data else str(where) for name, where in channels.items()}
    if "data_dir" in named:
        given["data_dir"] = places["train"]
    for channel, place in places.items():
        if f"{channel}_dir" in named:
            given[f"{channel}_dir"] = place
    if RESOLVED_ARGUMENT in named and data is not None:
        given[RESOLVED_ARGUMENT] = data
    return given


def module_arguments(cfg: Any) -> tuple[str, dict[str, Any]]:
    """The LightningModule's class path and keyword arguments (a classifier's `net` still a config)."""
    given = _container(cfg.model)
    target = given.get("_target_")
    for key in TOOL_MODEL_KEYS:
        given.pop(key, None)
    if target is None:  # an nn.Module trained by LitClassifier, with the trainer's execution levers
        target = CLASSIFIER
        given.update({arg: cfg.trainer[lever] for arg, lever in CLASSIFIER_LEVERS.items()})
    return str(target), given


def check(cfg: Any) -> tuple[type, type]:
    """Import both classes and match the config against their signatures; nothing is built."""
    import pytorch_lightning as pl
    import torch

    data_cls = locate(cfg.dataset._target_, "dataset._target_")
    _require(data_cls, pl.LightningDataModule, "dataset._target_", "LightningDataModule")
    check_arguments(data_cls, datamodule_arguments(cfg, data_cls, None), "dataset")
    target, arguments = module_arguments(cfg)
    key = "model._target_" if "_target_" in cfg.model else "model"
    module_cls = locate(target, key)
    _require(module_cls, pl.LightningModule, key, "LightningModule")
    check_arguments(module_cls, {**arguments, **({"net": None} if target == CLASSIFIER else {})}, "model")
    if target == CLASSIFIER and isinstance(arguments.get("net"), dict) and "_target_" in arguments["net"]:
        _check_net(arguments["net"])
    for block in cfg.trainer.fsdp.blocks:  # strategy=fsdp's units: torch modules
        _require(locate(block, "trainer.fsdp.blocks"), torch.nn.Module, "trainer.fsdp.blocks", "torch.nn.Module")
    return data_cls, module_cls


def _check_net(spec: Mapping[str, Any]) -> None:
    """The classifier's `model.net`: a torch.nn.Module that takes the arguments it is given."""
    import torch

    net_cls = locate(spec["_target_"], "model.net._target_")
    _require(net_cls, torch.nn.Module, "model.net._target_", "torch.nn.Module")
    check_arguments(net_cls, {k: v for k, v in spec.items() if not str(k).startswith("_")}, "model.net")


# What a layer says (on the meta device) when its input has the wrong shape: Linear, Conv, pooling, view.
_SHAPE_WORDS = ("shape", "size", "channels", "dim")


def _reason(exc: BaseException) -> str:
    """The first line of what went wrong, past Hydra's "Error in call to target" wrapper."""
    root = exc.__cause__ or exc
    text = str(root).strip().splitlines()[0] if str(root).strip() else ""
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def _suspects(spec: Mapping[str, Any]) -> str:
    """The net's numeric arguments of 0 or less (a width of 0): where a broken network usually comes from."""
    low = [
        f"model.net.{k}={v}"
        for k, v in spec.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and v <= 0 and not str(k).startswith("_")
    ]
    return f"; check {', '.join(low)} (layer sizes must be >= 1)" if low else "; check the model.net.* arguments"


def _forward(net: Any, shape: list[int], device: str) -> list[int]:
    """Each leaf module's output size for one sample of `shape`."""
    import torch

    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
        for m in net.modules()
        if not list(m.children())  # leaf modules: containers would count their children twice
    ]
    try:
        net(torch.empty(1, *shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def sample_pass(cfg: Any) -> tuple[Any, list[int]] | None:
    """The classifier's network built on PyTorch's meta device (shapes only: no memory, no data) and
    run on one sample of `dataset.image_shape`: the network and each leaf module's output size.

    None where no such pass can be made: no sample shape known before the data is read, or a model
    that is not a `net` we build. A network that cannot be built from its arguments (a width of 0),
    or cannot take the dataset's samples (an MLP sized for 28x28 grey images given 64x64 RGB ones)
    is one line naming the key, before a run folder is written or a job launched, not a traceback
    from the first step. A network the meta device cannot run (one that reads a value) is run once
    on the CPU instead: only a failure there is the network's.
    """
    import torch

    from project.training.models import build_net

    shape = cfg.dataset.get("image_shape")
    if not shape or not is_classifier(cfg) or not cfg.model.get("net"):
        return None
    spec = dict(cfg.model.net)
    target = spec.get("_target_")
    try:
        # torch warns that a zero-element weight is not initialised: the refusal below says it in one line
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            net = build_net(spec)
    except Exception as exc:  # noqa: BLE001  a user's network may raise anything on bad arguments
        raise ModuleError(f"model.net={target} cannot be built: {_reason(exc)}{_suspects(spec)}") from None
    empty = next((tuple(p.shape) for p in net.parameters() if p.numel() == 0), None)
    if empty is not None:
        raise ModuleError(f"model.net={target} has an empty layer (a weight of shape {list(empty)}){_suspects(spec)}")
    try:
        return net, _forward(net, list(shape), "meta")
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if any(word in reason for word in _SHAPE_WORDS):
            raise ModuleError(
                f"model.net={target} cannot take dataset={cfg.dataset.name}'s samples "
                f"(image_shape {list(shape)}): {reason}; pick a model that fits (model=cnn follows "
                "dataset.image_shape), or size the network's input to it"
            ) from None
    except Exception:  # noqa: BLE001,S110  (the meta device's limits: decided on the CPU below)
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            net = build_net(spec)
        return net, _forward(net, list(shape), "cpu")
    except Exception as exc:  # noqa: BLE001  a user's network may raise anything
        raise ModuleError(
            f"model.net={target} fails on one sample of dataset.image_shape {list(shape)}: {_reason(exc)}"
            f"{_suspects(spec)}"
        ) from None


def build(cfg: Any, data: Resolved) -> tuple[Any, Any]:
    """The LightningModule and LightningDataModule of the run (check() first), on its data as resolved."""
    data_cls, _ = check(cfg)
    return build_module(cfg), data_cls(**datamodule_arguments(cfg, data_cls, data))


def build_module(cfg: Any) -> Any:
    """The LightningModule alone (check() first): what a run trains, or its shapes (under torch.device("meta"))."""
    from hydra.utils import instantiate

    target, arguments = module_arguments(cfg)
    if target == CLASSIFIER:
        net = instantiate(arguments.pop("net"))
        return locate(target, "model")(net=net, **arguments)
    return instantiate({"_target_": target, **arguments}, _convert_="all")
