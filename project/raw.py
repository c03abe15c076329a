"""Raw dataset files: fetch them, verify them, read them. Standard library only.

`fetch_raw` brings the raw files from an http(s) prefix, a local directory or an s3:// prefix
into a cache directory and verifies each file's content hash (the SHA256 of its decompressed
bytes, as the dataset config lists it); nothing unverified or half-written is ever left under a
final name. `invoke upload` needs only this module, so it imports neither torch nor numpy.

Verifying means decompressing, which costs far more than hashing the file as stored. So a
verified file is remembered by the SHA256 of its stored bytes, for the rest of the process and
(`remember=True`, what `invoke upload` uses) in `<cache>/.verified/`: a later check hashes the
file and finds it there, and any change to its bytes makes it a stranger again.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import sys
import tempfile
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
VERIFIED_DIR = ".verified"  # in the cache dir: one file per verified file, named by its stored bytes' sha256
REMOTE = ("http://", "https://", "s3://")
BLOCK = 1 << 20


class DataError(UserError, RuntimeError):
    """Missing, corrupt or unreadable data; the message says which file and what to do."""


def _corrupt_gzip(path: Path, exc: Exception) -> DataError:
    return DataError(f"{path}: truncated or corrupt gzip ({exc}); delete it and fetch again")


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzipped (detected by magic, not by name)."""
    raw = Path(path).read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt_gzip(path, exc) from None


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


_FILE_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime, ctime, inode) -> sha256, this process only
_VERIFIED: dict[str, str] = {}  # sha256 of stored bytes -> sha256 of their content, this process only


def file_sha256(path: Path) -> str:
    """SHA256 of the file's stored bytes (not decompressed), computed once per file and process.

    `invoke upload` needs it twice (is the file verified? is S3's copy the same?); a file that
    was rewritten in between has a new mtime/ctime/size and is hashed again.
    """
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(BLOCK):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def _mismatch(name, actual: str, expected: str) -> DataError:
    return DataError(
        f"{name}: checksum mismatch (sha256 {actual[:12]}…, expected {expected[:12]}…); "
        "the file is corrupt or not this dataset: delete it and fetch again"
    )


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """The file's (decompressed) content, after checking it against the expected SHA256."""
    content = read_bytes(path)
    actual = sha256(content)
    if actual != expected_sha256:
        raise _mismatch(path, actual, expected_sha256)
    return content


def _content_sha256(path: Path) -> str:
    """SHA256 of the decompressed content, hashed block by block (the content is never held whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == GZIP_MAGIC
    try:
        with (gzip.open if gzipped else open)(path, "rb") as stream:
            while block := stream.read(BLOCK):
                digest.update(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt_gzip(path, exc) from None
    return digest.hexdigest()


def verify(path: Path, expected_sha256: str, memo_dir: Path | None = None, name=None) -> None:
    """Raise DataError unless the file's content has the expected SHA256.

    Stored bytes verified before (in this process, or recorded in `memo_dir`) are recognised by
    their hash alone, without decompressing; newly verified ones are recorded in `memo_dir`.
    """
    stored = file_sha256(path)
    if stored == expected_sha256:
        return  # not compressed: the stored bytes are the content
    memo = Path(memo_dir) / VERIFIED_DIR / stored if memo_dir is not None else None
    recorded = memo is not None and _read_memo(memo) == expected_sha256
    if not recorded and _VERIFIED.get(stored) != expected_sha256:
        actual = _content_sha256(path)
        if actual != expected_sha256:
            raise _mismatch(name or path, actual, expected_sha256)
    _VERIFIED[stored] = expected_sha256
    if memo is not None and not recorded:
        _write_memo(memo, expected_sha256)


def _read_memo(memo: Path) -> str | None:
    try:
        return memo.read_text().strip()
    except OSError:
        return None


def _write_memo(memo: Path, content_sha256: str) -> None:
    try:
        _write_atomically(lambda out: out.write(content_sha256.encode()), memo)
    except OSError:
        pass  # a read-only cache only means verifying again next time


def is_valid(path: Path, expected_sha256: str, memo_dir: Path | None = None) -> bool:
    if not path.is_file():
        return False
    try:
        verify(path, expected_sha256, memo_dir)
    except DataError:
        return False
    return True


def _write_atomically(fill: Callable, dest: Path, check: Callable[[Path], None] | None = None) -> None:
    """Write via a temp file in the same directory, check it, then rename: no bad final file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _download(url: str, out) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        show = sys.stderr.isatty()
        while chunk := response.read(BLOCK):
            out.write(chunk)
            done += len(chunk)
            if show and total:
                print(f"\r  {url.rsplit('/', 1)[-1]} {100 * done // total:3d}%", end="", file=sys.stderr)
        if show:
            print(file=sys.stderr)


def candidates(stem: str) -> list[str]:
    """The names a raw file may have: compressed first (fewer bytes to move)."""
    return [f"{stem}.gz", stem]


def _filler(source: str, name: str, s3_client=None) -> Callable[[BinaryIO], None]:
    """What writes the file `name` of `source` into an open file."""
    if source.startswith(("http://", "https://")):
        return functools.partial(_download, f"{source.rstrip('/')}/{name}")
    if source.startswith("s3://"):
        bucket, _, prefix = source[len("s3://") :].partition("/")
        key = f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name
        client = s3_client or _s3_client()
        return functools.partial(client.download_fileobj, bucket, key)
    path = Path(source).expanduser() / name
    if not path.is_file():
        raise FileNotFoundError(path)
    return functools.partial(_copy, path)


def _fetch_failures() -> tuple[type[BaseException], ...]:
    """What a missing or unreachable file raises; anything else is a bug and propagates.

    OSError covers urllib's URLError and HTTPError, timeouts and missing paths; ValueError a
    malformed URL; botocore's errors an s3:// source (botocore is loaded only by then).
    """
    failures: tuple[type[BaseException], ...] = (OSError, ValueError)
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        failures += (botocore.ClientError, botocore.BotoCoreError)
    return failures


def _fetch_one(source: str, stem: str, dest: Path, check: Callable[[Path], None], s3_client=None) -> None:
    errors = []
    for name in candidates(stem):
        try:
            _write_atomically(_filler(source, name, s3_client), dest, check)
            return
        except DataError:
            raise  # the file is there but wrong: trying another name would hide that
        except _fetch_failures() as exc:  # try the next candidate name, report all if none works
            errors.append(f"{name}: {exc}")
    raise DataError(f"cannot fetch {stem} from {source} ({'; '.join(errors)}); check dataset.source")


def _copy(path: Path, out) -> None:
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            out.write(block)


def _s3_client(endpoint_url: str | None = None):
    """A client made as the AWS tasks make theirs: aws.endpoint_url, else AWS_ENDPOINT_URL, else AWS."""
    from .aws.session import aws_clients  # boto3 is imported only now: this module stays stdlib-only

    return aws_clients(None, endpoint_url).s3


def fetch_raw(
    source: str,
    dest_dir: Path,
    files: dict[str, str],
    s3_client=None,
    remember: bool = True,
    endpoint_url: str | None = None,
) -> dict[str, Path]:
    """Make every raw file present and verified; return stem -> path.

    A local source directory holding valid files is used in place, without copying. Otherwise a
    file already in dest_dir with the right content is kept, and a missing or wrong one is
    fetched and verified before it takes its final name. A source file with the wrong content
    is an error, never trained on. `remember`: record verified files in dest_dir/.verified/
    (then dest_dir is written even when every file is used in place). An s3:// source is read
    with `s3_client`, else with a client for `endpoint_url` (aws.endpoint_url), made when needed.
    """
    dest_dir = Path(dest_dir)
    memo_dir = dest_dir if remember else None
    paths: dict[str, Path] = {}
    for stem, digest in files.items():
        if not source.startswith(REMOTE):
            local = Path(source).expanduser()
            in_place = next((local / n for n in candidates(stem) if is_valid(local / n, digest, memo_dir)), None)
            if in_place is not None:
                paths[stem] = in_place
                continue
        cached = next((dest_dir / n for n in candidates(stem) if is_valid(dest_dir / n, digest, memo_dir)), None)
        if cached is None:
            cached = dest_dir / f"{stem}.gz"
            cached.unlink(missing_ok=True)
            check = functools.partial(verify, expected_sha256=digest, memo_dir=memo_dir, name=f"{stem} from {source}")
            if s3_client is None and source.startswith("s3://"):
                s3_client = _s3_client(endpoint_url)
            _fetch_one(source, stem, cached, check, s3_client)
        paths[stem] = cached
    return paths
