"""Validation of the ``(channels, height, width)`` input shape passed to every builder."""

from __future__ import annotations

from collections.abc import Sequence


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return ``input_shape`` as a ``(channels, height, width)`` tuple of positive ints.

    Raises:
        ValueError: if ``input_shape`` does not have three positive entries.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or any(d < 1 for d in shape):
        raise ValueError(
            f"input_shape must be (channels, height, width) with positive entries, "
            f"got {tuple(input_shape)!r}"
        )
    return shape  # type: ignore[return-value]
