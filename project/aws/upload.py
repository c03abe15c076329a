"""Send the dataset to S3, incrementally.

Each object carries the SHA256 of its bytes as metadata (`x-amz-meta-sha256`), written in the
same request as the data. S3 stores an object whole or not at all, so an interrupted upload leaves
no object marked done; the next run skips what arrived and sends the rest.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from project.aws import transfer
from project.aws.errors import aws_errors
from project.aws.transfer import Echo, TransferError
from project.core.errors import UserError
from project.training.imagetree import MANIFEST, read_manifest
from project.training.raw import file_sha256

SHA256_META = "sha256"  # stored by S3 as the x-amz-meta-sha256 header
UPLOAD = "upload"
SKIP = "skip (unchanged)"


@dataclass(frozen=True)
class UploadItem:
    path: Path
    bucket: str
    key: str
    size: int
    sha256: str  # of the bytes sent (the .gz file itself, not its content)
    action: str  # UPLOAD or SKIP
    remote_sha256: str | None = None  # what the bucket holds; None: no object or no checksum

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class UploadSummary:
    uploaded: list[UploadItem]  # sent; in a dry run, what would be sent
    skipped: list[UploadItem]
    bytes: int
    seconds: float
    dry_run: bool

    def line(self) -> str:
        if self.dry_run:
            return (
                f"dry run: would upload {len(self.uploaded)} file(s) ({transfer.human_size(self.bytes)}), "
                f"{len(self.skipped)} unchanged; nothing moved"
            )
        return (
            f"uploaded {len(self.uploaded)} file(s) ({transfer.human_size(self.bytes)}) in {self.seconds:.1f} s, "
            f"{len(self.skipped)} unchanged"
        )


def _check_bucket(s3, bucket: str) -> None:
    from botocore.exceptions import ClientError

    with aws_errors(s3.meta.endpoint_url, resource=f"s3://{bucket}"):
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = transfer.client_error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise TransferError(
                    f"bucket {bucket} does not exist: run `terraform apply` in terraform/ or fix aws.data_bucket"
                ) from None
            if code in ("403", "AccessDenied"):
                raise TransferError(f"no access to bucket {bucket} with these credentials: check AWS_PROFILE") from None
            raise


def remote_sha256(s3, bucket: str, key: str) -> str | None:
    """The sha256 metadata of s3://bucket/key; None when there is no such object (or no checksum)."""
    from botocore.exceptions import ClientError

    with aws_errors(s3.meta.endpoint_url, resource=f"s3://{bucket}/{key}"):
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if transfer.client_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
    return head.get("Metadata", {}).get(SHA256_META)


def plan_upload(
    paths: Mapping[str, Path],
    bucket: str,
    prefix: str,
    s3,
    root: Path | None = None,
    digests: Mapping[Path, str] | None = None,
) -> list[UploadItem]:
    """What `upload` would do with each dataset file: send it, or skip it as already there.

    `paths` maps stem -> the file to send, exactly as fetch_raw verified it (a source file, or
    its good copy in the cache); the bytes compared with the bucket are the file's own, since
    that is what is stored. Each file's key is its name under `prefix`, or with `root` (a
    channel's folder) its path relative to `root`, so sub-folders keep their shape. `digests`: the
    SHA256 of files' stored bytes known already (project.training.resolve verified them), not hashed again.
    """
    files = [Path(path) for path in paths.values()]
    for path in files:  # every file must exist before any call
        if not path.is_file():
            raise TransferError(
                f"dataset file {path.name} not found in {path.parent}: "
                "fetch the dataset first or fix dataset.channels.train"
            )
    _check_bucket(s3, bucket)
    prefix = prefix.strip("/")
    items = []
    for path in files:
        name = path.relative_to(root).as_posix() if root is not None else path.name
        key = f"{prefix}/{name}" if prefix else name
        digest = digests[path] if digests and path in digests else file_sha256(path)
        remote = remote_sha256(s3, bucket, key)
        action = SKIP if remote == digest else UPLOAD
        items.append(UploadItem(path, bucket, key, path.stat().st_size, digest, action, remote))
    return items


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file under a channel's folder, by its path relative to it (hidden files left out)."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }


def _upload_one(s3, item: UploadItem, config, callback) -> None:
    extra = {
        "Metadata": {SHA256_META: item.sha256},  # sent with the object: never marked done if the PUT fails
        "ChecksumAlgorithm": "SHA256",  # S3 verifies each request's bytes on arrival
    }
    with aws_errors(s3.meta.endpoint_url, resource=item.uri):
        s3.upload_file(str(item.path), item.bucket, item.key, ExtraArgs=extra, Callback=callback, Config=config)


def upload(
    items: list[UploadItem],
    s3,
    progress: bool = True,
    dry_run: bool = False,
    echo: Echo = print,
    then: list[UploadItem] | None = None,
) -> UploadSummary:
    """Send the items planned for upload, several files at once; print one line per file.

    `then`: items sent one after another, in their order, once every one of `items` arrived
    (manifests naming them, the last naming the one before); one summary for all.
    """
    started = time.perf_counter()
    sent: list[UploadItem] = []
    skipped: list[UploadItem] = []
    for batch in (items, *([item] for item in then or [])):
        todo = [item for item in batch if item.action == UPLOAD]
        skipped += [item for item in batch if item.action != UPLOAD]
        for item in batch:
            if item.action != UPLOAD:
                echo(f"unchanged {item.uri}")
        if dry_run:
            for item in todo:
                echo(f"would upload {item.path} ({transfer.human_size(item.size)}) -> {item.uri}")
        elif todo:
            _upload_all(todo, s3, progress, echo, sum(item.size for item in todo))
        sent += todo
    seconds = 0.0 if dry_run else time.perf_counter() - started
    summary = UploadSummary(sent, skipped, sum(item.size for item in sent), seconds, dry_run=dry_run)
    echo(summary.line())
    return summary


def _upload_all(todo: list[UploadItem], s3, progress: bool, echo: Echo, total: int) -> None:
    config = transfer.config()
    bar, advance = transfer.progress_bar(total, "upload", progress)
    pool = ThreadPoolExecutor(max_workers=min(transfer.FILE_WORKERS, len(todo)), thread_name_prefix="upload")
    try:
        futures = {pool.submit(_upload_one, s3, item, config, advance): item for item in todo}
        for future in as_completed(futures):
            item = futures[future]
            try:
                future.result()
            except UserError:
                raise
            except transfer.failures() as exc:
                raise TransferError(
                    f"upload of {item.path.name} to {item.uri} failed ({exc}); run the upload again: "
                    "files that arrived are skipped"
                ) from None
            with bar.external_write_mode():  # the line goes above the bar, not through it
                echo(f"uploaded {item.path.name} ({transfer.human_size(item.size)}) -> {item.uri}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # files not started are dropped; started ones end whole
        bar.close()


def plan_packed_upload(folder: Path, bucket: str, prefix: str, s3) -> tuple[list[UploadItem], list[UploadItem]]:
    """A packed image channel (project.training.imagetree.pack_tree's folder) as (shards, manifest) to send:
    `upload(shards, s3, then=manifest)` sends the manifest last, so a job never sees one naming a
    shard that is not there yet. Shards no longer in the manifest are not sent (nor read by a job)."""
    names = [entry["name"] for entry in read_manifest(folder)["shards"]]
    items = plan_upload({name: folder / name for name in [*names, MANIFEST]}, bucket, prefix, s3)
    return items[:-1], items[-1:]
