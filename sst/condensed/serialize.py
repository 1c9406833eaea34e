"""Saving and loading condensed models as safetensors, without the training code's config.

The file holds every tensor of the model and, in the safetensors metadata under
``"sst.condensed"``, a JSON description from which ``load`` rebuilds it:

- ``modules``: for each leaf module its qualified name, type (from an allow-list of
  torch.nn and sst.condensed modules) and constructor arguments;
- ``graph``: the torch.fx graph (placeholder / get_attr / call_module / call_function /
  call_method / output nodes; functions from torch, torch.nn.functional, operator and a few
  builtins only), so residual additions and flattening come back without the model's code;
- ``encodings``: how a tensor is stored when not raw: N:M layers keep their values plus
  packed N:M metadata instead of indices; ``compress=True`` stores condensed indices
  delta-coded through zlib (``codec.py``).

Tensor names are ``<module>.<buffer>`` (``layers.0.0.conv1.values``); attributes read by
get_attr nodes are stored under their own qualified names. Condensed values are stored in
their dtype (float32, or bfloat16 with the module argument ``"dtype": "bfloat16"``); a file
holding bf16 values is format version 2, so that readers of version 1 refuse it. Sparse
(CSR) modules (``SparseLinear`` / ``SparseConv2d``) store ``rowptr``, ``cols``, ``values``
(float32 or int8) and, for int8, ``scale``; ``DepthwiseConv2d`` its ``weight`` and
``bias``. A file holding any of them is version 3 (readers of versions 1 and 2 do not know
these modules).
"""

from __future__ import annotations

import builtins
import json
import math
import operator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, fx, nn

from sst.files import atomic_write

from . import codec
from .depthwise import DepthwiseConv2d
from .layers import CondensedConv2d, CondensedLinear, CSRConv2d, CSRLinear
from .packing import flat_to_unit, nm_metadata, nm_positions, unit_to_flat
from .unstructured import SparseConv2d, SparseLinear

FORMAT = "sst.condensed"
VERSION = 3  # 2: bf16 condensed values; 3: Sparse* / DepthwiseConv2d modules; else 1


def _spec(*names: str, bias: bool = False):
    """Constructor arguments read from attributes of the same names (and ``bias`` as a
    flag: whether the module has one)."""

    def arguments(module: nn.Module) -> dict[str, Any]:
        args = {name: getattr(module, name) for name in names}
        if bias:
            args["bias"] = getattr(module, "bias", None) is not None
        return args

    return arguments


def _geometry(module: CondensedConv2d | CSRConv2d) -> dict[str, Any]:
    g = module.geometry
    return {
        "kernel_size": g.kernel_size,
        "stride": g.stride,
        "padding": g.padding,
        "dilation": g.dilation,
        "bias": module.bias is not None,
    }


def _value_dtype(m: CondensedLinear | CondensedConv2d) -> dict[str, Any]:
    """The ``dtype`` argument, for values that are not float32 (fp32 files stay unchanged)."""
    if m.value_dtype == torch.float32:
        return {}
    return {"dtype": str(m.value_dtype).removeprefix("torch.")}


def _condensed_linear(m: CondensedLinear) -> dict[str, Any]:
    return {
        **_spec("in_features", "out_features", "k", "n_live", "nm", bias=True)(m),
        **_value_dtype(m),
    }


def _condensed_conv(m: CondensedConv2d) -> dict[str, Any]:
    return {
        **_spec("in_channels", "out_channels", "k", "n_live", "nm", "mode")(m),
        **_geometry(m),
        **_value_dtype(m),
    }


def _csr_linear(m: CSRLinear) -> dict[str, Any]:
    return {
        "out_features": m.out_features,
        "fan_in": m.fan_in,
        "nnz": m.csr_values.numel(),
        "bias": m.bias is not None,
    }


def _csr_conv(m: CSRConv2d) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_features,
        "nnz": m.csr_values.numel(),
        **_geometry(m),
    }


def _sparse_dtype(m: SparseLinear | SparseConv2d) -> dict[str, Any]:
    return {"dtype": str(m.value_dtype).removeprefix("torch."), "bias": m.bias is not None}


def _sparse_linear(m: SparseLinear) -> dict[str, Any]:
    return {**_spec("in_features", "out_features", "nnz")(m), **_sparse_dtype(m)}


def _sparse_conv(m: SparseConv2d) -> dict[str, Any]:
    return {
        **_spec("in_channels", "out_channels", "nnz")(m),
        **_geometry(m),
        **_sparse_dtype(m),
    }


CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation")
BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")
POOL = ("kernel_size", "stride", "padding", "ceil_mode")

# type name -> (class, constructor arguments of an instance)
MODULES: dict[str, tuple[type[nn.Module], Any]] = {
    "Linear": (nn.Linear, _spec("in_features", "out_features", bias=True)),
    "Conv1d": (nn.Conv1d, _spec(*CONV, "groups", "padding_mode", bias=True)),
    "Conv2d": (nn.Conv2d, _spec(*CONV, "groups", "padding_mode", bias=True)),
    "BatchNorm1d": (nn.BatchNorm1d, _spec(*BN)),
    "BatchNorm2d": (nn.BatchNorm2d, _spec(*BN)),
    "LayerNorm": (nn.LayerNorm, _spec("normalized_shape", "eps", "elementwise_affine", bias=True)),
    "ReLU": (nn.ReLU, _spec("inplace")),
    "ReLU6": (nn.ReLU6, _spec("inplace")),
    "GELU": (nn.GELU, _spec("approximate")),
    "SiLU": (nn.SiLU, _spec("inplace")),
    "Mish": (nn.Mish, _spec("inplace")),
    "Hardswish": (nn.Hardswish, _spec("inplace")),
    "Hardtanh": (nn.Hardtanh, _spec("min_val", "max_val", "inplace")),
    "LeakyReLU": (nn.LeakyReLU, _spec("negative_slope", "inplace")),
    "ELU": (nn.ELU, _spec("alpha", "inplace")),
    "Sigmoid": (nn.Sigmoid, _spec()),
    "Tanh": (nn.Tanh, _spec()),
    "Softmax": (nn.Softmax, _spec("dim")),
    "Identity": (nn.Identity, _spec()),
    "Dropout": (nn.Dropout, _spec("p", "inplace")),
    "Flatten": (nn.Flatten, _spec("start_dim", "end_dim")),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, _spec("output_size")),
    "AvgPool2d": (nn.AvgPool2d, _spec(*POOL, "count_include_pad", "divisor_override")),
    "MaxPool2d": (nn.MaxPool2d, _spec(*POOL, "dilation")),
    "CondensedLinear": (CondensedLinear, _condensed_linear),
    "CondensedConv2d": (CondensedConv2d, _condensed_conv),
    "CSRLinear": (CSRLinear, _csr_linear),
    "CSRConv2d": (CSRConv2d, _csr_conv),
    "SparseLinear": (SparseLinear, _sparse_linear),
    "SparseConv2d": (SparseConv2d, _sparse_conv),
    "DepthwiseConv2d": (DepthwiseConv2d, _spec("channels", "stride", bias=True)),
}

# Namespaces whose functions call_function nodes may name, most specific first.
FUNCTION_NAMESPACES: dict[str, Any] = {
    "torch.nn.functional": F,
    "torch": torch,
    "operator": operator,
    "math": math,
}
BUILTINS = {"getattr", "len", "int", "float", "max", "min"}


# ------------------------------------------------------------------------------ encoding
def _function_name(fn: Any) -> str:
    for prefix, namespace in FUNCTION_NAMESPACES.items():
        name = getattr(fn, "__name__", None)
        if name and getattr(namespace, name, None) is fn:
            return f"{prefix}.{name}"
    name = getattr(fn, "__name__", None)
    if name in BUILTINS and getattr(builtins, name) is fn:
        return f"builtins.{name}"
    raise ValueError(
        f"the graph calls {fn!r}, which save() cannot name: only functions of "
        f"{list(FUNCTION_NAMESPACES)} and builtins {sorted(BUILTINS)} are stored"
    )


def _resolve_function(qualified: str) -> Any:
    prefix, _, name = qualified.rpartition(".")
    if prefix == "builtins" and name in BUILTINS:
        return getattr(builtins, name)
    if prefix in FUNCTION_NAMESPACES:
        fn = getattr(FUNCTION_NAMESPACES[prefix], name, None)
        if callable(fn):
            return fn
    raise ValueError(f"the file names function {qualified!r}, which load() does not allow")


def _encode(value: Any) -> Any:
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, (tuple, torch.Size)):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if value is Ellipsis:
        return {"ellipsis": True}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"save() cannot store the graph argument {value!r} ({type(value).__name__})")


def _decode(value: Any, env: dict[str, fx.Node]) -> Any:
    if isinstance(value, list):
        return [_decode(v, env) for v in value]
    if not isinstance(value, dict):
        return value
    ((kind, content),) = value.items()
    if kind == "node":
        return env[content]
    if kind == "tuple":
        return tuple(_decode(v, env) for v in content)
    if kind == "dict":
        return {k: _decode(v, env) for k, v in content.items()}
    if kind == "slice":
        return slice(*(_decode(v, env) for v in content))
    if kind == "dtype":
        return getattr(torch, content)
    if kind == "device":
        return torch.device(content)
    if kind == "ellipsis":
        return Ellipsis
    raise ValueError(f"unknown graph argument encoding {kind!r}")


def _module_spec(name: str, module: nn.Module) -> dict[str, Any]:
    type_name = type(module).__name__
    if type_name not in MODULES or not isinstance(module, MODULES[type_name][0]):
        raise ValueError(
            f"module {name!r} of type {type(module).__name__} cannot be saved: supported leaf "
            f"modules are {sorted(MODULES)}"
        )
    args = MODULES[type_name][1](module)
    return {"type": type_name, "args": json.loads(json.dumps(args))}


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (constructor arguments such as kernel_size)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


# ------------------------------------------------------------------------------ N:M
def _nm_encode(module: CondensedLinear | CondensedConv2d) -> tuple[Tensor, Tensor] | None:
    """(values in unit order, packed metadata) when every group of M inputs of every row
    holds exactly N weights, else None."""
    n, m = module.nm
    shape = module.weight_shape
    if module.rows is not None or module.k * m != module.in_features * n:
        return None
    units = flat_to_unit(module.indices.long().cpu(), shape)  # stored from the CPU
    units, order = torch.sort(units, dim=1)
    groups = units // m
    expected = torch.arange(module.k) // n
    if not bool((groups == expected).all()):
        return None
    return module.values.detach().cpu().gather(1, order).contiguous(), nm_metadata(units, m)


def _nm_decode(values: Tensor, metadata: Tensor, spec: dict[str, Any]) -> Tensor:
    args = spec["args"]
    n, m = args["nm"]
    if spec["type"] == "CondensedConv2d":
        shape = (args["out_channels"], args["in_channels"], *args["kernel_size"])
        fan_in = args["in_channels"] * math.prod(args["kernel_size"])
    else:
        shape = (args["out_features"], args["in_features"])
        fan_in = args["in_features"]
    units = nm_positions(metadata, n, m, values.shape[0], fan_in)
    return unit_to_flat(units, shape)


# ------------------------------------------------------------------------------ save/load
def _module_tensors(module: nn.Module, compress: bool) -> tuple[dict[str, Tensor], dict | None]:
    """A module's tensors to store, and how its indices are encoded (None: as they are). A
    condensed N:M layer stores 2-bit-style metadata instead of indices; ``compress``
    delta-codes the indices of the other condensed layers."""
    state = {k: v for k, v in module.state_dict().items() if v is not None}
    if not isinstance(module, (CondensedLinear, CondensedConv2d)):
        return state, None
    packed = _nm_encode(module) if module.nm else None
    if packed is not None:
        state["values"], state["nm_metadata"] = packed
        del state["indices"]
        return state, {"codec": "nm"}
    if not compress:
        return state, None
    blob = codec.encode_indices(module.indices.cpu())
    state["indices"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    encoding = {
        "codec": "zdelta",
        "dtype": str(module.indices.dtype).removeprefix("torch."),
        "shape": list(module.indices.shape),
    }
    return state, encoding


def save(
    model: nn.Module, path: str | Path, *, compress: bool = False, metadata: dict | None = None
) -> None:
    """Writes ``model`` (an ``fx.GraphModule``, as ``condense`` returns for traceable
    models) to ``path`` in safetensors; ``compress`` delta-codes condensed indices.

    Raises:
        ValueError: for a model that is not a GraphModule, or holds a module type or graph
            function outside the allow-lists (the message names it).
    """
    if not isinstance(model, fx.GraphModule):
        raise ValueError(
            "save() needs the fx.GraphModule that condense() returns; this model could not be "
            "traced by torch.fx, so its forward cannot be stored without its code"
        )
    tensors: dict[str, Tensor] = {}
    modules: dict[str, Any] = {}
    encodings: dict[str, Any] = {}
    attrs: list[str] = []
    nodes = []
    for node in model.graph.nodes:
        target = node.target
        if node.op == "call_module" and target not in modules:
            module = model.get_submodule(target)
            modules[target] = _module_spec(target, module)
            state, encoding = _module_tensors(module, compress)
            if encoding is not None:
                encodings[f"{target}.indices"] = encoding
            for key, tensor in state.items():
                tensors[f"{target}.{key}"] = tensor.detach().cpu().contiguous()
        elif node.op == "get_attr" and target not in attrs:
            attrs.append(target)
            tensors[target] = _get_attr(model, target).detach().cpu().contiguous()
        elif node.op == "call_function":
            target = _function_name(target)
        nodes.append(
            {
                "op": node.op,
                "name": node.name,
                "target": target if isinstance(target, str) else str(target),
                "args": _encode(node.args),
                "kwargs": _encode(node.kwargs),
            }
        )
    bf16 = any("dtype" in spec["args"] for spec in modules.values() if _condensed(spec))
    new = ("SparseLinear", "SparseConv2d", "DepthwiseConv2d")
    sparse = any(spec["type"] in new for spec in modules.values())
    description = {
        "version": 3 if sparse else 2 if bf16 else 1,
        "modules": modules,
        "attrs": attrs,
        "graph": nodes,
        "encodings": encodings,
        "user": metadata or {},
    }
    blob = safetensors_bytes(tensors, metadata={FORMAT: json.dumps(description)})
    # atomic, and created with the umask's permissions (safetensors' own writer makes 0600 files)
    atomic_write(path, lambda handle: handle.write(blob))


def _condensed(spec: dict[str, Any]) -> bool:
    return spec["type"] in ("CondensedLinear", "CondensedConv2d")


def _get_attr(model: nn.Module, target: str) -> Tensor:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _place(root: nn.Module, name: str, module: nn.Module | None, tensor: Tensor | None) -> None:
    """Puts ``module`` (or a buffer ``tensor``) at qualified ``name``, creating containers."""
    parts = name.split(".")
    parent = root
    for part in parts[:-1]:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    if module is not None:
        parent.add_module(parts[-1], module)
    else:
        parent.register_buffer(parts[-1], tensor)


def read_description(path: str | Path) -> dict[str, Any]:
    """The JSON description stored in a file written by ``save``."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if FORMAT not in meta:
        raise ValueError(f"{path} was not written by sst.condensed.save (no {FORMAT!r} metadata)")
    return json.loads(meta[FORMAT])


def load(path: str | Path) -> fx.GraphModule:
    """Rebuilds the model written by ``save`` (in eval mode, on the CPU)."""
    description = read_description(path)
    if description["version"] > VERSION:
        raise ValueError(f"{path}: format version {description['version']} is newer than {VERSION}")
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    root = nn.Module()
    encodings = description["encodings"]
    for name, spec in description["modules"].items():
        cls = MODULES[spec["type"]][0]
        args = {k: _tuples(v) for k, v in spec["args"].items()}
        module = cls(**args)
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        encoding = encodings.get(f"{name}.indices")
        if encoding is not None and encoding["codec"] == "nm":
            indices = _nm_decode(state["values"], state.pop("nm_metadata"), spec)
            state["indices"] = indices.to(module.indices.dtype)
        elif encoding is not None and encoding["codec"] == "zdelta":
            state["indices"] = codec.decode_indices(
                state["indices"].numpy().tobytes(),
                tuple(encoding["shape"]),
                getattr(torch, encoding["dtype"]),
            )
        _load_state(module, state, name)
        _place(root, name, module, None)
    for target in description["attrs"]:
        _place(root, target, None, tensors[target])
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for spec in description["graph"]:
        target = spec["target"]
        if spec["op"] == "call_function":
            target = _resolve_function(target)
        env[spec["name"]] = graph.create_node(
            spec["op"],
            target,
            _decode(spec["args"], env),
            _decode(spec["kwargs"], env),
            name=spec["name"],
        )
    model = fx.GraphModule(root, graph, "CondensedModel")
    return model.eval()


def _load_state(module: nn.Module, state: dict[str, Tensor], name: str) -> None:
    """Loads ``state`` into ``module``, replacing buffers whose shapes differ (condensed
    modules size theirs at construction, so shapes match; ``rows`` may be absent)."""
    if isinstance(module, (CondensedLinear, CondensedConv2d)):
        for key in ("values", "indices", "rows", "bias"):
            if key in state:
                setattr(module, key, state[key])
        module.reset_kernel()
        return
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
        raise ValueError(f"module {name!r}: missing {missing}, unexpected {unexpected} in the file")
