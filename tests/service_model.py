"""A request checked against botocore's service model as AWS checks it, not only as botocore does.

botocore's own ParamValidator (every client call runs it) checks types, required members and
minimums; it does not check a string's pattern, a maximum length, a number's maximum or an
enum, and moto checks few of them. AWS does: `problems` does too, member by member, for the
parameters tests/aws_calls.py recorded (bodies are not recorded, so a missing member is not judged).
"""

from __future__ import annotations

import functools
import re
from typing import Any


@functools.cache
def _operation(service: str, operation: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service).operation_model(operation)


def problems(service: str, operation: str, params: dict[str, Any]) -> list[str]:
    """What AWS would refuse in params: one line per member, its path and why ([]: valid)."""
    found: list[str] = []
    _check(_operation(service, operation).input_shape, params, operation, found)
    return found


def _check(shape: Any, value: Any, path: str, found: list[str]) -> None:
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            found.append(f"{path}: a structure, got {type(value).__name__}")
            return
        for name, member in value.items():
            if name not in shape.members:
                found.append(f"{path}.{name}: no such member")
            else:
                _check(shape.members[name], member, f"{path}.{name}", found)
    elif kind == "list":
        if not isinstance(value, list):
            found.append(f"{path}: a list, got {type(value).__name__}")
            return
        _bounds(len(value), meta, path, "items", found)
        for i, item in enumerate(value):
            _check(shape.member, item, f"{path}[{i}]", found)
    elif kind == "map":
        for key, item in value.items():
            _check(shape.key, key, f"{path} key {key!r}", found)
            _check(shape.value, item, f"{path}[{key!r}]", found)
    elif kind == "string":
        if not isinstance(value, str):
            found.append(f"{path}: a string, got {type(value).__name__}")
            return
        _bounds(len(value), meta, path, "characters", found)
        # AWS's services match a pattern against the whole value (Java's Pattern.matches: a VariantName
        # "a_b" is refused by ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62} although the pattern has no $).
        if "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(value):
            found.append(f"{path}={value!r} does not match {meta['pattern']}")
        if shape.enum and value not in shape.enum:
            found.append(f"{path}={value!r} is not one of {shape.enum}")
    elif kind in ("integer", "long", "float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            found.append(f"{path}: a number, got {type(value).__name__}")
            return
        _bounds(value, meta, path, "", found)


# The service models' patterns are Java's: its POSIX classes and \z in Python's spelling; Unicode
# categories (\p{L}) through the regex package, which knows them.
JAVA_CLASSES = {
    r"[\p{Print}]": r"[\x20-\x7E]",
    r"\p{Print}": r"[\x20-\x7E]",
    r"\p{ASCII}": r"[\x00-\x7F]",
    r"\z": r"\Z",
}


@functools.cache
def _pattern(java: str) -> Any:
    python = java
    for spelled, ours in JAVA_CLASSES.items():
        python = python.replace(spelled, ours)
    try:
        return re.compile(python, re.S)
    except re.error:
        import regex

        return regex.compile(python, regex.S)


def _bounds(value: float, meta: dict[str, Any], path: str, unit: str, found: list[str]) -> None:
    if "min" in meta and value < meta["min"]:
        found.append(f"{path}: {value} {unit} is under the minimum {meta['min']}".replace("  ", " "))
    if "max" in meta and value > meta["max"]:
        found.append(f"{path}: {value} {unit} is over the maximum {meta['max']}".replace("  ", " "))
