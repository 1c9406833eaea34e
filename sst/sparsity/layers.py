"""Which weights a sparsity method masks, named by fully qualified module name."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from torch import nn

from sst.dist import Replicated


def is_pointwise_conv(module: nn.Module) -> bool:
    """A 1x1 Conv2d with groups=1: a matrix product over channels at every pixel, the layer
    that MobileNet-style sparse inference runs sparse (the input conv, the depthwise convs
    and the classifier stay dense)."""
    return (
        isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1
    )


def _of_type(cls: type[nn.Module]) -> Callable[[nn.Module], bool]:
    return lambda module: isinstance(module, cls)


# ``layer_types`` name -> the test a module passes to be a candidate.
LAYER_TYPES: dict[str, Callable[[nn.Module], bool]] = {
    "Linear": _of_type(nn.Linear),
    "Conv1d": _of_type(nn.Conv1d),
    "Conv2d": _of_type(nn.Conv2d),
    "Conv3d": _of_type(nn.Conv3d),
    "MultiheadAttention": _of_type(nn.MultiheadAttention),
    "PointwiseConv2d": is_pointwise_conv,
}


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DistributedDataParallel / ``sst.dist.Replicated`` /
    torch.compile wrappers, so that layer names stay the standard ``state_dict`` names."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, Replicated)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def weight_layers(model: nn.Module, layer_types: Sequence[str]) -> dict[str, nn.Parameter]:
    """Layer name -> weight for every module of the given types, in registration order.

    A Linear or Conv is named by its module name (``layer3.1.conv2``); the packed q/k/v
    projection of a MultiheadAttention by ``<module>.in_proj_weight``. ``PointwiseConv2d``
    selects the 1x1 convs with groups=1 only (``is_pointwise_conv``).
    """
    unknown = [t for t in layer_types if t not in LAYER_TYPES]
    if unknown:
        raise ValueError(f"layer_types {unknown} unknown: allowed values are {list(LAYER_TYPES)}")
    tests = [LAYER_TYPES[t] for t in layer_types]
    found: dict[str, nn.Parameter] = {}
    for name, module in unwrap(model).named_modules():
        if not any(test(module) for test in tests):
            continue
        if isinstance(module, nn.MultiheadAttention):
            if module.in_proj_weight is not None:
                found[f"{name}.in_proj_weight"] = module.in_proj_weight
        elif module.weight is not None:
            found[name] = module.weight
    return found


def weight_owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(module, attribute) holding the weight that ``weight_layers`` calls ``name``."""
    module_name, _, last = name.rpartition(".")
    if last == "in_proj_weight":  # a MultiheadAttention's packed projection
        return unwrap(model).get_submodule(module_name), last
    return unwrap(model).get_submodule(name), "weight"


def forward_caller(model: nn.Module, name: str) -> nn.Module:
    """The module whose forward pass reads the weight that ``weight_layers`` calls ``name``:
    its owner, except a MultiheadAttention's ``out_proj``, whose weight the attention reads
    without calling ``out_proj``."""
    parent_name, _, last = name.rpartition(".")
    if last == "out_proj":
        parent = unwrap(model).get_submodule(parent_name)
        if isinstance(parent, nn.MultiheadAttention):
            return parent
    return weight_owner(model, name)[0]


def matching(names: Iterable[str], patterns: Iterable[str], setting: str) -> list[str]:
    """Names matched (``re.fullmatch``) by any pattern; a pattern that matches no name is an
    error naming ``setting``, so a typo cannot silently leave a layer out."""
    if isinstance(patterns, str):  # would be read as one pattern per character
        raise ValueError(
            f"{setting} must be a list of regular expressions, got the string {patterns!r}: "
            f"write [{patterns!r}]"
        )
    names = list(names)
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if re.fullmatch(pattern, n)]
        if not hits:
            preview = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"{setting}: {pattern!r} matches no layer; layers are: {preview}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def select_layers(
    model: nn.Module,
    *,
    layer_types: Sequence[str] = ("Linear", "Conv2d"),
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, nn.Parameter]:
    """The candidate layers of a sparsity method: by type, then narrowed by ``include``
    regexes (all when None) and ``exclude`` regexes. Biases and normalisation layers are
    never candidates."""
    layers = weight_layers(model, layer_types)
    names = list(layers) if include is None else matching(layers, include, "include")
    dropped = set(matching(names, exclude, "exclude"))
    chosen = {n: layers[n] for n in names if n not in dropped}
    if not chosen:
        raise ValueError(f"no layer of types {list(layer_types)} is left to sparsify")
    return chosen
