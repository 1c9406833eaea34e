"""Checkpoint files: written atomically with the one before kept as ``prev.pt``, read with
``torch.load(weights_only=True)``, falling back to ``prev.pt`` when ``last.pt`` is unreadable.

Each checkpoint carries a digest of its contents (``DIGEST_KEY``): a file that still loads
but whose tensors changed on disk (flipped bytes) is refused like an unreadable one."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sst.files import atomic_write, stale_temporaries

log = logging.getLogger(__name__)

DIGEST_KEY = "digest"


# Values fed as "type repr;": a sequence of only these (Python's RNG state holds 625 ints)
# goes in one update of the same bytes.
_PLAIN = (int, float, bool, str, type(None))


def _feed(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        digest.update(f"tensor {data.dtype} {tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())  # its buffer, not a copy
    elif isinstance(value, Mapping):
        digest.update(f"map {len(value)};".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"seq {len(value)};".encode())
        if all(type(item) in _PLAIN for item in value):
            digest.update("".join(f"{type(v).__name__} {v!r};" for v in value).encode())
        else:
            for item in value:
                _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def state_digest(state: Mapping[str, Any]) -> str:
    """BLAKE2b of a checkpoint's contents (every tensor's dtype, shape and bytes, and every
    other value's repr, in a fixed order), the digest entry itself left out."""
    digest = hashlib.blake2b(digest_size=16)
    _feed(digest, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def verify(state: Mapping[str, Any], path: Path) -> None:
    """Raises ``ValueError`` when the stored digest does not match the contents (a
    checkpoint written before digests existed has none and is accepted)."""
    stored = state.get(DIGEST_KEY)
    if stored is not None and stored != state_digest(state):
        raise ValueError(f"its contents do not match the digest stored in {path.name}")


class CorruptCheckpoint(RuntimeError):
    """No checkpoint of the run can be read."""


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``prev.pt`` beside ``last.pt``."""
    return Path(path).with_name("prev.pt")


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` through ``atomic_write``: a crash mid-write never destroys a
    checkpoint, and the one ``path`` held before is kept as ``prev.pt``."""
    state = {**state, DIGEST_KEY: state_digest(state)}
    atomic_write(path, lambda handle: torch.save(state, handle), keep_previous=previous_path(path))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_latest(path: str | Path, *, owner: bool = False) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint whose digest matches, ``path`` or else its
    ``prev.pt``, with the file it came from; None when neither exists. Raises
    ``CorruptCheckpoint`` naming the files when none can be read.

    ``owner``: the caller holds the run's lock (a run that resumes). It removes the stale
    temporary files of a write that a kill cut short, and renames a ``last.pt`` that fails
    to ``last.pt.corrupt``, so that the next save keeps the good ``prev.pt`` instead of
    rotating the bad file into its place. A reader (``load_run``, ``sst-plot mask``) changes
    nothing in the folder: a temporary file may be a live writer's checkpoint."""
    path = Path(path)
    if owner:
        for stale in stale_temporaries(path) + stale_temporaries(previous_path(path)):
            log.warning("removing %s, left by a checkpoint write that was cut short", stale)
            stale.unlink(missing_ok=True)
    failures = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            state = load(candidate)
            verify(state, candidate)
        except Exception as error:  # truncated zip, empty file, bad pickle, changed bytes
            failures.append(f"{candidate} ({type(error).__name__}: {error})")
            log.warning("checkpoint %s cannot be read: %s", candidate, error)
            continue
        if failures:
            log.warning("resuming from the previous checkpoint %s instead", candidate)
            if owner and path.exists():
                path.replace(path.with_name(path.name + ".corrupt"))
        return state, candidate
    if failures:
        raise CorruptCheckpoint(
            "no checkpoint of this run can be read: "
            + "; ".join(failures)
            + ". Delete the run folder's checkpoints/ to train the run again from the start."
        )
    return None
