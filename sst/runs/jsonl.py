"""The one reader of JSON-lines files (``metrics.jsonl``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[Any]:
    """The records of a JSON-lines file, none if it does not exist. A line that does not
    parse is skipped: a hard kill can cut the last line short, and the records before it
    stay good."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
