"""The sparsity engine's policy side: which layers, how dense, which masks, when they change.

A method is optimizer-like and knows nothing of the training loop::

    method = RigL(model, optimizer, density=0.1, total_steps=T)
    loss.backward(); method.before_step(); optimizer.step(); method.after_step()

``before_step`` keeps the dense gradient where a dynamic method needs it (and masks the
gradients only when ``mask_set.mask_grads`` asks for it, e.g. before clipping by the global
norm); ``after_step`` re-applies the masks to the weights (one masking pass a step: see
``masks.py``) and calls the policy's ``update(step)``.
The masks themselves and their enforcement live in a ``MaskSet`` (``masks.py``), the layers
and their densities in a ``Layout`` (``layout.py``), the logged numbers in ``MaskMetrics``
(``metrics.py``). A policy decides the first masks (``initial_masks``, asked once the
method's state exists), changes them (``update``, through ``self.mask_set.set``), and may
add a forward-time mask (``forward_mask``).

A new method is a subclass that overrides some of ``initial_masks``, ``update``,
``forward_mask``, ``stages`` and ``state_dict``/``load_state_dict`` for its own state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .checks import check_choice, check_fraction
from .flops import weight_layer_macs
from .initial import SPARSE_INIT_RULES, magnitude_masks, random_masks, sparse_reinit
from .layers import unwrap
from .layout import Layout, plan_layout
from .masks import SUPPORTED_OPTIMIZERS, MaskSet, check_optimizer
from .metrics import MaskMetrics
from .stages import Stage, single_stage
from .structure import Structure

__all__ = ["SUPPORTED_OPTIMIZERS", "Dense", "SparsityMethod", "Static", "magnitude_masks"]


class SparsityMethod:
    """Sparsity at a global ``density``, with masks of the chosen structure and
    distribution. This base class never changes its masks (``Static``).

    Args:
        model: any ``nn.Module`` (DDP / compiled wrappers are unwrapped).
        optimizer: the optimizer over the model's parameters; its per-weight state is zeroed
            where weights are inactive. None for mask-only use.
        density: fraction of the candidate layers' weights kept, in (0, 1].
        total_steps: optimizer steps of the run (needed by methods with a schedule).
        distribution: a name in ``distributions.DISTRIBUTIONS``. ``global_magnitude`` keeps
            the largest |w| under one threshold over all free layers; every other
            distribution sets per-layer densities and the first masks are random.
        erk_power: the exponent of the ER / ERK scores.
        structure: ``unstructured``, ``constant_fanin`` or ``nm`` (with ``n``, ``m``).
        layer_types / include / exclude: which layers are candidates (regexes on names).
        dense_first / dense_last: keep the first / last candidate layer dense (counted in
            the budget, as in the RigL code).
        densities: explicit ``{regex: density}`` per-layer overrides.
        asp_layers: leave out the candidates NVIDIA ASP skips: those whose weight has
            size(0) % 8 != 0 or size(1) % 16 != 0 (``layout.asp_prunes``; apex
            ``asp.py`` ``add_sparse_attributes``). ``sparsity=asp_2to4`` turns it on.
        sparse_init: re-draw the weights after the first masks from normal(0, std_i),
            per output neuron i with k_i active inputs (``initial.sparse_reinit``).
        sparse_init_rule: the std: ``he`` (the default) sqrt(2 / k_i), He init with the
            sparse fan-in (variance 2 / k_i; Evci et al. 2022, "Gradient flow in sparse
            neural networks"); ``grad_flow`` 2 / k_i, and 0 where k_i = 0, the SRigL
            authors' ``grad_flow_init`` (calgaryml/condensed-sparsity@3052bb8
            ``src/rigl_torch/utils/sparse_init.py``), smaller than He's for k_i > 2.
        seed: seeds the method's own generator (random masks, SET growth): equal seeds give
            equal masks on every rank.
        example_input: a batch (size 1 is enough) for FLOP accounting; None skips FLOPs.
    """

    needs_dense_grad = False
    prunes_later = False  # masks reach their density during training (PruningMethod)

    RUN_WEIGHTS: tuple[str, ...] = ()
    """Constructor arguments that take trained weights (a state dict). In a config their
    value is the folder of a finished run, which the launcher reads into that run's model
    state dict before it builds the method (OneShot's ``dense_run``)."""

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
        asp_layers: bool = False,
        sparse_init: bool = False,
        sparse_init_rule: str = "he",
        seed: int = 0,
        example_input: torch.Tensor | None = None,
    ) -> None:
        check_fraction("density", density, low_open=True)
        check_optimizer(optimizer)
        check_choice("sparse_init_rule", sparse_init_rule, SPARSE_INIT_RULES)
        self.model = unwrap(model)
        self.optimizer = optimizer
        self.density = density
        self.total_steps = total_steps
        self.distribution = distribution
        self.structure = Structure(structure, n, m)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.train_macs = 0.0
        self.last_update: dict[str, float] = {}
        layout = plan_layout(
            self.model,
            self.structure,
            density=density,
            distribution=distribution,
            erk_power=erk_power,
            layer_types=layer_types,
            include=include,
            exclude=exclude,
            dense_first=dense_first,
            dense_last=dense_last,
            densities=densities,
            asp_layers=asp_layers,
            mask_free_layers=self.prunes_later and distribution == "global_magnitude",
        )
        self._adopt_layout(layout)
        self._start_masks(sparse_init_rule if sparse_init else None)
        self._start_metrics(example_input)
        if type(self).forward_mask is not SparsityMethod.forward_mask:
            self.mask_set.attach_forward_mask(self.forward_mask)

    def _adopt_layout(self, layout: Layout) -> None:
        self.candidates = layout.candidates
        self.dense_layers = layout.dense_layers  # kept dense: dense_first / dense_last
        self.fixed_densities = layout.fixed_densities  # from ``densities``
        self.layer_density = layout.layer_density
        self.weights = layout.weights  # the masked layers
        # kept weights per unit of the structure when every unit is alive
        self.capacity = layout.capacity

    def _start_masks(self, sparse_init_rule: str | None) -> None:
        """Builds the mask set (every weight kept), then installs the policy's first masks,
        so that ``initial_masks`` can read the method's whole state; then re-draws the
        weights under ``sparse_init_rule`` (None: keeps them)."""
        self.mask_set = MaskSet(self.model, self.weights, optimizer=self.optimizer)
        self.mask_set.reset(self.initial_masks())
        if sparse_init_rule is not None:
            sparse_reinit(self.weights, self.masks, self.generator, sparse_init_rule)
            self.mask_set.apply()

    def _start_metrics(self, example_input: torch.Tensor | None) -> None:
        """Counts the weight layers' MACs on ``example_input`` (None: no FLOP metrics)."""
        macs = weight_layer_macs(self.model, example_input) if example_input is not None else None
        self.macs = macs
        self.mask_metrics = MaskMetrics(
            self.model, self.candidates, self.mask_set, macs, self.ablated_neurons
        )

    # ----------------------------------------------------------------- the policy
    def initial_masks(self) -> dict[str, torch.Tensor]:
        """The first boolean masks, asked once the mask set exists (keeping every weight):
        the largest |w| under ``global_magnitude``, else uniformly random masks of the
        structure at each layer's density."""
        if self.distribution == "global_magnitude":
            return magnitude_masks(self.weights, self.layer_density, self.structure)
        return random_masks(self.weights, self.layer_density, self.structure, self.generator)

    def update(self, step: int) -> None:
        """Called after optimizer step ``step`` (1-based) once the masks are re-applied;
        a policy that changes the topology calls ``self.mask_set.set`` here."""

    def dense_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) must run on the masked-dense weights
        because the policy reads the dense gradient or the weights, or may change the masks,
        in it (training in condensed form expands the layers for it:
        ``sst.condensed.training``). A policy that overrides ``update`` without saying when
        it acts answers True at every step."""
        return type(self).update is not SparsityMethod.update

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
        self.mask_set.before_optimizer_step()

    def after_step(self) -> None:
        """Call after ``optimizer.step()``."""
        self.step += 1
        self.mask_set.apply()
        self._count_train_macs(dense_grad=False)
        self.update(self.step)

    def _count_train_macs(self, dense_grad: bool) -> None:
        self.train_macs += self.mask_metrics.train_step_macs(dense_grad)

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

    def check_weights_current(self) -> None:
        self.mask_set.check_weights_current()

    # ----------------------------------------------------------------- observability
    def ablated_neurons(self, name: str) -> int:
        """Output neurons of layer ``name`` that the policy removed (SRigL)."""
        return 0

    def layer_stats(self) -> list[dict]:
        """One row per candidate layer: name, shape, density, fan-in (mean active weights
        of the living neurons), active and ablated neurons."""
        return self.mask_metrics.layer_stats()

    def metrics(self) -> dict[str, float]:
        """Global and per-layer metrics. Between topology updates they come from a cache,
        so calling this at every log step costs no device synchronisation."""
        self.check_weights_current()
        out = self.mask_metrics.topology()
        train_rel = self.mask_metrics.train_rel(self.train_macs, self.step)
        if train_rel is not None:
            out["flops/train_rel"] = train_rel
        out.update(self.last_update)
        return out

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """A snapshot: its tensors are copies, so later training never changes it. Zeroes
        the optimizer state of pruned weights first (``MaskSet.mask_optimizer_state``), so
        that an optimizer state saved after it is the one masked gradients would give."""
        self.mask_set.mask_optimizer_state()
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
