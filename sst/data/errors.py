"""Error messages shared by the dataset builders."""

from __future__ import annotations

from pathlib import Path


def missing_data(what: str, path: Path | str, hint: str = "") -> FileNotFoundError:
    """A FileNotFoundError that tells the user which config setting to fix."""
    msg = f"{what} not found at {path}; check the setting dataset.root"
    if hint:
        msg += f" ({hint})"
    return FileNotFoundError(msg)
