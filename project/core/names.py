"""AWS's naming rules for the resources a job uses, checked before any call is made, and S3 URIs.

The config (aws.* keys) and the Terraform outputs (project/aws/infra.py) are checked by the same
rules, so a malformed name is one line naming the key and the rule, never an IndexError or a
botocore ParamValidationError deep inside a launch. Standard library only: the pure storey (the
config's checks) and the platforms (aws/, the sandbox) use the same rules from here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from project.core.errors import UserError

REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")  # us-east-1, us-gov-west-1, us-isob-east-1
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# <account>.dkr.ecr.<region>.<domain>[:port]/<repository>; the domain is amazonaws.com(.cn) on AWS,
# another host on a local stand-in (LocalStack: localhost.localstack.cloud:4566).
REPOSITORY_URL = re.compile(r"^\d{12}\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.[a-z0-9.-]+(:\d+)?/(?P<name>.+)$")
REPOSITORY_NAME = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")
ROLE_ARN = re.compile(r"^arn:aws(-cn|-us-gov)?:iam::\d{12}:role/(?:[\x21-\x7e]+/)*[\w+=,.@-]{1,64}$")

RULES = {
    "region": "expected a region like us-east-1 (<area>-<direction>-<number>)",
    "bucket": (
        "bucket names are 3-63 lowercase letters, digits, dots and hyphens, start and end with a letter or "
        "digit, and are not an IP address"
    ),
    "repository_url": (
        "expected <account>.dkr.ecr.<region>.amazonaws.com/<repository>, repository names are 2-256 lowercase "
        "letters, digits and ._-/ (each part starting and ending with a letter or digit)"
    ),
    "role_arn": "expected arn:aws:iam::<12-digit account>:role/<path/><name> (the SageMaker execution role)",
}
FIELDS = {
    "region": "region",
    "data_bucket": "bucket",
    "artifacts_bucket": "bucket",
    "repository_url": "repository_url",
    "role_arn": "role_arn",
}


def _bucket_ok(name: str) -> bool:
    if not BUCKET.match(name) or ".." in name or name.startswith("xn--"):
        return False
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return True
    return False


def _repository_ok(url: str) -> bool:
    match = REPOSITORY_URL.match(url)
    if match is None:
        return False
    name = match.group("name")
    return _region_ok(match.group("region")) and 2 <= len(name) <= 256 and bool(REPOSITORY_NAME.match(name))


def _region_ok(name: str) -> bool:
    return bool(REGION.match(name))


def _role_ok(arn: str) -> bool:
    return bool(ROLE_ARN.match(arn))


CHECKS: dict[str, Callable[[str], bool]] = {
    "region": _region_ok,
    "bucket": _bucket_ok,
    "repository_url": _repository_ok,
    "role_arn": _role_ok,
}


def name_problem(field: str, value: str) -> str | None:
    """The rule `value` breaks as the Infra field `field` (data_bucket, region, ...); None if it is valid."""
    kind = FIELDS.get(field)
    if kind is None or CHECKS[kind](value):
        return None
    return RULES[kind]


class S3UriError(UserError, ValueError):
    """A string that should be an s3://bucket/key URI and is not."""


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); the key may be empty or a prefix."""
    bucket, _, key = uri[len("s3://") :].partition("/") if uri.startswith("s3://") else ("", "", "")
    if not bucket:
        raise S3UriError(f"not an S3 URI: {uri!r} (expected s3://bucket/key)")
    return bucket, key
