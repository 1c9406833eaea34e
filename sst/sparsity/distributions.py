"""How a global density budget is split over layers.

Every function takes ``shapes`` (layer name -> weight shape, PyTorch layout, out first) and a
global ``density`` over all the listed layers, and returns layer name -> density. Layers named
in ``dense`` get density 1. Layers named in ``fixed`` keep the density given there. The other
layers share what is left of the budget, so that
sum_l density_l * numel_l == density * sum_l numel_l (up to rounding of one weight per layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from .checks import check_choice, check_fraction

Shapes = Mapping[str, Sequence[int]]


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _decided(
    shapes: Shapes, density: float, dense: Iterable[str], fixed: Mapping[str, float] | None
) -> dict[str, float]:
    """The densities the settings fix (1 for dense layers, the explicit ones), checked."""
    check_fraction("density", density, low_open=True)
    dense = list(dense)
    decided: dict[str, float] = {}
    both = set(dense) & set(fixed or {})
    if both:
        raise ValueError(f"layers {sorted(both)} are both kept dense and given a density")
    for name in dense:
        if name not in shapes:
            raise ValueError(f"dense layer {name!r} is not among the layers {sorted(shapes)}")
        decided[name] = 1.0
    for name, value in (fixed or {}).items():
        if name not in shapes:
            raise ValueError(f"fixed layer {name!r} is not among the layers {sorted(shapes)}")
        check_fraction(f"densities[{name!r}]", value, low_open=True)
        decided[name] = value
    return decided


def _split_budget(
    shapes: Shapes, density: float, dense: Iterable[str], fixed: Mapping[str, float] | None
) -> tuple[dict[str, float], float, list[str]]:
    """Returns the densities already decided, the budget left for the free layers, and the
    free layers' names."""
    decided = _decided(shapes, density, dense, fixed)
    total = sum(_numel(s) for s in shapes.values())
    budget = density * total - sum(decided[n] * _numel(shapes[n]) for n in decided)
    free = [n for n in shapes if n not in decided]
    if budget < -0.5 or (free and budget <= 0):
        raise ValueError(
            f"density={density} leaves no budget for the sparse layers once the dense/fixed "
            f"layers {sorted(decided)} are counted: raise the density or make fewer layers dense"
        )
    return decided, budget, free


def uniform(
    shapes: Shapes,
    density: float,
    *,
    dense: Iterable[str] = (),
    compensate: bool = True,
    fixed: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The same density in every layer not kept dense.

    compensate=True (the SRigL code): the free layers get
    (density * N_total - N_dense) / N_free, so the global budget is exact.
    compensate=False (the RigL paper): the free layers get ``density`` and the dense layers'
    extra weights are on top, so global sparsity ends slightly below 1 - density.
    """
    if not compensate:
        return {name: density for name in shapes} | _decided(shapes, density, dense, fixed)
    decided, budget, free = _split_budget(shapes, density, dense, fixed)
    free_numel = sum(_numel(shapes[n]) for n in free)
    shared = budget / free_numel if free else 1.0
    if shared > 1.0 + 1e-9:
        raise ValueError(
            f"density={density} cannot be met: the free layers would need {shared:.3f}"
        )
    return {name: decided.get(name, shared) for name in shapes}


def _erk_scores(shapes: Shapes, power: float, kernel: bool) -> dict[str, float]:
    scores = {}
    for name, shape in shapes.items():
        dims = list(shape) if kernel else list(shape[:2])
        scores[name] = (sum(dims) / math.prod(dims)) ** power
    return scores


def _erdos_renyi(
    shapes: Shapes,
    density: float,
    dense: Iterable[str],
    power: float,
    fixed: Mapping[str, float] | None,
    kernel: bool,
) -> dict[str, float]:
    decided, budget, free = _split_budget(shapes, density, dense, fixed)
    scores = _erk_scores(shapes, power, kernel)
    capped: set[str] = set()
    while True:
        sparse = [n for n in free if n not in capped]
        if not sparse:
            raise ValueError(f"density={density} makes every layer dense")
        budget_left = budget - sum(_numel(shapes[n]) for n in capped)
        eps = budget_left / sum(scores[n] * _numel(shapes[n]) for n in sparse)
        top = max(scores[n] for n in sparse)
        if eps * top <= 1.0:
            break
        capped.update(n for n in sparse if scores[n] == top)
    result = {}
    for name in shapes:
        if name in decided:
            result[name] = decided[name]
        elif name in capped:
            result[name] = 1.0
        else:
            result[name] = eps * scores[name]
    return result


def erk(
    shapes: Shapes,
    density: float,
    *,
    dense: Iterable[str] = (),
    power: float = 1.0,
    fixed: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Erdős-Rényi-Kernel (Evci et al. 2020, RigL, section 3(1)).

    Raw score p_l = (sum(dims_l) / prod(dims_l)) ** power over all dims, kernel included.
    Solve eps with sum_l eps * p_l * N_l = budget over the sparse layers; a layer with
    eps * p_l > 1 is made dense (all layers tied at the top score at once) and eps is solved
    again until none exceeds 1. density_l = eps * p_l.
    """
    return _erdos_renyi(shapes, density, dense, power, fixed, kernel=True)


def er(
    shapes: Shapes,
    density: float,
    *,
    dense: Iterable[str] = (),
    power: float = 1.0,
    fixed: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Erdős-Rényi (Mocanu et al. 2018): ERK with p_l = (n_out + n_in) / (n_out * n_in),
    the kernel dims left out."""
    return _erdos_renyi(shapes, density, dense, power, fixed, kernel=False)


def global_magnitude(
    weights: Mapping[str, torch.Tensor],
    density: float,
    *,
    dense: Iterable[str] = (),
    fixed: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """One |w| threshold over all free layers (Renda et al. 2020; Gale et al. 2019).

    The free layers together keep the budget's count of largest-magnitude weights; a layer's
    density is the share of its weights above the global threshold.
    """
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    decided, budget, free = _split_budget(shapes, density, dense, fixed)
    if not free:
        return decided
    flat = torch.cat([weights[n].detach().abs().flatten().float() for n in free])
    keep = min(int(budget + 1e-6), flat.numel())
    if keep <= 0:
        raise ValueError(f"density={density} keeps no weight in the free layers")
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    result = dict(decided)
    for name in free:
        w = weights[name].detach().abs().float()
        result[name] = max(int((w >= threshold).sum().item()), 1) / w.numel()
    return {name: result[name] for name in shapes}


def explicit(
    shapes: Shapes,
    density: float,
    *,
    dense: Iterable[str] = (),
    fixed: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Every layer's density given by hand: 1 for the ``dense`` layers, ``fixed[name]`` for
    every other layer (``density`` is not used; a layer with neither is an error)."""
    dense, fixed = list(dense), fixed or {}
    missing = [n for n in shapes if n not in fixed and n not in dense]
    if missing:
        raise ValueError(
            f"distribution=explicit needs a density for every layer: missing {missing}"
        )
    return {n: 1.0 if n in dense else fixed[n] for n in shapes}


# The registry: every entry takes (weights, density, dense, fixed, power), the weights being
# the candidate layers' (only their shapes matter but to ``global_magnitude``).
Distribution = Callable[
    [Mapping[str, torch.Tensor], float, Sequence[str], Mapping[str, float], float],
    dict[str, float],
]


def _shapes(weights: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(w.shape) for name, w in weights.items()}


DISTRIBUTIONS: dict[str, Distribution] = {
    "uniform": lambda w, d, dense, fixed, _power: uniform(_shapes(w), d, dense=dense, fixed=fixed),
    "uniform_uncompensated": lambda w, d, dense, fixed, _power: uniform(
        _shapes(w), d, dense=dense, fixed=fixed, compensate=False
    ),
    "erk": lambda w, d, dense, fixed, power: erk(
        _shapes(w), d, dense=dense, power=power, fixed=fixed
    ),
    "er": lambda w, d, dense, fixed, power: er(
        _shapes(w), d, dense=dense, power=power, fixed=fixed
    ),
    "global_magnitude": lambda w, d, dense, fixed, _power: global_magnitude(
        w, d, dense=dense, fixed=fixed
    ),
    "explicit": lambda w, d, dense, fixed, _power: explicit(
        _shapes(w), d, dense=dense, fixed=fixed
    ),
}


def check_distribution(name: str) -> None:
    """Raises, listing the registry's names, unless ``name`` is in ``DISTRIBUTIONS``."""
    check_choice("distribution", name, DISTRIBUTIONS)


def layer_densities(
    name: str,
    weights: Mapping[str, torch.Tensor],
    density: float,
    *,
    dense: Sequence[str] = (),
    fixed: Mapping[str, float] | None = None,
    power: float = 1.0,
) -> dict[str, float]:
    """Layer name -> density under the distribution ``name`` (a key of ``DISTRIBUTIONS``)
    of the global ``density`` over the layers of ``weights``."""
    check_distribution(name)
    return DISTRIBUTIONS[name](weights, density, list(dense), dict(fixed or {}), power)
