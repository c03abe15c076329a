"""SageMaker's rule for tag values; the rest of AWS's naming rules (S3 URIs, buckets, ARNs) are
project/core/names.py's, where the config's checks use them too."""

from __future__ import annotations

import re

TAG_VALUE_LIMIT = 256
TAG_VALUE_BAD = re.compile(r"[^\w\s.:/=+\-@]")  # what a SageMaker tag value may not hold


def tag_value(text: str) -> str:
    """text as a SageMaker tag value: each character a tag may not hold as `_`, at most 256 of them."""
    return TAG_VALUE_BAD.sub("_", text)[:TAG_VALUE_LIMIT]
