"""Training in condensed form: the masked Linear / Conv2d layers of a model train on their
kept values only between mask updates, in any training loop.

A layer with weight W and 0/1 mask M is *condensed* by replacing W, in the module and in the
optimizer's param groups, with a 1-D parameter V = W[M] (``gather_values``, row-major over
the flattened (out, in) weight), whose forward is ``sparse_linear`` / ``sparse_conv2d``: the
products run over the kept weights only, the weight gradient is computed at the kept
positions only (SparseProp, Nikdan et al., ICML 2023). The optimizer state of V is the dense
state gathered at the kept positions, so with an elementwise optimizer (every one in
``sst.sparsity.masks.SUPPORTED_OPTIMIZERS``) a condensed step updates every kept weight
exactly as a masked-dense step does, up to the summation order of the products. *Expanding*
scatters V and its state back into W (zeros at pruned positions: the state masked-dense
training keeps there) and restores the module.

The masks must not change while a layer is condensed (``MaskSet.hold`` refuses it): the
loop expands the layers before every step that reads dense gradients or weights or may
change the masks (``SparsityMethod.dense_step``: RigL's and SRigL's update step and its
dense-gradient window, GMP's prune steps, ...), before a checkpoint (which keeps its
format: dense weights, masks, dense optimizer state) and at the end of the run::

    compute = SparseCompute(model, optimizer, method.mask_set, mode="on")
    for step in range(1, total + 1):
        compute.expand() if method.dense_step(step) else compute.condense()
        loss = loss_fn(model(x), y); optimizer.zero_grad(); loss.backward()
        method.before_step(); optimizer.step(); method.after_step()
    compute.expand()

The W Parameter object stays the module's ``weight`` while condensed (the sparsity method
keeps its reference), but its storage is released: its data is a zero-stride view of one
zero, with the weight's shape. V is registered on the module as ``condensed_values`` so
that ``model.parameters()`` (gradient clipping, AMP unscaling) sees it.

``mode="auto"`` keeps, per layer, the faster form: it records each layer's input shape in
the first (dense) forward passes and, at the first ``condense``, times dense vs condensed
forward + backward on that shape (interleaved medians).

Not condensed (they stay masked-dense): a Conv2d with groups > 1, non-zero padding modes or
string padding; every layer of a method with a forward-time mask (targeted dropout, which
multiplies the weight inside the forward pass: ``on`` is refused, ``auto`` falls back).

Multi-process runs train condensed under ``sst.dist.Replicated`` instead of DDP (whose
reducer registers the dense weights once): the same gradient average, one all-reduce per
step; ``auto`` takes rank 0's choice of layers on every rank.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sst import dist
from sst.sparsity.masks import MaskSet

from .sparse_train import (
    TrainLayout,
    build_layout,
    gather_values,
    scatter_values,
    sparse_conv2d,
    sparse_linear,
)

MODES = ("off", "on", "auto")
VALUES = "condensed_values"

log = logging.getLogger(__name__)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"trainer.sparse_compute={mode!r} is unknown: allowed values are {MODES}")
    return mode


def condensable(module: nn.Module) -> bool:
    """A Linear, or a Conv2d with one group, zero padding and numeric padding."""
    if type(module) is nn.Linear:
        return True
    return (
        type(module) is nn.Conv2d
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


@dataclass
class _Condensed:
    module: nn.Module
    weight: nn.Parameter
    values: nn.Parameter
    layout: TrainLayout


class SparseCompute:
    """Condenses and expands the masked layers of ``mask_set`` (see the module docstring).

    Args:
        model: the (unwrapped) model.
        optimizer: the optimizer over its parameters (its param groups and state are
            rewritten at every condense / expand); None for a model without one.
        mask_set: the sparsity method's masks (``method.mask_set``).
        mode: ``on`` condenses every eligible layer, ``auto`` the layers measured faster
            condensed, ``off`` none.
        repeats: timed forward + backward passes per form and layer under ``auto``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        mask_set: MaskSet,
        mode: str = "on",
        repeats: int = 5,
    ) -> None:
        self.mode = check_mode(mode)
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1 (timed passes per form), got {repeats}")
        self.model, self.optimizer, self.mask_set = model, optimizer, mask_set
        self.repeats = repeats
        self.condensed: dict[str, _Condensed] = {}
        self._layouts: dict[str, tuple[torch.Tensor, int, TrainLayout]] = {}
        self.eligible = [n for n, (m, _) in mask_set.owners.items() if condensable(m)]
        reason = self._fallback_reason()
        if reason is not None:
            if mode == "on":
                raise ValueError(f"trainer.sparse_compute=on: {reason}; use off or auto")
            if mode == "auto":
                log.info("sparse_compute=auto: training masked-dense (%s)", reason)
            self.eligible = []
        self.chosen: list[str] | None = list(self.eligible) if mode == "on" else None
        self.timings: dict[str, tuple[float, float]] = {}  # auto: (dense ms, condensed ms)
        # auto: each layer's input in the first forward pass: (shape, memory format)
        self._shapes: dict[str, tuple[tuple[int, ...], torch.memory_format]] = {}
        self._recorders = []
        if mode == "auto" and self.eligible:
            for name in self.eligible:
                module = mask_set.owners[name][0]
                self._recorders.append(module.register_forward_pre_hook(self._recorder(name)))
        if mode == "off":
            self.eligible = []

    def _fallback_reason(self) -> str | None:
        if self.mask_set.has_forward_mask:
            return "the sparsity method masks weights inside the forward pass (targeted dropout)"
        return None

    def _recorder(self, name: str):
        def record(_module, args) -> None:
            x = args[0]
            if torch.is_tensor(x) and torch.is_grad_enabled():
                last = (
                    x.dim() == 4
                    and not x.is_contiguous()
                    and x.is_contiguous(memory_format=torch.channels_last)
                )  # trainer.channels_last: the kernels' .contiguous() copy counts too
                fmt = torch.channels_last if last else torch.contiguous_format
                self._shapes[name] = (tuple(x.shape), fmt)

        return record

    @property
    def is_condensed(self) -> bool:
        return bool(self.condensed)

    # ----------------------------------------------------------------- the two forms
    def condense(self) -> None:
        """Condenses the chosen layers under the current masks (nothing if condensed)."""
        if self.condensed or not self.eligible:
            return
        if self.chosen is None:
            if not self._shapes:
                return  # auto: no forward pass seen yet to measure on
            self.chosen = self._choose()
        for name in self.chosen:
            self.condensed[name] = self._condense_layer(name)
        self.mask_set.hold(list(self.condensed))

    def expand(self) -> None:
        """Back to masked-dense: every condensed layer's values (and optimizer state) are
        scattered into its dense weight, zeros elsewhere."""
        if not self.condensed:
            return
        for entry in self.condensed.values():
            self._expand_layer(entry)
        self.condensed.clear()
        self.mask_set.hold(())

    @torch.no_grad()
    def _condense_layer(self, name: str) -> _Condensed:
        module, _ = self.mask_set.owners[name]
        weight = self.mask_set.weights[name]
        layout = self._layout(name)
        values = nn.Parameter(gather_values(weight.detach(), layout).clone())
        self._move_optimizer_param(weight, values, lambda v: v.reshape(-1)[layout.flat])
        entry = _Condensed(module, weight, values, layout)
        module.register_parameter(VALUES, values)
        module.forward = _forward(entry)
        weight.data = weight.new_zeros(()).expand(weight.shape)  # storage released
        weight.grad = None
        return entry

    def _layout(self, name: str) -> TrainLayout:
        """The layout of the layer's current mask, rebuilt only when the mask changed: a
        checkpoint expands and condenses again under the same masks. ``MaskSet`` replaces a
        mask tensor on every change; an in-place change bumps the tensor's version."""
        mask = self.mask_set.masks[name]
        cached = self._layouts.get(name)
        if cached is not None and cached[0] is mask and cached[1] == mask._version:
            return cached[2]
        layout = build_layout(mask)
        self._layouts[name] = (mask, mask._version, layout)
        return layout

    @torch.no_grad()
    def _expand_layer(self, entry: _Condensed) -> None:
        weight, values, layout = entry.weight, entry.values, entry.layout
        shape = weight.shape
        dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
        weight.data = scatter_values(values.detach(), layout, dense)

        def scatter(state: torch.Tensor) -> torch.Tensor:
            return scatter_values(state, layout, state.new_zeros(shape))

        self._move_optimizer_param(values, weight, scatter, condensed_shape=values.shape)
        del entry.module._parameters[VALUES]
        del entry.module.forward

    def _move_optimizer_param(self, old, new, convert, condensed_shape=None) -> None:
        """Puts ``new`` in ``old``'s place in the param groups, with ``old``'s state
        converted elementwise by ``convert`` (other entries, e.g. Adam's step, copied)."""
        if self.optimizer is None:
            return
        for group in self.optimizer.param_groups:
            for i, param in enumerate(group["params"]):
                if param is old:
                    group["params"][i] = new
        state = self.optimizer.state.pop(old, None)
        if not state:
            return
        shape = old.shape if condensed_shape is None else condensed_shape
        self.optimizer.state[new] = {
            key: convert(value) if torch.is_tensor(value) and value.shape == shape else value
            for key, value in state.items()
        }

    # ----------------------------------------------------------------- auto
    def _choose(self) -> list[str]:
        """The layers measured faster condensed, on the input shapes the first forward pass
        recorded; a layer that pass did not call (an unused head) stays masked-dense."""
        for handle in self._recorders:
            handle.remove()
        self._recorders.clear()
        unseen = [n for n in self.eligible if n not in self._shapes]
        if unseen:
            log.info("sparse_compute=auto: not called, kept masked-dense: %s", ", ".join(unseen))
        chosen = []
        for name in (n for n in self.eligible if n in self._shapes):
            dense_ms, sparse_ms = self._time_layer(name)
            self.timings[name] = (dense_ms, sparse_ms)
            if sparse_ms < dense_ms:
                chosen.append(name)
        chosen = dist.from_rank0(chosen)  # timings differ by rank; the parameters must not
        log.info(
            "sparse_compute=auto: %d of %d masked layers train condensed (%s)",
            len(chosen),
            len(self.eligible),
            ", ".join(f"{n} {d:.2f}/{s:.2f} ms" for n, (d, s) in self.timings.items()),
        )
        return chosen

    def _time_layer(self, name: str) -> tuple[float, float]:
        """Median ms of forward + backward, (masked-dense, condensed), interleaved."""
        module = self.mask_set.owners[name][0]
        weight = self.mask_set.weights[name].detach()
        layout = self._layout(name)
        shape, memory_format = self._shapes[name]
        x = torch.randn(shape, device=weight.device, dtype=weight.dtype)
        x = x.contiguous(memory_format=memory_format).requires_grad_(True)
        dense_w = weight.clone().requires_grad_(True)
        values = gather_values(weight, layout).clone().requires_grad_(True)
        bias = (
            module.bias.detach().clone().requires_grad_(True) if module.bias is not None else None
        )
        entry = _Condensed(module, dense_w, values, layout)
        runs = {
            "dense": lambda: _dense_call(module, x, dense_w, bias),
            "condensed": lambda: _sparse_call(entry, x, values, bias),
        }
        times: dict[str, list[float]] = {"dense": [], "condensed": []}
        for rep in range(self.repeats + 1):
            for key, fn in runs.items():
                start = time.perf_counter()
                fn().sum().backward()
                if rep:  # the first round warms up
                    times[key].append(1000.0 * (time.perf_counter() - start))
        return statistics.median(times["dense"]), statistics.median(times["condensed"])

    def state(self) -> dict[str, Any]:
        """The layers that train condensed and, under ``auto``, each timed layer's
        (masked-dense ms, condensed ms): the run summary's ``sparse_compute``."""
        return {
            "mode": self.mode,
            "condensed_layers": list(self.chosen or []),
            "timings_ms": {n: list(t) for n, t in self.timings.items()},
        }


def _dense_call(module: nn.Module, x, weight, bias) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation)
    return F.linear(x, weight, bias)


def _sparse_call(entry: _Condensed, x, values, bias) -> torch.Tensor:
    module = entry.module
    if isinstance(module, nn.Conv2d):
        return sparse_conv2d(
            x,
            values,
            entry.layout,
            bias,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.kernel_size,
        )
    return sparse_linear(x, values, entry.layout, bias)


def _forward(entry: _Condensed):
    """The condensed layer's forward: its module's bias, the entry's values and layout."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return _sparse_call(entry, x, entry.values, entry.module.bias)

    return forward
