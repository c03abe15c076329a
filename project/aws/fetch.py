"""Bring a finished job's artifacts home: model.tar.gz, output.tar.gz and its checkpoints.

Downloads go to a scratch folder beside the destination; every tarball is read to the end and
its member names checked before anything is unpacked into `.<name>.partial`, which replaces the
destination only once all of it worked.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from project.aws import transfer
from project.aws.errors import aws_errors
from project.aws.transfer import Echo, TransferError
from project.core.atomic import write_atomically
from project.core.errors import UserError
from project.core.names import split_s3_uri
from project.core.sagemaker_names import METRICS_FILE


@dataclass(frozen=True)
class _Download:
    uri: str
    bucket: str
    key: str
    size: int
    target: str  # path relative to the scratch folder
    etag: str = ""  # the object's version as S3 lists it (a mirrored channel skips what it already holds)


def _head_size(s3, uri: str) -> int | None:
    from botocore.exceptions import ClientError

    bucket, key = split_s3_uri(uri)
    with aws_errors(s3.meta.endpoint_url, resource=uri):
        try:
            return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if transfer.client_error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                return None
            raise


def safe_relative(name: str) -> PurePosixPath | None:
    """`name` as a path inside a folder; None if it is absolute or climbs out with '..'."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return None
    parts = [part for part in path.parts if part not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _folder_downloads(s3, uri: str, under: str, what: str) -> list[_Download]:
    """Every object under the S3 folder `uri`, each to `under/<its path below the folder>`."""
    bucket, prefix = split_s3_uri(uri)
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
            raise TransferError(f"refusing {what} s3://{bucket}/{obj['Key']}: its name climbs out of the folder")
        target = f"{under}/{safe}" if under else str(safe)
        downloads.append(
            _Download(f"s3://{bucket}/{obj['Key']}", bucket, obj["Key"], int(obj["Size"]), target, obj.get("ETag", ""))
        )
    return downloads


def _checkpoint_downloads(s3, checkpoint_uri: str) -> list[_Download]:
    return _folder_downloads(s3, checkpoint_uri, "checkpoints", "checkpoint")


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
    config = transfer.config()
    bar, advance = transfer.progress_bar(sum(d.size for d in downloads), "fetch", progress)

    def one(d: _Download) -> None:
        target = scratch / d.target
        target.parent.mkdir(parents=True, exist_ok=True)
        with aws_errors(s3.meta.endpoint_url, resource=d.uri):
            if d.size >= transfer.MULTIPART_THRESHOLD:  # ranged GETs in parallel
                s3.download_file(d.bucket, d.key, str(target), Callback=advance, Config=config)
                return
            # A small file: one GET (download_file would HEAD it first), streamed to disk.
            body = s3.get_object(Bucket=d.bucket, Key=d.key)["Body"]
            with target.open("wb") as handle:
                for chunk in body.iter_chunks(transfer.MIB):
                    handle.write(chunk)
                    advance(len(chunk))

    pool = ThreadPoolExecutor(max_workers=transfer.FILE_WORKERS, thread_name_prefix="fetch")
    try:
        futures = {pool.submit(one, d): d for d in downloads}
        for future in as_completed(futures):
            try:
                future.result()
            except UserError:
                raise
            except transfer.failures() as exc:
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
            while stream.read(transfer.MIB):
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

    The layout is project.core.runtime.local_layout's: model/, output/, checkpoints/ and a copy of
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
            echo(f"fetched {d.uri} ({transfer.human_size(d.size)})")
    if checkpoints:
        echo(f"fetched {len(checkpoints)} checkpoint file(s) ({transfer.human_size(sum(d.size for d in checkpoints))})")
    echo(f"unpacked into {dest}/")


# Beside a mirrored folder (never in it, where the DataModule reads): file -> the ETag of its object.
MIRROR_RECORD = ".{name}.s3-etags.json"


def mirror_folder(s3, uri: str, dest: Path, progress: bool = True, echo: Echo = print) -> list[str]:
    """Make `dest` a copy of the S3 folder `uri` (a local run's s3:// data channel); the files it downloaded.

    Incremental: a file whose object has the ETag recorded for it stays; new and changed objects are
    downloaded into a scratch folder first and moved into place only when all arrived, then files
    whose object is gone are removed and the record is written last. An interrupted mirror leaves
    every file whole, and the next one downloads what the record does not vouch for.
    """
    dest = Path(dest)
    wanted = _folder_downloads(s3, uri, "", "object")
    if not wanted:
        raise TransferError(f"{uri} holds no objects: upload the data there (invoke upload) or fix the path")
    record_path = dest.parent / MIRROR_RECORD.format(name=dest.name)
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    todo = [d for d in wanted if record.get(d.target) != d.etag or not (dest / d.target).is_file()]
    dest.mkdir(parents=True, exist_ok=True)
    if todo:
        scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
        try:
            _download_all(s3, todo, scratch, progress)
            for d in todo:
                (dest / d.target).parent.mkdir(parents=True, exist_ok=True)
                os.replace(scratch / d.target, dest / d.target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    kept = {d.target for d in wanted}
    for path in [p for p in dest.rglob("*") if p.is_file()]:
        if path.relative_to(dest).as_posix() not in kept:
            path.unlink()  # its object is gone
    write_atomically(record_path, json.dumps({d.target: d.etag for d in wanted}, indent=1, sort_keys=True))
    if todo:
        size = transfer.human_size(sum(d.size for d in todo))
        echo(f"downloaded {len(todo)} of {len(wanted)} file(s) ({size}) from {uri} to {dest}/")
    return [d.target for d in todo]
