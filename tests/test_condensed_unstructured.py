"""Unstructured sparse layers (SparseLinear / SparseConv2d): kernels against dense torch,
the windowed layout, int8 values and their error bound, export, save/load and sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sst.condensed import compiled_available, condense, load, save, size_report
from sst.condensed.depthwise import DepthwiseConv2d, is_depthwise3x3
from sst.condensed.export import (
    INT8_ROUNDOFF,
    TOLERANCE,
    condense_with_report,
    export_model,
    masked_reference,
    resolve_dtype,
)
from sst.condensed.serialize import read_description
from sst.condensed.size import dtype_totals
from sst.condensed.surgery import set_submodule
from sst.condensed.unstructured import (
    SparseConv2d,
    SparseLinear,
    int8_bound,
    quantize_rows,
    sparse_dtype,
    windowed_ops,
)

needs_kernels = pytest.mark.skipif(not compiled_available(), reason="C++ kernels not built")


def random_mask(out: int, fan_in: int, density: float, seed: int) -> torch.Tensor:
    """Random (out, fan_in) mask with row 0 empty and row 1 fully dense (when out > 2)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(out, fan_in, generator=g) < density
    if out > 2:
        mask[0] = False
        mask[1] = True
    return mask


def close(output: torch.Tensor, reference: torch.Tensor, tol: float = TOLERANCE) -> None:
    scale = max(1.0, float(reference.abs().max()))
    error = float((output - reference).abs().max())
    assert error <= tol * scale, f"max error {error:.3g} > {tol * scale:.3g}"


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ kernels
@needs_kernels
@pytest.mark.parametrize("dtype", ["fp32", "int8"])
@pytest.mark.parametrize(
    ("fan_in", "out", "batch"),
    [(37, 13, 1), (37, 13, 3), (1024, 300, 1), (100, 70, 5), (64, 9, 64), (8, 1, 1)],
)
def test_sparse_linear_matches_dense(threads, dtype, fan_in, out, batch):
    torch.manual_seed(fan_in + out + batch)
    linear = nn.Linear(fan_in, out)
    mask = random_mask(out, fan_in, 0.2, seed=batch)
    module = SparseLinear.from_linear(linear, mask, dtype=dtype)
    x = torch.randn(batch, fan_in)
    with torch.inference_mode():
        y = module(x)
    # the weights it stores (int8: s q), through torch's dense product
    close(y, F.linear(x, module.dense_weight(), linear.bias.detach()), 1e-5)
    if dtype == "fp32":  # 20 significant bits kept (3 hold the window position)
        close(y, F.linear(x, linear.weight.detach() * mask, linear.bias.detach()), 1e-5)
    assert out <= 2 or torch.equal(y[:, 0], linear.bias.detach()[0].expand(batch))  # empty row


@needs_kernels
@pytest.mark.parametrize("dtype", ["fp32", "int8"])
@pytest.mark.parametrize(
    ("channels", "out", "height", "width", "kernel", "stride", "padding"),
    [
        (37, 13, 3, 37, 1, 1, 0),  # 111 columns: one tile of each width 48, 32, 16, 8, 4, 1 x3
        (16, 24, 7, 7, 1, 1, 0),  # 49 = 48 + 1
        (5, 9, 1, 1, 1, 1, 0),  # one column
        (64, 40, 12, 12, 1, 1, 0),  # 144 = 3 x 48
        (16, 24, 9, 9, 3, 2, 1),  # not pointwise: unfolded columns
    ],
)
def test_sparse_conv_matches_dense(
    threads, dtype, channels, out, height, width, kernel, stride, padding
):
    torch.manual_seed(channels + out)
    conv = nn.Conv2d(channels, out, kernel, stride, padding)
    mask = random_mask(out, channels * kernel * kernel, 0.2, seed=height).view(conv.weight.shape)
    module = SparseConv2d.from_conv(conv, mask, dtype=dtype)
    x = torch.randn(2, channels, height, width)
    with torch.inference_mode():
        y = module(x)
    weight = module.dense_weight().view(conv.weight.shape)
    close(y, F.conv2d(x, weight, conv.bias.detach(), stride, padding), 1e-5)
    if dtype == "fp32":
        ref = F.conv2d(x, conv.weight.detach() * mask, conv.bias.detach(), stride, padding)
        close(y, ref, 1e-5)


def test_fallback_matches_kernels_and_is_differentiable():
    torch.manual_seed(0)
    linear = nn.Linear(20, 6)
    module = SparseLinear.from_linear(linear, random_mask(6, 20, 0.3, seed=0))
    x = torch.randn(2, 20, requires_grad=True)
    y = module(x)  # an input that requires grad runs torch's dense product
    y.sum().backward()
    assert x.grad is not None
    with torch.inference_mode():
        close(module(x.detach()), y.detach(), 1e-5)


# ------------------------------------------------------------------------------ layout
def test_windowed_layout_hand_built():
    # 2 rows x 16 inputs: row 0 holds inputs 1, 3 (window 0) and 9 (window 1); row 1 holds 2
    weight = torch.zeros(2, 16)
    weight[0, [1, 3, 9]] = torch.tensor([1.0, 2.0, 3.0])
    weight[1, 2] = 4.0
    module = SparseLinear.from_linear(nn.Linear(16, 2, bias=False), weight != 0)
    module.set_weight(weight, weight != 0, None)
    op_start, op_win, ops, groups = windowed_ops(module.rowptr, module.cols, module.values, 2, 16)
    assert groups == 1
    assert op_start.tolist() == [0, 3]  # window 0: 2 ops (row 0 holds 2 there), window 1: 1
    assert op_win.tolist() == [0, 0, 8]
    bits = ops.view(torch.int32)
    assert (bits[:, 2:] == 0).all()  # lanes of rows 2..7 are padding
    assert (bits[:, 0] & 7).tolist() == [1, 3, 1]  # positions of inputs 1, 3, 9 in windows
    assert (bits[:, 1] & 7).tolist() == [2, 0, 0]
    assert ops[:, 0].tolist() == pytest.approx([1.0, 2.0, 3.0], rel=2**-20)
    assert ops[1:, 1].tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------ int8
def test_quantize_rows_hand_computed():
    weight = torch.tensor([[0.5, -1.27, 0.0], [0.0, 0.0, 0.0], [2.54, 1.0, -0.02]])
    q, scale = quantize_rows(weight)
    assert scale.tolist() == pytest.approx([0.01, 1.0, 0.02])
    assert q.tolist() == [[50, -127, 0], [0, 0, 0], [127, 50, -1]]


@needs_kernels
@pytest.mark.parametrize("batch", [1, 8])
def test_int8_layer_within_bound(batch):
    torch.manual_seed(batch)
    linear = nn.Linear(300, 50)
    mask = random_mask(50, 300, 0.2, seed=batch)
    module = SparseLinear.from_linear(linear, mask, dtype=torch.int8)
    x = torch.randn(batch, 300)
    weight = linear.weight.detach() * mask
    with torch.inference_mode():
        error = (module(x) - F.linear(x, weight, linear.bias.detach())).abs()
    bound = int8_bound(weight, x)
    assert (error <= bound * (1 + 1e-4) + 1e-5).all()
    assert float(error.max()) > 0  # int8 does round


@needs_kernels
def test_int8_export_checked_and_saved(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )  # fmt: skip
    masks = {
        "2": random_mask(32, 16, 0.2, 1).view(32, 16, 1, 1),
        "5": random_mask(10, 2048, 0.2, 2),
    }
    x = torch.randn(1, 3, 8, 8)
    result = export_model(
        model, masks, tmp_path / "m.safetensors", formats="sparse", dtype="int8", example_input=x
    )
    formats = {layer.name: layer.format for layer in result.layers}
    assert formats == {"2": "sparse", "5": "sparse"}
    # the check allowed TOLERANCE + INT8_ROUNDOFF per int8 layer relative to the output scale
    assert result.max_abs_error <= (TOLERANCE + 2 * INT8_ROUNDOFF) * result.reference_scale
    loaded = load(result.path)
    assert isinstance(loaded.get_submodule("2"), SparseConv2d)
    assert loaded.get_submodule("5").value_dtype == torch.int8
    assert read_description(result.path)["version"] == 3
    with torch.inference_mode():
        assert torch.equal(loaded(x), condense(model, masks, formats="sparse", dtype="int8")(x))


# ------------------------------------------------------------------------------ export
@needs_kernels
def test_export_measures_sparse_against_dense(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    masks = {"0": random_mask(256, 512, 0.1, 0), "2": random_mask(10, 256, 0.9, 1)}
    x = torch.randn(1, 512)
    condensed, report, _, _ = condense_with_report(model, masks, example_input=x)
    for layer in report:
        assert set(layer.timings_us) == {"sparse", "dense"}
        assert layer.format == min(layer.timings_us, key=layer.timings_us.__getitem__)
    with torch.inference_mode():
        close(condensed(x), masked_reference(model, masks)(x))
    save(condensed, tmp_path / "a.safetensors")
    with torch.inference_mode():
        assert torch.equal(load(tmp_path / "a.safetensors")(x), condensed(x))


def test_round_trip_fp32_conv_and_linear(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 25, 5))
    masks = {"0": random_mask(8, 4, 0.5, 0).view(8, 4, 1, 1), "3": random_mask(5, 200, 0.3, 1)}
    condensed = condense(model, masks, formats="sparse")
    save(condensed, tmp_path / "s.safetensors")
    loaded = load(tmp_path / "s.safetensors")
    x = torch.randn(2, 4, 5, 5)
    with torch.inference_mode():
        assert torch.equal(loaded(x), condensed(x))
        close(condensed(x), masked_reference(model, masks)(x))
    assert loaded.get_submodule("3").value_dtype == torch.float32


def test_dtype_errors_name_the_allowed_values():
    with pytest.raises(ValueError, match="float32 or int8"):
        sparse_dtype(torch.bfloat16)
    with pytest.raises(ValueError, match="int8"):
        resolve_dtype("int4")
    with pytest.raises(ValueError, match="int8"):
        size_report({"fc": torch.ones(2, 2)}, dtype="fp16")


# ------------------------------------------------------------------------------ sizes
def test_size_report_int8_and_sparse_hand_computed():
    # 4 neurons x 8 inputs, 2 active weights each, neuron 3 ablated: nnz 6
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0, [0, 5]] = mask[1, [1, 2]] = mask[2, [3, 7]] = True
    (fp32,) = size_report({"fc": mask})
    assert fp32.sparse == 6 * (4 + 2) + 5 * 4  # values, int16 columns, int32 row pointers
    (int8,) = size_report({"fc": mask}, dtype=torch.int8)
    scales = 4 * 4  # one fp32 scale per output row
    assert int8.dense == 32 + scales
    assert int8.csr32 == 6 * (1 + 4) + 5 * 4 + scales
    assert int8.sparse == 6 * (1 + 2) + 5 * 4 + scales
    assert int8.condensed == 3 * 2 * (1 + 1) + 3 * 4 + scales  # uint8 indices, live rows
    totals = dtype_totals({"fc": mask})
    assert [totals[d]["dense"] for d in ("fp32", "bf16", "int8")] == [128, 64, 48]
    assert totals["bf16"]["sparse"] == 6 * (2 + 2) + 5 * 4


# ------------------------------------------------------------------------------ depthwise
@pytest.mark.parametrize(
    ("channels", "size", "stride"), [(8, 11, 1), (8, 11, 2), (3, 16, 2), (5, 1, 1), (4, 2, 2)]
)
def test_depthwise_matches_torch(threads, channels, size, stride):
    torch.manual_seed(channels * size)
    conv = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels)
    module = DepthwiseConv2d.from_conv(conv)
    x = torch.randn(2, channels, size, size + 3)  # odd widths: vector tails, stride-2 parity
    with torch.inference_mode():
        close(module(x), conv(x), 1e-5)


def test_depthwise_refuses_other_convs():
    assert not is_depthwise3x3(nn.Conv2d(4, 4, 3, padding=1, groups=2))
    assert not is_depthwise3x3(nn.Conv2d(4, 4, 5, padding=2, groups=4))
    with pytest.raises(ValueError, match="not a depthwise 3x3"):
        DepthwiseConv2d.from_conv(nn.Conv2d(4, 4, 3, stride=3, padding=1, groups=4))


def test_inputs_of_the_wrong_width_are_named_not_read_past():
    torch.manual_seed(0)
    linear = SparseLinear.from_linear(nn.Linear(16, 10), random_mask(10, 16, 0.3, 0))
    with pytest.raises(ValueError, match=r"input of shape \(4, 5\): the layer takes 16"):
        linear(torch.randn(4, 5))
    conv = SparseConv2d.from_conv(nn.Conv2d(8, 4, 3, padding=1))
    with pytest.raises(ValueError, match=r"\(1, 4, 5, 5\): the layer takes \(N, 8, H, W\)"):
        conv(torch.randn(1, 4, 5, 5))
    depthwise = DepthwiseConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1, groups=4))
    with pytest.raises(ValueError, match=r"\(1, 8, 5, 5\): the layer takes \(N, 4, H, W\)"):
        depthwise(torch.randn(1, 8, 5, 5))


def test_modules_moved_to_another_dtype_never_run_the_fp32_kernels():
    """After ``module.double()`` the sparse Linear runs the dense fallback (it failed with a
    KeyError); a depthwise module with float64 buffers given an fp32 input is torch's dtype
    error, where the kernel read the float64 buffers as fp32 numbers."""
    torch.manual_seed(1)
    dense = nn.Linear(16, 10)
    dense.weight.data *= random_mask(10, 16, 0.3, 1)
    x = torch.randn(3, 16, dtype=torch.float64)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    module = DepthwiseConv2d.from_conv(conv).double()
    with torch.inference_mode():
        close(SparseLinear.from_linear(dense).double()(x), dense.double()(x), 1e-6)
        with pytest.raises(RuntimeError, match="should be the same"):
            module(torch.randn(1, 4, 6, 6))


@needs_kernels
def test_export_times_depthwise_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 16, 1),
    )  # fmt: skip
    masks = {"4": random_mask(16, 8, 0.3, 0).view(16, 8, 1, 1)}
    x = torch.randn(1, 3, 12, 12)
    condensed, report, _, _ = condense_with_report(model, masks, example_input=x)
    rows = {layer.name: layer for layer in report}
    assert set(rows["2"].timings_us) == {"depthwise", "dense"}  # unmasked, still measured
    kept = condensed.get_submodule("2")
    assert isinstance(kept, DepthwiseConv2d) == (rows["2"].format == "depthwise")
    with torch.inference_mode():
        close(condensed(x), masked_reference(model, masks)(x))
    forced = condense(model, masks, formats="sparse")
    assert type(forced.get_submodule("2")) is nn.Conv2d  # no example input: torch's conv
    set_submodule(forced, "2", DepthwiseConv2d.from_conv(model[2]))
    save(forced, tmp_path / "d.safetensors")
    loaded = load(tmp_path / "d.safetensors")
    assert isinstance(loaded.get_submodule("2"), DepthwiseConv2d)
    with torch.inference_mode():
        assert torch.equal(loaded(x), forced(x))
