"""Model surgery before condensing: BatchNorm folding and removal of ablated neurons.

Both work on a torch.fx graph of the model, so they only touch dataflow they can see:

- **BN folding**: a Conv2d whose only user is a BatchNorm2d (eval statistics) absorbs it,
  W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps); the BN becomes
  the identity. Always faster: one pass over the activations less.
- **Ablated-neuron removal**: an output neuron of a Linear/Conv2d producer P whose mask row
  is all zero outputs the constant b[n]. When P's output reaches exactly one consumer C (a
  Linear, or a Conv2d with groups 1) through single-use per-channel elementwise modules
  (ReLU, GELU, Dropout in eval, an unfolded BN, ...), the neuron and C's matching input
  channel are removed, and the constant c[n] it delivers to C is folded into C's bias:
  b_C += sum over C's weights on channel n of W_C * c[n]. For a Conv2d consumer with zero
  padding the constant is not seen at the padded border, so there a channel is removed only
  when c[n] == 0 (e.g. ReLU of a non-positive bias) or when C has no padding.
  Residual additions, concatenations and any value with two users make removal unsafe
  (the channel feeds the sum as well): those channels stay, still computed as their bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

# Modules that act on every channel separately and keep the channel dimension.
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.Hardswish, nn.Hardtanh, nn.Mish, nn.Identity, nn.Dropout,
)  # fmt: skip
ELEMENTWISE_FUNCTIONS = (F.relu, torch.relu, F.gelu, F.silu, torch.sigmoid, torch.tanh)
ELEMENTWISE_METHODS = ("relu", "relu_", "sigmoid", "tanh")
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def trace(model: nn.Module, leaves: tuple[type[nn.Module], ...] = ()) -> fx.GraphModule:
    """Symbolic trace of ``model``; torch.nn modules and ``leaves`` stay leaf modules.

    Raises:
        torch.fx.proxy.TraceError (or another exception): for forwards fx cannot trace
        (data-dependent control flow); callers then skip the surgery.
    """

    class Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
            return isinstance(module, leaves) or super().is_leaf_module(module, qualname)

    graph = Tracer().trace(model)
    return fx.GraphModule(model, graph, model.__class__.__name__)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


# ------------------------------------------------------------------------------ BN folding
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` computing ``bn(conv(x))`` with ``bn``'s running statistics."""
    scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    s = scale / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(s)
    with torch.no_grad():
        folded.weight.copy_(conv.weight.detach() * s.view(-1, 1, 1, 1))
        folded.bias.copy_((bias - bn.running_mean) * s + shift)
    return folded.to(conv.weight.device)


def fold_batchnorms(gm: fx.GraphModule) -> list[str]:
    """Folds every BatchNorm2d whose input is a Conv2d used only by it; returns the conv
    names. Masks need no change (rows are scaled, zeros stay zero)."""
    folded = []
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
            continue
        source = node.args[0]
        conv = _module(gm, source) if isinstance(source, fx.Node) else None
        if not isinstance(conv, nn.Conv2d) or len(source.users) != 1:
            continue
        set_submodule(gm, source.target, fold_conv_bn(conv, bn))
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        folded.append(source.target)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


# ------------------------------------------------------------------------------ removal
@dataclass
class Removal:
    """What ``remove_ablated`` did for one producer layer."""

    consumer: str
    removed: int
    kept_ablated: int
    chain: list[str] = field(default_factory=list)


def _elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), (*ELEMENTWISE_MODULES, *BATCHNORMS))
    if node.op == "call_function":
        return node.target in ELEMENTWISE_FUNCTIONS and len(node.args) >= 1
    if node.op == "call_method":
        return node.target in ELEMENTWISE_METHODS
    return False


def _apply(gm: fx.GraphModule, node: fx.Node, value: Tensor) -> Tensor:
    """The chain op of ``node`` on a constant activation ``value``."""
    if node.op == "call_module":
        return gm.get_submodule(node.target)(value)
    if node.op == "call_function":
        return node.target(value, *node.args[1:], **node.kwargs)
    return getattr(value, node.target)(*node.args[1:], **node.kwargs)


def _chain(gm: fx.GraphModule, producer: fx.Node) -> tuple[list[fx.Node], fx.Node] | None:
    """(elementwise nodes, consumer) when ``producer`` feeds exactly one Linear/Conv2d
    through single-use elementwise nodes, else None."""
    chain: list[fx.Node] = []
    current = producer
    while True:
        if len(current.users) != 1:
            return None
        (user,) = current.users
        if _elementwise(gm, user) and user.args and user.args[0] is current:
            chain.append(user)
            current = user
            continue
        module = _module(gm, user)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and user.args and user.args[0] is current:
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                return None
            if len(user.args) > 1 or user.kwargs:
                return None
            return chain, user
        return None


def _slice_rows(layer: nn.Module, keep: Tensor) -> nn.Module:
    """A copy of a Linear/Conv2d keeping only output rows ``keep``."""
    weight = layer.weight.detach()[keep]
    bias = None if layer.bias is None else layer.bias.detach()[keep]
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, weight.shape[0], bias=bias is not None)
    else:
        new = nn.Conv2d(
            layer.in_channels, weight.shape[0], layer.kernel_size, stride=layer.stride,
            padding=layer.padding, dilation=layer.dilation, bias=bias is not None,
            padding_mode=layer.padding_mode,
        )  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new.to(weight.device)


def _slice_inputs(layer: nn.Module, keep: Tensor, bias_add: Tensor | None) -> nn.Module:
    """A copy of a Linear/Conv2d keeping only input channels ``keep``, with ``bias_add``
    added to its bias."""
    weight = layer.weight.detach()[:, keep]
    has_bias = layer.bias is not None or bias_add is not None
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], layer.out_features, bias=has_bias)
    else:
        new = nn.Conv2d(
            weight.shape[1], layer.out_channels, layer.kernel_size, stride=layer.stride,
            padding=layer.padding, dilation=layer.dilation, bias=has_bias,
            padding_mode=layer.padding_mode,
        )  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(weight)
        if has_bias:
            bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(new.bias)
            new.bias.copy_(bias + (0 if bias_add is None else bias_add))
    return new.to(weight.device)


def _slice_batchnorm(bn: nn.Module, keep: Tensor) -> nn.Module:
    new = type(bn)(int(keep.sum()), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats)  # fmt: skip
    new.eval()
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight.detach()[keep])
            new.bias.copy_(bn.bias.detach()[keep])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[keep])
            new.running_var.copy_(bn.running_var[keep])
    return new.to(keep.device)


def _padded(conv: nn.Conv2d) -> bool:
    if conv.padding == "valid":
        return False
    if conv.padding == "same":
        return any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def _delivered_constant(gm: fx.GraphModule, producer: nn.Module, chain, rows: int) -> Tensor:
    """The constant each output channel of ``producer`` delivers to its consumer once its
    weights are zero: the chain (BatchNorm, activation, ...) applied to the bias."""
    bias = producer.bias.detach() if producer.bias is not None else None
    device = producer.weight.device
    value = torch.zeros(rows, device=device) if bias is None else bias.clone()
    value = value.view(1, -1, 1, 1) if isinstance(producer, nn.Conv2d) else value.view(1, -1)
    with torch.no_grad():
        for link in chain:
            value = _apply(gm, link, value)
    return value.flatten()


def _folded_bias(consumer: nn.Module, removable: Tensor, constant: Tensor) -> Tensor | None:
    """What the removed channels' constants add to the consumer's bias (None if nothing)."""
    w = consumer.weight.detach()
    removed_w = w[:, removable]
    c = constant[removable].to(w.dtype)
    if isinstance(consumer, nn.Linear):
        bias_add = removed_w @ c
    else:
        bias_add = (removed_w * c.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    return bias_add if bool(bias_add.any()) else None


def _remove_channels(gm, node, chain, consumer_node, keep: Tensor, bias_add, masks) -> None:
    """Slices the producer's rows, the chain's BatchNorms and the consumer's inputs to
    ``keep``, and the masks with them."""
    set_submodule(gm, node.target, _slice_rows(gm.get_submodule(node.target), keep))
    for link in chain:
        module = _module(gm, link)
        if isinstance(module, BATCHNORMS):
            set_submodule(gm, link.target, _slice_batchnorm(module, keep))
    consumer = gm.get_submodule(consumer_node.target)
    set_submodule(gm, consumer_node.target, _slice_inputs(consumer, keep, bias_add))
    masks[node.target] = masks[node.target][keep]
    if consumer_node.target in masks:
        masks[consumer_node.target] = masks[consumer_node.target][:, keep]


def _remove_at(gm: fx.GraphModule, node, masks: dict[str, Tensor]) -> Removal | None:
    """Removes the ablated neurons of one producer node where the graph allows it."""
    producer = gm.get_submodule(node.target)
    if not isinstance(producer, (nn.Linear, nn.Conv2d)):
        return None
    mask = masks[node.target].bool()
    dead = ~mask.reshape(mask.shape[0], -1).any(dim=1)
    found = _chain(gm, node) if bool(dead.any()) else None
    if found is None:
        return None
    chain, consumer_node = found
    consumer = gm.get_submodule(consumer_node.target)
    constant = _delivered_constant(gm, producer, chain, mask.shape[0])
    removable = dead.clone()
    if isinstance(consumer, nn.Conv2d) and _padded(consumer):
        removable &= constant == 0
    if not bool(removable.any()):
        return Removal(consumer_node.target, 0, int(dead.sum()))
    bias_add = _folded_bias(consumer, removable, constant)
    _remove_channels(gm, node, chain, consumer_node, ~removable, bias_add, masks)
    return Removal(
        consumer_node.target,
        int(removable.sum()),
        int((dead & ~removable).sum()),
        [str(link.target) for link in chain],
    )


def remove_ablated(gm: fx.GraphModule, masks: dict[str, Tensor]) -> dict[str, Removal]:
    """Removes ablated output neurons (all-zero mask rows) where the graph allows it (see the
    module docstring); updates ``masks`` (rows of producers, columns of consumers) in place.
    Returns, per producer that had ablated neurons and a single consumer, what was done."""
    done: dict[str, Removal] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in masks:
            continue
        removal = _remove_at(gm, node, masks)
        if removal is not None:
            done[node.target] = removal
    gm.recompile()
    return done


__all__ = [
    "Removal",
    "fold_batchnorms",
    "fold_conv_bn",
    "remove_ablated",
    "set_submodule",
    "trace",
]
