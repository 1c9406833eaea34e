"""SRigL: RigL under a constant fan-in constraint, with neuron ablation
(Lasby et al., ICLR 2024, "Dynamic Sparse Training with Structured Sparsity")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .checks import check_at_least, check_choice
from .drop_grow import break_zero_ties, drop_smallest, regrow
from .dynamic import DynamicSparsity
from .layers import LAYER_TYPES, matching, weight_layers
from .mask_ops import row_counts, topk_mask
from .structure import Structure, layer_budget

DENOMINATORS = ("sparse", "dense")


def check_ablation_settings(gamma_sal: float, ablation_denominator: str) -> None:
    """gamma_sal >= 0; from 1 on it is a count of weights, so it must be a whole number."""
    check_at_least("gamma_sal", gamma_sal, 0)
    if gamma_sal >= 1 and float(gamma_sal) != int(gamma_sal):
        raise ValueError(
            f"gamma_sal={gamma_sal}: values >= 1 are a count of salient weights and must be "
            "whole numbers; below 1 it is a fraction of the fan-in"
        )
    check_choice("ablation_denominator", ablation_denominator, DENOMINATORS)


def ablation_threshold(
    gamma_sal: float, fan_in: int, salient_counts: torch.Tensor, min_neurons: int
) -> int:
    """Salient weights a neuron needs to survive (SRigL section 4.2).

    max(1, int(gamma_sal * fan_in)) for 0 < gamma_sal < 1, gamma_sal itself for
    gamma_sal >= 1 (an absolute count). Minimum-neurons guard: with the counts sorted in
    descending order, if the count at 0-based position ``min_neurons`` is below the
    threshold, the threshold drops to that count, so at least min_neurons + 1 neurons live.
    """
    threshold = int(gamma_sal) if gamma_sal >= 1 else max(1, int(gamma_sal * fan_in))
    if min_neurons < salient_counts.numel():
        guard = int(torch.sort(salient_counts, descending=True).values[min_neurons].item())
        threshold = min(threshold, guard)
    return threshold


CONSTANT_FANIN = Structure("constant_fanin")


def update_mask(
    weight: torch.Tensor,
    mask: torch.Tensor,
    dense_grad: torch.Tensor,
    drop_fraction: float,
    gamma_sal: float,
    *,
    density: float,
    protected: bool = False,
    ablation_denominator: str = "sparse",
    tie_generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SRigL update of one layer (Lasby et al., ICLR 2024, section 4 and the SRigL
    code's order); the rule the ``SRigL`` method runs on every masked layer. Returns (new
    boolean mask, ablated-neuron vector).

    With budget = int(numel * density), k0 = budget // n_out (the un-ablated constant
    fan-in, fixed for the run) and m = budget // dense_fan_in:

    1. n_drop = int(n_active * f), n_keep = n_active - n_drop. If fewer than n_keep active
       weights are non-zero, n_keep = that count and n_drop = n_active - n_keep (exact
       zeros are dropped first).
    2. A weight is salient if among the top n_keep |w| of the active weights or the top
       n_drop |dense grad| of the layer; count salient weights per output neuron.
    3. Neurons with fewer salient weights than ``ablation_threshold`` are ablated (never in
       a protected layer; gamma_sal = 0 turns ablation off): max(1, int(gamma_sal * k0))
       for ``"sparse"``, max(1, int(gamma_sal * dense_fan_in)) for ``"dense"``, lowered by
       the guard so that at least m + 1 neurons live.
    4. The survivors share the budget: k' = budget // (n_out - n_ablated).
    5. Drop: the ablated neurons' weights go first and count toward the n_drop removals;
       the n_keep largest non-zero |w| among the survivors' active weights are kept (all of
       them if fewer). Trim each survivor to its k' largest kept |w|, then grow it back to
       k' by largest |dense grad| among its positions not kept. New weights start at 0.
       Zero-gradient candidates tie; ``tie_generator`` orders them at random
       (``break_zero_ties``), None leaves ``torch.topk``'s order. Saliency (step 2) always
       uses the plain |dense grad|.
    """
    check_ablation_settings(gamma_sal, ablation_denominator)
    n_out, dense_fan_in = weight.shape[0], weight[0].numel()
    budget = layer_budget(weight.numel(), density)
    nonzero, n_keep, n_drop = _keep_counts(weight, mask, drop_fraction)
    kept = _keep_largest(weight, nonzero, n_keep)
    grad_magnitude = dense_grad.abs().float()
    ablated = torch.zeros(n_out, dtype=torch.bool, device=weight.device)
    if gamma_sal > 0 and not protected:
        fan_in = budget // n_out if ablation_denominator == "sparse" else dense_fan_in
        salient = kept | topk_mask(grad_magnitude, n_drop)
        counts = row_counts(salient.reshape(n_out, -1))
        ablated = counts < ablation_threshold(gamma_sal, fan_in, counts, budget // dense_fan_in)
        kept = _drop_ablated(weight, nonzero, kept, ablated, n_keep)
    n_alive = n_out - int(torch.count_nonzero(ablated).item())
    capacity = torch.where(ablated, 0, budget // n_alive)
    grow_scores = break_zero_ties(grad_magnitude, tie_generator)
    return regrow(weight, kept, grow_scores, CONSTANT_FANIN, capacity), ablated


def _keep_counts(
    weight: torch.Tensor, mask: torch.Tensor, drop_fraction: float
) -> tuple[torch.Tensor, int, int]:
    """Step 1: (the active non-zero weights, n_keep, n_drop)."""
    active = mask.bool()
    n_active = int(torch.count_nonzero(active).item())
    nonzero = active & (weight.detach() != 0)
    n_nonzero = int(torch.count_nonzero(nonzero).item())
    n_keep = min(n_active - int(n_active * drop_fraction), n_nonzero)
    return nonzero, n_keep, n_active - n_keep


def _keep_largest(weight: torch.Tensor, candidates: torch.Tensor, n_keep: int) -> torch.Tensor:
    """The ``n_keep`` largest |w| among the boolean ``candidates`` (all, if fewer)."""
    return drop_smallest(weight, candidates, int(torch.count_nonzero(candidates).item()) - n_keep)


def _drop_ablated(
    weight: torch.Tensor,
    nonzero: torch.Tensor,
    kept: torch.Tensor,
    ablated: torch.Tensor,
    n_keep: int,
) -> torch.Tensor:
    """Step 5's drop: the ablated neurons' weights count toward the n_drop removals, so the
    survivors keep their own top n_keep; ``kept`` itself when no ablated neuron held a
    kept weight."""
    n_out = weight.shape[0]
    if not bool(row_counts(kept.reshape(n_out, -1))[ablated].any()):
        return kept
    survivors = (nonzero.reshape(n_out, -1) & ~ablated.unsqueeze(1)).view(nonzero.shape)
    return _keep_largest(weight, survivors, n_keep)


class SRigL(DynamicSparsity):
    """RigL with constant fan-in and dynamic neuron ablation, each layer by ``update_mask``.

    Args (besides ``DynamicSparsity``'s):
        gamma_sal: ablation threshold; 0 turns ablation off ("SRigL without ablation"),
            0 < gamma_sal < 1 is a fraction of the denominator, >= 1 an absolute count.
            The paper uses 0.3 for CNNs and 0.95 for ViT.
        ablation_denominator: ``sparse`` (the layer's un-ablated constant fan-in k0 =
            int(numel * density) // n_out, the paper's default)
            or ``dense`` (the dense fan-in).
        protected: regexes of layers never ablated. None protects the output layer (the
            model's last weight layer, if it is sparse) as the paper does; the SRigL code
            protects nothing, which ``protected=[]`` reproduces.
    """

    needs_dense_grad = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        gamma_sal: float = 0.3,
        ablation_denominator: str = "sparse",
        protected: Sequence[str] | None = None,
        structure: str = "constant_fanin",
        **kwargs,
    ) -> None:
        if structure != "constant_fanin":
            raise ValueError(f"SRigL needs structure=constant_fanin, got structure={structure!r}")
        check_ablation_settings(gamma_sal, ablation_denominator)
        super().__init__(model, optimizer, density=density, structure=structure, **kwargs)
        self.gamma_sal = gamma_sal
        self.ablation_denominator = ablation_denominator
        names = list(self.candidates)
        if protected is None:  # the model's output layer, when it is a candidate
            output_layer = list(weight_layers(self.model, list(LAYER_TYPES)))[-1]
            self.protected = {output_layer} & set(names)
        else:
            self.protected = set(matching(names, protected, "protected"))
        self.ablated = {
            n: torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
            for n, w in self.weights.items()
        }

    def update_layer(
        self,
        name: str,
        weight: torch.Tensor,
        mask: torch.Tensor,
        dense_grad: torch.Tensor | None,
        drop_fraction: float,
    ) -> torch.Tensor:
        """``update_mask`` with this layer's settings; keeps its ablated neurons."""
        assert dense_grad is not None
        new_mask, ablated = update_mask(
            weight,
            mask,
            dense_grad,
            drop_fraction,
            self.gamma_sal,
            density=self.layer_density[name],
            protected=name in self.protected,
            ablation_denominator=self.ablation_denominator,
            tie_generator=self.tie_generator,
        )
        self.ablated[name] = ablated
        return new_mask

    def ablated_neurons(self, name: str) -> int:
        return int(self.ablated[name].sum().item()) if name in self.ablated else 0

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["ablated"] = {n: a.to("cpu", copy=True) for n, a in self.ablated.items()}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.ablated = {
            n: a.to(self.weights[n].device, copy=True) for n, a in state["ablated"].items()
        }
