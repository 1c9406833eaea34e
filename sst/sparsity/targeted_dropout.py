"""Targeted dropout (Gomez et al. 2019, "Learning Sparse Networks Using Targeted Dropout")."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .checks import check_choice, check_fraction, check_total_steps
from .layers import LAYER_TYPES, weight_layers
from .mask_ops import rowwise_topk_mask
from .method import SparsityMethod
from .stages import Stage
from .structure import layer_budget

VARIANTS = ("weight", "unit")


class TargetedDropout(SparsityMethod):
    """Trains dense while dropping, in every training forward pass, each *candidate* weight
    with probability ``drop_rate`` (alpha); at the end the candidates are pruned and the
    network is evaluated pruned.

    The targeting rate gamma of a layer is 1 - its density (``density`` and the
    ``distribution`` give the layers' densities, as for every method), so the pruned
    network has the run's density:

    - ``variant=weight``: in every unit of the structure the bottom gamma of |w| are
      candidates: per output neuron under ``constant_fanin`` (the paper's weight variant),
      per group of M under ``nm`` (the targeting of Yu et al. 2019's intragroup sparsity,
      leaving N per group), over the whole layer under ``unstructured``.
    - ``variant=unit``: the bottom gamma of the output neurons by the L2 norm of their
      weights are candidate units. In a forward pass every weight of a candidate unit is
      dropped on its own draw, with probability alpha: a candidate neuron loses about
      alpha of its weights, not all of them (as for-ai/TD@877e3b9
      ``models/utils/dropouts.py`` ``targeted_unit_dropout`` draws one mask entry per
      weight). The final prune removes the candidate neurons whole. Not under ``nm``; the
      model's output layer must stay dense, or classes would be pruned.

    Dropping multiplies the weight inside the forward pass (``forward_mask``): the stored
    weights are never modified, a dropped weight gets no gradient in that pass, there is no
    1 / (1 - alpha) rescaling, and evaluation passes drop nothing. The draws come from a
    generator on the weights' device, seeded by ``seed`` and saved in the state, so a
    resumed run drops the same weights. ``ramp`` grows gamma and alpha linearly from 0 at
    the first step to their values at ``total_steps`` (the paper's ramping variant).

    The run's last stage has no steps (``stages``): the loop evaluates the unpruned network
    at the end of training (stage 0, labelled ``before_prune``: ``test_acc_before_prune``
    in ``summary.json``), then starts the last stage, which prunes (``prune``), and
    evaluates again. In a plain loop, call ``prune()`` after the last step.

    Args (besides ``SparsityMethod``'s):
        total_steps: optimizer steps of the run (required).
        drop_rate: alpha, the probability that a candidate is dropped in a forward pass.
        variant: ``weight`` or ``unit``.
        ramp: grow gamma and alpha from 0 over the run.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        total_steps: int | None = None,
        drop_rate: float = 0.5,
        variant: str = "weight",
        ramp: bool = False,
        seed: int = 0,
        **kwargs,
    ) -> None:
        check_total_steps(total_steps)
        check_fraction("drop_rate", drop_rate)
        check_choice("variant", variant, VARIANTS)
        if variant == "unit" and kwargs.get("structure") == "nm":
            raise ValueError(
                "variant=unit targets and finally prunes whole neurons, which structure=nm "
                "(N of every M weights) cannot hold: use variant=weight with structure=nm"
            )
        self.variant = variant
        super().__init__(
            model, optimizer, density=density, total_steps=total_steps, seed=seed, **kwargs
        )
        if variant == "unit":
            output_layer = list(weight_layers(self.model, list(LAYER_TYPES)))[-1]
            if output_layer in self.weights:
                raise ValueError(
                    f"variant=unit would prune output neurons (classes) of the output layer "
                    f"{output_layer!r}: keep it dense (dense_last=true) or exclude it"
                )
        self.drop_rate = drop_rate
        self.ramp = ramp
        self.pruned = False
        device = next(iter(self.weights.values())).device if self.weights else "cpu"
        self.drop_generator = torch.Generator(device=device).manual_seed(seed)

    # ----------------------------------------------------------------- targeting
    def rates(self) -> tuple[float, float]:
        """(share of each layer's final candidates targeted now, alpha now)."""
        if not self.ramp:
            return 1.0, self.drop_rate
        progress = min(self.step / self.total_steps, 1.0)
        return progress, progress * self.drop_rate

    def kept_units(self, name: str, weight: torch.Tensor) -> int:
        """Output neurons the unit variant keeps: int(n_out * density), at least one."""
        return max(1, layer_budget(weight.shape[0], self.layer_density[name]))

    @torch.no_grad()
    def targeted(self, name: str, weight: torch.Tensor, share: float = 1.0) -> torch.Tensor:
        """Boolean mask of the layer's candidates: ``share`` of its final candidate count,
        lowest |w| first (weight variant) or lowest neuron L2 norm first (unit variant)."""
        if self.variant == "unit":
            n_out = weight.shape[0]
            count = int(share * (n_out - self.kept_units(name, weight)))
            norms = weight.detach().reshape(n_out, -1).float().norm(dim=1)
            rows = rowwise_topk_mask(-norms.unsqueeze(0), torch.tensor([count]))[0]
            return rows.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight)
        units = self.structure.units(weight.detach().abs().float())
        capacity = self.structure.capacity(weight.shape, self.layer_density[name])
        count = int(share * (units.shape[1] - capacity))
        counts = torch.full((units.shape[0],), count, device=units.device)
        return self.structure.from_units(rowwise_topk_mask(-units, counts), weight.shape)

    def forward_mask(self, name: str, weight: torch.Tensor) -> torch.Tensor | None:
        share, alpha = self.rates()
        if self.pruned or alpha <= 0.0 or share <= 0.0:
            return None
        targeted = self.targeted(name, weight, share)
        draws = torch.rand(
            weight.shape, generator=self.drop_generator, device=self.drop_generator.device
        )
        dropped = targeted & (draws.to(weight.device) < alpha)
        return (~dropped).to(weight.dtype)

    # ----------------------------------------------------------------- the final prune
    def initial_masks(self) -> dict[str, torch.Tensor]:
        return {n: torch.ones_like(w, dtype=torch.bool) for n, w in self.weights.items()}

    @torch.no_grad()
    def prune(self) -> None:
        """Removes every layer's candidates (at the full targeting rate); dropping stops."""
        masks = {n: ~self.targeted(n, w) for n, w in self.weights.items()}
        self.mask_set.set(masks)
        self.pruned = True
        self.last_update = {"prune/step": float(self.step)}

    def stages(self, steps_per_stage: int) -> list[Stage]:
        """Training, then a last stage of no steps that prunes (see the class docstring)."""
        return [
            Stage(0, 0, steps_per_stage, lr_start=0, label="before_prune"),
            Stage(1, steps_per_stage, steps_per_stage, lr_start=0),
        ]

    def on_stage_start(self, stage: Stage) -> None:
        if stage.index == 1 and not self.pruned:
            self.prune()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "pruned": self.pruned,
            "drop_generator": self.drop_generator.get_state(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.pruned = bool(state["pruned"])
        self.drop_generator.set_state(state["drop_generator"])
