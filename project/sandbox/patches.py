"""Methods set on moto's classes for the life of one sandbox object, then restored as they were.

moto dispatches every request to methods of its response and model classes, so that is where
the sandbox hooks in; the state those methods need lives on the object that set them.
"""

from __future__ import annotations

from typing import Any

_MARK = "__sandbox_patch__"


class Patches:
    def __init__(self) -> None:
        self._saved: list[tuple[type, str, Any]] = []

    def set(self, cls: type, name: str, function: Any) -> None:
        if getattr(getattr(cls, name, None), _MARK, False):
            raise RuntimeError(f"{cls.__name__}.{name} is already patched: one sandbox object per process at a time")

        def patched(*args: Any, **kwargs: Any) -> Any:  # a plain function: a method of cls once set
            return function(*args, **kwargs)

        setattr(patched, _MARK, True)
        self._saved.append((cls, name, cls.__dict__.get(name)))
        setattr(cls, name, patched)

    def restore(self) -> None:
        while self._saved:
            cls, name, original = self._saved.pop()
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)


class MethodPatch:
    """While entered, one moto method is replaced: `target()` says which and with what."""

    def __init__(self) -> None:
        self._patches = Patches()

    def target(self) -> tuple[type, str, Any]:
        raise NotImplementedError

    def __enter__(self) -> MethodPatch:
        self._patches.set(*self.target())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._patches.restore()
