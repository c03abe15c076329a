"""Fetching a dataset's raw files: where a channel's files are, and making each present and verified.

A channel is a local folder, an http(s) prefix or a place of a registered remote source (s3://,
see Source; resolve mirrors such a channel when its dataset lists no `files`). `fetch_verified`
brings the raw files from any of them into a cache directory and verifies each file's content
hash (the SHA256 of its decompressed bytes, as the dataset config lists it) with
project.training.raw, which verifies and reads; nothing unverified or half-written is ever left
under a final name. Standard library only: `invoke upload` needs this module, so it imports
neither torch nor numpy.
"""

from __future__ import annotations

import functools
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from project.core.atomic import replacing
from project.core.errors import UserError
from project.training.raw import BLOCK, Contents, DataError, Memo, VerifiedFile, checked, verify

HTTP = ("http://", "https://")


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
    mounted(mounts, uri): for a file system this machine mounts (fsx://, efs://): the folder of `uri`
    under its mount (paths.mounts, file-system id -> folder), read in place, never mirrored; a
    DataError saying how to mount it when it is not. None for an object store.
    """

    connect: Callable[[str | None], Any]
    download: Callable[[Any, str, BinaryIO], None]
    mirror: Callable[[Any, str, Path, Callable[[str], None]], object]
    failures: Callable[[], tuple[type[BaseException], ...]]
    setup_problem: Callable[[BaseException], UserError | None]
    mounted: Callable[[Mapping[str, str], str], Path] | None = None


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
        found = checked(folder / name, digest, memo, contents) if (folder / name).is_file() else None
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
        outcome = checked(path, digest, memo, contents)
        if isinstance(outcome, VerifiedFile):
            return outcome
        problems.append(outcome)
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
