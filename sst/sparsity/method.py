"""The sparsity engine's policy side: which layers, how dense, which masks, when they change.

A method is optimizer-like and knows nothing of the training loop::

    method = RigL(model, optimizer, density=0.1, total_steps=T)
    loss.backward(); method.before_step(); optimizer.step(); method.after_step()

``before_step`` masks the gradients (a dynamic method first keeps the dense gradient);
``after_step`` re-applies the masks to the weights and calls the policy's ``update(step)``.
The masks themselves and their enforcement live in a ``MaskSet`` (``masks.py``); a policy
decides the first masks (``initial_masks``), changes them (``update``, through
``self.mask_set.set``), and may add a forward-time mask (``forward_mask``).

A new method is a subclass that overrides some of ``initial_masks``, ``update``,
``forward_mask``, ``stages`` and ``state_dict``/``load_state_dict`` for its own state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from . import distributions
from .checks import check_fraction
from .flops import weight_layer_macs
from .layers import matching, select_layers, unwrap
from .masks import SUPPORTED_OPTIMIZERS, MaskSet, check_optimizer
from .stages import Stage, single_stage
from .structure import Structure

__all__ = ["SUPPORTED_OPTIMIZERS", "Dense", "SparsityMethod", "Static", "magnitude_masks"]


def magnitude_masks(
    weights: Mapping[str, torch.Tensor], layer_density: Mapping[str, float], structure: Structure
) -> dict[str, torch.Tensor]:
    """Per layer, the largest |w| that the structure allows at the layer's density:
    int(numel * density) weights (unstructured), k = int(numel * density) // n_out per
    neuron (constant fan-in), N per group of M (N:M). Boolean, weight-shaped."""
    return {
        name: structure.top_mask(
            w.detach().abs().float(), structure.capacity(w.shape, layer_density[name])
        )
        for name, w in weights.items()
    }


class SparsityMethod:
    """Sparsity at a global ``density``, with masks of the chosen structure and
    distribution. This base class never changes its masks (``Static``).

    Args:
        model: any ``nn.Module`` (DDP / compiled wrappers are unwrapped).
        optimizer: the optimizer over the model's parameters; its per-weight state is zeroed
            where weights are inactive. None for mask-only use.
        density: fraction of the candidate layers' weights kept, in (0, 1].
        total_steps: optimizer steps of the run (needed by methods with a schedule).
        distribution: one of ``distributions.DISTRIBUTIONS``. ``global_magnitude`` keeps
            the largest |w| under one threshold over all free layers; every other
            distribution sets per-layer densities and the first masks are random.
        structure: ``unstructured``, ``constant_fanin`` or ``nm`` (with ``n``, ``m``).
        layer_types / include / exclude: which layers are candidates (regexes on names).
        dense_first / dense_last: keep the first / last candidate layer dense (counted in
            the budget, as in the RigL code).
        densities: explicit ``{regex: density}`` per-layer overrides.
        sparse_init: re-draw active weights from N(0, 2 / fan_in_active) per neuron
            (He init with the sparse fan-in, Evci et al. 2022 "Gradient flow in sparse NNs").
        seed: seeds the method's own generator (random masks, SET growth): equal seeds give
            equal masks on every rank.
        example_input: a batch (size 1 is enough) for FLOP accounting; None skips FLOPs.
    """

    needs_dense_grad = False

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        density: float,
        total_steps: int | None = None,
        distribution: str = "erk",
        erk_power: float = 1.0,
        structure: str = "unstructured",
        n: int = 2,
        m: int = 4,
        layer_types: Sequence[str] = ("Linear", "Conv2d"),
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        dense_first: bool = False,
        dense_last: bool = False,
        densities: Mapping[str, float] | None = None,
        sparse_init: bool = False,
        seed: int = 0,
        example_input: torch.Tensor | None = None,
    ) -> None:
        check_fraction("density", density, low_open=True)
        check_optimizer(optimizer)
        self.model = unwrap(model)
        self.optimizer = optimizer
        self.density = density
        self.total_steps = total_steps
        self.structure = Structure(structure, n, m)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0

        self.candidates = select_layers(
            self.model, layer_types=layer_types, include=include, exclude=exclude
        )
        names = list(self.candidates)
        dense = ([names[0]] if dense_first else []) + ([names[-1]] if dense_last else [])
        fixed = {}
        for pattern, value in (densities or {}).items():
            for name in matching(names, [str(pattern)], "densities"):
                fixed[name] = float(value)
        self.distribution = distribution
        self.dense_layers = dense  # kept dense: dense_first / dense_last
        self.fixed_densities = fixed  # from ``densities``
        self.layer_density = self._distribute(distribution, density, dense, fixed, erk_power)
        weights = {n: p for n, p in self.candidates.items() if self.layer_density[n] < 1.0}
        for name, weight in weights.items():
            self.structure.check_layer(name, weight.shape, self.layer_density[name])
        # kept weights per unit of the structure when every unit is alive
        self.capacity = {
            n: self.structure.capacity(w.shape, self.layer_density[n]) for n, w in weights.items()
        }
        self.weights = weights
        self.mask_set = MaskSet(self.model, weights, self.initial_masks(), optimizer)
        if sparse_init:
            self._sparse_reinit()
            self.mask_set.apply()
        self.macs = (
            weight_layer_macs(self.model, example_input) if example_input is not None else None
        )
        self.train_macs = 0.0
        self.last_update: dict[str, float] = {}
        if type(self).forward_mask is not SparsityMethod.forward_mask:
            self.mask_set.attach_forward_mask(self.forward_mask)

    # ----------------------------------------------------------------- the policy
    def initial_masks(self) -> dict[str, torch.Tensor]:
        """The first boolean masks: the largest |w| under ``global_magnitude``, else
        uniformly random masks of the structure at each layer's density."""
        if self.distribution == "global_magnitude":
            return magnitude_masks(self.weights, self.layer_density, self.structure)
        return {
            name: self.structure.random_mask(w.shape, self.layer_density[name], self.generator)
            for name, w in self.weights.items()
        }

    def update(self, step: int) -> None:
        """Called after optimizer step ``step`` (1-based) once the masks are re-applied;
        a policy that changes the topology calls ``self.mask_set.set`` here."""

    def forward_mask(self, name: str, weight: torch.Tensor) -> torch.Tensor | None:
        """A factor the layer's weight is multiplied by inside each training forward pass
        (not stored, not seen by the optimizer); None leaves the layer as it is. Policies
        that override it get it attached at construction."""
        return None

    def stages(self, steps_per_stage: int) -> list[Stage]:
        """The training stages this method asks the loop for, when the trainer's settings
        give ``steps_per_stage`` optimizer steps: one stage for every method but the
        multi-round ones (LR rewinding)."""
        return single_stage(steps_per_stage)

    def on_stage_start(self, stage: Stage) -> None:
        """Called by the loop before the first step of every stage."""

    # ----------------------------------------------------------------- the loop's calls
    def before_step(self) -> None:
        """Call after backward (and after AMP unscaling), before ``optimizer.step()``."""
        self.mask_set.mask_gradients()

    def after_step(self) -> None:
        """Call after ``optimizer.step()``."""
        self.step += 1
        self.mask_set.apply()
        self._count_train_macs(dense_grad=False)
        self.update(self.step)

    # ----------------------------------------------------------------- views of the masks
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Layer name -> 0/1 mask in the weight's dtype (the ``MaskSet``'s, not a copy)."""
        return self.mask_set.masks

    @property
    def kept_counts(self) -> dict[str, int]:
        return self.mask_set.kept_counts()

    def apply_masks(self) -> None:
        self.mask_set.apply()

    def mask_gradients(self) -> None:
        self.mask_set.mask_gradients()

    def check_weights_current(self) -> None:
        self.mask_set.check_weights_current()

    # ----------------------------------------------------------------- construction helpers
    def _distribute(self, distribution, density, dense, fixed, power) -> dict[str, float]:
        shapes = {n: tuple(p.shape) for n, p in self.candidates.items()}
        if self.structure.kind == "nm":
            target = self.structure.n / self.structure.m
            if abs(density - target) > 1e-9 or fixed:
                raise ValueError(
                    f"density={density} does not match N:M {self.structure.n}:{self.structure.m}"
                    f" (every masked layer has density {target:g}); set density={target:g}"
                )
            result = dict.fromkeys(shapes, target)
            result.update(dict.fromkeys(dense, 1.0))
            return result
        if distribution == "uniform":
            return distributions.uniform(shapes, density, dense=dense, fixed=fixed)
        if distribution == "uniform_uncompensated":
            return distributions.uniform(
                shapes, density, dense=dense, fixed=fixed, compensate=False
            )
        if distribution == "erk":
            return distributions.erk(shapes, density, dense=dense, power=power, fixed=fixed)
        if distribution == "er":
            return distributions.er(shapes, density, dense=dense, power=power, fixed=fixed)
        if distribution == "global_magnitude":
            weights = {n: p.detach() for n, p in self.candidates.items()}
            return distributions.global_magnitude(weights, density, dense=dense, fixed=fixed)
        if distribution == "explicit":
            missing = [n for n in shapes if n not in fixed and n not in dense]
            if missing:
                raise ValueError(
                    f"distribution=explicit needs a density for every layer: missing {missing}"
                )
            return {n: 1.0 if n in dense else fixed[n] for n in shapes}
        raise ValueError(
            f"distribution={distribution!r} is unknown: allowed values are "
            f"{distributions.DISTRIBUTIONS}"
        )

    @torch.no_grad()
    def _sparse_reinit(self) -> None:
        for name, weight in self.weights.items():
            rows = self.masks[name].reshape(weight.shape[0], -1)
            fan_in = torch.count_nonzero(rows, dim=1).unsqueeze(1).clamp(min=1)
            std = torch.sqrt(2.0 / fan_in)
            noise = torch.randn(rows.shape, generator=self.generator).to(weight.device)
            weight.copy_((noise * std).view(weight.shape).to(weight.dtype))

    # ----------------------------------------------------------------- accounting
    def _sparse_macs(self) -> tuple[float, float] | None:
        """(sparse, dense) per-sample MACs of all weight layers under the current masks."""
        if self.macs is None:
            return None
        counts = self.kept_counts
        dense = sum(self.macs.values())
        saved = sum(
            self.macs.get(n, 0.0) * (1.0 - c / self.masks[n].numel()) for n, c in counts.items()
        )
        return dense - saved, dense

    def _count_train_macs(self, dense_grad: bool) -> None:
        """RigL paper, appendix H: a step costs 3 f_S (forward, input and weight gradients);
        a step that needs the dense gradient costs 2 f_S + f_D."""
        macs = self._cached("macs", self._sparse_macs)
        if macs is None:
            return
        sparse, dense = macs
        self.train_macs += 2 * sparse + (dense if dense_grad else sparse)

    def _cached(self, key: str, compute):
        """A value derived from the masks, computed once per topology (the mask set drops
        its count cache on every change, and this cache follows it)."""
        counts = self.mask_set.neuron_counts()
        cache = getattr(self, "_derived", None)
        if cache is None or cache[0] is not counts:
            cache = (counts, {})
            self._derived = cache
        if key not in cache[1]:
            cache[1][key] = compute()
        return cache[1][key]

    # ----------------------------------------------------------------- observability
    def ablated_neurons(self, name: str) -> int:
        """Output neurons of layer ``name`` that the policy removed (SRigL)."""
        return 0

    def layer_stats(self) -> list[dict]:
        """One row per candidate layer: name, shape, density, fan-in (mean active weights
        of the living neurons), active and ablated neurons."""
        return [dict(row) for row in self._cached("layer_stats", self._layer_stats)]

    def _layer_stats(self) -> list[dict]:
        per_neuron = self.mask_set.neuron_counts()
        counts = self.kept_counts
        rows = []
        for name, weight in self.candidates.items():
            n_out = weight.shape[0]
            if name in self.masks:
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

    def _topology_metrics(self) -> dict[str, float]:
        counts = self.kept_counts
        candidate_total = sum(p.numel() for p in self.candidates.values())
        inactive = sum(self.masks[n].numel() - c for n, c in counts.items())
        all_params = sum(p.numel() for p in self.model.parameters())
        out: dict[str, float] = {
            "sparsity/masked_layers": inactive / candidate_total,
            "sparsity/all_params": inactive / all_params,
        }
        itop = self.mask_set.itop_rate()
        if itop is not None:
            out["itop_rate"] = itop
        for row in self._cached("layer_stats", self._layer_stats):
            name = row["layer"]
            for key in ("density", "fan_in", "active_neurons", "ablated_neurons"):
                out[f"{key}/{name}"] = row[key]
        macs = self._cached("macs", self._sparse_macs)
        if macs is not None:
            out["flops/inference_rel"] = macs[0] / macs[1]
        return out

    def metrics(self) -> dict[str, float]:
        """Global and per-layer metrics. Between topology updates they come from a cache,
        so calling this at every log step costs no device synchronisation."""
        self.check_weights_current()
        out = dict(self._cached("metrics", self._topology_metrics))
        macs = self._cached("macs", self._sparse_macs)
        if macs is not None and self.step:
            out["flops/train_rel"] = self.train_macs / (3 * macs[1] * self.step)
        out.update(self.last_update)
        return out

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """A snapshot: its tensors are copies, so later training never changes it."""
        return {
            **self.mask_set.state_dict(),
            "step": self.step,
            "generator": self.generator.get_state(),
            "train_macs": self.train_macs,
            "last_update": dict(self.last_update),
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.mask_set.load_state_dict(state)
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        self.train_macs = float(state["train_macs"])
        self.last_update = dict(state["last_update"])


class Static(SparsityMethod):
    """Static sparse training: the initial mask is kept for the whole run."""


class Dense(SparsityMethod):
    """The dense baseline, with the same metrics as the sparse methods."""

    def __init__(self, model: nn.Module, optimizer=None, *, density: float = 1.0, **kwargs):
        if density != 1.0:
            raise ValueError(f"the dense method needs density=1.0, got density={density}")
        kwargs.pop("distribution", None)
        super().__init__(model, optimizer, density=1.0, distribution="uniform", **kwargs)
