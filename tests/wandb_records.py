"""What a W&B offline run wrote, read back from its `run-<id>.wandb` file (no account, no network).

wandb 0.31 keeps no Python reader of its own files (the Go core writes them), so this is the file's
documented framing, LevelDB's log format behind a 7-byte W&B header: 32 KiB blocks of chunks, each
a CRC-32, a length and a type (full, or the first, middle or last part of one record), every
record a `wandb.proto.wandb_internal_pb2.Record`, parsed with wandb's own protobuf classes.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

MAGIC = b":W&B"
FILE_HEADER = struct.Struct("<4sHB")  # ident, 0xBEE1, version
CHUNK_HEADER = struct.Struct("<IHB")  # crc32 of type+data, data length, chunk type
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """Every record of the file, in order, each checked against its chunks' checksums."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    ident, magic, _ = FILE_HEADER.unpack_from(raw)
    assert (ident, magic) == (MAGIC, 0xBEE1), f"{path} is not a W&B run file"
    found, pending, at = [], b"", FILE_HEADER.size
    while at + CHUNK_HEADER.size <= len(raw):
        if BLOCK - at % BLOCK < CHUNK_HEADER.size:  # a block's tail too short for a header is padding
            at += BLOCK - at % BLOCK
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(raw, at)
        data = raw[at + CHUNK_HEADER.size : at + CHUNK_HEADER.size + length]
        at += CHUNK_HEADER.size + length
        if kind == 0 and length == 0:  # zero fill at the end of the file
            break
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) == crc, f"{path}: a damaged chunk at {at}"
        pending += data
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
    return found


def run_file(run_dir: Path) -> Path:
    """The one offline run's .wandb file under a run's output/wandb/."""
    (path,) = run_dir.glob("output/wandb/offline-run-*/run-*.wandb")
    return path


def history(found: list[Any], key: str) -> list[float]:
    """Every value logged for `key` (wandb.log / Lightning's log_metrics), in order."""
    return [
        json.loads(item.value_json)
        for r in found
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
        if _key(item) == key
    ]


def config(found: list[Any]) -> dict[str, Any]:
    """The run's config as its config records set it, later values over earlier."""
    merged: dict[str, Any] = {}
    for r in found:
        if r.WhichOneof("record_type") == "config":
            merged.update({item.key: json.loads(item.value_json) for item in r.config.update})
    return merged


def summary(found: list[Any]) -> dict[str, Any]:
    """The run's summary (the last value of each metric, and what was put there: the final metrics)."""
    merged: dict[str, Any] = {}
    for r in found:
        if r.WhichOneof("record_type") == "summary":
            merged.update({_key(item): json.loads(item.value_json) for item in r.summary.update})
    return merged


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def artifacts(found: list[Any]) -> dict[str, tuple[str, set[str]]]:
    """artifact name -> (its type, the paths its manifest holds)."""
    return {
        r.artifact.name: (r.artifact.type, {entry.path for entry in r.artifact.manifest.contents})
        for r in found
        if r.WhichOneof("record_type") == "artifact"
    }
