"""S3 bucket-policy conditions, evaluated as S3 does for the requests boto3 sends it (over TLS).

moto evaluates a bucket policy's statements but ignores their Condition blocks, so the
TLS-only Deny of terraform/s3.tf (`Deny s3:* when aws:SecureTransport is false`) refuses every
object call: after `tflocal apply` each upload and download is 403. Clients reach real S3 over
HTTPS only; the sandbox speaks plain HTTP on loopback, which stands for that. So each request
is evaluated with the condition keys below; a statement whose conditions name only these keys
applies only if they hold. A statement with any other key is left to moto, as before.
"""

from __future__ import annotations

import json
from typing import Any

from project.sandbox.patches import MethodPatch

# The request context of a boto3 call to S3 (the keys the sandbox knows how to answer).
REQUEST_CONTEXT = {"aws:securetransport": "true"}
# Condition operators evaluated here: value comparisons, case-insensitive for Bool as in IAM.
OPERATORS = {
    "Bool": lambda actual, wanted: actual.lower() in {w.lower() for w in wanted},
    "StringEquals": lambda actual, wanted: actual in wanted,
    "StringNotEquals": lambda actual, wanted: actual not in wanted,
}


def _values(value: Any) -> list[str]:
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in (value if isinstance(value, list) else [value])]


def condition_holds(condition: dict[str, Any]) -> bool | None:
    """True/False for a Condition block on known keys and operators; None if it names anything else."""
    for operator, tests in condition.items():
        compare = OPERATORS.get(operator)
        if compare is None or not isinstance(tests, dict):
            return None
        for key, wanted in tests.items():
            actual = REQUEST_CONTEXT.get(key.lower())
            if actual is None:
                return None
            if not compare(actual, _values(wanted)):
                return False
    return True


def applicable_statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The statements that apply to the request: those whose known conditions hold, or moto's to judge."""
    statements = document.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    return [s for s in statements if not s.get("Condition") or condition_holds(s["Condition"]) is not False]


def bucket_permission(bucket: Any, action: str, resource: str) -> Any:
    """moto's FakeBucket.get_permission with the conditions evaluated (see the module docstring)."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    if bucket.policy is None:
        return PermissionResult.NEUTRAL
    document = json.loads(bucket.policy.decode())
    kept = applicable_statements(document)
    if not kept:
        return PermissionResult.NEUTRAL
    return IAMPolicy(json.dumps({**document, "Statement": kept})).is_action_permitted(action, resource)


class BucketPolicyConditions(MethodPatch):
    """While entered, moto's S3 evaluates bucket-policy conditions as bucket_permission does."""

    def target(self) -> tuple[type, str, Any]:
        from moto.s3.models import FakeBucket

        return FakeBucket, "get_permission", bucket_permission
