"""Command-line pieces shared by the CLIs (``sst-table --where``, ``sst-export --model-arg``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def parse_assignments(pairs: Iterable[str], option: str, example: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict, values read as YAML scalars: ``["stem=cifar",
    "width=0.5"]`` -> ``{"stem": "cifar", "width": 0.5}``. A pair without a key or ``=``
    raises ValueError naming ``option`` and showing ``example``."""
    import yaml

    parsed = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {pair!r} must be KEY=VALUE, e.g. {example}")
        parsed[key] = yaml.safe_load(text)
    return parsed
