"""sst.condensed: exported models compute what the masked model computes, in every path.

Tolerance: max |y - y_masked| <= TOL * max(1, max |y_masked|) with TOL = 1e-4 (fp32 sums in
another order), the same check ``export_model`` applies.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
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
from sst.condensed.export import condense_with_report, masked_reference
from sst.condensed.packing import condense_matrix
from sst.condensed.size import log2_binomial
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


def test_unstructured_layers_csr_or_dense():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, 8))
    masks = {"0": torch.rand(32, 512) < 0.01, "2": torch.rand(8, 32) < 0.5}
    masks["0"][:, 0] = True  # no empty row: nothing to remove, "2" stays unstructured
    condensed, report, _, _ = condense_with_report(model, masks)
    assert {layer.name: layer.format for layer in report} == {"0": "csr", "2": "dense"}
    assert isinstance(condensed.get_submodule("0"), CSRLinear)
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


# ------------------------------------------------------------------------------ CLI
def test_cli_arguments_and_input_shape():
    args = parse_args(["outputs/runs/x", "--out", "m.safetensors", "--compress"])
    assert args.out.name == "m.safetensors" and args.compress
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
    sparse = gpu.semi_structured(linear, torch.float16)
    x = torch.randn(32, 128, device="cuda", dtype=torch.float16)
    reference = nn.functional.linear(x, linear.weight.cuda().half(), linear.bias.cuda().half())
    assert (sparse(x) - reference).abs().max() < 1e-2


def test_gpu_module_imports_without_cuda():
    assert gpu.triton_available() == (torch.cuda.is_available() and gpu.triton_available())
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            gpu.semi_structured(nn.Linear(8, 8))


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
    from sst.runs import load_run
    from sst.train import run

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
