"""Reads an offline W&B run back from its `run-*.wandb` file, to test what a run logged.

wandb writes the file in LevelDB's log format (32 KiB blocks of checksummed chunks) holding
`wandb_internal_pb2.Record` protobufs; wandb 0.31 ships no Python reader of it, so this is one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768
HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)  # identifier, magic, version
CHUNK_HEADER = 7  # crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    """Every `Record` in the file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data.startswith(HEADER), f"{path} is not a W&B record file"
    out, pending, offset = [], b"", len(HEADER)
    while offset + CHUNK_HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < CHUNK_HEADER:  # the block's tail is padding
            offset += room
            continue
        _, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0 and length == 0:
            offset += room
            continue
        chunk = data[offset + CHUNK_HEADER : offset + CHUNK_HEADER + length]
        offset += CHUNK_HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


@dataclass
class OfflineRun:
    """What an offline run logged: its config and summary (nested dicts), tags, group and the
    artifacts it logged (each `{"name", "type", "aliases", "metadata", "files"}`)."""

    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    tags: list = field(default_factory=list)
    group: str = ""
    artifacts: list = field(default_factory=list)


def read_run(path: Path) -> OfflineRun:
    """The offline run of a `run-*.wandb` file (later updates win, as in W&B)."""
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.tags = list(record.run.tags)
            run.group = record.run.run_group
            _update(run.config, record.run.config.update)
            _update(run.summary, record.run.summary.update)
        elif kind == "config":
            _update(run.config, record.config.update)
        elif kind == "summary":
            _update(run.summary, record.summary.update)
        elif kind == "artifact":
            artifact = record.artifact
            run.artifacts.append(
                {
                    "name": artifact.name,
                    "type": artifact.type,
                    "aliases": list(artifact.aliases),
                    "metadata": json.loads(artifact.metadata) if artifact.metadata else {},
                    "files": [entry.path for entry in artifact.manifest.contents],
                }
            )
    return run


def _update(target: dict, items) -> None:
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)
