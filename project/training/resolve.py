"""Where a run's data is: decided once per process tree, then passed along (a `Resolved`).

`resolve` gives each declared channel's folder and, for a dataset that lists `files`, the train
channel's files as fetched and verified (project.training.fetch, project.training.raw). The
process that decides is the first that needs the data: `invoke local`'s check (its training child
is handed the result on the go word, project/training/local.py), the local sweep (each job's),
`invoke upload`, or the training process itself when nothing decided before it (a SageMaker job,
`python -m project.training.train`). The DataModule is given the result (project.training.modules
injects it as `resolved`) and reads the files through it, so nothing downstream resolves or
verifies again; what it reads is still checked by the hash of the bytes read (raw.read).
Standard library only: `invoke upload` and `invoke local`'s check use it.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from project.core.atomic import replacing
from project.training.fetch import HTTP, fetch_verified, scheme, source_for
from project.training.pipe import check_input_modes, is_piped, reader_dir
from project.training.raw import Contents, DataError, VerifiedFile, read


@dataclass
class Resolved:
    """Each channel's folder, the train channel's verified files (dataset.files; none for a dataset
    without them), and the content kept for reading them (one per process: not sent along)."""

    folders: dict[str, Path]
    files: dict[str, VerifiedFile] = field(default_factory=dict)
    contents: Contents = field(default_factory=Contents, compare=False, repr=False)

    def read(self, stem: str) -> bytes:
        """The verified content of the file of `stem` (raw.read: the bytes read are checked)."""
        return read(self.files[stem], self.contents)

    def warm(self) -> None:
        """Decompress the verified files on a thread while this process does something else (imports)."""
        self.contents.warm(self.files.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "folders": {name: str(path) for name, path in self.folders.items()},
            "files": {stem: [str(f.path), f.sha256, f.stored_sha256] for stem, f in self.files.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Resolved:
        """What to_json wrote; a ValueError for anything else (a word cut short or garbled)."""
        try:
            folders = {str(name): Path(path) for name, path in data["folders"].items()}
            files = {str(stem): VerifiedFile(Path(p), str(s), str(st)) for stem, (p, s, st) in data["files"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a resolved data record: {exc}") from None
        return cls(folders, files)


def resolve(
    cfg: Any, sources: Mapping[str, Path] | None = None, remember: bool = True, client: Any = None, keep: bool = False
) -> Resolved:
    """Each declared channel's local folder, checked, and the train channel's verified files.

    `sources`: the channels' folders instead of dataset.channels (a SageMaker job's SM_CHANNEL_*).
    The train channel of a dataset that lists `files` is fetched (when remote) and verified, as
    MNIST's is; any other channel at a registered source (s3://) is mirrored into
    paths.data_dir/<name>/<channel>/; a file system's (fsx://, efs://) is read where this machine
    mounts it (paths.mounts); every other channel must be a folder that exists and holds something.
    Every run resolves its data through here before anything else is built or written.
    `remember`: record verified files in the cache (fetch.fetch_verified). `keep`: this process
    trains on the files next, so content decompressed to verify it is kept for the read.
    """
    d = cfg.dataset
    check_input_modes(d)  # Pipe on a dataset of a few files: one line before anything is read
    resolved = Resolved({})
    for channel, declared in d.channels.items():
        where = str(sources[channel]) if sources and channel in sources else str(declared)
        # A job's Pipe channel: its FIFOs, read once per epoch (this rank's copies where the launcher relays them)
        if sources and channel in sources and is_piped(piped := reader_dir(Path(where))):
            resolved.folders[channel] = piped
            continue
        where = _mounted(cfg, where)
        if channel == "train" and d.get("files"):
            files = fetch_verified(
                where,
                dataset_cache_dir(cfg),
                dict(d.files),
                client=client,
                remember=remember,
                endpoint_url=cfg.aws.endpoint_url,
                contents=resolved.contents if keep else None,
            )
            resolved.folders[channel], resolved.files = _one_folder(files, dataset_cache_dir(cfg))
        elif where.startswith(HTTP):
            raise DataError(
                f"dataset.channels.{channel}={where}: only a dataset that lists its files (dataset.files) is "
                f"fetched from an http(s) source; download the data and point dataset.channels.{channel} at its "
                "folder, or upload it and give its s3:// prefix"
            )
        elif scheme(where) is not None:
            resolved.folders[channel] = _mirrored(cfg, channel, where, client)
        else:
            resolved.folders[channel] = _checked_folder(Path(where).expanduser(), channel)
    return resolved


def _mounted(cfg: Any, where: str) -> str:
    """A mounted file system's place (fsx://, efs://) as the folder this machine reads; else `where`."""
    if scheme(where) is None:
        return where
    mounted = source_for(where).mounted
    return where if mounted is None else str(mounted(cfg.paths.get("mounts") or {}, where))


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


def _one_folder(files: Mapping[str, VerifiedFile], cache: Path) -> tuple[Path, dict[str, VerifiedFile]]:
    """The one folder holding every verified file (their common folder, else the cache with all of
    them), and the files as they lie there.

    A damaged file of a source folder is served by its verified copy in the cache; then the good
    files of the folder join it there, so the DataModule reads one folder. A copy holds the bytes
    verified, or raw.read finds out that it does not.
    """
    parents = {Path(f.path).parent for f in files.values()}
    if len(parents) == 1:
        return parents.pop(), dict(files)
    placed = {}
    for stem, file in files.items():
        if Path(file.path).parent != cache:
            with replacing(cache / Path(file.path).name) as tmp:
                shutil.copyfile(file.path, tmp)
        placed[stem] = VerifiedFile(cache / Path(file.path).name, file.sha256, file.stored_sha256)
    return cache, placed


def dataset_cache_dir(cfg: Any) -> Path:
    """Where a run keeps the dataset's downloaded files and verification records."""
    return Path(cfg.paths.data_dir) / cfg.dataset.name
