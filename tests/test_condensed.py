"""sst.condensed: exported models compute what the masked model computes, in every path.

Tolerance: max |y - y_masked| <= TOL * max(1, max |y_masked|) with TOL = 1e-4 (fp32 sums in
another order), the same check ``export_model`` applies.

bf16 values are checked against per-output bounds instead (``error_bound``): each weight is
rounded within a relative 2^-8 of itself, so y = W a + b moves by at most 2^-8 (|W| |a|)[n],
plus the float32 rounding of both sums (gamma_n, Higham's bound for a sum of n products).
"""

from __future__ import annotations

import copy
import math
import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from sst.condensed import (
    CondensedConv2d,
    CondensedLinear,
    CSRLinear,
    codec,
    condense,
    cpu,
    export_model,
    format_size_table,
    gpu,
    index_dtype,
    load,
    save,
    size_report,
)
from sst.condensed.cli import find_input_shape, parse_args
from sst.condensed.export import BF16_ROUNDOFF, condense_with_report, masked_reference
from sst.condensed.layers import CONDENSED_TYPES
from sst.condensed.packing import condense_matrix
from sst.condensed.semi_structured import semi_structured
from sst.condensed.serialize import read_description
from sst.condensed.size import log2_binomial
from sst.condensed.unstructured import SparseLinear
from sst.condensed.windowed import pair_order
from sst.models import mlp, resnet_cifar
from sst.sparsity import Static

TOL = 1e-4
needs_compiled = pytest.mark.skipif(not cpu.compiled_available(), reason="C++ kernels not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def assert_close(output: torch.Tensor, reference: torch.Tensor) -> None:
    scale = max(1.0, float(reference.abs().max()))
    error = float((output - reference).abs().max())
    assert error <= TOL * scale, f"max error {error:.3g} > {TOL * scale:.3g}"


def fan_in_mask(out: int, fan_in: int, k: int, ablate=(), seed: int = 0) -> torch.Tensor:
    """(out, fan_in) constant fan-in mask with k ones per row and zero rows ``ablate``."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(out, fan_in, generator=g).argsort(dim=1)[:, :k]
    mask = torch.zeros(out, fan_in, dtype=torch.bool).scatter_(1, order, True)
    mask[list(ablate)] = False
    return mask


def masked_linear(in_f: int, out: int, k: int, ablate=(), bias: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    linear = nn.Linear(in_f, out, bias=bias)
    mask = fan_in_mask(out, in_f, k, ablate, seed)
    with torch.no_grad():
        linear.weight.mul_(mask)
    return linear, mask


def static_masks(model: nn.Module, density: float, ablate: dict[str, list[int]]) -> dict:
    """Constant fan-in masks from the sparsity engine, some neurons ablated, weights masked."""
    method = Static(model, density=density, structure="constant_fanin", distribution="uniform")
    masks = {name: mask.bool().clone() for name, mask in method.masks.items()}
    for name, rows in ablate.items():
        masks[name][rows] = False
    with torch.no_grad():
        for name, module in model.named_modules():
            if name in masks:
                module.weight.mul_(masks[name])
    return masks


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.3)


# ------------------------------------------------------------------------------ layers
@pytest.mark.parametrize(
    ("in_f", "out", "k", "dtype"),
    [(200, 24, 17, torch.uint8), (3072, 40, 307, torch.int16), (40000, 6, 9, torch.int32)],
)
@pytest.mark.parametrize("batch", [1, 2, 5, 37])
def test_linear_matches_masked_and_index_dtype(in_f, out, k, dtype, batch):
    linear, _ = masked_linear(in_f, out, k, ablate=(1, out - 1))
    condensed = CondensedLinear.from_linear(linear)
    assert condensed.indices.dtype == dtype == index_dtype(in_f)
    assert condensed.k == k and condensed.n_live == out - 2
    x = torch.randn(batch, in_f)
    with torch.inference_mode():
        y = condensed(x)
        reference = linear(x)
    assert_close(y, reference)
    # ablated neurons output their bias
    assert torch.equal(y[:, 1], linear.bias.detach()[1].expand(batch))


def test_index_dtype_boundaries():
    assert index_dtype(256) == torch.uint8
    assert index_dtype(257) == torch.int16
    assert index_dtype(32767) == torch.int16
    assert index_dtype(32768) == torch.int32


def test_linear_without_bias_and_leading_dims():
    linear, _ = masked_linear(64, 16, 5, ablate=(3,), bias=False)
    condensed = CondensedLinear.from_linear(linear)
    x = torch.randn(2, 3, 64)
    with torch.inference_mode():
        y = condensed(x)
    assert y.shape == (2, 3, 16)
    assert_close(y, linear(x).detach())
    assert torch.equal(y[..., 3], torch.zeros(2, 3))


def test_linear_refuses_unstructured_naming_the_layer():
    linear, mask = masked_linear(32, 8, 4)
    with torch.no_grad():
        linear.weight[0, mask[0].logical_not().nonzero()[0]] = 1.0  # row 0 now holds 5
    with pytest.raises(ValueError, match=r"'encoder\.fc1'.*not constant fan-in"):
        CondensedLinear.from_linear(linear, name="encoder.fc1")
    model = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), linear)
    with pytest.raises(ValueError, match="layer '2'"):
        condense(model, {"2": linear.weight != 0}, formats="condensed")


CONV_CASES = [  # in, out, kernel, stride, padding, dilation, height, width
    (5, 7, 3, 1, 1, 1, 9, 11),
    (5, 7, 3, 2, 1, 1, 10, 9),
    (6, 4, 1, 2, 0, 1, 8, 8),
    (4, 6, 5, 1, 2, 2, 12, 11),
    (3, 8, 3, 1, 0, 1, 7, 7),
    (8, 8, (3, 1), (2, 1), (1, 0), 1, 9, 6),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("mode", ["direct", "unfold"])
def test_conv_matches_masked(case, mode):
    c_in, c_out, kernel, stride, padding, dilation, h, w = case
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, bias=True)
    fan_in = conv.weight[0].numel()
    mask = fan_in_mask(c_out, fan_in, max(1, fan_in // 4), ablate=(2,)).view_as(conv.weight)
    with torch.no_grad():
        conv.weight.mul_(mask)
    condensed = CondensedConv2d.from_conv(conv, mode=mode)
    assert condensed.indices.dtype == index_dtype(fan_in)
    x = torch.randn(2, c_in, h, w)
    with torch.inference_mode():
        assert_close(condensed(x), conv(x))


def test_conv_refuses_groups_and_unstructured():
    grouped = nn.Conv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match=r"'g'.*groups=2"):
        CondensedConv2d.from_conv(grouped, name="g")
    conv = nn.Conv2d(4, 4, 3)
    with pytest.raises(ValueError, match=r"'c'.*not constant fan-in"):
        CondensedConv2d.from_conv(conv, (torch.rand_like(conv.weight) < 0.3), name="c")


@needs_compiled
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_fallback_matches_compiled_linear(batch, monkeypatch):
    linear, mask = masked_linear(300, 33, 21, ablate=(0, 5))
    matrix = condense_matrix(linear.weight.detach(), mask)
    kernel = cpu.LinearKernel(matrix, linear.bias)
    x = torch.randn(batch, 300)
    with torch.inference_mode():
        compiled = kernel(x)
        fallback = cpu.linear_reference(x, matrix, linear.bias.detach())
        monkeypatch.setattr(cpu, "FORCE_FALLBACK", True)
        via_module = CondensedLinear.from_linear(linear)(x)
    assert_close(compiled, fallback)
    assert_close(via_module, fallback)


@needs_compiled
@pytest.mark.parametrize("mode", ["direct", "unfold"])
def test_fallback_matches_compiled_conv(mode):
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    mask = fan_in_mask(10, 54, 7, ablate=(4,)).view_as(conv.weight)
    matrix = condense_matrix(conv.weight.detach().reshape(10, -1), mask.reshape(10, -1))
    geometry = cpu.ConvGeometry(conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    kernel = cpu.ConvKernel(matrix, conv.bias, geometry, mode)
    x = torch.randn(3, 6, 11, 13)
    with torch.inference_mode():
        assert_close(kernel(x), cpu.conv2d_reference(x, matrix, conv.bias.detach(), geometry))


@needs_compiled
def test_concurrent_callers_and_thread_counts():
    """Several Python threads calling the kernels at once, with 1 to 4 OpenMP threads."""
    linear, _ = masked_linear(512, 300, 60, ablate=(7,))
    condensed = CondensedLinear.from_linear(linear)
    inputs = [torch.randn(batch, 512) for batch in (1, 3, 17)]
    with torch.no_grad():
        expected = [linear(x) for x in inputs]
    errors: list[float] = []

    def call(seed: int) -> None:
        with torch.inference_mode():
            for i in range(60):
                j = (seed + i) % len(inputs)
                errors.append(float((condensed(inputs[j]) - expected[j]).abs().max()))

    threads_before = torch.get_num_threads()
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            workers = [threading.Thread(target=call, args=(seed,)) for seed in range(3)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
    finally:
        torch.set_num_threads(threads_before)
    assert len(errors) == 3 * 3 * 60 and max(errors) < TOL * 10


def test_copies_do_not_share_the_kernel():
    linear, _ = masked_linear(300, 20, 30)
    original = CondensedLinear.from_linear(linear)
    x = torch.randn(2, 300)
    with torch.inference_mode():
        original(x)  # builds the kernel, which holds the buffers' addresses
        duplicate = copy.deepcopy(original)
        del original
        assert_close(duplicate(x), linear(x))


def test_grad_input_runs_the_differentiable_fallback():
    linear, _ = masked_linear(40, 12, 6)
    condensed = CondensedLinear.from_linear(linear)
    x = torch.randn(4, 40, requires_grad=True)
    condensed(x).sum().backward()
    assert_close(x.grad, linear.weight.detach().sum(dim=0).expand(4, 40))


# ------------------------------------------------------------------------------ models
def test_bn_folded_into_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    randomize_batchnorm(model)
    mask = fan_in_mask(8, 27, 6).view(8, 3, 3, 3)
    with torch.no_grad():
        model[0].weight.mul_(mask)
    model.eval()
    condensed, _, _, folded = condense_with_report(model, {"0": mask})
    assert folded == ["0"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in condensed.modules())
    assert isinstance(condensed.get_submodule("0"), CondensedConv2d)
    x = torch.randn(2, 3, 10, 10)
    with torch.inference_mode():
        assert_close(condensed(x), model(x))


def test_mlp_ablated_neurons_removed():
    torch.manual_seed(0)
    model = mlp(10, (1, 8, 8), hidden=(48, 32)).eval()
    masks = static_masks(model, 0.2, {"1": [0, 3, 7], "3": [5]})
    with torch.no_grad():
        model[1].bias.add_(0.5)  # ablated neurons deliver relu(b) > 0 to the next layer
    condensed, _, removed, _ = condense_with_report(model, masks)
    assert removed["1"].removed == 3 and removed["3"].removed == 1
    assert condensed.get_submodule("1").out_features == 45
    assert condensed.get_submodule("3").in_features == 45
    assert condensed.get_submodule("5").in_features == 31
    assert all(isinstance(condensed.get_submodule(n), CondensedLinear) for n in ("1", "3", "5"))
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert_close(condensed(x), model(x))


def test_small_resnet_residual_channels_kept():
    torch.manual_seed(0)
    model = resnet_cifar(10, (3, 16, 16), depth=8).eval()
    ablate = {"layers.0.0.conv1": [0, 1], "layers.1.0.conv1": [2], "layers.2.0.conv2": [3, 4]}
    masks = static_masks(model, 0.25, ablate)
    randomize_batchnorm(model)
    condensed, _, removed, folded = condense_with_report(model, masks)
    assert "layers.0.0.conv1" in folded and "conv1" in folded
    # conv2 feeds the residual addition: its ablated channels stay (computed as their bias)
    assert "layers.2.0.conv2" not in removed
    assert condensed.get_submodule("layers.2.0.conv2").out_features == 64
    # conv1 -> relu -> conv2 (padded): a channel goes only if it delivers exactly 0
    removal = removed["layers.0.0.conv1"]
    assert removal.removed + removal.kept_ablated == 2
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        assert_close(condensed(x), model(x))


def test_conv_channel_removed_when_relu_gives_zero():
    torch.manual_seed(0)
    model = resnet_cifar(10, (3, 8, 8), depth=8).eval()
    masks = static_masks(model, 0.3, {"layers.1.0.conv1": [0, 1, 2]})
    bn = model.get_submodule("layers.1.0.bn1")
    with torch.no_grad():  # folded bias of the ablated channels: beta - mean*s <= 0
        bn.bias[:3] = -0.1
        bn.running_mean[:3] = 0.0
    condensed, _, removed, _ = condense_with_report(model, masks)
    assert removed["layers.1.0.conv1"].removed == 3
    assert condensed.get_submodule("layers.1.0.conv1").out_features == 29
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        assert_close(condensed(x), model(x))


def test_export_measures_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = resnet_cifar(10, (3, 8, 8), depth=8).eval()
    masks = static_masks(model, 0.2, {"layers.0.0.conv1": [1]})
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 8, 8)
    result = export_model(model, masks, tmp_path / "m.safetensors", example_input=x)
    assert result.max_abs_error <= TOL * result.reference_scale
    assert all(layer.timings_us for layer in result.layers)
    loaded = load(tmp_path / "m.safetensors")
    with torch.inference_mode():
        assert_close(loaded(x), masked_reference(model, masks)(x))


# ------------------------------------------------------------------------------ formats
def test_nm_layers_stored_compressed(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(96, 4))
    masks = {}
    for name in ("0", "3"):
        weight = model.get_submodule(name).weight
        units = weight.detach().movedim(1, -1).reshape(-1, 4)
        keep = units.abs().argsort(dim=1)[:, 2:]
        unit_mask = torch.zeros_like(units, dtype=torch.bool).scatter_(1, keep, True)
        shape = weight.movedim(1, -1).shape
        masks[name] = unit_mask.reshape(shape).movedim(-1, 1)
    condensed, report, _, _ = condense_with_report(model, masks)
    assert [layer.kind for layer in report] == ["nm", "nm"]
    assert condensed.get_submodule("0").nm == (2, 4)
    save(condensed, tmp_path / "nm.safetensors")
    loaded = load(tmp_path / "nm.safetensors")
    x = torch.randn(2, 8, 4, 4)
    with torch.inference_mode():
        assert_close(condensed(x), masked_reference(model, masks)(x))
        assert torch.equal(loaded(x), condensed(x))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "nm.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        meta = f.get_tensor("3.nm_metadata")
    assert "3.indices" not in keys
    assert meta.numel() == math.ceil(4 * 48 * 2 / 8)  # 2 bits per value
    sizes = {layer.name: layer for layer in size_report(masks)}
    assert sizes["3"].nm == 4 * 192 + 48


def test_unstructured_layers_sparse_or_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, 8))
    masks = {"0": torch.rand(32, 512) < 0.01, "2": torch.rand(8, 32) < 0.5}
    masks["0"][:, 0] = True  # no empty row: nothing to remove, "2" stays unstructured
    condensed, report, _, _ = condense_with_report(model, masks)
    # density 0.03 <= SPARSE_MAX_DENSITY: the compiled CSR kernels; 0.5 stays dense
    assert {layer.name: layer.format for layer in report} == {"0": "sparse", "2": "dense"}
    assert isinstance(condensed.get_submodule("0"), SparseLinear)
    forced, report, _, _ = condense_with_report(model, masks, formats="csr")
    assert isinstance(forced.get_submodule("0"), CSRLinear)
    x = torch.randn(3, 512)
    with torch.inference_mode():
        assert_close(condensed(x), masked_reference(model, masks)(x))


@pytest.mark.parametrize("compress", [False, True])
def test_save_load_round_trip(tmp_path, compress):
    torch.manual_seed(0)
    model = mlp(10, (1, 8, 8), hidden=(40,)).eval()
    masks = static_masks(model, 0.25, {"1": [2]})
    condensed = condense(model, masks)
    save(condensed, tmp_path / "mlp.safetensors", compress=compress)
    loaded = load(tmp_path / "mlp.safetensors")
    x = torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded(x), condensed(x))
    assert isinstance(loaded.get_submodule("1"), CondensedLinear)


def test_saved_file_is_readable_by_others_under_the_umask(tmp_path):
    """An export is shared: it gets the umask's permissions (safetensors alone writes 0600)."""
    model = mlp(10, (1, 8, 8), hidden=(40,)).eval()
    path = tmp_path / "mlp.safetensors"
    previous = os.umask(0o022)
    try:
        save(condense(model, static_masks(model, 0.25, {})), path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.safetensors"]  # no temporary left


def test_save_refuses_untraceable_model():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.warns(UserWarning, match="cannot trace"):
        condensed = condense(Branchy())
    with pytest.raises(ValueError, match="could not be traced"):
        save(condensed, "unused.safetensors")


def test_codec_round_trip():
    mask = fan_in_mask(30, 500, 40)
    matrix = condense_matrix(torch.randn(30, 500), mask)
    blob = codec.encode_indices(matrix.indices)
    decoded = codec.decode_indices(blob, tuple(matrix.indices.shape), matrix.indices.dtype)
    assert torch.equal(decoded, matrix.indices)
    assert len(blob) < matrix.indices.numel() * 2 * 0.6


def test_size_report_hand_computed():
    # 4 neurons x 8 inputs, 2 active weights each, neuron 3 ablated: nnz 6, live 3
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0, [0, 5]] = mask[1, [1, 2]] = mask[2, [3, 7]] = True
    (layer,) = size_report({"fc": mask})
    assert layer.nnz == 6 and layer.live == 3
    assert layer.dense == 4 * 32
    assert layer.bitmap == 4 + 6 * 4
    assert layer.csr64 == 6 * 4 + 6 * 8 + 5 * 8
    assert layer.csr32 == 6 * 4 + 6 * 4 + 5 * 4
    assert layer.condensed == 3 * 2 * (4 + 1) + 3 * 4  # uint8 indices, live-row list
    assert layer.nm is None
    assert layer.minimum == pytest.approx(6 * 4 + math.log2(math.comb(32, 6)) / 8)
    assert log2_binomial(32, 6) == pytest.approx(math.log2(906192))
    table = format_size_table([layer])
    assert "| fc | 4x8 | 0.188 | 0.1 |" in table and "**total**" in table
    assert table.startswith("storage in KiB")


# ------------------------------------------------------------------------------ bf16 values
def gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u), u = 2^-24: a float32 sum of n products (in any order, with
    or without FMA) differs from the exact sum by at most gamma_n * sum |terms| (Higham,
    "Accuracy and Stability of Numerical Algorithms", 2002, sec. 3.1)."""
    u = 2.0**-24
    return n * u / (1 - n * u)


def error_bound(
    apply_abs: Callable[[torch.Tensor], torch.Tensor],
    fan_in: int,
    bias: torch.Tensor | None,
    a: torch.Tensor,
    e: torch.Tensor | float = 0.0,
    rounding: float = BF16_ROUNDOFF,
) -> torch.Tensor:
    """Bound on |y_hat - y| for y = fl(W a + b) and y_hat = fl(W_hat a_hat + b), where
    |W_hat - W| <= rounding |W| (bf16: 2^-8) and |a_hat - a| <= e elementwise:

        |W| e + rounding |W| (|a| + e) + 2 gamma_{n+1} ((1 + rounding) |W| (|a| + e) + |b|),

    n = fan_in; ``apply_abs`` applies |W| (a matrix product or a conv with |W|), in float64."""
    reach = a.double().abs() + e
    w_reach = apply_abs(reach)
    w_e = apply_abs(torch.as_tensor(e, dtype=torch.float64).expand_as(reach))
    b = 0.0 if bias is None else bias.detach().double().abs()
    if isinstance(b, torch.Tensor) and w_reach.dim() == 4:
        b = b.view(1, -1, 1, 1)
    g = gamma(fan_in + 1)
    return w_e + rounding * w_reach + 2 * g * ((1 + rounding) * w_reach + b)


def linear_abs(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    w = weight.detach().double().abs()
    return lambda t: t @ w.T


def assert_within(output: torch.Tensor, reference: torch.Tensor, bound: torch.Tensor) -> None:
    excess = (output.double() - reference.double()).abs() - bound
    assert float(excess.max()) <= 0, f"error exceeds the bound by {float(excess.max()):.3g}"


@pytest.mark.parametrize(("in_f", "out", "k"), [(300, 40, 37), (3072, 48, 307), (40000, 6, 9)])
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_bf16_linear_within_rounding_bound(in_f, out, k, batch):
    """bf16 values: the output stays within the bf16 rounding bound of the fp32 masked
    layer (batch 1 and 3 run the windowed or gemv kernel, 16 spmm)."""
    linear, _ = masked_linear(in_f, out, k, ablate=(1,))
    condensed = CondensedLinear.from_linear(linear, dtype=torch.bfloat16)
    fp32 = CondensedLinear.from_linear(linear)
    assert condensed.values.dtype == torch.bfloat16 and condensed.bias.dtype == torch.float32
    assert torch.equal(condensed.values, fp32.values.bfloat16())  # round to nearest even
    x = torch.randn(batch, in_f)
    with torch.inference_mode():
        y = condensed(x)
        reference = linear(x)
    assert y.dtype == torch.float32
    assert_within(y, reference, error_bound(linear_abs(linear.weight), in_f, linear.bias, x))
    assert not torch.equal(y, reference)  # the values were rounded
    assert torch.equal(y[:, 1], linear.bias.detach()[1].expand(batch))


def test_bf16_conv_within_rounding_bound():
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    mask = fan_in_mask(10, 54, 7, ablate=(4,)).view_as(conv.weight)
    with torch.no_grad():
        conv.weight.mul_(mask)
    x = torch.randn(3, 6, 11, 13)
    w = conv.weight.detach().double().abs()
    bound = error_bound(lambda t: F.conv2d(t, w, stride=2, padding=1), 54, conv.bias, x)
    for mode in ("direct", "unfold"):
        condensed = CondensedConv2d.from_conv(conv, mode=mode, dtype="bf16")
        with torch.inference_mode():
            assert_within(condensed(x), conv(x), bound)


@pytest.mark.parametrize("path", ["windowed", "gemv", "spmm"])
def test_bf16_compiled_matches_fallback_linear(path, monkeypatch):
    """Both compute in fp32 with the same bf16 values: they differ only by fp32 summation
    order, at most 2 gamma_{k+1} (|W_bf16| |x| + |b|)."""
    if not cpu.compiled_available():
        pytest.skip("C++ kernels not built")
    if path == "windowed" and not cpu.kernel_info()["windowed"]:
        pytest.skip("the windowed kernel needs AVX-512")
    if path == "gemv":
        monkeypatch.setattr(cpu, "WINDOWED_MIN_EFFICIENCY", 2.0)  # never windowed
    linear, mask = masked_linear(300, 45, 41, ablate=(0, 5))  # windows of odd and even counts
    matrix = condense_matrix(linear.weight.detach(), mask)
    matrix.values = matrix.values.bfloat16()
    kernel = cpu.LinearKernel(matrix, linear.bias)
    batch = 16 if path == "spmm" else 3
    x = torch.randn(batch, 300)
    with torch.inference_mode():
        compiled = kernel(x)
        fallback = cpu.linear_reference(x, matrix, linear.bias.detach())
        monkeypatch.setattr(cpu, "FORCE_FALLBACK", True)
        via_module = CondensedLinear.from_linear(linear, dtype=torch.bfloat16)(x)
    if path != "spmm":
        assert (kernel.windowed() is not None) == (path == "windowed")
    bound = error_bound(linear_abs(matrix.to_dense().float()), 41, linear.bias, x, rounding=0)
    assert_within(compiled, fallback, bound)
    assert torch.equal(via_module, fallback)


@needs_compiled
@pytest.mark.parametrize("mode", ["direct", "unfold"])
def test_bf16_compiled_matches_fallback_conv(mode):
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    mask = fan_in_mask(10, 54, 7, ablate=(4,)).view_as(conv.weight)
    matrix = condense_matrix(conv.weight.detach().reshape(10, -1), mask.reshape(10, -1))
    matrix.values = matrix.values.bfloat16()
    geometry = cpu.ConvGeometry(conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    x = torch.randn(3, 6, 11, 13)
    w = matrix.to_dense().double().abs().view_as(conv.weight)
    bound = error_bound(lambda t: F.conv2d(t, w, stride=2, padding=1), 7, conv.bias, x, 0, 0)
    with torch.inference_mode():
        compiled = cpu.ConvKernel(matrix, conv.bias, geometry, mode)(x)
        fallback = cpu.conv2d_reference(x, matrix, conv.bias.detach(), geometry)
    assert_within(compiled, fallback, bound)


def test_windowed_bf16_pairs():
    """Ops of a window are interleaved in pairs by lane, a last odd op stays plain."""
    order = pair_order(torch.tensor([3, 0, 2, 1]))  # ops (0, 1) + 2 | (3, 4) | 5
    lanes = torch.arange(16)
    expected = torch.cat(
        [
            torch.stack([lanes, 16 + lanes], 1).flatten(),  # op 0 lane l, op 1 lane l
            32 + lanes,
            torch.stack([48 + lanes, 64 + lanes], 1).flatten(),
            80 + lanes,
        ]
    )
    assert torch.equal(order, expected)


def test_bf16_mlp_export_within_propagated_bound():
    """A whole export (ablated neurons removed, biases folded) against the fp32 masked
    model: the per-layer bound carried through the layers (ReLU is 1-Lipschitz)."""
    torch.manual_seed(0)
    model = mlp(10, (1, 8, 8), hidden=(48, 32)).eval()
    masks = static_masks(model, 0.2, {"1": [0, 3, 7], "3": [5]})
    with torch.no_grad():
        model[1].bias.add_(0.5)
    condensed = condense(model, masks, dtype=torch.bfloat16)
    layers = [condensed.get_submodule(n) for n in ("1", "3", "5")]
    assert all(m.value_dtype == torch.bfloat16 for m in layers)
    assert condensed.get_submodule("1").out_features == 45  # surgery as in fp32
    x = torch.randn(5, 1, 8, 8)
    a, e = x.flatten(1), torch.zeros(5, 64, dtype=torch.float64)
    with torch.inference_mode():
        for module in model:
            if isinstance(module, nn.Linear):
                e = error_bound(linear_abs(module.weight), module.in_features, module.bias, a, e)
                a = module(a)
            elif isinstance(module, nn.ReLU):
                a = F.relu(a)
        output = condensed(x)
    assert_within(output, a, e)
    assert float((output - a).abs().max()) > 0


@pytest.mark.parametrize("compress", [False, True])
def test_bf16_save_load_round_trip(tmp_path, compress):
    torch.manual_seed(0)
    model = mlp(10, (1, 8, 8), hidden=(40,)).eval()
    masks = static_masks(model, 0.25, {"1": [2]})
    condensed = condense(model, masks, dtype=torch.bfloat16)
    path = tmp_path / "mlp.safetensors"
    save(condensed, path, compress=compress)
    loaded = load(path)
    x = torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded(x), condensed(x))
    for name in ("1", "3"):
        module = loaded.get_submodule(name)
        assert module.value_dtype == torch.bfloat16
        assert torch.equal(module.values, condensed.get_submodule(name).values)
    with safe_open(str(path), framework="pt") as f:
        values = f.get_tensor("1.values")
    assert values.dtype == torch.bfloat16 and values.nbytes == 2 * values.numel()
    description = read_description(path)
    assert description["version"] == 2
    assert description["modules"]["1"]["args"]["dtype"] == "bfloat16"
    save(condense(model, masks), tmp_path / "fp32.safetensors")
    assert read_description(tmp_path / "fp32.safetensors")["version"] == 1  # unchanged


def test_bf16_nm_layer_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 8))
    units = model[0].weight.detach().reshape(-1, 4)
    keep = units.abs().argsort(dim=1)[:, 2:]
    mask = torch.zeros_like(units, dtype=torch.bool).scatter_(1, keep, True).view(8, 32)
    condensed = condense(model, {"0": mask}, dtype="bf16")
    assert condensed.get_submodule("0").nm == (2, 4)
    save(condensed, tmp_path / "nm.safetensors")
    loaded = load(tmp_path / "nm.safetensors")
    x = torch.randn(3, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x), condensed(x))
    assert loaded.get_submodule("0").value_dtype == torch.bfloat16


def test_bf16_export_model_checks_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = resnet_cifar(10, (3, 8, 8), depth=8).eval()
    masks = static_masks(model, 0.2, {"layers.0.0.conv1": [1]})
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 8, 8)
    result = export_model(
        model, masks, tmp_path / "m.safetensors", example_input=x, dtype=torch.bfloat16
    )
    loaded = load(tmp_path / "m.safetensors")
    bf16 = [m for m in loaded.modules() if isinstance(m, CONDENSED_TYPES)]
    assert bf16 and all(m.value_dtype == torch.bfloat16 for m in bf16)
    assert 0 < result.max_abs_error <= (TOL + BF16_ROUNDOFF * len(bf16)) * result.reference_scale


def test_value_dtype_refused_or_fallback():
    linear, _ = masked_linear(64, 8, 5)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        CondensedLinear.from_linear(linear, dtype=torch.float16)
    half = CondensedLinear.from_linear(linear).half()  # values the kernels do not read
    x = torch.randn(2, 64)
    with torch.inference_mode():
        torch.testing.assert_close(half(x), linear(x), rtol=2e-3, atol=2e-3)


def test_size_report_bf16_hand_computed():
    # the layer of test_size_report_hand_computed at 2 bytes per value
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0, [0, 5]] = mask[1, [1, 2]] = mask[2, [3, 7]] = True
    (layer,) = size_report({"fc": mask}, dtype=torch.bfloat16)
    assert layer.value_bytes == 2
    assert layer.dense == 2 * 32
    assert layer.bitmap == 4 + 6 * 2
    assert layer.csr64 == 6 * 2 + 6 * 8 + 5 * 8
    assert layer.csr32 == 6 * 2 + 6 * 4 + 5 * 4
    assert layer.condensed == 3 * 2 * (2 + 1) + 3 * 4  # bf16 values, uint8 indices, rows
    assert layer.minimum == pytest.approx(6 * 2 + math.log2(math.comb(32, 6)) / 8)
    linear = nn.Linear(8, 4)
    with torch.no_grad():
        linear.weight.mul_(mask)
    exported = nn.Sequential(CondensedLinear.from_linear(linear, dtype=torch.bfloat16))
    (counted,) = size_report(exported)  # a model: each layer in its own value dtype
    assert counted.condensed == layer.condensed and counted.value_bytes == 2
    (fp32,) = size_report(nn.Sequential(CondensedLinear.from_linear(linear)))
    assert fp32.condensed == 3 * 2 * (4 + 1) + 3 * 4


# ------------------------------------------------------------------------------ CLI
def test_cli_arguments_and_input_shape():
    args = parse_args(["outputs/runs/x", "--out", "m.safetensors", "--compress"])
    assert args.out.name == "m.safetensors" and args.compress and args.dtype == "fp32"
    assert parse_args(["outputs/runs/x", "--dtype", "bf16"]).dtype == "bf16"
    assert find_input_shape({"dataset": {"input_shape": [1, 8, 8]}}) == (1, 8, 8)
    assert find_input_shape({"dataset": {"_target_": "sst.data.cifar10"}}) == (3, 32, 32)
    assert find_input_shape({"dataset": {"image_size": 64}}) == (3, 64, 64)
    assert find_input_shape({"dataset": {}}) is None


# ------------------------------------------------------------------------------ GPU
@needs_cuda
def test_triton_matches_reference():
    linear, mask = masked_linear(300, 64, 20, ablate=(3,))
    matrix = condense_matrix(linear.weight.detach(), mask)
    x = torch.randn(7, 300)
    expected = cpu.linear_reference(x, matrix, linear.bias.detach())
    got = gpu.triton_linear(x.cuda(), matrix, linear.bias.detach().cuda())
    assert_close(got.cpu(), expected)
    module = CondensedLinear.from_linear(linear).cuda()
    with torch.inference_mode():
        assert_close(module(x.cuda()).cpu(), expected)


@needs_cuda
def test_semi_structured_2_4_matches_dense():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("2:4 needs sm_80+")
    linear = nn.Linear(128, 64)
    units = linear.weight.detach().reshape(-1, 4)
    keep = units.abs().argsort(dim=1)[:, 2:]
    mask = torch.zeros_like(units, dtype=torch.bool).scatter_(1, keep, True).view(64, 128)
    with torch.no_grad():
        linear.weight.mul_(mask)
    sparse = semi_structured(linear, torch.float16)
    x = torch.randn(32, 128, device="cuda", dtype=torch.float16)
    reference = nn.functional.linear(x, linear.weight.cuda().half(), linear.bias.cuda().half())
    assert (sparse(x) - reference).abs().max() < 1e-2


def test_gpu_module_imports_without_cuda():
    assert gpu.triton_available() == (torch.cuda.is_available() and gpu.triton_available())
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            semi_structured(nn.Linear(8, 8))


def test_triton_kernel_in_interpreter():
    """The Triton kernel's indexing, run by Triton's CPU interpreter (no GPU needed)."""
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from sst.condensed import gpu, cpu
        from sst.condensed.packing import condense_matrix
        torch.manual_seed(0)
        mask = torch.zeros(40, 100, dtype=torch.bool)
        mask.scatter_(1, torch.rand(40, 100).argsort(1)[:, :13], True)
        mask[3] = False
        m = condense_matrix(torch.randn(40, 100), mask)
        bias = torch.randn(40)
        for batch in (1, 3, 20):
            x = torch.randn(batch, 100)
            err = (gpu.triton_linear(x, m, bias) - cpu.linear_reference(x, m, bias)).abs().max()
            assert err < 1e-4, err
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    if "ok" not in done.stdout and "interpret" in done.stderr.lower():
        pytest.skip(f"Triton interpreter unavailable: {done.stderr[-300:]}")
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_sst_export_condenses_a_finished_run(tmp_path, capsys):
    from runs import QUICK, compose_run

    from sst.condensed import load
    from sst.condensed.cli import main
    from sst.launch.run import run
    from sst.runs.load import load_run

    cfg, run_dir, choices = compose_run([*QUICK, "logger=none"], tmp_path)  # SRigL, 90%
    run(cfg, run_dir, choices)
    assert main([str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "condensed.safetensors" in printed and "| layer |" in printed
    exported = load(run_dir / "condensed.safetensors")
    trained = load_run(run_dir).model
    inputs = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(inputs), trained(inputs), rtol=1e-4, atol=1e-5)
