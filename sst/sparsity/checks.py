"""Argument checks shared by the sparsity methods: each error names the setting, the value
given and the values allowed, so a bad config fails at construction with a clear message."""

from __future__ import annotations

import math
from collections.abc import Collection


def check_total_steps(total_steps: int | None) -> int:
    """A method with a schedule needs the run's optimizer step count."""
    if total_steps is None or total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be a positive step count")
    return total_steps


def check_fraction(name: str, value: float, *, low_open: bool = False) -> None:
    """``value`` must lie in [0, 1] ((0, 1] with ``low_open``)."""
    low_ok = value > 0.0 if low_open else value >= 0.0
    if not (low_ok and value <= 1.0) or math.isnan(value):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name}={value} is out of range: allowed values are in {interval}")


def check_at_least(name: str, value: float, low: float) -> None:
    if not value >= low:
        raise ValueError(f"{name}={value} is out of range: allowed values are >= {low}")


def check_choice(name: str, value: str, allowed: Collection[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is unknown: allowed values are {list(allowed)}")
