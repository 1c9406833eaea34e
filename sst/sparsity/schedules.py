"""Schedules of sparse training, each a pure function of the optimizer step.

Pure functions of the step mean that resuming a run needs nothing but the step.
"""

from __future__ import annotations

import math


def cosine_drop_fraction(step: int, alpha: float, t_end: int) -> float:
    """Fraction of active weights a dynamic method drops at ``step``.

    f(t) = alpha / 2 * (1 + cos(pi * t / T_end)) for t < T_end, else 0
    (Evci et al. 2020, "Rigging the Lottery", eq. 1).
    """
    if step >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


def constant_drop_fraction(step: int, alpha: float, t_end: int) -> float:
    """f(t) = alpha for t < T_end, else 0 (SET's schedule, Mocanu et al. 2018)."""
    return alpha if step < t_end else 0.0


def linear_drop_fraction(step: int, alpha: float, t_end: int) -> float:
    """f(t) = alpha * (1 - t / T_end) for t < T_end, else 0."""
    return alpha * (1.0 - step / t_end) if step < t_end else 0.0


DROP_FRACTION_SCHEDULES = {
    "cosine": cosine_drop_fraction,
    "constant": constant_drop_fraction,
    "linear": linear_drop_fraction,
}


def cubic_sparsity(step: int, s_init: float, s_final: float, t_start: int, t_end: int) -> float:
    """Gradual pruning's target sparsity at ``step`` (Zhu & Gupta 2017, eq. 1).

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** 3 on [t_0, t_end],
    s_i before t_0 and s_f after t_end.
    """
    if t_end <= t_start:
        raise ValueError(f"t_end={t_end} must be greater than t_start={t_start}")
    if step <= t_start:
        return s_init
    if step >= t_end:
        return s_final
    progress = (step - t_start) / (t_end - t_start)
    return s_final + (s_init - s_final) * (1.0 - progress) ** 3


def is_update_step(step: int, delta_t: int, t_end: int) -> bool:
    """A topology update happens after optimizer step ``step`` (1-based) when
    step % delta_t == 0 and step < T_end (RigL's schedule)."""
    return step > 0 and step % delta_t == 0 and step < t_end
