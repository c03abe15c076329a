"""Move data to and from S3: the dataset up (incremental), a finished job's artifacts home.

Upload: each object carries the SHA256 of its bytes as metadata (`x-amz-meta-sha256`), written
in the same request as the data. S3 stores an object whole or not at all, so an interrupted
upload leaves no object marked done; the next run skips what arrived and sends the rest.

Fetch: downloads go to a scratch folder beside the destination; every tarball is read to the
end and its member names checked before anything is unpacked into `.<name>.partial`, which
replaces the destination only once all of it worked.

Every function takes the boto3 S3 client it uses; nothing talks to AWS at import time.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import UserError
from ..raw import file_sha256  # memoised per process: fetch_raw's verification hashed these files already
from .session import aws_errors

MIB = 1024 * 1024
# S3 parts must be >= 5 MiB; 8 MiB is boto3's default and keeps small files in a single PUT.
MULTIPART_THRESHOLD = 8 * MIB
FILE_WORKERS = 4  # files in flight at once
PART_WORKERS = 4  # parts of one large file in flight at once
SHA256_META = "sha256"  # stored by S3 as the x-amz-meta-sha256 header
UPLOAD = "upload"
SKIP = "skip (unchanged)"
METRICS_FILE = "metrics.json"

Echo = Callable[[str], None]


class TransferError(UserError):
    """An upload or download that cannot go ahead; one line says why and what to do."""


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
                f"dry run: would upload {len(self.uploaded)} file(s) ({human_size(self.bytes)}), "
                f"{len(self.skipped)} unchanged; nothing moved"
            )
        return (
            f"uploaded {len(self.uploaded)} file(s) ({human_size(self.bytes)}) in {self.seconds:.1f} s, "
            f"{len(self.skipped)} unchanged"
        )


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/") if uri.startswith("s3://") else ("", "", "")
    if not bucket:
        raise TransferError(f"not an S3 URI: {uri!r} (expected s3://bucket/key)")
    return bucket, key


def _client_error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _transfer_failures() -> tuple[type[BaseException], ...]:
    """What a failed transfer raises (boto3's wrapper, botocore's errors, the local file); a bug propagates."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    return (S3UploadFailedError, S3TransferFailedError, ClientError, BotoCoreError, OSError)


def _progress_bar(total: int, desc: str, enabled: bool):
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


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=PART_WORKERS
    )


# --- upload -----------------------------------------------------------------------------------


def _check_bucket(s3, bucket: str) -> None:
    from botocore.exceptions import ClientError

    with aws_errors(s3.meta.endpoint_url, resource=f"s3://{bucket}"):
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = _client_error_code(exc)
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
            if _client_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
    return head.get("Metadata", {}).get(SHA256_META)


def plan_upload(paths: Mapping[str, Path], bucket: str, prefix: str, s3) -> list[UploadItem]:
    """What `upload` would do with each dataset file: send it, or skip it as already there.

    `paths` maps stem -> the file to send, exactly as fetch_raw verified it (a source file, or
    its good copy in the cache); the bytes compared with the bucket are the file's own, since
    that is what is stored.
    """
    files = [Path(path) for path in paths.values()]
    for path in files:  # every file must exist before any call
        if not path.is_file():
            raise TransferError(
                f"dataset file {path.name} not found in {path.parent}: fetch the dataset first or fix dataset.source"
            )
    _check_bucket(s3, bucket)
    prefix = prefix.strip("/")
    items = []
    for path in files:
        key = f"{prefix}/{path.name}" if prefix else path.name
        digest, remote = file_sha256(path), remote_sha256(s3, bucket, key)
        action = SKIP if remote == digest else UPLOAD
        items.append(UploadItem(path, bucket, key, path.stat().st_size, digest, action, remote))
    return items


def _upload_one(s3, item: UploadItem, config, callback) -> None:
    extra = {
        "Metadata": {SHA256_META: item.sha256},  # sent with the object: never marked done if the PUT fails
        "ChecksumAlgorithm": "SHA256",  # S3 verifies each request's bytes on arrival
    }
    with aws_errors(s3.meta.endpoint_url, resource=item.uri):
        s3.upload_file(str(item.path), item.bucket, item.key, ExtraArgs=extra, Callback=callback, Config=config)


def upload(
    items: list[UploadItem], s3, progress: bool = True, dry_run: bool = False, echo: Echo = print
) -> UploadSummary:
    """Send the items planned for upload, several files at once; print one line per file."""
    todo = [item for item in items if item.action == UPLOAD]
    skipped = [item for item in items if item.action != UPLOAD]
    total = sum(item.size for item in todo)
    for item in skipped:
        echo(f"unchanged {item.uri}")
    if dry_run:
        for item in todo:
            echo(f"would upload {item.path} ({human_size(item.size)}) -> {item.uri}")
        summary = UploadSummary(todo, skipped, total, 0.0, dry_run=True)
        echo(summary.line())
        return summary
    started = time.perf_counter()
    if todo:
        _upload_all(todo, s3, progress, echo, total)
    summary = UploadSummary(todo, skipped, total, time.perf_counter() - started, dry_run=False)
    echo(summary.line())
    return summary


def _upload_all(todo: list[UploadItem], s3, progress: bool, echo: Echo, total: int) -> None:
    config = _transfer_config()
    bar, advance = _progress_bar(total, "upload", progress)
    pool = ThreadPoolExecutor(max_workers=min(FILE_WORKERS, len(todo)), thread_name_prefix="upload")
    try:
        futures = {pool.submit(_upload_one, s3, item, config, advance): item for item in todo}
        for future in as_completed(futures):
            item = futures[future]
            try:
                future.result()
            except UserError:
                raise
            except _transfer_failures() as exc:
                raise TransferError(
                    f"upload of {item.path.name} to {item.uri} failed ({exc}); run the upload again: "
                    "files that arrived are skipped"
                ) from None
            with bar.external_write_mode():  # the line goes above the bar, not through it
                echo(f"uploaded {item.path.name} ({human_size(item.size)}) -> {item.uri}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # files not started are dropped; started ones end whole
        bar.close()


# --- fetch ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Download:
    uri: str
    bucket: str
    key: str
    size: int
    target: str  # path relative to the scratch folder


def _head_size(s3, uri: str) -> int | None:
    from botocore.exceptions import ClientError

    bucket, key = split_s3_uri(uri)
    with aws_errors(s3.meta.endpoint_url, resource=uri):
        try:
            return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _client_error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                return None
            raise


def safe_relative(name: str) -> PurePosixPath | None:
    """`name` as a path inside a folder; None if it is absolute or climbs out with '..'."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return None
    parts = [part for part in path.parts if part not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _checkpoint_downloads(s3, checkpoint_uri: str) -> list[_Download]:
    bucket, prefix = split_s3_uri(checkpoint_uri)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""  # a folder: not its siblings
    downloads = []
    with aws_errors(s3.meta.endpoint_url, resource=f"s3://{bucket}/{prefix}"):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        objects = [obj for page in pages for obj in page.get("Contents", [])]
    for obj in objects:
        relative = obj["Key"][len(prefix) :]
        if not relative or relative.endswith("/"):
            continue  # folder markers
        safe = safe_relative(relative)
        if safe is None or safe == PurePosixPath("."):
            raise TransferError(f"refusing checkpoint s3://{bucket}/{obj['Key']}: its name climbs out of the folder")
        downloads.append(
            _Download(f"s3://{bucket}/{obj['Key']}", bucket, obj["Key"], int(obj["Size"]), f"checkpoints/{safe}")
        )
    return downloads


def _sizes_in_folder(s3, uri: str) -> dict[str, int]:
    """Key -> size of the objects directly in the folder holding `uri`: one request for both tarballs."""
    bucket, key = split_s3_uri(uri)
    folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    with aws_errors(s3.meta.endpoint_url, resource=f"s3://{bucket}/{folder}"):
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder, Delimiter="/")
        return {obj["Key"]: int(obj["Size"]) for page in pages for obj in page.get("Contents", [])}


def _plan_fetch(s3, model_uri: str, output_uri: str | None, checkpoint_uri: str | None) -> list[_Download]:
    if output_uri and output_uri.rsplit("/", 1)[0] == model_uri.rsplit("/", 1)[0]:
        # SageMaker writes both tarballs into <output path>/<job>/output/: list it once.
        sizes = _sizes_in_folder(s3, model_uri)

        def lookup(uri: str) -> int | None:
            return sizes.get(split_s3_uri(uri)[1])
    else:

        def lookup(uri: str) -> int | None:
            return _head_size(s3, uri)

    size = lookup(model_uri)
    if size is None:
        raise TransferError(f"{model_uri} does not exist: the job has no model artifacts (did it complete?)")
    downloads = [_Download(model_uri, *split_s3_uri(model_uri), size, "model.tar.gz")]
    if output_uri:
        size = lookup(output_uri)
        if size is not None:  # a job that wrote nothing to /opt/ml/output/data has no output.tar.gz
            downloads.append(_Download(output_uri, *split_s3_uri(output_uri), size, "output.tar.gz"))
    if checkpoint_uri:
        downloads += _checkpoint_downloads(s3, checkpoint_uri)
    return downloads


def _download_all(s3, downloads: list[_Download], scratch: Path, progress: bool) -> None:
    config = _transfer_config()
    bar, advance = _progress_bar(sum(d.size for d in downloads), "fetch", progress)

    def one(d: _Download) -> None:
        target = scratch / d.target
        target.parent.mkdir(parents=True, exist_ok=True)
        with aws_errors(s3.meta.endpoint_url, resource=d.uri):
            if d.size >= MULTIPART_THRESHOLD:  # ranged GETs in parallel
                s3.download_file(d.bucket, d.key, str(target), Callback=advance, Config=config)
                return
            # A small file: one GET (download_file would HEAD it first), streamed to disk.
            body = s3.get_object(Bucket=d.bucket, Key=d.key)["Body"]
            with target.open("wb") as handle:
                for chunk in body.iter_chunks(MIB):
                    handle.write(chunk)
                    advance(len(chunk))

    pool = ThreadPoolExecutor(max_workers=FILE_WORKERS, thread_name_prefix="fetch")
    try:
        futures = {pool.submit(one, d): d for d in downloads}
        for future in as_completed(futures):
            try:
                future.result()
            except UserError:
                raise
            except _transfer_failures() as exc:
                raise TransferError(f"download of {futures[future].uri} failed ({exc}); run the fetch again") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def _checked_members(tar: tarfile.TarFile, uri: str) -> Iterator[tarfile.TarInfo]:
    """The archive's members as it is read, each refused before it is written if it would leave the folder."""
    for member in tar:
        if safe_relative(member.name) is None:
            raise TransferError(
                f"refusing {uri}: member {member.name!r} would be written outside the folder (absolute path or '..')"
            )
        yield member


def unpack_tarball(path: Path, dest: Path, uri: str) -> None:
    """Unpack a job's tarball into dest in one pass over its bytes (decompressed once).

    Each member's name is checked before it is written (none may leave the folder), links and
    device files out of dest are refused by tarfile's "data" filter, and a gzip stream's CRC and
    length are checked on reaching its end, so a truncated or corrupt download fails. dest is
    a partial folder: on failure the caller discards it with whatever was written.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                # extractall, not extract per member: it sets directories' modes after their files
                tar.extractall(dest, members=_checked_members(tar, uri), filter="data")
            while stream.read(MIB):
                pass  # the archive's padding and the gzip trailer: its CRC and length are checked here
    except tarfile.FilterError as exc:
        raise TransferError(f"refusing {uri}: {exc}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error, tarfile.TarError) as exc:
        raise TransferError(f"{uri} is not a valid tar archive ({exc}): it may be truncated or corrupt") from None
    except OSError as exc:
        raise TransferError(f"cannot unpack {uri}: {exc}") from None


def _replace(partial: Path, dest: Path) -> None:
    """Put the finished folder at dest; an existing dest is removed only after the swap."""
    if not dest.exists():
        os.rename(partial, dest)
        return
    old = dest.parent / f".{dest.name}.old"
    if old.exists():
        shutil.rmtree(old)
    os.rename(dest, old)
    os.rename(partial, dest)
    shutil.rmtree(old, ignore_errors=True)


def fetch_job(
    s3,
    model_artifacts_uri: str,
    output_uri: str | None,
    checkpoint_uri: str | None,
    dest: Path,
    progress: bool = True,
    echo: Echo = print,
) -> Path:
    """Download a job's model.tar.gz, output.tar.gz and checkpoints into dest/ (runs/<job>/).

    The layout is project.runtime.local_layout's: model/, output/, checkpoints/ and a copy of
    output/metrics.json at the top. dest is replaced only after everything downloaded and checked.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    downloads = _plan_fetch(s3, model_artifacts_uri, output_uri, checkpoint_uri)
    partial = dest.parent / f".{dest.name}.partial"
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
    try:
        _download_all(s3, downloads, scratch, progress)
        if partial.exists():
            shutil.rmtree(partial)  # left by an interrupted fetch
        partial.mkdir()
        uris = {d.target: d.uri for d in downloads}
        for name in ("model", "output"):
            tarball = scratch / f"{name}.tar.gz"
            if tarball.exists():
                unpack_tarball(tarball, partial / name, uris[tarball.name])
            else:
                (partial / name).mkdir()
        if (scratch / "checkpoints").exists():
            os.rename(scratch / "checkpoints", partial / "checkpoints")  # same filesystem: dest's parent
        else:
            (partial / "checkpoints").mkdir()
        if (partial / "output" / METRICS_FILE).is_file():
            shutil.copy2(partial / "output" / METRICS_FILE, partial / METRICS_FILE)
        _replace(partial, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    _report_fetch(downloads, dest, echo)
    return dest


def _report_fetch(downloads: Iterable[_Download], dest: Path, echo: Echo) -> None:
    checkpoints = [d for d in downloads if d.target.startswith("checkpoints/")]
    for d in downloads:
        if d not in checkpoints:
            echo(f"fetched {d.uri} ({human_size(d.size)})")
    if checkpoints:
        echo(f"fetched {len(checkpoints)} checkpoint file(s) ({human_size(sum(d.size for d in checkpoints))})")
    echo(f"unpacked into {dest}/")
