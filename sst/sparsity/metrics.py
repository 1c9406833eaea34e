"""What a method's masks look like, as numbers to log: sparsity, per-layer density, fan-in
and neurons, ITOP rate and FLOPs (RigL paper, appendix H).

Everything here is derived from the masks alone, so it is computed once per topology: the
cache follows the ``MaskSet``'s count cache, which the mask set drops on every change, and
logging between two updates costs no device synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .masks import MaskSet

ROW_METRICS = ("density", "fan_in", "active_neurons", "ablated_neurons")


class MaskMetrics:
    """The metrics of ``mask_set`` over the ``candidates`` of ``model``.

    Args:
        model: the (unwrapped) model, for the share of all its parameters.
        candidates: layer name -> weight of every candidate layer (masked or dense).
        mask_set: the masks.
        macs: per-sample MACs of every weight layer (``flops.weight_layer_macs``), or None
            to skip the FLOP metrics.
        ablated_neurons: layer name -> output neurons the policy removed.
    """

    def __init__(
        self,
        model: nn.Module,
        candidates: Mapping[str, torch.Tensor],
        mask_set: MaskSet,
        macs: Mapping[str, float] | None,
        ablated_neurons: Callable[[str], int],
    ) -> None:
        self.model = model
        self.candidates = candidates
        self.mask_set = mask_set
        self.macs = macs
        self.ablated_neurons = ablated_neurons
        self._cache: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, computed once per topology."""
        counts = self.mask_set.neuron_counts()
        if self._cache is None or self._cache[0] is not counts:
            self._cache = (counts, {})
        values = self._cache[1]
        if key not in values:
            values[key] = compute()
        return values[key]

    def sparse_macs(self) -> tuple[float, float] | None:
        """(sparse, dense) per-sample MACs of all weight layers under the current masks."""
        return self.cached("macs", self._sparse_macs)

    def _sparse_macs(self) -> tuple[float, float] | None:
        if self.macs is None:
            return None
        masks = self.mask_set.masks
        dense = sum(self.macs.values())
        saved = sum(
            self.macs.get(n, 0.0) * (1.0 - c / masks[n].numel())
            for n, c in self.mask_set.kept_counts().items()
        )
        return dense - saved, dense

    def layer_stats(self) -> list[dict]:
        """One row per candidate layer: name, shape, density, fan-in (mean active weights
        of the living neurons), active and ablated neurons."""
        return [dict(row) for row in self.cached("layer_stats", self._layer_stats)]

    def _layer_stats(self) -> list[dict]:
        per_neuron = self.mask_set.neuron_counts()
        counts = self.mask_set.kept_counts()
        rows = []
        for name, weight in self.candidates.items():
            n_out = weight.shape[0]
            if name in per_neuron:
                active_neurons = int((per_neuron[name] > 0).sum().item())
                fan_in = counts[name] / active_neurons if active_neurons else 0.0
                density = counts[name] / weight.numel()
            else:
                active_neurons, fan_in, density = n_out, float(weight[0].numel()), 1.0
            rows.append(
                {
                    "layer": name,
                    "shape": list(weight.shape),
                    "density": density,
                    "fan_in": fan_in,
                    "active_neurons": active_neurons,
                    "ablated_neurons": self.ablated_neurons(name),
                }
            )
        return rows

    def topology(self) -> dict[str, float]:
        """Global sparsity, ITOP rate, the per-layer rows and the inference FLOPs (a copy)."""
        return dict(self.cached("metrics", self._topology))

    def _topology(self) -> dict[str, float]:
        counts = self.mask_set.kept_counts()
        masks = self.mask_set.masks
        candidate_total = sum(p.numel() for p in self.candidates.values())
        inactive = sum(masks[n].numel() - c for n, c in counts.items())
        all_params = sum(p.numel() for p in self.model.parameters())
        out: dict[str, float] = {
            "sparsity/masked_layers": inactive / candidate_total,
            "sparsity/all_params": inactive / all_params,
        }
        itop = self.mask_set.itop_rate()
        if itop is not None:
            out["itop_rate"] = itop
        for row in self.cached("layer_stats", self._layer_stats):
            for key in ROW_METRICS:
                out[f"{key}/{row['layer']}"] = row[key]
        macs = self.sparse_macs()
        if macs is not None:
            out["flops/inference_rel"] = macs[0] / macs[1]
        return out

    def train_step_macs(self, dense_grad: bool) -> float:
        """Per-sample MACs of one training step (RigL paper, appendix H): 3 f_S (forward,
        input and weight gradients), or 2 f_S + f_D for a step that needs the dense
        gradient; 0 without FLOP accounting."""
        macs = self.sparse_macs()
        if macs is None:
            return 0.0
        sparse, dense = macs
        return 2 * sparse + (dense if dense_grad else sparse)

    def train_rel(self, train_macs: float, steps: int) -> float | None:
        """Training FLOPs of ``steps`` steps relative to dense training (None without FLOP
        accounting or before the first step)."""
        macs = self.sparse_macs()
        if macs is None or not steps:
            return None
        return train_macs / (3 * macs[1] * steps)
