"""What uploads and downloads share: their error, sizes in words, the progress bar, boto3's transfer config.

project.aws.upload sends the dataset up, project.aws.fetch brings a job's artifacts home. Every
function takes the boto3 S3 client it uses; nothing talks to AWS at import time, and boto3 and
tqdm are imported only when a transfer starts.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from project.core.errors import UserError

MIB = 1024 * 1024
# S3 parts must be >= 5 MiB; 8 MiB is boto3's default and keeps small files in a single PUT.
MULTIPART_THRESHOLD = 8 * MIB
FILE_WORKERS = 4  # files in flight at once
PART_WORKERS = 4  # parts of one large file in flight at once

Echo = Callable[[str], None]


class TransferError(UserError):
    """An upload or download that cannot go ahead; one line says why and what to do."""


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def client_error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def failures() -> tuple[type[BaseException], ...]:
    """What a failed transfer raises (boto3's wrapper, botocore's errors, the local file); a bug propagates."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    return (S3UploadFailedError, S3TransferFailedError, ClientError, BotoCoreError, OSError)


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not (enabled and sys.stderr.isatty()),  # logs and CI get one line per file instead
    )
    lock = threading.Lock()

    def advance(n: int) -> None:  # called from the transfer threads
        with lock:
            bar.update(n)

    return bar, advance


def config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=PART_WORKERS
    )
