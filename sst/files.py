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
    ``keep_previous``: the file ``path`` held is moved there first (kept as a fallback), by a
    hard link renamed over ``keep_previous``, so that ``path`` exists at every moment (a
    rename of ``path`` itself would leave a gap in which a kill loses both)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            _keep_copy(path, keep_previous)
        os.replace(tmp, path)
        _sync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _keep_copy(path: Path, keep: Path) -> None:
    """``keep`` becomes the file at ``path``, which stays in place (a rename where the file
    system has no hard links)."""
    link = keep.with_name(f".{keep.name}.tmp-{os.getpid()}")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:
        os.replace(path, keep)
        return
    try:
        os.replace(link, keep)
    finally:
        link.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Makes the folder's renames durable (a power loss after the call keeps them)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files that ``atomic_write`` left beside ``path`` when its process was killed
    mid-write (its own cleanup never ran): those of processes no longer alive on this
    machine (a live writer's file is in use)."""
    path = Path(path)
    return sorted(
        p for p in path.parent.glob(f".{path.name}.tmp-*") if not _alive(p.name.rpartition("-")[2])
    )


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
