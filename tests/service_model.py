"""A request judged by botocore's service model as AWS would judge it (tests only).

botocore's own validation checks types, required members and minimums; AWS also refuses what
breaks a member's pattern, maximum or enum, which moto mostly does not check. `problems` walks
the request against the operation's input shape and names each such breach.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Any


@functools.cache
def _service_model(service: str) -> Any:
    """Loaded once per service: a test that judges hundreds of calls would spend seconds reloading it."""
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def problems(service: str, operation: str, params: dict[str, Any]) -> list[str]:
    from botocore.validate import ParamValidator

    shape = _service_model(service).operation_model(operation).input_shape
    # Payloads (InvokeEndpoint's Body) and times (GetMetricStatistics' StartTime) are not recorded
    # (tests/aws_calls.py keeps plain values): a stand-in of their type where they are required.
    stand_in = {"blob": b"", "timestamp": datetime.now(UTC)}
    unrecorded = {
        name: stand_in[shape.members[name].type_name]
        for name in shape.required_members
        if shape.members[name].type_name in stand_in
    }
    report = ParamValidator().validate({**unrecorded, **params}, shape)
    found = [report.generate_report()] if report.has_errors() else []
    _walk(shape, params, operation, found)
    return found


def _walk(shape: Any, value: Any, where: str, found: list[str]) -> None:
    meta = shape.metadata
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in value.items():
            if name in shape.members:
                _walk(shape.members[name], member, f"{where}.{name}", found)
        return
    if shape.type_name == "list" and isinstance(value, list):
        _size(meta, len(value), where, found)
        for i, item in enumerate(value):
            _walk(shape.member, item, f"{where}[{i}]", found)
        return
    if shape.type_name == "map" and isinstance(value, dict):
        _size(meta, len(value), where, found)
        for key, item in value.items():
            _walk(shape.key, key, f"{where} key {key!r}", found)
            _walk(shape.value, item, f"{where}[{key!r}]", found)
        return
    if shape.type_name == "string" and isinstance(value, str):
        _size(meta, len(value), where, found)
        if "pattern" in meta and not re.fullmatch(_python_regex(meta["pattern"]), value):
            found.append(f"{where}={value!r} does not match {meta['pattern']}")
        if shape.enum and value not in shape.enum:
            found.append(f"{where}={value!r} is not one of {shape.enum}")
    numeric = shape.type_name in ("integer", "long", "float", "double") and isinstance(value, int | float)
    if numeric and ("min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]):
        found.append(f"{where}={value} is outside {meta.get('min')}..{meta.get('max')}")


def _size(meta: dict[str, Any], size: int, where: str, found: list[str]) -> None:
    if "min" in meta and size < meta["min"] or "max" in meta and size > meta["max"]:
        found.append(f"{where}: {size} long, outside {meta.get('min')}..{meta.get('max')}")


# Java's Unicode classes as Python character-class contents. \\p{L} as \\w also admits digits and
# `_`: where that is looser than AWS, a breach may pass here, never the reverse.
UNICODE_CLASSES = {
    r"\p{Alnum}": "a-zA-Z0-9",
    r"\p{L}": r"\w",
    r"\p{N}": r"\d",
    r"\p{Zs}": " \u00a0\u2000-\u200a\u3000",
    r"\p{Z}": r"\s",
    r"\p{ASCII}": r"\x00-\x7f",
    r"\p{Print}": r"\x20-\x7e",
    r"\p{M}": "\u0300-\u036f",
    r"\p{P}": r"!-#%-*,-/:;?@\[-\]_{}\u00a1\u00a7\u00ab\u00b6\u00b7\u00bb\u00bf",
    r"\p{S}": r"$+<=>^`|~\u00a2-\u00a9\u00ac\u00ae-\u00b1\u00b4\u00b8\u00d7\u00f7",
    r"\p{Cc}": r"\x00-\x1f\x7f-\x9f",
    r"\p{Cf}": r"\u00ad\u200b-\u200f\u2060-\u2064\ufeff",
}


def _bracket_lone_classes(pattern: str) -> str:
    """Each \\p{...} outside a [...] as [\\p{...}], so that its translation is a character class too."""
    out, depth, i = [], 0, 0
    while i < len(pattern):
        if pattern[i] == "\\":
            match = re.match(r"\\p\{\w+\}", pattern[i:])
            piece = match.group(0) if match else pattern[i : i + 2]
            out.append(f"[{piece}]" if match and depth == 0 else piece)
            i += len(piece)
            continue
        depth += {"[": 1, "]": -1}.get(pattern[i], 0) if depth or pattern[i] == "[" else 0
        out.append(pattern[i])
        i += 1
    return "".join(out)


def _python_regex(pattern: str) -> str:
    """AWS's Java-style pattern as Python's: the Unicode classes as above (bracketed where they stand
    alone), and anchors (some with a stray `{1,128}` after the `$`) dropped."""
    pattern = pattern.replace(r"\z", r"\Z")  # Java's \z
    pattern = _bracket_lone_classes(pattern)  # \p{ASCII}*, \p{Print}+ (application-autoscaling)
    pattern = pattern.replace(r"[\w-_]", r"[\w_-]")  # a range Java reads as two characters
    for key, value in UNICODE_CLASSES.items():
        pattern = pattern.replace(key, value)
    pattern = pattern.replace(r"\uD800\uDC00-\uDBFF\uDFFF", r"\U00010000-\U0010FFFF")  # UTF-16's pairs
    pattern = re.sub(r"\$\{\d+,\d+\}$", "", pattern)
    return pattern.removeprefix("^").removesuffix("$")
