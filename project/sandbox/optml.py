"""The job's /opt/ml tree, as SageMaker lays it out for each instance (its environment: environment.py).

Each instance (host algo-1 ... algo-N) has its own tree, built on this machine (channels and existing
checkpoints downloaded from S3, the input/config/*.json files written with that host as current_host);
its container sees it at /opt/ml through a bind mount.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from project.core.errors import UserError
from project.core.names import split_s3_uri

CONTAINER_ROOT = "/opt/ml"
HOST = "algo-1"  # SageMaker's name for the first instance (algo-2, ... for the others)
DOWNLOAD_THREADS = 4
# A folder holding one folder per file system (its id): what a FileSystemDataSource channel reads
# here, where SageMaker would mount FSx for Lustre or EFS. For FSx the DirectoryPath's first part
# is the file system's mount name, the root of that folder.
FILE_SYSTEMS_ENV = "SANDBOX_FILE_SYSTEMS"

Desc = dict[str, Any]  # a DescribeTrainingJob response


class SandboxError(UserError):
    """The sandbox cannot run this job (or serve) here; the message says why."""


def container_path(path: str, tree: Path) -> Path:
    """Where a path inside the container's /opt/ml lies in the job's tree on this machine."""
    if path != CONTAINER_ROOT and not path.startswith(CONTAINER_ROOT + "/"):
        raise SandboxError(f"{path} is outside {CONTAINER_ROOT}: the sandbox mounts only {CONTAINER_ROOT}")
    return tree / path[len(CONTAINER_ROOT) :].lstrip("/")


Shard = tuple[int, int]  # (this host's index, number of hosts): its share of a ShardedByS3Key channel


def _share(items: list[str], shard: Shard | None) -> list[str]:
    """A ShardedByS3Key host's objects: every N-th of the sorted keys, from its own index."""
    return items if shard is None else sorted(items)[shard[0] :: shard[1]]


def download_prefix(s3: Any, uri: str, dest: Path, folder: bool = False, shard: Shard | None = None) -> int:
    """Every object under the S3 prefix (or this host's share of them) into dest, keeping the key's
    path below the prefix."""
    bucket, prefix = split_s3_uri(uri)
    if folder and prefix and not prefix.endswith("/"):
        prefix += "/"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
    keys = _share(keys, shard)
    dest.mkdir(parents=True, exist_ok=True)

    def one(key: str) -> None:
        relative = key[len(prefix) :].lstrip("/") or key.rsplit("/", 1)[-1]  # the URI named one object
        if ".." in Path(relative).parts:
            raise SandboxError(f"s3://{bucket}/{key} would land outside {dest}")
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))

    with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
        list(pool.map(one, keys))
    return len(keys)


def _network_interface() -> str:
    return "eth0" if Path("/sys/class/net/eth0").exists() else "lo"


def job_hosts(desc: Desc) -> list[str]:
    """The job's instances as SageMaker names them: algo-1 ... algo-<InstanceCount>."""
    return [f"algo-{i}" for i in range(1, int(desc["ResourceConfig"].get("InstanceCount", 1)) + 1)]


def _resource_config(instance_type: str, host: str, hosts: list[str]) -> dict[str, Any]:
    return {
        "current_host": host,
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": hosts}
        ],
        "network_interface_name": _network_interface(),
    }


def _input_data_config(desc: Desc) -> dict[str, Any]:
    default_mode = desc["AlgorithmSpecification"].get("TrainingInputMode", "File")
    return {
        c["ChannelName"]: {
            "TrainingInputMode": c.get("InputMode", default_mode),
            # a file system's channel is mounted, not distributed
            **(
                {"S3DistributionType": c["DataSource"]["S3DataSource"].get("S3DataDistributionType", "FullyReplicated")}
                if "S3DataSource" in c["DataSource"]
                else {}
            ),
            "RecordWrapperType": c.get("RecordWrapperType", "None"),
            **({"ContentType": c["ContentType"]} if c.get("ContentType") else {}),
        }
        for c in desc.get("InputDataConfig", [])
    }


def config_files(desc: Desc, host: str = HOST) -> dict[str, Any]:
    """/opt/ml/input/config/*.json as SageMaker writes them on the instance `host`."""
    files = {
        "hyperparameters.json": desc.get("HyperParameters", {}),
        "resourceconfig.json": _resource_config(desc["ResourceConfig"]["InstanceType"], host, job_hosts(desc)),
        "inputdataconfig.json": _input_data_config(desc),
    }
    if desc.get("CheckpointConfig"):
        files["checkpointconfig.json"] = desc["CheckpointConfig"]
    return files


def _file_system_folder(channel: dict[str, Any], vpc: dict[str, Any] | None) -> Path:
    """The local folder standing in for a FileSystemDataSource, as the job's channel would mount it."""
    fs = channel["DataSource"]["FileSystemDataSource"]
    name, fs_id = channel["ChannelName"], fs["FileSystemId"]
    if not vpc or not vpc.get("Subnets"):
        raise SandboxError(f"channel {name}: a FileSystemDataSource needs the VpcConfig of the job")
    root = os.environ.get(FILE_SYSTEMS_ENV)
    if not root or not (Path(root) / fs_id).is_dir():
        raise SandboxError(
            f"channel {name}: file system {fs_id} has no folder here: set {FILE_SYSTEMS_ENV} to a folder holding "
            f"{fs_id}/ when starting the sandbox"
        )
    parts = [p for p in fs["DirectoryPath"].split("/") if p]
    if fs["FileSystemType"] == "FSxLustre":
        parts = parts[1:]  # /<mount-name>/<path>: the mount name is the file system's root
    folder = Path(root, fs_id, *parts)
    if ".." in parts or not folder.is_dir():
        raise SandboxError(f"channel {name}: {fs['DirectoryPath']} is not a folder of {fs_id} ({folder})")
    return folder


def file_system_mounts(desc: Desc) -> list[tuple[Path, str]]:
    """(folder here, channel path in the container) of each FileSystemDataSource channel of the job."""
    return [
        (_file_system_folder(channel, desc.get("VpcConfig")), f"{CONTAINER_ROOT}/input/data/{channel['ChannelName']}")
        for channel in desc.get("InputDataConfig", [])
        if "FileSystemDataSource" in channel["DataSource"]
    ]


def _download_channel(
    s3: Any, channel: dict[str, Any], tree: Path, vpc: dict[str, Any] | None = None, shard: Shard | None = None
) -> None:
    """The channel as one host gets it: `shard` is that host's place among the job's hosts."""
    if "FileSystemDataSource" in channel["DataSource"]:
        # Mounted, not downloaded: the job reads the file system's folder in place, bound read-only
        # on this empty mount point when the container starts (file_system_mounts).
        _file_system_folder(channel, vpc)  # one that cannot be mounted fails the job before it starts
        (tree / "input/data" / channel["ChannelName"]).mkdir()
        return
    source = channel["DataSource"].get("S3DataSource")
    kind = None if source is None else source.get("S3DataType", "S3Prefix")
    if kind not in ("S3Prefix", "ManifestFile"):
        raise SandboxError(
            f"channel {channel['ChannelName']}: only S3Prefix and ManifestFile data sources are emulated"
        )
    if channel.get("InputMode", "File") == "Pipe":
        return  # nothing on disk: streamed through FIFOs while the job runs (project/sandbox/pipes.py)
    dest = tree / "input/data" / channel["ChannelName"]
    if source.get("S3DataDistributionType", "FullyReplicated") != "ShardedByS3Key":
        shard = None  # FullyReplicated: every host gets every object
    if kind == "S3Prefix":
        download_prefix(s3, source["S3Uri"], dest, shard=shard)
        return
    # A manifest: [{"prefix": "s3://bucket/some/prefix/"}, "relative/key", ...]; SageMaker downloads
    # each prefix + suffix to the channel folder under its suffix, and nothing else.
    bucket, key = split_s3_uri(source["S3Uri"])
    head, *suffixes = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    prefix_bucket, prefix = split_s3_uri(head["prefix"])
    for suffix in _share(suffixes, shard):
        target = dest / suffix
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(prefix_bucket, prefix + suffix, str(target))


def prepare_tree(tree: Path, desc: Desc, s3: Any, host: str = HOST) -> Path:
    """The /opt/ml tree of the job's instance `host`: config files, its channels, existing checkpoints;
    returns the checkpoint dir."""
    if tree.exists():
        shutil.rmtree(tree)
    for sub in ("input/config", "input/data", "model", "output/data"):
        (tree / sub).mkdir(parents=True)
    for name, content in config_files(desc, host).items():
        (tree / "input/config" / name).write_text(json.dumps(content))
    hosts = job_hosts(desc)
    for channel in desc.get("InputDataConfig", []):
        _download_channel(s3, channel, tree, desc.get("VpcConfig"), (hosts.index(host), len(hosts)))
    checkpoint = desc.get("CheckpointConfig") or {}
    local = container_path(checkpoint.get("LocalPath") or f"{CONTAINER_ROOT}/checkpoints", tree)
    local.mkdir(parents=True, exist_ok=True)
    if checkpoint.get("S3Uri"):
        download_prefix(s3, checkpoint["S3Uri"], local, folder=True)  # SageMaker restores them first
    return local
