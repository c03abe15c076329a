"""Files written so that no reader ever sees half of one: a temporary file beside it, then a rename.

os.replace within one folder is atomic: the final name holds the old content or the new, never a
part. Standard library only, so the torch-free side (raw.py and fetch.py for `invoke upload`, project.core.config's
compose cache) uses the same helper as the training code.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(dest: Path) -> Iterator[Path]:
    """A temporary path beside `dest` to write; on a clean exit it becomes `dest`, on an error it is removed.

    The name is unique to this writer (process id and random suffix), so ranks or processes that
    write the same file at once never write into each other's temporary file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(dest: Path, content: str | bytes) -> None:
    with replacing(dest) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
