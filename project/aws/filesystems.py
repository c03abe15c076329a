"""File-system channels: `fsx://<file-system-id>/<mount-name>/<path>` and `efs://<file-system-id>/<path>`.

A SageMaker job reads such a channel as a FileSystemDataSource (read-only, inside a VPC: see
project/aws/vpc.py for the checks before a launch); `invoke local` reads it where this machine
mounts the file system (paths.mounts.<file-system-id>). project/aws/source.py registers both
schemes with the training storey's sources, beside s3://. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from project.core.errors import UserError
from project.training.fetch import Source
from project.training.raw import DataError

FILE_SYSTEM_ID = re.compile(r"fs-[0-9a-f]{8,}")  # SageMaker's FileSystemId pattern
MOUNT_NAME = re.compile(r"[a-z0-9]{1,8}")  # FSx for Lustre: 8 characters (fsx for SCRATCH_1)


@dataclass(frozen=True)
class Kind:
    scheme: str  # fsx, efs
    file_system_type: str  # SageMaker's FileSystemType
    ports: tuple[int, ...]  # what the security group must admit: Lustre's 988 and 1018-1023, NFS's 2049
    mount_hint: str  # how to mount it on Linux, {id} and {dir} filled in


FSX = Kind(
    "fsx",
    "FSxLustre",
    (988, *range(1018, 1024)),
    "sudo mount -t lustre -o relatime,flock <DNSName>@tcp:/<MountName> {dir}",
)
EFS = Kind("efs", "EFS", (2049,), "sudo mount -t efs -o tls {id}:/ {dir} (amazon-efs-utils)")
KINDS = {kind.scheme: kind for kind in (FSX, EFS)}


def port_text(ports: Iterable[int]) -> str:
    """988, 1018, ..., 1023 as `988 and 1018-1023`: the ports as a reader writes them."""
    runs: list[list[int]] = []
    for port in sorted(ports):
        if runs and port == runs[-1][1] + 1:
            runs[-1][1] = port
        else:
            runs.append([port, port])
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class FileSystemURIError(UserError):
    """A malformed fsx:// or efs:// channel; the message says how it is written."""


@dataclass(frozen=True)
class FileSystemChannel:
    kind: Kind
    file_system_id: str
    mount_name: str | None  # fsx only: the file system's MountName, the root of its namespace
    path: str  # below the mount name (fsx) or the root (efs), no leading or trailing "/"

    @property
    def uri(self) -> str:
        parts = [self.file_system_id, self.mount_name, self.path]
        return f"{self.kind.scheme}://" + "/".join(p for p in parts if p)

    @property
    def directory_path(self) -> str:
        """SageMaker's DirectoryPath: /<mount-name>/<path> for FSx for Lustre, /<path> for EFS."""
        return "/" + "/".join(p for p in (self.mount_name, self.path) if p)


def file_system_channel(uri: str) -> FileSystemChannel | None:
    """The file system a channel names; None for any other place; FileSystemURIError when malformed."""
    scheme, sep, rest = uri.partition("://")
    kind = KINDS.get(scheme) if sep else None
    if kind is None:
        return None
    parts = [p for p in rest.split("/") if p]
    form = f"{kind.scheme}://fs-<id>/<mount-name>/<path>" if kind is FSX else f"{kind.scheme}://fs-<id>/<path>"
    if kind is EFS and parts and parts[0].startswith("fsap-"):
        raise FileSystemURIError(  # botocore's FileSystemDataSource: FileSystemId, DirectoryPath, no access point
            f"{uri}: an EFS access point; a training job mounts the file system itself (SageMaker's "
            f"FileSystemDataSource takes no access point): write {form}, with the access point's root "
            "directory as <path> (`aws efs describe-access-points`)"
        )
    if not parts or not FILE_SYSTEM_ID.fullmatch(parts[0]):
        raise FileSystemURIError(f"{uri}: not a file-system id after {kind.scheme}:// (fs-<hex>); write {form}")
    if ".." in parts:
        raise FileSystemURIError(f"{uri}: '..' is not allowed in a file-system path; write {form}")
    if kind is FSX:
        if len(parts) < 2 or not MOUNT_NAME.fullmatch(parts[1]):
            raise FileSystemURIError(
                f"{uri}: the file system's mount name (MountName, `aws fsx describe-file-systems`) is missing; "
                f"write {form}"
            )
        return FileSystemChannel(kind, parts[0], parts[1], "/".join(parts[2:]))
    return FileSystemChannel(kind, parts[0], None, "/".join(parts[1:]))


def mounted(mounts: Mapping[str, str], uri: str) -> Path:
    """Where this machine reads `uri`: paths.mounts.<file-system-id> and the path below it."""
    channel = file_system_channel(uri)
    assert channel is not None  # registered for fsx:// and efs:// only
    root = mounts.get(channel.file_system_id)
    fs = channel.file_system_id
    if not root:
        mount = channel.kind.mount_hint.format(id=fs, dir=f"/mnt/{fs}")
        raise DataError(
            f"{uri}: {fs} is not mounted here: mount it (`{mount}`) and give +paths.mounts.{fs}=/mnt/{fs}, "
            "or copy the data into a folder and point the channel at it"
        )
    return Path(root).expanduser() / channel.path


def _not_an_object_store(*_: Any) -> Any:
    raise DataError("a file system is read where it is mounted (paths.mounts), not fetched")


def _no_failures() -> tuple[type[BaseException], ...]:
    return ()


def _no_setup_problem(_: BaseException) -> UserError | None:
    return None


def _download(_client: Any, _uri: str, _out: BinaryIO) -> None:
    _not_an_object_store()


MOUNTED = Source(
    connect=_not_an_object_store,
    download=_download,
    mirror=_not_an_object_store,
    failures=_no_failures,
    setup_problem=_no_setup_problem,
    mounted=mounted,
)
