"""Reads a W&B ``.wandb`` transaction log (an offline run) without a server.

The file is W&B's LevelDB-style log: a 7-byte header (b":W&B", magic 0xBEE1, version 0),
then 32 KiB blocks of chunks, each with a 7-byte header (CRC32C, little-endian length, type:
1 full, 2 first, 3 middle, 4 last); a record is a serialized ``wandb_internal_pb2.Record``.
Used to check offline runs and to build tables from runs that were never synced. W&B's
service may still be writing after ``run.finish()``; ``wandb.teardown()`` waits for it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_chunks(path: str | Path) -> Iterator[bytes]:
    """The raw serialized records of a ``.wandb`` file."""
    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = FILE_HEADER.size, b""
    while pos + CHUNK_HEADER.size <= len(data):
        room = BLOCK - pos % BLOCK
        if room < CHUNK_HEADER.size:
            pos += room
            continue
        _crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if length == 0 and kind == 0:  # zero padding at the end of a block
            pos += room
            continue
        start = pos + CHUNK_HEADER.size
        chunk = data[start : start + length]
        pos = start + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_run(path: str | Path) -> dict[str, Any]:
    """A run's config, history rows, summary, and exit code (None if it never finished)."""
    from wandb.proto import wandb_internal_pb2

    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    exit_code: int | None = None
    for raw in read_chunks(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind in ("config", "run"):
            updates = record.config.update if kind == "config" else record.run.config.update
            for item in updates:
                config[item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return {"config": config, "history": history, "summary": summary, "exit_code": exit_code}
