"""The differentiable sparse operators for training in condensed form
(``sst.condensed.sparse_train``): layouts, and forward / input gradient / weight gradient of
``sparse_linear`` and ``sparse_conv2d`` against masked dense torch, on the compiled kernels
(where built) and on the PyTorch fallback."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sst.condensed import sparse_train_cpu
from sst.condensed.sparse_train import (
    build_layout,
    gather_values,
    scatter_values,
    sparse_conv2d,
    sparse_linear,
)

# Tiny ops: a second thread only costs time on a busy machine (the realistic shapes use two).
pytestmark = pytest.mark.usefixtures("one_thread")
BACKENDS = ["fallback", "compiled"] if sparse_train_cpu._ext is not None else ["fallback"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    monkeypatch.setattr(sparse_train_cpu, "FORCE_FALLBACK", request.param == "fallback")
    return request.param


def fan_in_mask(out: int, inp: int, k: int, seed: int = 0, ablated: int = 0) -> torch.Tensor:
    """Every row keeps k random inputs; the first ``ablated`` rows keep none."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(out, inp)
    for o in range(ablated, out):
        mask[o, torch.randperm(inp, generator=g)[:k]] = 1.0
    return mask


def random_mask(shape: tuple[int, ...], density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < density).float()


def test_layout_of_a_hand_written_mask() -> None:
    mask = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]])
    lay = build_layout(mask)
    assert (lay.kind, lay.k, lay.nnz) == ("fan_in", 2, 4)
    assert lay.flat.tolist() == [1, 3, 8, 9]
    assert lay.rowptr.tolist() == [0, 2, 2, 4]
    assert lay.col.tolist() == [1, 3, 0, 1]
    assert lay.live.tolist() == [0, 2]
    # CSC: column 0 holds (2, 0); column 1 holds (0, 1) and (2, 1); column 3 holds (0, 3)
    assert lay.colptr.tolist() == [0, 1, 3, 3, 4]
    assert lay.row.tolist() == [2, 0, 2, 0]
    assert lay.perm.tolist() == [2, 0, 3, 1]
    assert lay.perm_inv.tolist() == [1, 3, 0, 2]
    assert torch.equal(lay.mask(), mask.float())


def test_layout_kinds() -> None:
    uneven = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert build_layout(uneven).kind == "csr"
    assert build_layout(uneven, kind="csr").k is None
    assert build_layout(fan_in_mask(6, 8, 3), kind="csr").kind == "csr"
    assert build_layout(torch.zeros(3, 4)).kind == "csr"
    with pytest.raises(ValueError, match="same kept count"):
        build_layout(uneven, kind="fan_in")
    with pytest.raises(ValueError, match="kind must be one of"):
        build_layout(uneven, kind="nm")
    with pytest.raises(ValueError, match="mask must be 2-D"):
        build_layout(torch.ones(4))


def test_gather_and_scatter_round_trip_conv_weight() -> None:
    mask = random_mask((5, 3, 3, 3), 0.3)
    weight = torch.randn(5, 3, 3, 3)
    lay = build_layout(mask)
    values = gather_values(weight, lay)
    assert torch.equal(values, weight[mask.bool()])  # row-major order of the kept positions
    out = scatter_values(values, lay, torch.full_like(weight, 7.0))
    assert torch.equal(out, weight * mask)
    with pytest.raises(ValueError, match="does not match the layout"):
        gather_values(torch.randn(5, 26), lay)


def masked_dense_linear(x, weight, mask, bias):
    """The reference: masked-dense training's forward and gradients."""
    x = x.detach().clone().requires_grad_()
    w = (weight * mask).detach().requires_grad_()
    b = None if bias is None else bias.detach().clone().requires_grad_()
    return x, w, b, F.linear(x, w * mask, b)


def check_linear(x, weight, mask, bias, kind="auto", rtol=1e-4):
    lay = build_layout(mask, kind)
    values = gather_values(weight, lay).requires_grad_()
    xs = x.detach().clone().requires_grad_()
    bs = None if bias is None else bias.detach().clone().requires_grad_()
    y = sparse_linear(xs, values, lay, bs)
    xr, wr, br, yr = masked_dense_linear(x, weight, mask, bias)
    grad = torch.randn_like(yr)
    y.backward(grad)
    yr.backward(grad)
    scale = yr.abs().max().item()
    torch.testing.assert_close(y, yr, rtol=rtol, atol=rtol * scale)
    gscale = xr.grad.abs().max().item()
    torch.testing.assert_close(xs.grad, xr.grad, rtol=rtol, atol=rtol * gscale)
    wg = gather_values(wr.grad, lay)
    torch.testing.assert_close(values.grad, wg, rtol=rtol, atol=rtol * wg.abs().max().item())
    if bias is not None:
        torch.testing.assert_close(bs.grad, br.grad, rtol=rtol, atol=rtol)


def test_linear_hand_computed(backend) -> None:
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    lay = build_layout(mask, "csr")
    values = torch.tensor([2.0, -1.0, 3.0], requires_grad=True)  # W = [[2, 0, -1], [0, 3, 0]]
    x = torch.tensor([[1.0, 2.0, 4.0]], requires_grad=True)
    y = sparse_linear(x, values, lay, torch.tensor([0.5, 0.0]))
    assert y.tolist() == [[2.0 - 4.0 + 0.5, 6.0]]
    y.backward(torch.tensor([[1.0, 10.0]]))
    assert x.grad.tolist() == [[2.0, 30.0, -1.0]]  # g W
    assert values.grad.tolist() == [1.0, 4.0, 20.0]  # g[o] x[i] at (0,0), (0,2), (1,1)


@pytest.mark.parametrize("kind", ["fan_in", "csr"])
@pytest.mark.parametrize("block", [64, 2], ids=["one-block", "batch-in-blocks-of-2"])
def test_linear_gradcheck_float64(backend, kind, block, monkeypatch) -> None:
    """``block``: batch columns per block of the transposed input (``SPMM_CHUNK``); at 2 the
    batch of 4 runs as 2 blocks, as batch 256 runs as 4 blocks of 64."""
    monkeypatch.setattr(sparse_train_cpu, "SPMM_CHUNK", block)
    mask = fan_in_mask(5, 7, 3, ablated=1)
    lay = build_layout(mask, kind)
    values = torch.randn(lay.nnz, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, v, b: sparse_linear(a, v, lay, b), (x, values, bias))


def test_conv_gradcheck_float64(backend) -> None:
    mask = random_mask((3, 2, 3, 3), 0.4, seed=1)
    lay = build_layout(mask)
    values = torch.randn(lay.nnz, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def conv(a, v, b):
        return sparse_conv2d(a, v, lay, b, stride=2, padding=1, dilation=1, kernel_size=3)

    assert torch.autograd.gradcheck(conv, (x, values, bias))


@pytest.mark.parametrize(
    ("out", "inp", "density", "batch"), [(768, 3072, 0.1, 64), (1024, 1024, 0.05, 256)]
)
def test_linear_float32_fan_in_realistic(backend, out, inp, density, batch) -> None:
    torch.set_num_threads(2)  # the kernels' parallel split (one_thread restores the count)
    mask = fan_in_mask(out, inp, round(density * inp), ablated=3)
    weight, bias = torch.randn(out, inp) / inp**0.5, torch.randn(out)
    check_linear(torch.randn(batch, inp), weight, mask, bias)


def test_linear_float32_unstructured_with_leading_dims(backend) -> None:
    mask = random_mask((300, 500), 0.1, seed=3)
    weight = torch.randn(300, 500) / 500**0.5
    check_linear(torch.randn(3, 37, 500), weight, mask, None, kind="csr")


def test_linear_odd_batches_and_empty_mask(backend) -> None:
    mask = random_mask((19, 23), 0.3, seed=4)
    for batch in (1, 3, 17, 70, 128, 192):  # 128, 192: 2 and 3 blocks of 64
        check_linear(torch.randn(batch, 23), torch.randn(19, 23), mask, torch.randn(19))
    empty = build_layout(torch.zeros(4, 5))
    values = torch.zeros(0, requires_grad=True)
    x = torch.randn(3, 5, requires_grad=True)
    y = sparse_linear(x, values, empty, torch.arange(4.0))
    assert torch.equal(y, torch.arange(4.0).expand(3, 4))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(3, 5))


def test_ablated_rows_output_their_bias(backend) -> None:
    mask = fan_in_mask(6, 10, 4, ablated=2)
    lay = build_layout(mask)
    bias = torch.arange(6.0)
    y = sparse_linear(torch.randn(5, 10), torch.randn(lay.nnz), lay, bias)
    assert torch.equal(y[:, :2], bias[:2].expand(5, 2))


def test_values_parameter_accumulates_grad(backend) -> None:
    mask = fan_in_mask(8, 16, 4)
    lay = build_layout(mask)
    values = torch.nn.Parameter(torch.randn(lay.nnz))
    x = torch.randn(4, 16)
    sparse_linear(x, values, lay, None).sum().backward()
    first = values.grad.clone()
    sparse_linear(x, values, lay, None).sum().backward()
    torch.testing.assert_close(values.grad, 2 * first)
    assert x.grad is None  # no input gradient was asked for


@pytest.mark.parametrize(
    ("geometry", "shape"),
    [
        (dict(stride=1, padding=1, dilation=1, kernel_size=3), (8, 32, 8, 8)),
        (dict(stride=2, padding=(1, 0), dilation=1, kernel_size=(3, 2)), (3, 16, 9, 7)),
        (dict(stride=1, padding=2, dilation=2, kernel_size=3), (2, 8, 6, 6)),
        (dict(stride=1, padding=0, dilation=1, kernel_size=1), (4, 24, 5, 5)),
    ],
)
def test_conv_float32_against_masked_dense(backend, geometry, shape) -> None:
    c = shape[1]
    ks = geometry["kernel_size"]
    kh, kw = (ks, ks) if isinstance(ks, int) else ks
    out = 20
    mask = fan_in_mask(out, c * kh * kw, max(1, c * kh * kw // 10), ablated=1)
    mask = mask.view(out, c, kh, kw)
    weight = torch.randn(out, c, kh, kw) / (c * kh * kw) ** 0.5
    lay = build_layout(mask)
    values = gather_values(weight, lay).requires_grad_()
    x = torch.randn(shape, requires_grad=True)
    bias = torch.randn(out, requires_grad=True)
    y = sparse_conv2d(x, values, lay, bias, groups=1, **geometry)
    xr = x.detach().clone().requires_grad_()
    wr = (weight * mask).requires_grad_()
    br = bias.detach().clone().requires_grad_()
    args = (geometry["stride"], geometry["padding"], geometry["dilation"])
    yr = F.conv2d(xr, wr * mask, br, *args)
    grad = torch.randn_like(yr)
    y.backward(grad)
    yr.backward(grad)
    torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(values.grad, gather_values(wr.grad, lay), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(bias.grad, br.grad, rtol=1e-4, atol=1e-3)


def test_a_bias_of_the_wrong_length_is_an_error_not_a_read_past_it(backend) -> None:
    lay = build_layout(random_mask((10, 16), 0.3, seed=5), "csr")
    values = torch.randn(lay.nnz)
    with pytest.raises(ValueError, match=r"bias must have shape \(10,\), got \(3,\)"):
        sparse_linear(torch.randn(5, 16), values, lay, torch.randn(3))
    conv = build_layout(torch.ones(4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        sparse_conv2d(
            torch.randn(1, 2, 5, 5), torch.randn(conv.nnz), conv, torch.randn(8), kernel_size=3
        )


def test_empty_batches_give_empty_outputs_and_gradients(backend) -> None:
    lay = build_layout(random_mask((10, 16), 0.3, seed=6), "csr")
    values = torch.randn(lay.nnz, requires_grad=True)
    y = sparse_linear(torch.randn(0, 16), values, lay, torch.randn(10))
    assert y.shape == (0, 10)
    y.sum().backward()
    assert torch.equal(values.grad, torch.zeros(lay.nnz))
    conv = build_layout(torch.ones(4, 2, 3, 3))
    y = sparse_conv2d(torch.randn(0, 2, 5, 5), torch.randn(conv.nnz), conv, None, kernel_size=3)
    assert y.shape == (0, 4, 3, 3)


def test_conv_input_smaller_than_its_kernel_and_bad_pairs_are_named() -> None:
    lay = build_layout(torch.ones(4, 2, 3, 3))
    values = torch.randn(lay.nnz)
    with pytest.raises(ValueError, match=r"spatial size \(2, 2\) is smaller than the kernel"):
        sparse_conv2d(torch.randn(1, 2, 2, 2), values, lay, None, kernel_size=3)
    with pytest.raises(ValueError, match=r"a pair of ints, got \(1, 2, 3\)"):
        sparse_conv2d(torch.randn(1, 2, 5, 5), values, lay, None, stride=(1, 2, 3), kernel_size=3)


def test_conv_rejects_groups_and_string_padding() -> None:
    lay = build_layout(torch.ones(4, 2, 3, 3))
    x, values = torch.randn(1, 4, 5, 5), torch.randn(lay.nnz)
    with pytest.raises(ValueError, match="groups=1 only"):
        sparse_conv2d(x, values, lay, None, groups=2, kernel_size=3)
    with pytest.raises(ValueError, match="padding must be"):
        sparse_conv2d(x, values, lay, None, padding="same", kernel_size=3)
    with pytest.raises(ValueError, match="does not match"):
        sparse_conv2d(x, values, lay, None, kernel_size=3)
