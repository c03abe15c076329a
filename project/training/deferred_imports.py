"""Keep torchmetrics' import of scipy.signal out of every process's start-up.

torchmetrics' package `__init__` imports `scipy.signal` whenever scipy is installed, only to alias
`scipy.signal.hamming` for SRMRpy; its audio modules, the only code that needs the alias, set it
again when they are imported. Lightning imports torchmetrics, and the SageMaker SDK (the laptop's
requirements.txt) and AWS's PyTorch images bring scipy: that one line cost 0.77 s of the training
process's 4.5 s of imports on the 2-core development machine, before every `invoke local`, every
rank of a job and every sweep trial (bench/time_to_first_step.py's `child_imports`).

`install()` (the training entries call it: project/training/child.py, sm_entry.py) adds an import hook
that acts only while torchmetrics' `__init__` runs: there `import scipy.signal` gives a stand-in
module that answers the alias check, and the real module replaces it the moment anything uses
another of its attributes. When torchmetrics is imported the stand-in leaves `sys.modules`; a
later `import scipy.signal` is the real module's own import, which gets torchmetrics' alias as
it ends, and the hook is gone from `sys.meta_path`. Standard library only, cheap to call, a
no-op where torchmetrics or scipy.signal is imported already, and where the installed
torchmetrics is not a version this was tested with (TESTED_VERSIONS): another may import
scipy.signal differently, and then nothing is deferred.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from typing import Any

HOST = "torchmetrics"  # the package whose __init__ imports DEFERRED
DEFERRED = "scipy.signal"
TESTED_VERSIONS = ("1.9.0",)  # HOST's versions whose __init__ this hook was tested with (requirements-train.txt)


def install(versions: Sequence[str] | None = TESTED_VERSIONS) -> None:
    """Defer DEFERRED while HOST's __init__ runs in this process, if HOST is installed at one of
    `versions` (None: whatever is there); idempotent."""
    if HOST in sys.modules or DEFERRED in sys.modules or not _installed_at(versions):
        return
    if not any(isinstance(finder, _HostFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HostFinder())


def _installed_at(versions: Sequence[str] | None) -> bool:
    if versions is None:
        return True
    from importlib import metadata

    try:
        return metadata.version(HOST) in versions
    except metadata.PackageNotFoundError:
        return False


def _hamming(*args: Any, **kwargs: Any) -> Any:
    """scipy.signal.hamming, the alias torchmetrics checks for: scipy's window, imported when called."""
    from scipy.signal.windows import hamming

    return hamming(*args, **kwargs)


def _add_alias(signal: types.ModuleType) -> None:
    """What torchmetrics does to the real scipy.signal, done when the real one is imported."""
    if not hasattr(signal, "hamming"):
        signal.hamming = signal.windows.hamming  # type: ignore[attr-defined]


class _StandIn(types.ModuleType):
    """DEFERRED while HOST imports: the alias HOST checks; any other attribute loads the real module."""

    def __init__(self, name: str, finder: _HostFinder) -> None:
        super().__init__(name)
        self._finder = finder
        self.hamming = _hamming

    def __getattr__(self, name: str) -> Any:  # only for attributes the stand-in lacks
        if name.startswith("__") and name.endswith("__"):  # the import system's probes (__path__, ...)
            raise AttributeError(name)
        return getattr(self._finder.load_real(), name)


class _StandInLoader(importlib.abc.Loader):
    def __init__(self, finder: _HostFinder) -> None:
        self._finder = finder

    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        self._finder.stood_in = True
        return _StandIn(spec.name, self._finder)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _Wrapped(importlib.abc.Loader):
    """A module's own loader, with `before` called as its module starts to run and `after` when it ends."""

    def __init__(
        self, loader: Any, before: Callable[[], None], after: Callable[[types.ModuleType, bool], None]
    ) -> None:
        self._loader = loader
        self._before = before
        self._after = after

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._before()
        ok = False
        try:
            self._loader.exec_module(module)
            ok = True
        finally:
            module.__loader__ = self._loader  # what the module's resources and tools expect
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader
            self._after(module, ok)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, ... while it runs
        return getattr(self._loader, name)


class _HostFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.host_running = False
        self.host_done = False
        self.stood_in = False  # HOST imported DEFERRED while it ran: the real one owes it the alias
        self.real_loaded = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == HOST and not (self.host_running or self.host_done):
            return self._wrapped(fullname, path, target, self._host_starts, self._host_ended)
        if fullname == DEFERRED:
            if self.host_running and not self.real_loaded:
                return importlib.util.spec_from_loader(fullname, _StandInLoader(self))
            if self.stood_in:  # the real module, owed the alias the stand-in answered for
                return self._wrapped(fullname, path, target, lambda: None, self._real_loaded)
        return None

    def _wrapped(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None,
        before: Callable[[], None],
        after: Callable[[types.ModuleType, bool], None],
    ) -> ModuleSpec | None:
        """The spec the other finders give, its loader wrapped."""
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Wrapped(spec.loader, before, after)
                return spec
        return None

    def _host_starts(self) -> None:
        self.host_running = True

    def _host_ended(self, host: types.ModuleType, ok: bool) -> None:
        self.host_running, self.host_done = False, True
        self._drop_stand_in()
        if not self.stood_in or self.real_loaded:
            self._uninstall()

    def _real_loaded(self, signal: types.ModuleType, ok: bool) -> None:
        if ok:
            _add_alias(signal)
        if self.host_done:
            self._uninstall()

    def load_real(self) -> types.ModuleType:
        """The real DEFERRED, in sys.modules and on its parent package, in place of the stand-in."""
        self.real_loaded = True
        self._drop_stand_in()
        return importlib.import_module(DEFERRED)

    def _uninstall(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def _drop_stand_in(self) -> None:
        stand_in = sys.modules.get(DEFERRED)
        if isinstance(stand_in, _StandIn):
            del sys.modules[DEFERRED]
            package, _, name = DEFERRED.rpartition(".")
            parent = sys.modules.get(package)
            if parent is not None and parent.__dict__.get(name) is stand_in:
                delattr(parent, name)
