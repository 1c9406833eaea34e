"""Atomic file writes: a crash or a kill mid-write never leaves a half-written file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], None], *, keep_previous: Path | None = None
) -> None:
    """Calls ``write`` on a temporary file beside ``path``, flushes it to disk (fsync) and
    renames it over ``path``: readers see the old file or the new one, never a part.
    ``keep_previous``: the file ``path`` held is renamed there first (kept as a fallback)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files that ``atomic_write`` left beside ``path`` when its process was killed
    mid-write (its own cleanup never ran)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.tmp-*"))


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
