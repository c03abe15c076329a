"""IAM's evaluation of identity policies, for the policies Terraform renders (tests only).

moto's IAM has no policy simulator and its access control covers few services, so the tests judge
requests here: an explicit Deny wins, else some Allow must match, else the request is implicitly
denied. A statement matches when its Action (or NotAction), Resource (or NotResource) and every
Condition match. Wildcards: `*` any run of characters, `?` one; actions compare case-insensitively,
resources case-sensitively, as IAM does. Anything these policies do not use (policy variables,
ForAnyValue/ForAllValues, operators not listed below) raises instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

ALLOWED, EXPLICIT_DENY, IMPLICIT_DENY = "allowed", "explicitDeny", "implicitDeny"


@dataclass(frozen=True)
class Request:
    action: str  # service:Action
    resource: str  # an ARN, or "*" for actions without resource-level permissions
    context: Mapping[str, str] = field(default_factory=dict)  # condition keys of the request


@cache
def _pattern(text: str, ignore_case: bool) -> re.Pattern[str]:
    if "${" in text:
        raise NotImplementedError(f"policy variables are not evaluated here: {text}")
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)
    return re.compile(body, re.IGNORECASE if ignore_case else 0)


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _matches(patterns: Iterable[str], value: str, ignore_case: bool) -> bool:
    return any(_pattern(p, ignore_case).fullmatch(value) for p in patterns)


def _string_like(wanted: list[str], actual: str) -> bool:
    return _matches(wanted, actual, ignore_case=False)


# Operator -> (compare(wanted values, actual value), negated). Negated operators hold when the key
# is absent; the others do not (IAM's rule), unless the operator ends in IfExists.
OPERATORS = {
    "StringEquals": (lambda wanted, actual: actual in wanted, False),
    "StringNotEquals": (lambda wanted, actual: actual not in wanted, True),
    "StringEqualsIgnoreCase": (lambda wanted, actual: actual.lower() in {w.lower() for w in wanted}, False),
    "StringLike": (_string_like, False),
    "StringNotLike": (lambda wanted, actual: not _string_like(wanted, actual), True),
    "ArnEquals": (lambda wanted, actual: actual in wanted, False),
    "ArnLike": (_string_like, False),
    "ArnNotLike": (lambda wanted, actual: not _string_like(wanted, actual), True),
    "Bool": (lambda wanted, actual: actual.lower() in {w.lower() for w in wanted}, False),
}


def condition_holds(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    """Every operator's every key holds (AND); a key's values are alternatives (OR)."""
    lowered = {key.lower(): value for key, value in context.items()}  # condition keys are case-insensitive
    for operator, tests in condition.items():
        name = operator.removesuffix("IfExists")
        if name not in OPERATORS:
            raise NotImplementedError(f"condition operator {operator} is not evaluated here")
        compare, negated = OPERATORS[name]
        for key, wanted in tests.items():
            actual = lowered.get(key.lower())
            if actual is None:
                if not (negated or operator.endswith("IfExists")):
                    return False
                continue
            if not compare([str(w).lower() if isinstance(w, bool) else str(w) for w in _as_list(wanted)], actual):
                return False
    return True


def statement_matches(statement: Mapping[str, Any], request: Request) -> bool:
    if "Action" in statement:
        action_ok = _matches(_as_list(statement["Action"]), request.action, ignore_case=True)
    else:
        action_ok = not _matches(_as_list(statement["NotAction"]), request.action, ignore_case=True)
    if "Resource" in statement:
        resource_ok = _matches(_as_list(statement["Resource"]), request.resource, ignore_case=False)
    else:
        resource_ok = not _matches(_as_list(statement["NotResource"]), request.resource, ignore_case=False)
    return action_ok and resource_ok and condition_holds(statement.get("Condition", {}), request.context)


def statements(documents: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for document in documents:
        listed = document["Statement"]
        found.extend([listed] if isinstance(listed, dict) else listed)
    return found


def decision(documents: Iterable[Mapping[str, Any]], request: Request) -> str:
    """allowed, explicitDeny or implicitDeny: the identity policies' answer for the request."""
    matched = [s["Effect"] for s in statements(documents) if statement_matches(s, request)]
    if "Deny" in matched:
        return EXPLICIT_DENY
    return ALLOWED if "Allow" in matched else IMPLICIT_DENY
