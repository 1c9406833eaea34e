"""Masks and their enforcement, apart from the policy that decides them.

A ``MaskSet`` owns one 0/1 mask per masked weight and everything that keeps the weights
true to it: the fused per-step ``weight *= mask`` (and ``grad *= mask`` where a caller reads
the gradients of pruned weights: ``mask_grads``), the optimizer-state surgery when the
topology changes, the guard that a masked weight is still the model's
parameter, the counts and metrics derived from the masks (cached between topology
changes), and the masks' part of a checkpoint. A sparsity method (``method.py``) is the
policy: it decides the first masks and how they change, and hands new masks to ``set``.

One masking pass per step: the weights are masked after the optimizer step, the gradients
are not. With an elementwise optimizer (``SUPPORTED_OPTIMIZERS``) the update of a kept weight
reads only its own gradient, weight and state, so the gradients of pruned weights change
nothing but the state at pruned positions, which no kept weight reads: the pruned weights
are zeroed after every step, and a position's state is zeroed when it is grown again
(``set``). Kept weights and their state are therefore bit-for-bit those of masking the
gradients too. What does read pruned gradients must ask for the gradient pass
(``mask_grads = True``): clipping by the global gradient norm (the training loop turns it
on with ``trainer.grad_clip``), or any other global statistic of the gradients.

Optional forward-time masks (targeted dropout) multiply a weight only inside the forward
pass of a training step, through forward hooks: the stored weights are never modified.

Under DDP every rank holds its own ``MaskSet``; the masks must stay identical on every rank.
Policies ensure it (shared seeds, globally reduced gradients, identical weights); the mask
set verifies it after every topology change (``verify_ranks``: a checksum of the masks,
one small all-reduce) and fails loudly on a divergence.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import torch
from torch import nn

from sst import dist

from .layers import forward_caller, weight_owner
from .mask_ops import as_float

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

ForwardMask = Callable[[str, torch.Tensor], "torch.Tensor | None"]

# The checksum's position weights: for a position i along one axis, (i * K) mod P + 1 for two
# (K, P) pairs (rows and columns use different K); P prime, so two columns (or rows) get the
# same pair of weights only when they are more than 1019 * 1021 apart.
_HASH_MULTIPLIERS = ((40503, 40499), (52711, 52709))
_HASH_PRIMES = (1021, 1019)
_EXACT_FLOAT32 = 1 << 24  # integers below it, and sums that stay below it, are exact


def _position_weights(n: int, multipliers: tuple[int, int], device, dtype) -> torch.Tensor:
    """(n, 2) integer weights in [1, 1021] of the positions 0..n-1, in ``dtype``."""
    index = torch.arange(n, dtype=torch.int64, device=device).unsqueeze(1)
    k = torch.tensor(multipliers, device=device)
    p = torch.tensor(_HASH_PRIMES, device=device)
    return (index * k % p + 1).to(dtype)


@torch.no_grad()
def mask_checksum(
    masks: Mapping[str, torch.Tensor], neuron_counts: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Per layer of ``masks`` (in order), three int64 on the CPU: the number of active
    weights (from ``neuron_counts``, active weights per output neuron) and two sums of
    ``a_k(col) * b_k(row)`` over the active positions of the layer's (rows = output neurons)
    x (columns = fan-in) matrix, with the integer position weights of ``_position_weights``.
    Equal masks give equal checksums on any hardware (every sum is of integers, exact in the
    float type used); masks that differ almost surely do not. Costs a matrix-vector product
    per layer (about 0.05 s for ResNet-50's masks on 2 busy CPU cores)."""
    rows = []
    for name, mask in masks.items():
        matrix = mask.reshape(mask.shape[0], -1)
        n_rows, n_cols = matrix.shape
        if matrix.dtype != torch.float64:  # a half type would round the sums
            small = n_cols * max(_HASH_PRIMES) < _EXACT_FLOAT32
            matrix = matrix.to(torch.float32 if small else torch.float64)
        cols = _position_weights(n_cols, _HASH_MULTIPLIERS[0], matrix.device, matrix.dtype)
        if matrix.device.type == "cpu":  # two matrix-vector products: 20x faster than one
            per_row = torch.stack([matrix @ cols[:, k].contiguous() for k in range(2)], 1)
        else:  # elementwise: a GPU matmul may run in TF32, which is not exact
            per_row = (matrix.unsqueeze(2) * cols).sum(dim=1)
        per_row = per_row.cpu().to(torch.int64)
        weights = _position_weights(n_rows, _HASH_MULTIPLIERS[1], "cpu", torch.int64)
        hashes = (per_row * weights).sum(dim=0)
        rows.append(torch.cat([neuron_counts[name].sum().cpu().reshape(1), hashes]))
    return torch.stack(rows) if rows else torch.zeros(0, 3, dtype=torch.int64)


def _swap_hooks(
    model: nn.Module,
    module: nn.Module,
    name: str,
    attr: str,
    source: ForwardMask,
    swapped: dict,
):
    """The forward pre-hook and hook on the module whose forward reads the weight
    (``forward_caller``) that make ``module.<attr>`` be ``weight * source(name, weight)``
    during a training forward pass (``swapped`` keeps the stored weight meanwhile); returns
    their handles."""
    caller = forward_caller(model, name)

    def swap_in(mod, _args):
        if not mod.training or name in swapped:
            return
        weight = module._parameters[attr]
        factor = source(name, weight)
        if factor is not None:
            swapped[name] = weight
            module._parameters[attr] = weight * factor

    def swap_out(_mod, _args, _output):
        weight = swapped.pop(name, None)
        if weight is not None:
            module._parameters[attr] = weight

    return [
        caller.register_forward_pre_hook(swap_in),
        caller.register_forward_hook(swap_out, always_call=True),
    ]


@torch.no_grad()
def mask_state(optimizer: torch.optim.Optimizer, weight: torch.Tensor, keep: torch.Tensor) -> None:
    """Multiplies every elementwise optimizer state of ``weight`` by ``keep``."""
    for key, value in optimizer.state.get(weight, {}).items():
        if not torch.is_tensor(value) or value.numel() <= 1:
            continue
        if value.shape != weight.shape:
            raise RuntimeError(
                f"optimizer state {key!r} of shape {tuple(value.shape)} is not elementwise "
                f"for a weight of shape {tuple(weight.shape)}: it cannot be masked"
            )
        value.mul_(keep.to(value.dtype))


class MaskDivergence(RuntimeError):
    """The ranks of a multi-process run hold different masks."""


def check_optimizer(optimizer: torch.optim.Optimizer | None) -> None:
    if optimizer is not None and type(optimizer).__name__ not in SUPPORTED_OPTIMIZERS:
        raise ValueError(
            f"optimizer {type(optimizer).__name__} is not supported: its state cannot be "
            f"masked safely; supported optimizers are {SUPPORTED_OPTIMIZERS}"
        )
    groups = getattr(optimizer, "param_groups", [])
    initial = [g.get("initial_accumulator_value", 0) for g in groups]
    if any(initial):  # a pruned weight's state is zeroed, not reset to this value
        raise ValueError(
            f"Adagrad with initial_accumulator_value={initial[0]} is not supported: a weight "
            "that regrows starts from a zero accumulator; use initial_accumulator_value=0"
        )


class MaskSet:
    """The masks of the named ``weights`` of ``model`` and their enforcement.

    Args:
        model: the (unwrapped) model the weights belong to.
        weights: layer name -> weight of every masked layer.
        masks: layer name -> boolean mask of the same shape: the first topology (see
            ``reset``); None keeps every weight until ``reset`` installs the first masks.
        optimizer: its per-weight state is zeroed wherever a weight is not kept (None for
            mask-only use).
    """

    def __init__(
        self,
        model: nn.Module,
        weights: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        check_optimizer(optimizer)
        self.model = model
        self.optimizer = optimizer
        self.weights = dict(weights)
        self._owners = {n: weight_owner(model, n) for n in self.weights}
        self.held: frozenset[str] = frozenset()  # layers trained condensed (``hold``)
        self.masks: dict[str, torch.Tensor] = {}
        self.check_ranks = True  # after every topology change: same masks on all ranks (DDP)
        self.mask_grads = False  # also mask every gradient (see the module docstring)
        self.ever_active: dict[str, torch.Tensor] = {}
        self._forward_hooks: list = []
        self._swapped: dict[str, torch.Tensor] = {}
        if masks is None:
            masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in self.weights.items()}
        self.reset(masks)

    @torch.no_grad()
    def reset(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Installs the boolean ``masks`` (one per weight) as the first topology: the
        weights and any optimizer state are multiplied by them at once, and the ever-active
        sets start from them. Unlike ``set``, nothing counts as grown and the ranks are not
        compared."""
        if set(masks) != set(self.weights):
            raise ValueError(f"masks for {sorted(masks)} but weights {sorted(self.weights)}")
        self._check_not_held("reset")
        for name, weight in self.weights.items():
            keep = masks[name].to(weight.device, torch.bool)
            self.masks[name] = as_float(keep, weight.dtype)
            self.ever_active[name] = keep.clone()
            self._mask_optimizer_state(weight, keep)
        self._changed()
        self.apply()

    # ----------------------------------------------------------------- per step
    # They run every step: on a small model their Python cost is comparable to the kernels',
    # so they use the aligned lists kept by _changed and one fused call each.
    def apply(self) -> None:
        """weight *= mask for every masked layer."""
        if self._mask_list:
            with torch.no_grad():
                torch._foreach_mul_(self._weight_list, self._mask_list)

    def before_optimizer_step(self) -> None:
        """grad *= mask when ``mask_grads`` asks for it; else nothing (one pass a step)."""
        if self.mask_grads:
            self.mask_gradients()

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

    # ----------------------------------------------------------------- topology changes
    @torch.no_grad()
    def set(self, new_masks: Mapping[str, torch.Tensor]) -> int:
        """Replaces the masks of the named layers by the boolean ``new_masks``.

        Weights and optimizer state are zeroed wherever a weight is not kept (dropped, or
        newly grown: a new connection starts at 0 with zero state). Returns the number of
        newly active weights, read from the device once for all layers.
        """
        self.check_weights_current()
        self._check_not_held("set")
        grown = []
        for name, new in new_masks.items():
            weight = self.weights[name]
            old = self.masks[name].bool()
            new = new.to(weight.device, torch.bool)
            survived = as_float(old & new, weight.dtype)
            weight.mul_(survived)
            self._mask_optimizer_state(weight, survived)
            self.masks[name] = as_float(new, weight.dtype)
            self.ever_active[name] |= new
            grown.append(torch.count_nonzero(new & ~old))
        self._changed()
        if self.check_ranks:
            self.verify_ranks()
        if not grown:
            return 0
        return int(torch.stack([c.to(grown[0].device) for c in grown]).sum())

    @torch.no_grad()
    def mask_optimizer_state(self) -> None:
        """Zeroes the optimizer state of every pruned weight, as masked gradients leave it
        (no kept weight reads it: a saved state then matches either way)."""
        for name, weight in self.weights.items():
            self._mask_optimizer_state(weight, self.masks[name])

    def _mask_optimizer_state(self, weight: torch.Tensor, keep: torch.Tensor) -> None:
        if self.optimizer is not None:
            mask_state(self.optimizer, weight, keep)

    def _changed(self) -> None:
        """After any change to ``masks`` or ``held``: drops the cached counts and rebuilds
        the aligned weight and mask lists of the per-step calls (held layers left out)."""
        self._counts: dict[str, torch.Tensor] | None = None
        names = [n for n in self.weights if n not in self.held]
        self._weight_list = [self.weights[n] for n in names]
        self._mask_list = [self.masks[n] for n in names]

    def hold(self, names: Collection[str]) -> None:
        """Layers ``names`` train in condensed form (``sst.condensed.training``): the
        per-step calls skip them, and a topology change is refused until ``hold(())``."""
        unknown = set(names) - set(self.weights)
        if unknown:
            raise ValueError(f"hold: {sorted(unknown)} are not masked layers")
        self.held = frozenset(names)
        self._changed()

    @property
    def owners(self) -> dict[str, tuple[nn.Module, str]]:
        """Layer name -> (the module that owns the weight, the weight's attribute name)."""
        return dict(self._owners)

    @property
    def has_forward_mask(self) -> bool:
        """Whether a forward-time mask is attached (``attach_forward_mask``)."""
        return bool(self._forward_hooks)

    def _check_not_held(self, what: str) -> None:
        if self.held:
            raise RuntimeError(
                f"MaskSet.{what}: the layers {sorted(self.held)} are trained in condensed form; "
                "expand them (SparseCompute.expand) before the masks change"
            )

    def check_weights_current(self) -> None:
        """Raises if a masked weight is no longer the model's parameter: its mask would
        silently stop applying. Checked at every topology change, metrics call and
        state_dict."""
        for name, (module, attr) in self._owners.items():
            if name in self._swapped:
                continue
            if getattr(module, attr) is not self.weights[name]:
                raise RuntimeError(
                    f"the model's weight {name!r} was replaced after the sparsity method was "
                    "built (by load_state_dict(assign=True), or by assigning a new parameter "
                    "or module), so its mask no longer applies: build the method once the "
                    "model's parameters are final"
                )

    # ----------------------------------------------------------------- ranks
    def checksum(self) -> torch.Tensor:
        """The masks' checksum (``mask_checksum``): equal on every rank that holds the same
        masks."""
        return mask_checksum(self.masks, self.neuron_counts())

    def verify_ranks(self) -> None:
        """Raises ``MaskDivergence`` naming the layers whose masks differ between ranks (one
        all-reduce of the checksums on the CPU group; nothing in a single process)."""
        if not dist.is_initialized():
            return
        differ = dist.differing(self.checksum()).any(dim=1)
        if bool(differ.any()):
            names = [n for n, d in zip(self.weights, differ.tolist(), strict=True) if d]
            raise MaskDivergence(
                f"rank {dist.rank()}: the masks of {names} differ between ranks; every rank "
                "must compute the same topology (same seed, same sparsity settings, "
                "deterministic kernels). trainer.mask_check=false (MaskSet.check_ranks = False) "
                "turns this check off"
            )

    # ----------------------------------------------------------------- counts
    def neuron_counts(self) -> dict[str, torch.Tensor]:
        """Layer name -> active weights per output neuron (int64), cached until the next
        topology change so that logging between updates never synchronises the device."""
        if self._counts is None:
            # masks hold 0/1, so a float32 row sum is the exact count (and 10x faster than
            # count_nonzero on the CPU)
            self._counts = {
                n: m.reshape(m.shape[0], -1).sum(dim=1, dtype=torch.float32).long()
                for n, m in self.masks.items()
            }
        return self._counts

    def kept_counts(self) -> dict[str, int]:
        """Layer name -> number of active (kept) weights."""
        return {n: int(c.sum().item()) for n, c in self.neuron_counts().items()}

    def itop_rate(self) -> float | None:
        """Fraction of the masked weights that were ever active (Liu et al. 2021, ITOP)."""
        if not self.masks:
            return None
        ever = sum(int(torch.count_nonzero(m).item()) for m in self.ever_active.values())
        return ever / sum(m.numel() for m in self.masks.values())

    # ----------------------------------------------------------------- forward-time masks
    def attach_forward_mask(self, source: ForwardMask) -> None:
        """During a training-mode forward pass, each masked layer computes with
        ``weight * source(name, weight)`` (when ``source`` returns a tensor) instead of its
        weight; the stored weight, its mask and the optimizer step are untouched, and the
        gradient reaches the weight through the product. Evaluation passes use the weight."""
        self.detach_forward_mask()
        for name, (mod, attr) in self._owners.items():
            self._forward_hooks += _swap_hooks(self.model, mod, name, attr, source, self._swapped)

    def detach_forward_mask(self) -> None:
        for handle in self._forward_hooks:
            handle.remove()
        self._forward_hooks.clear()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Masks (boolean) and ever-active sets as CPU copies: a snapshot that later
        training never changes."""
        self.check_weights_current()
        return {
            "masks": {n: m.bool().cpu() for n, m in self.masks.items()},
            "ever_active": {n: m.to("cpu", copy=True) for n, m in self.ever_active.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        self._check_not_held("load_state_dict")
        if set(state["masks"]) != set(self.masks):
            raise ValueError(
                f"checkpoint masks cover layers {sorted(state['masks'])}, this method masks "
                f"{sorted(self.masks)}: was it saved with other sparsity settings?"
            )
        for name, mask in state["masks"].items():
            weight = self.weights[name]
            self.masks[name] = as_float(mask.bool(), weight.dtype).to(weight.device)
            self.ever_active[name] = state["ever_active"][name].to(weight.device, copy=True)
        self._changed()
        self.apply()
