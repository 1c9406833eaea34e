"""The benchmarks' round order (scripts/bench_train.py): every variant follows every other one
equally often, so no variant always runs in the cache state another one leaves behind."""

import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_train import balanced_order


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7])
def test_each_variant_follows_every_other_equally_often(n: int) -> None:
    items = [f"v{i}" for i in range(n)]
    period = n if n % 2 == 0 else 2 * n
    rows = [balanced_order(items, r) for r in range(period)]
    assert all(sorted(row) == items for row in rows)
    follows = Counter((a, b) for row in rows for a, b in pairwise(row))
    assert len(follows) == n * (n - 1)
    assert set(follows.values()) == {1 if n % 2 == 0 else 2}
    assert balanced_order(items, period) == rows[0]  # periodic


def test_short_lists() -> None:
    assert balanced_order([], 3) == []
    assert balanced_order(["a"], 5) == ["a"]
