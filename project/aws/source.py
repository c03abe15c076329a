"""The s3:// data source: what the training storey's fetch.py reads a remote channel with (fetch.Source),
and the file systems read where they are mounted (fsx://, efs://: project/aws/filesystems.py).

Registered on import, by the processes that read S3 data: the AWS workflow (`invoke upload`,
`invoke train`), `invoke local` and the local sweep (tasks.py, project/face/sweep.py), before their
check resolves the channels. The training process they start is handed the folders the check
made (project/training/local.py), and a job's container reads its channels as folders: neither imports this.
boto3 is imported only when a client is made.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, BinaryIO

from project.aws.filesystems import KINDS, MOUNTED
from project.aws.transfer import Echo
from project.core.errors import UserError
from project.core.names import split_s3_uri
from project.training.fetch import Source, register_source


def connect(endpoint_url: str | None) -> Any:
    """A client made as the AWS tasks make theirs: aws.endpoint_url, else AWS_ENDPOINT_URL, else AWS."""
    from project.aws.session import aws_clients

    return aws_clients(None, endpoint_url).s3


def download(client: Any, uri: str, out: BinaryIO) -> None:
    bucket, key = split_s3_uri(uri)
    client.download_fileobj(bucket, key, out)


def mirror(client: Any, uri: str, folder: Path, echo: Echo) -> list[str]:
    from project.aws.fetch import mirror_folder

    return mirror_folder(client, uri, folder, echo=echo)


def failures() -> tuple[type[BaseException], ...]:
    """botocore's errors: a missing key (ClientError) or an endpoint that does not answer."""
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError


def setup_problem(exc: BaseException) -> UserError | None:
    """botocore's credential, region and connection failures as one line; None for an S3 answer."""
    if hasattr(exc, "response") or "botocore.exceptions" not in sys.modules:
        return None  # a ClientError answers for one key: the next name may exist
    from project.aws.errors import explain

    return explain(exc)


S3 = Source(
    connect=connect,
    download=download,
    mirror=mirror,
    failures=failures,
    setup_problem=setup_problem,
)
register_source("s3", S3)
for _scheme in KINDS:
    register_source(_scheme, MOUNTED)
