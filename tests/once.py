"""Expensive fixture results made once per test session, however many xdist workers ask."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

T = TypeVar("T")


def made_once(tmp_path_factory, name: str, make: Callable[[Path], T]) -> T:
    """What `make(folder)` returns: the first worker to ask makes it under a file lock in the
    session's shared temporary folder, the others wait and read what it left (pickled). For
    fixtures that cost a training run: two workers training at once each take twice as long."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # <session>/popen-gw<n> -> <session>: one folder for every worker
    folder = root / f"made-once-{name}"
    with FileLock(f"{folder}.lock"):
        made = folder / ".made.pickle"
        if made.is_file():
            return pickle.loads(made.read_bytes())
        folder.mkdir(exist_ok=True)
        result = make(folder)
        made.write_bytes(pickle.dumps(result))
        return result
