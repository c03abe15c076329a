"""Pipe-mode channels as SageMaker feeds them: a FIFO per pass, the channel's objects streamed into it.

For channel `train` the job finds `/opt/ml/input/data/train_0` when it starts. Once the job opens
it, a thread streams the channel's S3 objects into it (the ones its manifest lists, in order, or
every object under its prefix, in key order), makes `train_1`, then closes `train_0`: the reader
sees the end of one pass only when the next FIFO is already there. Nothing is written to disk.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from project.core.names import split_s3_uri

PIPE = "Pipe"
CHUNK = 1 << 20
STOP_POKES = 50  # tries to wake a writer that waits for a reader, a tenth of a second each


def channel_objects(s3: Any, source: dict[str, Any]) -> list[tuple[str, str]]:
    """(bucket, key) of each object a channel streams, in SageMaker's order."""
    if source.get("S3DataType", "S3Prefix") == "ManifestFile":
        bucket, key = split_s3_uri(source["S3Uri"])
        head, *suffixes = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        prefix_bucket, prefix = split_s3_uri(head["prefix"])
        return [(prefix_bucket, prefix + suffix) for suffix in suffixes]
    bucket, prefix = split_s3_uri(source["S3Uri"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [(bucket, o["Key"]) for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]


class PipeFeed:
    """One Pipe channel of a running job: `<channel>_<k>` for its k-th pass, fed from a thread."""

    def __init__(self, s3: Any, channel: dict[str, Any], data_dir: Path, shard: tuple[int, int] | None = None):
        self.s3, self.name = s3, channel["ChannelName"]
        source = channel["DataSource"]["S3DataSource"]
        self.objects = channel_objects(s3, source)
        if shard is not None and source.get("S3DataDistributionType") == "ShardedByS3Key":
            self.objects = sorted(self.objects)[shard[0] :: shard[1]]  # this host's share, as a File channel's
        self.data_dir, self.passes = data_dir, 0
        self.stopped = threading.Event()
        os.mkfifo(self.fifo(0))  # there when the container starts
        self.thread = threading.Thread(target=self._feed, name=f"pipe-{self.name}", daemon=True)
        self.thread.start()

    def fifo(self, index: int) -> Path:
        return self.data_dir / f"{self.name}_{index}"

    def _feed(self) -> None:
        try:
            while not self.stopped.is_set():
                self._one_pass(self.passes)
                self.passes += 1
        except OSError:  # the job closed its end early, or ended: nobody reads any more
            return

    def _one_pass(self, index: int) -> None:
        path = self.fifo(index)
        with open(path, "wb") as out:  # blocks until the job opens it
            if self.stopped.is_set():
                return
            for bucket, key in self.objects:
                for chunk in self.s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(CHUNK):
                    out.write(chunk)
            os.mkfifo(self.fifo(index + 1))  # before this one ends: the reader finds the next pass there
        path.unlink()

    def stop(self) -> None:
        """End the feed (the job has ended): a writer still waiting for a reader is woken by one."""
        self.stopped.set()
        for _ in range(STOP_POKES):
            if not self.thread.is_alive():
                return
            try:
                os.close(os.open(self.fifo(self.passes), os.O_RDONLY | os.O_NONBLOCK))
            except OSError:  # not made yet, or gone: the writer is past it
                pass
            self.thread.join(0.1)


def start_feeds(s3: Any, desc: dict[str, Any], tree: Path, shard: tuple[int, int] | None = None) -> list[PipeFeed]:
    """A feed for each Pipe channel of one host of the job (its FIFO made before the container starts);
    `shard`: that host's (index, number of hosts)."""
    default = desc["AlgorithmSpecification"].get("TrainingInputMode", "File")
    return [
        PipeFeed(s3, channel, tree / "input/data", shard)
        for channel in desc.get("InputDataConfig", [])
        if channel.get("InputMode", default) == PIPE
    ]
