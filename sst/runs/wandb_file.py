"""Reads a W&B ``.wandb`` transaction log (an offline run) without a server.

The file is W&B's LevelDB-style log: a 7-byte header (b":W&B", magic 0xBEE1, version 0),
then 32 KiB blocks of chunks, each with a 7-byte header (CRC32C, little-endian length, type:
1 full, 2 first, 3 middle, 4 last); a record is a serialized ``wandb_internal_pb2.Record``.
A resumed run reads the steps its earlier sessions logged, to send W&B what a hard kill lost
(``RunLog.resume_at``); tests read offline runs back. A log whose writer was killed ends in a
cut record: reading stops there. W&B's service may still be writing after ``run.finish()``;
``wandb.teardown()`` waits for it.
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
        if start + length > len(data):  # the tail of a log whose writer was killed
            return
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


def _records(path: str | Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    for raw in read_chunks(path):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(raw)
        except Exception:  # a record cut short by a kill: the log ends here
            return
        yield record


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The history rows (``_step`` and the logged values) of a ``.wandb`` file."""
    return read_run(path)["history"]


def read_run(path: str | Path) -> dict[str, Any]:
    """A run's config, history rows, summary, and exit code (None if it never finished)."""
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    exit_code: int | None = None
    for record in _records(path):
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
