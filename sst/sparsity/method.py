"""The sparsity engine: layer choice, per-layer densities, masks and their enforcement.

A method is optimizer-like and knows nothing of the training loop::

    method = RigL(model, optimizer, density=0.1, total_steps=T)
    loss.backward(); method.before_step(); optimizer.step(); method.after_step()

``before_step`` keeps the dense gradient when a coming update needs it, then masks the
gradients; ``after_step`` re-applies the masks to the weights and, on update steps, changes
the topology. Masks are explicit state (``state_dict``), never inferred from zeros.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from . import distributions
from .flops import weight_layer_macs
from .layers import matching, select_layers, unwrap, weight_owner
from .mask_ops import as_float
from .structure import Structure

# Optimizers whose state is elementwise per parameter, so masking it is exact.
SUPPORTED_OPTIMIZERS = (
    "SGD",
    "Adam",
    "AdamW",
    "NAdam",
    "RAdam",
    "Adamax",
    "RMSprop",
    "Adagrad",
    "Adadelta",
)


class SparsityMethod:
    """Static sparsity at a global ``density``: a random mask of the chosen structure and
    distribution, kept fixed. Subclasses change the topology (``DynamicSparsity``).

    Args:
        model: any ``nn.Module`` (DDP / compiled wrappers are unwrapped).
        optimizer: the optimizer over the model's parameters; its per-weight state is zeroed
            where weights are inactive. None for mask-only use.
        density: fraction of the candidate layers' weights kept, in (0, 1].
        distribution: one of ``distributions.DISTRIBUTIONS``.
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
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density={density} is out of range: allowed values are in (0, 1]")
        if optimizer is not None and type(optimizer).__name__ not in SUPPORTED_OPTIMIZERS:
            raise ValueError(
                f"optimizer {type(optimizer).__name__} is not supported: its state cannot be "
                f"masked safely; supported optimizers are {SUPPORTED_OPTIMIZERS}"
            )
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
            for name in matching(names, [pattern], "densities"):
                fixed[name] = float(value)
        self.distribution = distribution
        self.layer_density = self._distribute(distribution, density, dense, fixed, erk_power)
        self.weights = {n: p for n, p in self.candidates.items() if self.layer_density[n] < 1.0}
        self._owners = {n: weight_owner(self.model, n) for n in self.weights}
        for name, weight in self.weights.items():
            self.structure.check_layer(name, weight.shape, self.layer_density[name])

        self.masks: dict[str, torch.Tensor] = {}
        self.capacity: dict[str, int] = {}
        for name, weight in self.weights.items():
            self.capacity[name] = self.structure.capacity(weight.shape, self.layer_density[name])
            mask = self.structure.random_mask(
                weight.shape, self.layer_density[name], self.generator
            )
            self.masks[name] = as_float(mask, weight.dtype).to(weight.device)
        self.ever_active = {n: m.bool() for n, m in self.masks.items()}
        self._weight_list = list(self.weights.values())
        self._topology_changed()
        if sparse_init:
            self._sparse_reinit()
        self.apply_masks()
        for name, weight in self.weights.items():  # an optimizer that already has state
            self._mask_optimizer_state(weight, self.masks[name].bool())

        self.macs = (
            weight_layer_macs(self.model, example_input) if example_input is not None else None
        )
        self.train_macs = 0.0
        self.last_update: dict[str, float] = {}

    # ----------------------------------------------------------------- construction
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

    # ----------------------------------------------------------------- enforcement
    # Both run every step: on a small model their Python cost is comparable to the kernels',
    # so they use the aligned lists kept by _topology_changed and one fused call each.
    def apply_masks(self) -> None:
        """weight *= mask for every masked layer."""
        if self._mask_list:
            with torch.no_grad():
                torch._foreach_mul_(self._weight_list, self._mask_list)

    def mask_gradients(self) -> None:
        """grad *= mask for every masked layer that has a gradient."""
        grads = [p.grad for p in self._weight_list]
        if any(g is None for g in grads):
            pairs = [(g, m) for g, m in zip(grads, self._mask_list, strict=True) if g is not None]
            grads, masks = [g for g, _ in pairs], [m for _, m in pairs]
        else:
            masks = self._mask_list
        if grads:
            torch._foreach_mul_(grads, masks)

    @torch.no_grad()
    def _mask_optimizer_state(self, weight: torch.Tensor, keep: torch.Tensor) -> None:
        if self.optimizer is None:
            return
        for key, value in self.optimizer.state.get(weight, {}).items():
            if not torch.is_tensor(value) or value.numel() <= 1:
                continue
            if value.shape != weight.shape:
                raise RuntimeError(
                    f"optimizer state {key!r} of shape {tuple(value.shape)} is not elementwise "
                    f"for a weight of shape {tuple(weight.shape)}: it cannot be masked"
                )
            value.mul_(keep.to(value.dtype))

    def before_step(self) -> None:
        """Call after backward (and after AMP unscaling), before ``optimizer.step()``."""
        self.mask_gradients()

    def after_step(self) -> None:
        """Call after ``optimizer.step()``."""
        self.step += 1
        self.apply_masks()
        self._count_train_macs(dense_grad=False)

    def check_weights_current(self) -> None:
        """Raises if a masked weight is no longer the model's parameter: its masks would
        silently stop applying. Checked at every update, metrics call and state_dict."""
        for name, (module, attr) in self._owners.items():
            if getattr(module, attr) is not self.weights[name]:
                raise RuntimeError(
                    f"the model's weight {name!r} was replaced after the sparsity method was "
                    "built (by load_state_dict(assign=True), or by assigning a new parameter "
                    "or module), so its mask no longer applies: build the method once the "
                    "model's parameters are final"
                )

    # ----------------------------------------------------------------- accounting
    def _topology(self) -> dict:
        """Everything derived from the masks, read from the device once per topology change,
        so that per-step work and logging between updates never synchronise with it."""
        if self._topology_cache is None:
            # masks hold 0/1, so a float32 row sum is the exact count (and 10x faster than
            # count_nonzero on the CPU)
            per_neuron = {
                n: m.reshape(m.shape[0], -1).sum(dim=1, dtype=torch.float32).long()
                for n, m in self.masks.items()
            }
            counts = {n: int(c.sum().item()) for n, c in per_neuron.items()}
            stats = self._layer_stats(counts, per_neuron)
            cache = {"active_counts": counts, "layer_stats": stats, "macs": None}
            if self.macs is not None:
                dense = sum(self.macs.values())
                saved = sum(
                    self.macs.get(n, 0.0) * (1.0 - c / self.masks[n].numel())
                    for n, c in counts.items()
                )
                cache["macs"] = (dense - saved, dense)
            cache["metrics"] = self._topology_metrics(counts, stats)
            self._topology_cache = cache
        return self._topology_cache

    def _topology_changed(self) -> None:
        """Call after any change to ``self.masks``: drops the cached metrics and rebuilds
        the mask list of the per-step calls (aligned with ``_weight_list``)."""
        self._topology_cache: dict | None = None
        self._mask_list = [self.masks[n] for n in self.weights]

    @property
    def active_counts(self) -> dict[str, int]:
        return self._topology()["active_counts"]

    def _sparse_macs(self) -> tuple[float, float]:
        """(sparse, dense) per-sample MACs of all weight layers under the current masks."""
        return self._topology()["macs"]

    def _count_train_macs(self, dense_grad: bool) -> None:
        """RigL paper, appendix H: a step costs 3 f_S (forward, input and weight gradients);
        a step that needs the dense gradient costs 2 f_S + f_D."""
        if self.macs is None:
            return
        sparse, dense = self._sparse_macs()
        self.train_macs += 2 * sparse + (dense if dense_grad else sparse)

    # ----------------------------------------------------------------- observability
    def _ablated(self, name: str) -> int:
        return 0

    def _layer_stats(
        self, counts: dict[str, int], per_neuron: dict[str, torch.Tensor]
    ) -> list[dict]:
        rows = []
        for name, weight in self.candidates.items():
            n_out = weight.shape[0]
            if name in self.masks:
                alive = per_neuron[name] > 0
                active_neurons = int(alive.sum().item())
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
                    "ablated_neurons": self._ablated(name),
                }
            )
        return rows

    def layer_stats(self) -> list[dict]:
        """One row per candidate layer: name, shape, density, fan-in (mean active weights
        of the living neurons), active and ablated neurons."""
        return [dict(row) for row in self._topology()["layer_stats"]]

    def _topology_metrics(self, counts: dict[str, int], stats: list[dict]) -> dict[str, float]:
        candidate_total = sum(p.numel() for p in self.candidates.values())
        inactive = sum(self.masks[n].numel() - c for n, c in counts.items())
        all_params = sum(p.numel() for p in self.model.parameters())
        out: dict[str, float] = {
            "sparsity/masked_layers": inactive / candidate_total,
            "sparsity/all_params": inactive / all_params,
        }
        if self.masks:
            ever = sum(int(torch.count_nonzero(m).item()) for m in self.ever_active.values())
            out["itop_rate"] = ever / sum(m.numel() for m in self.masks.values())
        for row in stats:
            name = row["layer"]
            for key in ("density", "fan_in", "active_neurons", "ablated_neurons"):
                out[f"{key}/{name}"] = row[key]
        return out

    def metrics(self) -> dict[str, float]:
        """Global and per-layer metrics. Between topology updates they come from a cache,
        so calling this at every log step costs no device synchronisation."""
        self.check_weights_current()
        topology = self._topology()
        out = dict(topology["metrics"])
        if topology["macs"] is not None:
            sparse, dense = topology["macs"]
            out["flops/inference_rel"] = sparse / dense
            if self.step:
                out["flops/train_rel"] = self.train_macs / (3 * dense * self.step)
        out.update(self.last_update)
        return out

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """A snapshot: its tensors are copies, so later training never changes it (on the
        CPU ``.cpu()`` alone would hand out the live tensors, which grow in place)."""
        self.check_weights_current()
        return {
            "step": self.step,
            "masks": {n: m.bool().cpu() for n, m in self.masks.items()},
            "ever_active": {n: m.to("cpu", copy=True) for n, m in self.ever_active.items()},
            "generator": self.generator.get_state(),
            "train_macs": self.train_macs,
            "last_update": dict(self.last_update),
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        if set(state["masks"]) != set(self.masks):
            raise ValueError(
                f"checkpoint masks cover layers {sorted(state['masks'])}, this method masks "
                f"{sorted(self.masks)}: was it saved with other sparsity settings?"
            )
        self.step = int(state["step"])
        for name, mask in state["masks"].items():
            weight = self.weights[name]
            self.masks[name] = as_float(mask.bool(), weight.dtype).to(weight.device)
            self.ever_active[name] = state["ever_active"][name].to(weight.device, copy=True)
        self.generator.set_state(state["generator"])
        self.train_macs = float(state["train_macs"])
        self.last_update = dict(state["last_update"])
        self._topology_changed()
        self.apply_masks()


class Static(SparsityMethod):
    """Static sparse training: the initial random mask is kept for the whole run."""


class Dense(SparsityMethod):
    """The dense baseline, with the same metrics as the sparse methods."""

    def __init__(self, model: nn.Module, optimizer=None, *, density: float = 1.0, **kwargs):
        if density != 1.0:
            raise ValueError(f"the dense method needs density=1.0, got density={density}")
        kwargs.pop("distribution", None)
        super().__init__(model, optimizer, density=1.0, distribution="uniform", **kwargs)
