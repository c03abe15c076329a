"""Raw dataset files: verify them, read them. Standard library only.

`resolve` is the one place a run's data is decided: each channel's folder and, for a dataset that
lists `files`, each verified file (a `Resolved`). `invoke local`, `invoke upload` and the local
sweep call it once; the training child is handed its result (project/training/local.py) and the DataModule
reads through it, so nothing downstream resolves or verifies again. Where the files come from, and
bringing missing ones into the cache, is project/training/fetch.py's (`fetch_verified`, `Source`):
it verifies what it brings with this module.

Verifying means decompressing, which costs far more than hashing the file as stored. So a
verified file carries the SHA256 of its stored bytes (`VerifiedFile.stored_sha256`), and
(`remember=True`, what `invoke upload` and `invoke local`'s check use) is recorded by it in
`<cache>/.verified/`: a later check, in any process, hashes the file and finds it there, and any
change to its bytes makes it a stranger again. Reading a verified file (`Resolved.read`) hashes the
bytes it read: the bytes verified are used as they are, any other bytes are checked in full.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from project.core.atomic import write_atomically
from project.core.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
VERIFIED_DIR = ".verified"  # in the cache dir: one file per verified file, named by its stored bytes' sha256
BLOCK = 1 << 20


class DataError(UserError, RuntimeError):
    """Missing, corrupt or unreadable data; the message says which file and what to do."""


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
    return path.is_file() and not isinstance(checked(path, expected_sha256, memo), DataError)


def checked(path: Path, digest: str, memo: Memo | None, contents: Contents | None = None) -> VerifiedFile | DataError:
    """The file verified, or why it fails verification (naming it)."""
    try:
        return VerifiedFile(path, digest, verify(path, digest, memo, contents=contents))
    except DataError as problem:
        return problem
