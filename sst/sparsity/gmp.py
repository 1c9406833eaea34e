"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune")."""

from __future__ import annotations

import torch
from torch import nn

from .checks import check_at_least, check_fraction, check_total_steps
from .pruning import PruningMethod
from .schedules import cubic_sparsity


class GMP(PruningMethod):
    """Prunes the smallest |w| every ``delta_t`` steps along the cubic schedule

        s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** 3   on [t_0, t_end]

    (Zhu & Gupta 2017, eq. 1), from ``s_init`` at t_0 = ``t_start`` * total_steps to the
    final sparsity s_f = 1 - ``density`` at t_end = ``t_end`` * total_steps; the masks are
    fixed after t_end. Prunes happen after optimizer steps t_0, t_0 + delta_t, ... and
    always after step t_end itself, so the final sparsity is exact whatever the step
    count or ``delta_t``.

    The schedule gives the sparsity of the masked layers; the scope (``distribution``)
    says how the layers share it (``sst.sparsity.pruning``): each layer to its own share of
    its final sparsity (uniform is Zhu & Gupta's layer-wise pruning; ERK, explicit) or one
    global |w| threshold (``global_magnitude``). Every structure works: under
    ``constant_fanin`` every neuron holds the same fan-in at each prune, under ``nm`` every
    group of M holds at most its share at each prune and exactly N at the end.

    Args (besides ``SparsityMethod``'s):
        total_steps: optimizer steps of the run (required).
        s_init: sparsity of the first masks (0: start dense).
        t_start / t_end: first and last prune as fractions of ``total_steps``.
        delta_t: optimizer steps between prunes.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        total_steps: int | None = None,
        s_init: float = 0.0,
        t_start: float = 0.25,
        t_end: float = 0.75,
        delta_t: int = 100,
        **kwargs,
    ) -> None:
        check_total_steps(total_steps)
        check_fraction("t_start", t_start)
        check_fraction("t_end", t_end, low_open=True)
        check_at_least("delta_t", delta_t, 1)
        first, last = int(t_start * total_steps), int(t_end * total_steps)
        if last <= first:
            raise ValueError(
                f"t_start={t_start} and t_end={t_end} of total_steps={total_steps} give no "
                f"pruning window (steps {first} to {last}): t_end must come after t_start"
            )
        if density < 1.0 and not 0.0 <= s_init <= 1.0 - density:
            raise ValueError(
                f"s_init={s_init} is out of range: allowed values are in [0, 1 - density] = "
                f"[0, {1.0 - density:g}]"
            )
        self.s_init = s_init
        self.start_progress = s_init / (1.0 - density) if density < 1.0 else 1.0
        super().__init__(model, optimizer, density=density, total_steps=total_steps, **kwargs)
        self.t_start, self.t_end, self.delta_t = first, last, delta_t

    def target_sparsity(self, step: int) -> float:
        """The schedule's sparsity of the masked layers after optimizer step ``step``."""
        return cubic_sparsity(step, self.s_init, self.final_sparsity, self.t_start, self.t_end)

    def is_prune_step(self, step: int) -> bool:
        """t_0, t_0 + delta_t, ... up to t_end, and t_end itself."""
        if not self.t_start <= step <= self.t_end:
            return False
        return (step - self.t_start) % self.delta_t == 0 or step == self.t_end

    def dense_step(self, step: int) -> bool:
        return self.is_prune_step(step)

    def update(self, step: int) -> None:
        if self.weights and self.is_prune_step(step):
            self.prune_to(self.target_sparsity(step) / self.final_sparsity, step)
