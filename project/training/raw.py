# Over 300 lines: the scheme registry and the fetching half (download, mirror) are the next split (#27 §6).
"""Raw dataset files: fetch them, verify them, read them. Standard library only.

`resolve` is the one place a run's data is decided: each channel's folder and, for a dataset that
lists `files`, each verified file (a `Resolved`). `invoke local`, `invoke upload` and the local
sweep call it once; the training child is handed its result (project/training/local.py) and the DataModule
reads through it, so nothing downstream resolves or verifies again.

`fetch_raw` brings the raw files from an http(s) prefix, a local directory or a registered remote
source (s3://, see Source) into a cache directory and verifies each file's content hash (the
SHA256 of its decompressed bytes, as the dataset config lists it); nothing unverified or
half-written is ever left under a final name. `invoke upload` needs only this module, so it
imports neither torch nor numpy.

Verifying means decompressing, which costs far more than hashing the file as stored. So a
verified file carries the SHA256 of its stored bytes (`VerifiedFile.stored_sha256`), and
(`remember=True`, what `invoke upload` and `invoke local`'s check use) is recorded by it in
`<cache>/.verified/`: a later check, in any process, hashes the file and finds it there, and any
change to its bytes makes it a stranger again. Reading a verified file (`Resolved.read`) hashes the
bytes it read: the bytes verified are used as they are, any other bytes are checked in full.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import sys
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from project.core.atomic import replacing, write_atomically
from project.core.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
VERIFIED_DIR = ".verified"  # in the cache dir: one file per verified file, named by its stored bytes' sha256
HTTP = ("http://", "https://")
BLOCK = 1 << 20


class DataError(UserError, RuntimeError):
    """Missing, corrupt or unreadable data; the message says which file and what to do."""


@dataclass(frozen=True)
class Source:
    """A remote channel's place, as a platform reads it: what the training storey needs of `s3://`
    without importing the AWS storey (project/aws/source.py registers it, in the processes that
    read S3: the tasks' and the sweeps', never a job's container, whose channels are folders).

    connect(endpoint_url): the client every other call is given (made once per fetch).
    download(client, uri, out): write the object at `uri` into an open file.
    mirror(client, uri, folder, echo): copy every object under the prefix `uri` into `folder`.
    failures(): what a missing or unreachable object raises (next name, then one line listing them).
    setup_problem(exc): such a failure as one line when it is the same for every object (no
    credentials, no region), else None.
    """

    connect: Callable[[str | None], Any]
    download: Callable[[Any, str, BinaryIO], None]
    mirror: Callable[[Any, str, Path, Callable[[str], None]], object]
    failures: Callable[[], tuple[type[BaseException], ...]]
    setup_problem: Callable[[BaseException], UserError | None]


SOURCES: dict[str, Source] = {}  # URI scheme ("s3") -> its Source, as registered


def register_source(scheme: str, source: Source) -> None:
    SOURCES[scheme] = source


def scheme(where: str) -> str | None:
    """The registrable scheme of a place (`s3` of s3://...); None for a folder or an http(s) URL."""
    name, sep, _ = where.partition("://")
    return name if sep and name.isidentifier() and not where.startswith(HTTP) else None


def source_for(where: str) -> Source:
    """The registered Source of a remote place; a DataError naming the channel's value otherwise."""
    name = scheme(where)
    found = SOURCES.get(name) if name else None
    if found is None:
        raise DataError(
            f"{where}: this process reads folders and http(s) only, not {name}://: train with `invoke local`, "
            "which fetches it first, or point the channel at a folder holding the data"
        )
    return found


def _remote(where: str) -> bool:
    return where.startswith(HTTP) or scheme(where) is not None


@dataclass(frozen=True)
class Memo:
    """Where verified files are recorded (`<folder>/.verified/`).

    record: write newly verified files there (the training process does not: in a SageMaker job
    its cache must stay empty).
    """

    folder: Path
    record: bool = True

    def lookup(self, stored_sha256: str) -> str | None:
        try:
            return (self.folder / VERIFIED_DIR / stored_sha256).read_text().strip()
        except OSError:
            return None

    def add(self, stored_sha256: str, content_sha256: str) -> None:
        if not self.record:
            return
        try:
            write_atomically(self.folder / VERIFIED_DIR / stored_sha256, content_sha256)
        except OSError:
            pass  # a read-only cache only means verifying again next time


@dataclass(frozen=True)
class VerifiedFile:
    """A raw file verified against dataset.files: where it is, its content's SHA256 (the expected
    one) and the SHA256 of the stored bytes that were verified, which stands for the content's
    as long as the file holds those bytes."""

    path: Path
    sha256: str
    stored_sha256: str


class Contents:
    """Decompressed content of verified bytes, by the SHA256 of those stored bytes, until read.

    A process that verifies in order to read (the training process without a check before it)
    keeps what it decompressed to verify, so a file is decompressed once. `warm` fills it on a
    thread from files verified elsewhere (`invoke local`'s check), while the process imports.
    Only content of bytes whose hash is the verified one is ever kept: nothing is trusted because
    it was warmed. One per Resolved, passed along with it: no state of the module.
    """

    def __init__(self) -> None:
        self._kept: dict[str, bytes] = {}
        self._warming: list[threading.Thread] = []

    def keep(self, stored_sha256: str, content: bytes) -> None:
        self._kept[stored_sha256] = content

    def take(self, stored_sha256: str) -> bytes | None:
        """The content kept for these stored bytes (once: it is let go), after warm's threads finished."""
        while self._warming:
            self._warming.pop().join()
        return self._kept.pop(stored_sha256, None)

    def warm(self, files: Iterable[VerifiedFile]) -> None:
        """Read, hash and decompress these files on a thread, for `read` to take later.

        For a process that spends seconds importing before it reads its data (`invoke local`'s
        training child): zlib and hashlib release the GIL, so on a second core the content is
        ready by then. A file whose bytes are no longer the verified ones, or that cannot be read
        or decompressed, is skipped: `read` meets it and says what is wrong.
        """

        def work(todo: list[VerifiedFile]) -> None:
            for file in todo:
                try:
                    raw = Path(file.path).read_bytes()
                    if raw[:2] == GZIP_MAGIC and sha256(raw) == file.stored_sha256:
                        self._kept.setdefault(file.stored_sha256, gzip.decompress(raw))
                except (OSError, EOFError, zlib.error):
                    continue

        thread = threading.Thread(target=work, args=(list(files),), name="warm-data", daemon=True)
        thread.start()
        self._warming.append(thread)


def _gzip_check(exc: BaseException) -> str:
    """Which of gzip's checks failed, in words."""
    text = str(exc)
    if isinstance(exc, EOFError):
        return "gzip stream check failed: the file is truncated (it ends before gzip's end marker)"
    if "CRC" in text:
        return "gzip CRC check failed: the bytes changed after compression"
    if "length" in text.lower():
        return "gzip size check failed: the data's length differs from the one in its trailer"
    return f"gzip stream check failed: not a valid gzip stream ({text})"


def _corrupt_gzip(origin: object, exc: BaseException) -> DataError:
    """`origin` names the user's file (a path, URL or S3 key), never a temporary copy of it."""
    return DataError(f"{origin}: {_gzip_check(exc)}; the file is damaged: {_REPLACE}")


_REPLACE = "replace it with a good copy (download it again), or point dataset.channels.train at a good one"


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzipped (detected by magic, not by name)."""
    raw = Path(path).read_bytes()
    return _decompress(raw, path) if raw[:2] == GZIP_MAGIC else raw


def _decompress(raw: bytes, path: object) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt_gzip(path, exc) from None


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA256 of the file's stored bytes (not decompressed), read block by block."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _mismatch(name: object, actual: str, expected: str) -> DataError:
    return DataError(
        f"{name}: SHA256 check failed (content sha256 {actual[:12]}…, dataset.files expects {expected[:12]}…): "
        f"the file is corrupt or from another dataset; {_REPLACE}, or fix dataset.files if the dataset changed"
    )


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """The file's (decompressed) content, after checking it against the expected SHA256.

    The SHA256 is the content's, or (as some datasets publish it) that of the stored .gz file.
    """
    raw = Path(path).read_bytes()
    content = _decompress(raw, path) if raw[:2] == GZIP_MAGIC else raw
    actual = sha256(content)
    if actual != expected_sha256 and sha256(raw) != expected_sha256:
        raise _mismatch(path, actual, expected_sha256)
    return content


def read(file: VerifiedFile, contents: Contents | None = None) -> bytes:
    """A verified file's (decompressed) content: the bytes read are checked, not the file's name.

    Content kept for the verified bytes (by `verify` or `Contents.warm`, which hashed the bytes they
    decompressed) is taken as it is; otherwise the file is read and its bytes hashed: when they are
    the ones verified, that hash (~5x less to hash than MNIST's decompressed content) stands for
    the content's; bytes changed since are checked in full against dataset.files.
    """
    kept = contents.take(file.stored_sha256) if contents is not None else None
    if kept is not None:
        return kept
    raw = Path(file.path).read_bytes()
    if sha256(raw) == file.stored_sha256:
        return _decompress(raw, file.path) if raw[:2] == GZIP_MAGIC else raw
    return read_verified(file.path, file.sha256)


def _content_sha256(path: Path, origin: object = None) -> str:
    """SHA256 of the decompressed content, hashed block by block (the content is never held whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == GZIP_MAGIC
    try:
        with (gzip.open if gzipped else open)(path, "rb") as stream:
            while block := stream.read(BLOCK):
                digest.update(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt_gzip(origin or path, exc) from None
    return digest.hexdigest()


def verify(
    path: Path, expected_sha256: str, memo: Memo | None = None, name: object = None, contents: Contents | None = None
) -> str:
    """Raise DataError unless the file's content has the expected SHA256; return its stored bytes' SHA256.

    Stored bytes recorded in the memo are recognised by their hash alone, without decompressing;
    newly verified ones are added to it. `contents`: the caller reads the file next, so the
    content decompressed to verify it is kept there (one decompression for both).
    """
    raw = Path(path).read_bytes() if contents is not None else None
    stored = sha256(raw) if raw is not None else file_sha256(path)
    if stored == expected_sha256:
        return stored  # not compressed: the stored bytes are the content
    if memo is not None and memo.lookup(stored) == expected_sha256:
        return stored
    if raw is not None:
        content = _decompress(raw, name or path) if raw[:2] == GZIP_MAGIC else raw
        actual = sha256(content)
    else:
        actual = _content_sha256(path, name)
    if actual != expected_sha256:
        raise _mismatch(name or path, actual, expected_sha256)
    if contents is not None and raw is not None:
        contents.keep(stored, content)  # the bytes just hashed, whatever the file holds by now
    if memo is not None:
        memo.add(stored, expected_sha256)
    return stored


def is_valid(path: Path, expected_sha256: str, memo: Memo | None = None) -> bool:
    return path.is_file() and not isinstance(_checked(path, expected_sha256, memo), DataError)


def _checked(path: Path, digest: str, memo: Memo | None, contents: Contents | None = None) -> VerifiedFile | DataError:
    """The file verified, or why it fails verification (naming it)."""
    try:
        return VerifiedFile(path, digest, verify(path, digest, memo, contents=contents))
    except DataError as problem:
        return problem


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


def _filler(source: str, name: str, client: Any = None) -> Callable[[BinaryIO], None]:
    """What writes the file `name` of `source` into an open file."""
    uri = f"{source.rstrip('/')}/{name}"
    if source.startswith(HTTP):
        return functools.partial(_download, uri)
    return functools.partial(source_for(source).download, client, uri)


def _fetch_failures(source: str) -> tuple[type[BaseException], ...]:
    """What a missing or unreachable file raises; anything else is a bug and propagates.

    OSError covers urllib's URLError and HTTPError, timeouts and missing paths; ValueError a
    malformed URL; a registered source names its own.
    """
    failures: tuple[type[BaseException], ...] = (OSError, ValueError)
    return failures if source.startswith(HTTP) else failures + source_for(source).failures()


def _fetch_one(
    source: str,
    stem: str,
    dest: Path,
    digest: str,
    memo: Memo | None,
    client: Any = None,
    contents: Contents | None = None,
) -> VerifiedFile:
    """Download one file of a remote source to dest, verified (errors name the remote file) first."""
    errors, offline = [], False
    for name in candidates(stem):
        origin = f"{source.rstrip('/')}/{name}"
        check = functools.partial(verify, expected_sha256=digest, memo=memo, name=origin, contents=contents)
        try:
            with replacing(dest) as tmp:  # verified before it takes its final name
                with tmp.open("wb") as out:
                    _filler(source, name, client)(out)
                stored = check(tmp)
            return VerifiedFile(dest, digest, stored)
        except DataError:
            raise  # the file is there but wrong: trying another name would hide that
        except _fetch_failures(source) as exc:  # try the next candidate name, report all if none works
            setup = None if source.startswith(HTTP) else source_for(source).setup_problem(exc)
            if setup is not None:
                raise setup from None  # no credentials, no region, no endpoint: the same for every name
            offline = offline or _unreachable(exc)
            errors.append(f"{name}: {exc}")
    advice = (
        "no network? To train from a local copy, point dataset.channels.train at the folder holding the files "
        "(e.g. dataset.channels.train=../shared/data/mnist)"
        if offline
        else "check dataset.channels.train"
    )
    raise DataError(f"cannot fetch {stem} from {source} ({'; '.join(errors)}); {advice}")


def _unreachable(exc: BaseException) -> bool:
    """A network failure (no route, DNS, refused, timeout), not an answer such as HTTP 404."""
    if isinstance(exc, urllib.error.HTTPError):
        return False
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError))


def _listing(files: dict[str, str]) -> str:
    return ", ".join(f"{stem}(.gz)" for stem in files)


def _verified_copy(
    folder: Path, stem: str, digest: str, memo: Memo | None, contents: Contents | None = None
) -> VerifiedFile | None:
    """The file of `stem` in `folder` that passes verification, if any."""
    for name in candidates(stem):
        found = _checked(folder / name, digest, memo, contents) if (folder / name).is_file() else None
        if isinstance(found, VerifiedFile):
            return found
    return None


def _local_file(
    folder: Path, stem: str, digest: str, dest_dir: Path, memo: Memo | None, contents: Contents | None
) -> VerifiedFile:
    """The verified copy of one file of a local source folder: the folder's own, else the cache's.

    A damaged file in the folder is never trained on: with a verified copy in the cache that one
    serves (and a warning names the damaged file), without one the error names the damaged file
    and the check it failed.
    """
    found = [folder / name for name in candidates(stem) if (folder / name).is_file()]
    problems = []
    for path in found:
        checked = _checked(path, digest, memo, contents)
        if isinstance(checked, VerifiedFile):
            return checked
        problems.append(checked)
    cached = _verified_copy(dest_dir, stem, digest, memo, contents)
    if problems and cached is not None:
        print(f"warning: {problems[0]}; using the verified copy {cached.path}", file=sys.stderr, flush=True)
    if cached is not None:
        return cached
    if problems:
        raise problems[0]
    raise DataError(
        f"dataset.channels.train {folder} has no {stem}.gz or {stem}: copy the file there or fix dataset.channels.train"
    )


def fetch_verified(
    source: str,
    dest_dir: Path,
    files: Mapping[str, str],
    client: Any = None,
    remember: bool = True,
    endpoint_url: str | None = None,
    contents: Contents | None = None,
) -> dict[str, VerifiedFile]:
    """Make every raw file present and verified; return stem -> the file as verified.

    A local source directory holding valid files is used in place, without copying. Otherwise a
    file already in dest_dir with the right content is kept, and a missing or wrong one is
    fetched and verified before it takes its final name. A source file with the wrong content
    is an error, never trained on. `remember`: record verified files in dest_dir/.verified/
    (then dest_dir is written even when every file is used in place); what is recorded there is
    used either way. `contents`: the caller reads the files next (`read`), so content
    decompressed to verify it is kept there. A registered source (s3://) is read with `client`,
    else with one its Source connects to `endpoint_url` (aws.endpoint_url) when needed.
    """
    dest_dir = Path(dest_dir)
    memo = Memo(dest_dir, record=remember)
    local = None if _remote(source) else Path(source).expanduser()
    if local is not None and not local.is_dir():
        kind = "is a file, not a folder" if local.exists() else "does not exist"
        raise DataError(
            f"dataset.channels.train {source} {kind}: point it at the folder holding {_listing(dict(files))} "
            "(e.g. dataset.channels.train=../shared/data/mnist), or at an https:// or s3:// prefix"
        )
    verified: dict[str, VerifiedFile] = {}
    for stem, digest in files.items():
        if local is not None:
            verified[stem] = _local_file(local, stem, digest, dest_dir, memo, contents)
            continue
        cached = _verified_copy(dest_dir, stem, digest, memo, contents)
        if cached is None:
            dest = dest_dir / f"{stem}.gz"
            dest.unlink(missing_ok=True)
            if client is None and not source.startswith(HTTP):
                client = source_for(source).connect(endpoint_url)
            cached = _fetch_one(source, stem, dest, digest, memo, client, contents)
        verified[stem] = cached
    return verified


def fetch_raw(
    source: str,
    dest_dir: Path,
    files: Mapping[str, str],
    client: Any = None,
    remember: bool = True,
    endpoint_url: str | None = None,
) -> dict[str, Path]:
    """fetch_verified's files by stem, as paths: what a caller that only needs them present uses."""
    verified = fetch_verified(source, dest_dir, files, client, remember, endpoint_url)
    return {stem: file.path for stem, file in verified.items()}
