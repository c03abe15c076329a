"""Where a training job reads each data channel: an S3 prefix `invoke upload` fills, SageMaker's
manifest beside it for a packed dataset, or the file system the channel's value names (fsx://, efs://).

Pure: the job's plan (project.aws.plan) and `invoke upload` (project.aws.workflow) both read it.
"""

from __future__ import annotations

from typing import Any

from project.aws.filesystems import FileSystemChannel, file_system_channel
from project.training.imagetree import packs
from project.training.pipe import PIPE


def channel_uris(bucket: str, s3_prefix: str, channels: list[str]) -> dict[str, str]:
    """Where `invoke upload` puts each data channel and the job reads it: s3://<bucket>/<s3_prefix>/<channel>/."""
    return {name: f"s3://{bucket}/{s3_prefix.strip('/')}/{name}/" for name in channels}


def manifest_uri(channel_uri: str) -> str:
    """Where `invoke upload` puts SageMaker's manifest of a packed channel: beside its prefix, s3://.../<channel>.manifest."""
    return channel_uri.rstrip("/") + ".manifest"


def channel_manifests(cfg: Any, channels: dict[str, str], input_modes: dict[str, str]) -> dict[str, str]:
    """The channels a job reads through SageMaker's manifest: a packed dataset's S3 channels in File
    mode, or in Pipe mode (the FIFO streams the objects it lists in its order: shards.json, then the
    shards). FastFile reads lazily, only the shards shards.json names, so it keeps the prefix."""
    if not packs(cfg.dataset):
        return {}
    return {
        name: manifest_uri(uri)
        for name, uri in channels.items()
        if input_modes[name] in ("File", PIPE) and uri.startswith("s3://")
    }


def job_channels(cfg: Any, data_bucket: str) -> tuple[dict[str, str], dict[str, FileSystemChannel]]:
    """Where the job reads each data channel: the file system its value names (fsx://, efs://), else
    the S3 prefix `invoke upload` fills (channel_uris); and those file systems."""
    declared = {name: str(value) for name, value in cfg.dataset.channels.items()}
    file_systems = {name: fs for name, uri in declared.items() if (fs := file_system_channel(uri)) is not None}
    uploaded = channel_uris(data_bucket, cfg.dataset.s3_prefix, [n for n in declared if n not in file_systems])
    return {name: file_systems[name].uri if name in file_systems else uploaded[name] for name in declared}, file_systems
