"""Dynamic sparse training: drop and grow on RigL's schedule (Evci et al., ICML 2020).

``DynamicSparsity`` owns the schedule (``delta_t``, ``alpha``, ``t_end``, the drop-fraction
decay), the dense gradient for growth and the update of every layer; a method says only how
one layer is updated (``update_layer``), by calling its module's pure rule
(``rigl.update_mask``, ``srigl.update_mask``, ``set.update_mask``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import torch
from torch import nn

from .checks import check_at_least, check_choice, check_fraction, check_total_steps
from .drop_grow import GROW_TIES
from .method import SparsityMethod
from .schedules import DROP_FRACTION_SCHEDULES, is_update_step

log = logging.getLogger(__name__)


class DynamicSparsity(SparsityMethod):
    """Drop and grow every ``delta_t`` optimizer steps until ``t_end`` (RigL's schedule).

    Args (besides ``SparsityMethod``'s):
        total_steps: optimizer steps of the whole run (required).
        delta_t: steps between topology updates (RigL paper: 100).
        alpha: initial drop fraction (0.3).
        t_end: updates happen at steps before this fraction of ``total_steps`` (0.75).
        drop_schedule: ``cosine`` (RigL), ``constant`` (SET) or ``linear``.
        grad_accumulation: steps over which the dense gradient is summed before an update
            (RigL's ImageNet setting uses 8); 1 uses the update step's gradient alone.
        skip_optimizer_step: on update steps, update the topology and skip the optimizer
            step, as the RigL TensorFlow reference does (the SRigL code steps).
        grow_ties: how growth by gradient (RigL, SRigL) orders candidates whose |dense
            grad| is exactly 0 (dead inputs, dead neurons): ``index`` (the default) keeps
            ``torch.topk``'s deterministic order, as the RigL reference's ``top_k`` grows
            (google-research/rigl@d39fc7d ``rigl/sparse_optimizers_base.py`` adds
            N(0, 1e-5) noise to the drop scores only), which piles new weights onto the
            same low-index positions; ``random`` orders them at random with the method's
            own generator (``drop_grow.break_zero_ties``): reproducible from ``seed``,
            identical on every rank, restored on resume. SET grows at random anyway.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        total_steps: int | None = None,
        delta_t: int = 100,
        alpha: float = 0.3,
        t_end: float = 0.75,
        drop_schedule: str = "cosine",
        grad_accumulation: int = 1,
        skip_optimizer_step: bool = False,
        grow_ties: str = "index",
        **kwargs,
    ) -> None:
        check_total_steps(total_steps)
        check_at_least("delta_t", delta_t, 1)
        check_fraction("alpha", alpha)
        check_fraction("t_end", t_end, low_open=True)
        check_choice("drop_schedule", drop_schedule, DROP_FRACTION_SCHEDULES)
        check_choice("grow_ties", grow_ties, GROW_TIES)
        if not 1 <= grad_accumulation <= delta_t:
            raise ValueError(
                f"grad_accumulation={grad_accumulation} is out of range: allowed "
                f"values are 1..delta_t ({delta_t})"
            )
        super().__init__(model, optimizer, density=density, total_steps=total_steps, **kwargs)
        self.delta_t = delta_t
        self.alpha = alpha
        self.t_end = int(t_end * total_steps)
        if delta_t >= self.t_end:
            log.warning(
                "%s never updates its masks: the first update would come after step "
                "delta_t=%d, at or past t_end * total_steps = %d; the run trains static masks",
                type(self).__name__,
                delta_t,
                self.t_end,
            )
        self.drop_schedule = DROP_FRACTION_SCHEDULES[drop_schedule]
        self.grad_accumulation = grad_accumulation
        self.skip_optimizer_step = skip_optimizer_step
        self.grow_ties = grow_ties
        self.dense_grads: dict[str, torch.Tensor] = {}
        self.nonfinite_grad_steps = 0  # window steps left out for inf/NaN gradients
        self.skipped_updates = 0  # updates skipped: no finite gradient in their window
        self._skipped = False  # this step's optimizer step was skipped for an update
        self._dense_grad_step = False  # this step needed the dense gradient (FLOP count)

    @property
    def tie_generator(self) -> torch.Generator | None:
        """The generator that breaks zero-gradient growth ties (``grow_ties=random``),
        else None."""
        return self.generator if self.grow_ties == "random" else None

    def drop_fraction(self, step: int) -> float:
        return self.drop_schedule(step, self.alpha, self.t_end)

    def is_update_step(self, step: int) -> bool:
        return is_update_step(step, self.delta_t, self.t_end)

    def _needs_dense_grad(self, step: int) -> bool:
        if not self.needs_dense_grad:
            return False
        next_update = math.ceil(step / self.delta_t) * self.delta_t
        return next_update - step < self.grad_accumulation and self.is_update_step(next_update)

    def dense_step(self, step: int) -> bool:
        """A step of the dense-gradient window, or an update step."""
        return self._needs_dense_grad(step) or self.is_update_step(step)

    @torch.no_grad()
    def _capture_dense_grads(self) -> None:
        """Adds this step's gradients to the dense-gradient window. A step whose gradients
        hold inf/NaN (an fp16 GradScaler overflow: the optimizer skips it too) is left out,
        so it cannot steer growth."""
        grads = {n: w.grad for n, w in self.weights.items() if w.grad is not None}
        if not grads:
            return
        # one fused pass: a norm is inf/NaN when its tensor holds one (or would overflow
        # float32, which no usable gradient does; the norm of fp16 gradients is taken in
        # float32, since a finite fp16 gradient can have a norm above 65504)
        norms = torch._foreach_norm(list(grads.values()), 2, dtype=torch.float32)
        finite = torch.stack(norms).isfinite().all()
        if not bool(finite):
            self.nonfinite_grad_steps += 1
            return
        for name, grad in grads.items():
            if name in self.dense_grads:
                self.dense_grads[name].add_(grad)
            else:
                self.dense_grads[name] = grad.detach().clone()

    def before_step(self) -> None:
        coming = self.step + 1
        dense_grad_step = self._needs_dense_grad(coming)
        if dense_grad_step:
            self._capture_dense_grads()
        self._skipped = self.skip_optimizer_step and self.is_update_step(coming)
        if self._skipped:
            self.update_topology(coming)
            if self.optimizer is not None:
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
            else:
                params = list(self.model.parameters())
            for param in params:  # an optimizer skips parameters without a gradient
                param.grad = None
        else:
            self.mask_set.before_optimizer_step()
        self._dense_grad_step = dense_grad_step

    def after_step(self) -> None:
        self.step += 1
        self.mask_set.apply()
        self._count_train_macs(dense_grad=self._dense_grad_step)
        self.update(self.step)
        self._skipped = False

    def update(self, step: int) -> None:
        if self.is_update_step(step) and not self._skipped:
            self.update_topology(step)

    # ----------------------------------------------------------------- topology
    def update_layer(
        self,
        name: str,
        weight: torch.Tensor,
        mask: torch.Tensor,
        dense_grad: torch.Tensor | None,
        drop_fraction: float,
    ) -> torch.Tensor:
        """Layer ``name``'s new boolean mask after dropping ``drop_fraction`` of its active
        weights ``mask`` (boolean); ``dense_grad`` is the summed dense gradient, None for
        a method that does not need it. Subclasses define it."""
        raise NotImplementedError

    @torch.no_grad()
    def update_topology(self, step: int) -> None:
        """Drops and grows every masked layer. A layer without a dense gradient (unused in
        the forward pass) keeps its mask; if no step of the window had a finite gradient,
        the update is skipped and counted in ``update/skipped_nonfinite``."""
        if not self.weights:
            return
        self.check_weights_current()
        if self.needs_dense_grad and not self.dense_grads:
            self._skip_update()
            return
        start = time.perf_counter()
        fraction = self.drop_fraction(step)
        new_masks = {}
        for name, weight in self.weights.items():
            if self.needs_dense_grad and name not in self.dense_grads:
                continue
            old = self.masks[name].bool()
            new_masks[name] = self.update_layer(
                name, weight, old, self.dense_grads.get(name), fraction
            )
        self.dense_grads.clear()
        self.nonfinite_grad_steps = 0
        grown_total = self.mask_set.set(new_masks)
        kept = self.kept_counts  # one count per layer, not one pass over all per layer
        active_total = sum(kept[name] for name in new_masks)
        if any(w.is_cuda for w in self.weights.values()):
            torch.cuda.synchronize()
        self.last_update = {
            "update/drop_fraction": fraction,
            "update/changed_fraction": grown_total / max(active_total, 1),
            "update/time_ms": 1000.0 * (time.perf_counter() - start),
            "update/step": float(step),
        }

    def _skip_update(self) -> None:
        """An update without a dense gradient: skipped and counted when the window's steps
        were all left out for inf/NaN gradients, an error when no gradient was seen."""
        if not self.nonfinite_grad_steps:
            raise RuntimeError(
                "an update needs the dense gradient, but no gradient was seen: "
                "call before_step() after backward()"
            )
        self.nonfinite_grad_steps = 0
        self.skipped_updates += 1

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["dense_grads"] = {n: g.to("cpu", copy=True) for n, g in self.dense_grads.items()}
        state["nonfinite_grad_steps"] = self.nonfinite_grad_steps
        state["skipped_updates"] = self.skipped_updates
        return state

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.dense_grads = {
            n: g.to(self.weights[n].device, copy=True)
            for n, g in state.get("dense_grads", {}).items()
        }
        self.nonfinite_grad_steps = int(state.get("nonfinite_grad_steps", 0))
        self.skipped_updates = int(state.get("skipped_updates", 0))

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "update/skipped_nonfinite": float(self.skipped_updates)}
