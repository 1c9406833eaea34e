"""Error messages shared by the dataset builders."""

from __future__ import annotations

from pathlib import Path


def missing_data(what: str, path: Path | str, hint: str = "") -> FileNotFoundError:
    """A FileNotFoundError in one sentence: what is missing, where it was looked for, and
    what to do (``hint``; by default, to check the setting ``dataset.root``)."""
    setting = "check the setting dataset.root"
    if not hint:
        todo = setting
    elif "dataset.root" in hint:
        todo = hint
    else:
        todo = f"{hint}; {setting}"
    return FileNotFoundError(f"{what} is not at {path}: {todo}")
