"""Raw dataset files: fetch them, verify them, read them. Standard library only.

`fetch_raw` brings the raw files from an http(s) prefix, a local directory or a registered remote
source (s3://, see Source) into a cache directory and verifies each file's content hash (the
SHA256 of its decompressed bytes, as the dataset config lists it); nothing unverified or
half-written is ever left under a final name. `invoke upload` needs only this module, so it
imports neither torch nor numpy.

Verifying means decompressing, which costs far more than hashing the file as stored. So a
verified file is remembered by the SHA256 of its stored bytes, for the rest of the process and
(`remember=True`, what `invoke upload` and `invoke local`'s check use) in `<cache>/.verified/`: a
later check, in any process, hashes the file and finds it there, and any change to its bytes makes
it a stranger again. The training process reads that record but never writes it, and a file it
has to verify itself is decompressed once: the content is kept for `read_verified` to take.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import sys
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .atomic import replacing, write_atomically
from .errors import UserError

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
    """Where verified files are recorded (`<folder>/.verified/`), and what a verification leaves.

    record: write newly verified files there (the training process does not: in a SageMaker job
    its cache must stay empty). keep: hold a newly verified file's content until read_verified
    takes it (a process that verifies in order to read decompresses once, not twice).
    """

    folder: Path
    record: bool = True
    keep: bool = False

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


_FILE_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime, ctime, inode) -> sha256, this process only
_VERIFIED: dict[str, str] = {}  # sha256 of stored bytes -> sha256 of their content, this process only
_KEPT: dict[str, bytes] = {}  # sha256 of stored bytes -> their content (verified, warmed), until read_verified takes it
_WARMING: list[threading.Thread] = []  # warm()'s threads, joined before _KEPT is read


def warm(paths: Iterable[Path]) -> None:
    """Read and decompress these .gz files on a thread, for read_verified to take later.

    For a process that spends seconds importing before it reads its data (`invoke local`'s
    training child): zlib and hashlib release the GIL, so on a second core the content is ready by
    then. It is kept by the SHA256 of the bytes decompressed and used only once this process has
    verified those bytes, so nothing is trusted because it was warmed. A file that cannot be read
    or decompressed is skipped: the normal path meets it and says what is wrong.
    """

    def work(todo: list[Path]) -> None:
        for path in todo:
            try:
                raw = Path(path).read_bytes()
                if raw[:2] == GZIP_MAGIC:
                    _KEPT.setdefault(sha256(raw), gzip.decompress(raw))
            except (OSError, EOFError, zlib.error):
                continue

    thread = threading.Thread(target=work, args=(list(paths),), name="warm-data", daemon=True)
    thread.start()
    _WARMING.append(thread)


def compressed_files(cfg: Any, folders: Mapping[str, Path]) -> list[Path]:
    """The train channel's gzipped raw files (dataset.files) in its checked folder (channel_folders):
    what the training process will decompress, for warm(); empty for a dataset without `files`."""
    if not cfg.dataset.get("files"):
        return []
    stored = [Path(folders["train"]) / f"{stem}.gz" for stem in cfg.dataset.files]
    return [path for path in stored if path.is_file()]


def _settle() -> None:
    """Wait for warm()'s threads: what they kept is complete."""
    while _WARMING:
        _WARMING.pop().join()


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


def _mismatch(name: object, actual: str, expected: str) -> DataError:
    return DataError(
        f"{name}: SHA256 check failed (content sha256 {actual[:12]}…, dataset.files expects {expected[:12]}…): "
        f"the file is corrupt or from another dataset; {_REPLACE}, or fix dataset.files if the dataset changed"
    )


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """The file's (decompressed) content, after checking it against the expected SHA256.

    The SHA256 is the content's, or (as some datasets publish it) that of the stored .gz file. The
    bytes read are checked, not the file's name: when they are stored bytes this process already
    verified (fetch_raw, just before), their hash (~5x less to hash than MNIST's decompressed
    content) stands for the content's; otherwise the content is hashed.
    """
    _settle()
    raw = Path(path).read_bytes()
    if raw[:2] == GZIP_MAGIC and _VERIFIED.get(stored := sha256(raw)) == expected_sha256:
        kept = _KEPT.pop(stored, None)
        return kept if kept is not None else _decompress(raw, path)
    content = _decompress(raw, path) if raw[:2] == GZIP_MAGIC else raw
    actual = sha256(content)
    if actual != expected_sha256 and sha256(raw) != expected_sha256:
        raise _mismatch(path, actual, expected_sha256)
    return content


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


def verify(path: Path, expected_sha256: str, memo: Memo | None = None, name: object = None) -> None:
    """Raise DataError unless the file's content has the expected SHA256.

    Stored bytes verified before (in this process, or recorded in the memo) are recognised by
    their hash alone, without decompressing; newly verified ones are added to the memo.
    """
    stored = file_sha256(path)
    if stored == expected_sha256:
        return  # not compressed: the stored bytes are the content
    recorded = memo is not None and memo.lookup(stored) == expected_sha256
    if not recorded and _VERIFIED.get(stored) != expected_sha256:
        if memo is not None and memo.keep:
            raw = Path(path).read_bytes()
            stored, content = sha256(raw), _decompress(raw, name or path) if raw[:2] == GZIP_MAGIC else raw
            actual = sha256(content)
        else:
            actual = _content_sha256(path, name)
        if actual != expected_sha256:
            raise _mismatch(name or path, actual, expected_sha256)
        if memo is not None and memo.keep:
            _KEPT[stored] = content  # the bytes just hashed, whatever the file holds by now
    _VERIFIED[stored] = expected_sha256
    if memo is not None and not recorded:
        memo.add(stored, expected_sha256)


def is_valid(path: Path, expected_sha256: str, memo: Memo | None = None) -> bool:
    return path.is_file() and _problem(path, expected_sha256, memo) is None


def _problem(path: Path, expected_sha256: str, memo: Memo | None) -> DataError | None:
    """Why the file fails verification (naming it), or None when it passes."""
    try:
        verify(path, expected_sha256, memo)
    except DataError as problem:
        return problem
    return None


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


def _fetch_one(source: str, stem: str, dest: Path, digest: str, memo: Memo | None, client: Any = None) -> None:
    """Download one file of a remote source to dest, verified (errors name the remote file) first."""
    errors, offline = [], False
    for name in candidates(stem):
        origin = f"{source.rstrip('/')}/{name}"
        check = functools.partial(verify, expected_sha256=digest, memo=memo, name=origin)
        try:
            with replacing(dest) as tmp:  # verified before it takes its final name
                with tmp.open("wb") as out:
                    _filler(source, name, client)(out)
                check(tmp)
            return
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


def _verified_copy(folder: Path, stem: str, digest: str, memo: Memo | None) -> Path | None:
    """The file of `stem` in `folder` that passes verification, if any."""
    return next((folder / n for n in candidates(stem) if is_valid(folder / n, digest, memo)), None)


def _local_file(folder: Path, stem: str, digest: str, dest_dir: Path, memo: Memo | None) -> Path:
    """The verified copy of one file of a local source folder: the folder's own, else the cache's.

    A damaged file in the folder is never trained on: with a verified copy in the cache that one
    serves (and a warning names the damaged file), without one the error names the damaged file
    and the check it failed.
    """
    found = [folder / name for name in candidates(stem) if (folder / name).is_file()]
    problems = []
    for path in found:
        problem = _problem(path, digest, memo)
        if problem is None:
            return path
        problems.append(problem)
    cached = _verified_copy(dest_dir, stem, digest, memo)
    if problems and cached is not None:
        print(f"warning: {problems[0]}; using the verified copy {cached}", file=sys.stderr, flush=True)
    if cached is not None:
        return cached
    if problems:
        raise problems[0]
    raise DataError(
        f"dataset.channels.train {folder} has no {stem}.gz or {stem}: copy the file there or fix dataset.channels.train"
    )


def fetch_raw(
    source: str,
    dest_dir: Path,
    files: dict[str, str],
    client: Any = None,
    remember: bool = True,
    endpoint_url: str | None = None,
    keep: bool = False,
) -> dict[str, Path]:
    """Make every raw file present and verified; return stem -> path.

    A local source directory holding valid files is used in place, without copying. Otherwise a
    file already in dest_dir with the right content is kept, and a missing or wrong one is
    fetched and verified before it takes its final name. A source file with the wrong content
    is an error, never trained on. `remember`: record verified files in dest_dir/.verified/
    (then dest_dir is written even when every file is used in place); what is recorded there is
    used either way. `keep`: the caller reads the files next (read_verified), so content
    decompressed to verify it is kept for that read. A registered source (s3://) is read with
    `client`, else with one its Source connects to `endpoint_url` (aws.endpoint_url) when needed.
    """
    dest_dir = Path(dest_dir)
    memo = Memo(dest_dir, record=remember, keep=keep)
    local = None if _remote(source) else Path(source).expanduser()
    if local is not None and not local.is_dir():
        kind = "is a file, not a folder" if local.exists() else "does not exist"
        raise DataError(
            f"dataset.channels.train {source} {kind}: point it at the folder holding {_listing(files)} "
            "(e.g. dataset.channels.train=../shared/data/mnist), or at an https:// or s3:// prefix"
        )
    paths: dict[str, Path] = {}
    for stem, digest in files.items():
        if local is not None:
            paths[stem] = _local_file(local, stem, digest, dest_dir, memo)
            continue
        cached = _verified_copy(dest_dir, stem, digest, memo)
        if cached is None:
            cached = dest_dir / f"{stem}.gz"
            cached.unlink(missing_ok=True)
            if client is None and not source.startswith(HTTP):
                client = source_for(source).connect(endpoint_url)
            _fetch_one(source, stem, cached, digest, memo, client)
        paths[stem] = cached
    return paths


def fetch_dataset(
    cfg: Any, source: str | None = None, remember: bool = True, client: Any = None, keep: bool = False
) -> dict[str, Path]:
    """The train channel's raw files (dataset.files), present and verified: fetch_raw with the config's places.

    `source`: where the files are instead of dataset.channels.train (a SageMaker job's channel).
    """
    d = cfg.dataset
    return fetch_raw(
        source or d.channels.train,
        dataset_cache_dir(cfg),
        dict(d.files),
        client=client,
        remember=remember,
        endpoint_url=cfg.aws.endpoint_url,
        keep=keep,
    )


def channel_folders(
    cfg: Any, sources: Mapping[str, Path] | None = None, remember: bool = True, client: Any = None, keep: bool = False
) -> dict[str, Path]:
    """Each declared channel's local folder, checked: what the DataModule is given (project.modules).

    `sources`: the channels' folders instead of dataset.channels (a SageMaker job's SM_CHANNEL_*).
    The train channel of a dataset that lists `files` is fetched (when remote) and verified, as
    MNIST's is; any other channel at a registered source (s3://) is mirrored into
    paths.data_dir/<name>/<channel>/; every other channel must be a folder that exists and holds
    something. Every run resolves its data through here before anything else is built or written.
    `keep`: the caller trains on the files next (fetch_raw).
    """
    d = cfg.dataset
    folders: dict[str, Path] = {}
    for channel, declared in d.channels.items():
        where = str(sources[channel]) if sources and channel in sources else str(declared)
        if channel == "train" and d.get("files"):
            paths = fetch_dataset(cfg, where, remember=remember, client=client, keep=keep)
            folders[channel] = _one_folder(paths, dataset_cache_dir(cfg))
        elif where.startswith(HTTP):
            raise DataError(
                f"dataset.channels.{channel}={where}: only a dataset that lists its files (dataset.files) is "
                f"fetched from an http(s) source; download the data and point dataset.channels.{channel} at its "
                "folder, or upload it and give its s3:// prefix"
            )
        elif scheme(where) is not None:
            folders[channel] = _mirrored(cfg, channel, where, client)
        else:
            folders[channel] = _checked_folder(Path(where).expanduser(), channel)
    return folders


def _mirrored(cfg: Any, channel: str, uri: str, client: Any = None) -> Path:
    """A remote channel without `files`: every object under it, copied (incrementally) into
    paths.data_dir/<name>/<channel>/, which the DataModule reads as it reads a local folder."""
    source = source_for(uri)
    folder = dataset_cache_dir(cfg) / channel
    echo: Callable[[str], None] = functools.partial(print, flush=True)
    source.mirror(client if client is not None else source.connect(cfg.aws.endpoint_url), uri, folder, echo)
    return folder


def _checked_folder(folder: Path, channel: str) -> Path:
    if not folder.is_dir():
        kind = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(
            f"dataset.channels.{channel}={folder} {kind}: point it at the folder holding the {channel} data"
        )
    if not any(folder.iterdir()):
        raise DataError(f"dataset.channels.{channel}={folder} is empty: put the {channel} data there or fix the path")
    return folder


def _one_folder(paths: Mapping[str, Path], cache: Path) -> Path:
    """The one folder holding every verified file: their common folder, else the cache with all of them.

    A damaged file of a source folder is served by its verified copy in the cache; then the good
    files of the folder join it there, so the DataModule reads one folder.
    """
    parents = {Path(p).parent for p in paths.values()}
    if len(parents) == 1:
        return parents.pop()
    for path in paths.values():
        if Path(path).parent != cache:
            with replacing(cache / Path(path).name) as tmp:
                shutil.copyfile(path, tmp)
    return cache


def dataset_cache_dir(cfg: Any) -> Path:
    """Where a run keeps the dataset's downloaded files and verification records."""
    return Path(cfg.paths.data_dir) / cfg.dataset.name
