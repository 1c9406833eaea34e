import math

import pytest

from sst import lr_schedules
from sst.sparsity.schedules import (
    constant_drop_fraction,
    cosine_drop_fraction,
    cubic_sparsity,
    is_update_step,
)


def test_cosine_drop_fraction():
    assert cosine_drop_fraction(0, 0.3, 1000) == pytest.approx(0.3)
    assert cosine_drop_fraction(500, 0.3, 1000) == pytest.approx(0.15)
    assert cosine_drop_fraction(250, 0.3, 1000) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert cosine_drop_fraction(1000, 0.3, 1000) == 0.0
    assert constant_drop_fraction(999, 0.3, 1000) == 0.3


def test_cubic_sparsity_endpoints_are_exact():
    assert cubic_sparsity(100, 0.0, 0.9, 100, 1100) == 0.0
    assert cubic_sparsity(1100, 0.0, 0.9, 100, 1100) == 0.9
    assert cubic_sparsity(5000, 0.0, 0.9, 100, 1100) == 0.9
    # halfway: s_f + (s_i - s_f) * 0.5 ** 3
    assert cubic_sparsity(600, 0.0, 0.9, 100, 1100) == pytest.approx(0.9 - 0.9 / 8)


def test_update_steps():
    updates = [s for s in range(1, 1001) if is_update_step(s, 100, 750)]
    assert updates == [100, 200, 300, 400, 500, 600, 700]


def test_lr_step_decay_and_warmup():
    kw = {"steps_per_epoch": 10, "total_steps": 1000}
    assert lr_schedules.step_decay(0, gamma=0.2, step_size_epochs=77, **kw) == 1.0
    assert lr_schedules.step_decay(770, gamma=0.2, step_size_epochs=77, **kw) == pytest.approx(0.2)
    assert lr_schedules.step_decay(1540, gamma=0.2, step_size_epochs=77, **kw) == pytest.approx(
        0.04
    )
    warm = lr_schedules.multistep(4, gamma=0.1, milestones_epochs=[30], warmup_epochs=1, **kw)
    assert warm == pytest.approx(0.5)
    assert lr_schedules.multistep(300, gamma=0.1, milestones_epochs=[30], **kw) == pytest.approx(
        0.1
    )
    assert lr_schedules.cosine(1000, **kw) == pytest.approx(0.0)
    assert lr_schedules.cosine(500, **kw) == pytest.approx(0.5)
