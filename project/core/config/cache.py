"""The on-disk cache of composed configs: a repeated `invoke ...` skips Hydra's import and composition.

An entry is keyed by everything composition depends on (cache_key) and holds a config that passed
every check; a reader never sees half an entry, and an entry it cannot use is composed afresh.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from project.core.atomic import write_atomically
from project.core.config import schema
from project.core.config.schema import Config

COMPOSE_CACHE_ENV = "LIGHTNING_SAGEMAKER_CACHE"  # a folder, or "off"
COMPOSE_CACHE_KEEP = 256  # newest entries kept; an entry is a few KiB


def cache_root() -> Path | None:
    """This tool's caches: $LIGHTNING_SAGEMAKER_CACHE, else the user cache dir; None: "off"."""
    chosen = os.environ.get(COMPOSE_CACHE_ENV)
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightning-sagemaker"


def compose_cache_dir() -> Path | None:
    """Where composed configs are cached: compose/ of cache_root()."""
    root = cache_root()
    return None if root is None else root / "compose"


def _package_stamp(name: str) -> str:
    """Hydra's or OmegaConf's installed files (an upgrade rewrites them) without importing them."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return "-"
    st = os.stat(spec.origin)
    return f"{spec.origin}:{st.st_mtime_ns}:{st.st_size}"


def cache_key(conf_dir: Path, overrides: list[str]) -> str:
    """Everything composition depends on: overrides, conf/ files, the schema, Hydra, OmegaConf."""
    h = hashlib.sha256()
    h.update(json.dumps(overrides).encode())
    for path in sorted(p for p in conf_dir.rglob("*") if p.is_file()):
        h.update(f"\0{path.relative_to(conf_dir).as_posix()}\0".encode())
        h.update(path.read_bytes())
    for extra in _search_path_dirs(overrides):  # config folders added by hydra.searchpath=[file://...]
        for path in sorted(p for p in extra.rglob("*") if p.is_file()):
            h.update(f"\0{path.as_posix()}\0".encode())
            h.update(path.read_bytes())
    h.update(Path(schema.__file__).read_bytes())  # the schema's dataclasses
    h.update(f"{conf_dir.resolve()}|{_package_stamp('hydra')}|{_package_stamp('omegaconf')}".encode())
    return h.hexdigest()


def _search_path_dirs(overrides: list[str]) -> list[Path]:
    """The local folders an override `hydra.searchpath=[file://a,file://b]` adds to conf/."""
    dirs: list[Path] = []
    for override in overrides:
        if override.startswith("hydra.searchpath="):
            items = override.split("=", 1)[1].strip("[]").split(",")
            dirs += [Path(item.strip()[len("file://") :]) for item in items if item.strip().startswith("file://")]
    return [d for d in dirs if d.is_dir()]


def cache_file(conf_dir: Path, overrides: list[str]) -> Path | None:
    """The entry for this command line; None when caching is off or conf/ cannot be read."""
    folder = compose_cache_dir()
    if folder is None:
        return None
    try:
        return folder / f"{cache_key(conf_dir, overrides)}.json"
    except OSError:
        return None  # an unreadable conf file: let Hydra report it


def load_cached(path: Path) -> Any:
    """The cached config, typed by the schema as Hydra's would be; None when absent or unusable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), data)
    except OmegaConfBaseException:
        return None
    OmegaConf.set_struct(cfg, True)
    return cfg


def store_cached(path: Path, cfg: Any) -> None:
    """Write atomically (a reader never sees half a file); a cache that cannot be written is skipped."""
    from omegaconf import OmegaConf

    try:
        write_atomically(path, json.dumps(OmegaConf.to_container(cfg, resolve=False)))
        entries = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in entries[:-COMPOSE_CACHE_KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
