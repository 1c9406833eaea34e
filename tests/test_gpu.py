"""The GPU paths, on a GPU (issue 23): a short CUDA run of every method family with exact
sparsity after every update and the masks on the device, resume after an interrupt, AMP
(bf16, and fp16 with the grad scaler's state in the checkpoint), channels-last, condensed
export, the Triton kernel and 2:4 semi-structured layers against dense, and a one-process
nccl process group under DDP.

Every test is marked ``gpu`` (``python -m pytest -m gpu``; ``scripts/gpu_check.sh`` runs them
on a GPU machine) and skips, saying what it needs, without a CUDA device (or without Triton,
or below sm_80 for 2:4). Runs are tiny (digits with the MLP, or 512 synthetic images with
ResNet-8, 2-3 epochs): the whole set is meant to take well under 3 minutes on an H100.

CPU dry run: with ``SST_GPU_TEST_DEVICE=cpu`` the tests that need no CUDA-only feature run
on the CPU instead, on the same code paths but the device, so that a test's own mistakes
show before a GPU window is spent on them; ``TRITON_INTERPRET=1`` also runs the Triton test
through Triton's interpreter, and the DDP test uses gloo. fp16 autocast and 2:4 still
skip. A dry run checks the tests, not the GPU paths::

    SST_GPU_TEST_DEVICE=cpu TRITON_INTERPRET=1 python -m pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ddp import free_port
from runs import QUICK, InterruptAt, compose_run, read_metrics
from test_methods import assert_masks_hold
from torch import nn

from sst import dist
from sst.condensed import CondensedLinear, condense, export_model, load
from sst.condensed import gpu as condensed_gpu
from sst.condensed.export import TOLERANCE, masked_reference, max_error
from sst.condensed.serialize import read_description
from sst.engine.distill import DistillHook
from sst.engine.hooks import Hook, SparsityHook
from sst.engine.loop import Loop
from sst.engine.signals import Preempted
from sst.launch.build import build
from sst.launch.run import run
from sst.runs import RunFolder
from sst.sparsity import GMP, LRRewinding, RigL, SparsityMethod, SRigL, TargetedDropout
from sst.sparsity.structure import Structure, layer_budget

CUDA = torch.cuda.is_available()
DRY_RUN = os.environ.get("SST_GPU_TEST_DEVICE", "").lower() == "cpu"
DEVICE = "cuda" if CUDA and not DRY_RUN else "cpu"
NO_CUDA = "no CUDA device is visible"

# the test runs on CUDA, or on the CPU in a dry run
on_device = pytest.mark.skipif(
    not (CUDA or DRY_RUN),
    reason=f"needs CUDA: {NO_CUDA} (SST_GPU_TEST_DEVICE=cpu dry-runs it on the CPU)",
)


def cuda_only(what: str) -> pytest.MarkDecorator:
    """Skips unless the test runs on CUDA: ``what`` has no CPU dry run."""
    reason = "this is a CPU dry run (SST_GPU_TEST_DEVICE=cpu)" if CUDA else NO_CUDA
    return pytest.mark.skipif(DEVICE != "cuda", reason=f"{what} needs CUDA: {reason}")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TRITON = (DEVICE == "cuda" or (DRY_RUN and INTERPRET)) and _triton_importable()
if DEVICE == "cuda":
    NO_TRITON = "Triton does not import"
elif DRY_RUN:
    NO_TRITON = "this CPU dry run has no TRITON_INTERPRET=1, or Triton does not import"
else:
    NO_TRITON = NO_CUDA
needs_triton = pytest.mark.skipif(
    not TRITON,
    reason=f"needs Triton on a CUDA device (or its interpreter in a CPU dry run): {NO_TRITON}",
)

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("one_thread")]

# digits with the MLP at batch 64: 22 steps an epoch; 2 epochs unless a test says otherwise
COMMON = [
    *(o for o in QUICK if not o.startswith("sparsity.")),
    "trainer.epochs=2",
    "logger=none",
    f"trainer.device={DEVICE}",
]
STEPS = 2 * (1437 // 64)


@pytest.fixture(autouse=True)
def restore_torch_flags():
    """``trainer.deterministic=true`` switches torch's deterministic algorithms on for the
    process; later tests must not inherit it."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = benchmark


# ----------------------------------------------------------------------------- the mask probe
def assert_exact(method: SparsityMethod) -> None:
    """Each masked layer holds exactly the count its method gives at this point."""
    if isinstance(method, (RigL, SRigL)):  # budget per layer / k per live neuron
        assert_masks_hold(method)
        return
    counts = {n: int(m.bool().sum()) for n, m in method.masks.items()}
    numel = {n: w.numel() for n, w in method.weights.items()}
    if isinstance(method, LRRewinding):  # one global threshold: the total is exact
        density = method.density_after_round(method.round)
        total = layer_budget(sum(numel.values()), density)
        assert sum(counts.values()) == total, (method.round, counts)
    elif isinstance(method, GMP):
        for name, count in counts.items():
            density = 1.0 - method.progress * (1.0 - method.layer_density[name])
            assert count == layer_budget(numel[name], density), (method.step, name)
        if method.is_prune_step(method.step):
            target = method.target_sparsity(method.step) / method.final_sparsity
            assert method.progress == pytest.approx(target), method.step
    elif isinstance(method, TargetedDropout):  # dense until the final prune
        for name, mask in method.masks.items():
            if not method.pruned:
                assert counts[name] == numel[name], name
                continue
            rows = mask.bool().reshape(mask.shape[0], -1).sum(dim=1)
            k = layer_budget(numel[name], method.layer_density[name]) // mask.shape[0]
            assert torch.all(rows == k), (name, rows)
    else:
        raise AssertionError(f"no exact count is known for {type(method).__name__}")


class MaskProbe(Hook):
    """After every optimizer step and at every stage start (appended to the loop's hooks,
    so after the method's own): every mask and ever-active set on the run's device, the
    weights and every weight-shaped optimizer state on it too and zero outside the mask,
    and the method's exact counts (``assert_exact``). Counts its checks and the topology
    changes it saw."""

    name = "mask_probe"

    def __init__(self, method: SparsityMethod, device: str) -> None:
        self.method, self.device = method, device
        self.checks = self.changes = 0
        self._seen = self._snapshot()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: m.bool().clone() for n, m in self.method.masks.items()}

    def after_optimizer_step(self) -> None:
        self.check()

    def on_stage_start(self, stage) -> None:
        self.check()

    def check(self) -> None:
        method = self.method
        for name, mask in method.masks.items():
            weight = method.weights[name]
            assert weight.device.type == self.device, (name, weight.device)
            assert mask.device == weight.device, (name, mask.device)
            assert method.mask_set.ever_active[name].device == weight.device, name
            keep = mask.bool()
            assert torch.all(weight[~keep] == 0), name
            for key, state in method.optimizer.state.get(weight, {}).items():
                if torch.is_tensor(state) and state.shape == weight.shape:
                    assert state.device == weight.device, (name, key, state.device)
                    assert torch.all(state[~keep] == 0), (name, key)
        assert_exact(method)
        now = self._snapshot()
        self.changes += any(not torch.equal(now[n], self._seen[n]) for n in now)
        self._seen = now
        self.checks += 1


def sparsity_method(loop: Loop) -> SparsityMethod:
    return next(h.method for h in loop.hooks if isinstance(h, SparsityHook))


def probed_loop(overrides: Sequence[str], output_dir: Path) -> tuple[Loop, MaskProbe]:
    """The ``Loop`` that ``sst-train <overrides>`` builds, with a ``MaskProbe`` appended."""
    cfg, run_dir, choices = compose_run(list(overrides), output_dir)
    loop = build(cfg, run_dir, choices)
    probe = MaskProbe(sparsity_method(loop), DEVICE)
    loop.hooks.append(probe)
    return loop, probe


def run_dir_of(loop: Loop) -> Path:
    return loop.checkpointer.path.parent.parent


def checkpoint(loop: Loop) -> dict:
    return torch.load(loop.checkpointer.path, weights_only=True)


def assert_learned(summary: dict, chance: float) -> None:
    assert summary["final_test_acc"] > chance + 20.0, summary["final_test_acc"]


# ----------------------------------------------------------------------------- method families
METHOD_RUNS = {
    # method: (overrides, optimizer steps, masked-layer sparsity, topology changes at least)
    "rigl": (["sparsity=rigl", "sparsity.delta_t=5"], STEPS, 0.9, 1),
    "srigl": (["sparsity=srigl", "sparsity.delta_t=5"], STEPS, 0.9, 1),
    "gmp": (["sparsity=gmp", "sparsity.delta_t=5"], STEPS, 0.9, 2),
    "targeted_dropout": (["sparsity=targeted_dropout"], STEPS, 0.9, 1),
    # dense stage + 2 rounds (0.8, then 0.64) of one epoch each
    "lr_rewinding": (
        ["sparsity=lr_rewinding", "sparsity.density=0.64", "trainer.epochs=1"],
        3 * STEPS // 2,
        0.36,
        2,
    ),
}


@on_device
@pytest.mark.parametrize("method", list(METHOD_RUNS))
def test_method_trains_on_the_device_with_exact_sparsity_after_every_update(tmp_path, method):
    overrides, steps, sparsity, changes = METHOD_RUNS[method]
    loop, probe = probed_loop([*COMMON, *overrides], tmp_path)
    summary = loop.fit()
    assert summary["steps"] == steps
    stages = len(loop.position.stages)
    assert probe.checks == steps + stages  # every step and every stage start was checked
    assert probe.changes >= changes
    if method in ("targeted_dropout", "lr_rewinding"):
        assert probe.changes == stages - 1  # one prune per stage after the first
    assert summary["sparsity_masked_layers"] == pytest.approx(sparsity, abs=0.01)
    assert_learned(summary, chance=10.0)
    saved = checkpoint(loop)["sparsity"]["masks"]
    live = sparsity_method(loop).masks
    assert saved.keys() == live.keys()
    for name, mask in saved.items():
        assert torch.equal(mask, live[name].bool().cpu()), name


@on_device
def test_kd_student_trains_on_the_device_from_a_device_teacher(tmp_path):
    cfg, teacher_dir, choices = compose_run([*COMMON, "sparsity=dense"], tmp_path / "teacher")
    run(cfg, teacher_dir, choices)
    student = ["sparsity=srigl", "sparsity.delta_t=5", "distill=kd"]
    loop, probe = probed_loop(
        [*COMMON, *student, f"distill.teacher_run={teacher_dir}"], tmp_path / "student"
    )
    teacher = next(h for h in loop.hooks if isinstance(h, DistillHook)).teacher
    assert {p.device.type for p in teacher.parameters()} == {DEVICE}
    before = [p.detach().clone() for p in teacher.parameters()]
    summary = loop.fit()
    assert summary["teacher_checkpoint_sha256"] == RunFolder(teacher_dir).checkpoint_sha256()
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    assert not teacher.training
    assert probe.checks == STEPS + 1 and probe.changes >= 1
    assert_learned(summary, chance=10.0)
    records = [r for r in read_metrics(run_dir_of(loop)) if "train/loss" in r]
    assert records
    for record in records:  # the logged loss mixes the hard and soft terms, 0.1 : 0.9
        mixed = 0.1 * record["train/loss_hard"] + 0.9 * record["train/loss_soft"]
        assert record["train/loss"] == pytest.approx(mixed, rel=1e-5)


# ----------------------------------------------------------------------------- resume
def assert_same_state(a: dict, b: dict) -> None:
    """Bit-equal weights, masks and optimizer state of two checkpoints."""
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["sparsity"]["masks"].keys() == b["sparsity"]["masks"].keys()
    for name, mask in a["sparsity"]["masks"].items():
        assert torch.equal(mask, b["sparsity"]["masks"][name]), name
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index, entries in state_a.items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                assert torch.equal(value, state_b[index][key]), (index, key)


SYNTHETIC_RESNET = [  # 512 images at batch 64: 8 steps an epoch
    "model=resnet8",
    "dataset=synthetic",
    "dataset.input_shape=[3,32,32]",
]
RESUMES = {
    # model: (overrides, the step after which SIGTERM arrives, steps of the run)
    "mlp": ([*QUICK, "logger=none", f"trainer.device={DEVICE}"], 15, 66),  # SRigL, ΔT 10
    # a convnet: cuDNN's deterministic kernels, BatchNorm buffers, AdaptiveAvgPool2d
    "resnet8": ([*COMMON, *SYNTHETIC_RESNET, "sparsity=srigl", "sparsity.delta_t=4"], 5, 16),
}


@on_device
@pytest.mark.parametrize("model", list(RESUMES))
def test_resume_after_an_interrupt_equals_the_uninterrupted_run(tmp_path, model):
    overrides, interrupt, steps = RESUMES[model]
    overrides = [*overrides, "trainer.deterministic=true"]
    reference, _ = probed_loop(overrides, tmp_path / "a")
    expected = reference.fit()

    loop, _ = probed_loop(overrides, tmp_path / "b")
    loop.hooks.append(InterruptAt(interrupt))
    with pytest.raises(Preempted):
        loop.fit()
    interrupted = checkpoint(loop)
    assert interrupted["step"] == interrupt
    if DEVICE == "cuda":
        assert "cuda" in interrupted["rng"]  # the CUDA generators' state is kept too

    resumed, probe = probed_loop(overrides, tmp_path / "b")
    summary = resumed.fit()
    assert summary["steps"] == expected["steps"] == steps
    assert probe.checks == steps - interrupt  # masks, optimizer state on the device
    assert_same_state(checkpoint(reference), checkpoint(resumed))
    assert read_metrics(run_dir_of(resumed)) == read_metrics(run_dir_of(reference))
    assert summary["final_test_acc"] == expected["final_test_acc"]


# ----------------------------------------------------------------------------- AMP
class OutputDtypes:
    """The dtypes the model's Linear layers output (forward hooks)."""

    def __init__(self, model: nn.Module) -> None:
        self.seen: set[torch.dtype] = set()
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.register_forward_hook(lambda _m, _i, out: self.seen.add(out.dtype))


AMP = [
    pytest.param("bf16", marks=on_device),
    pytest.param("fp16", marks=cuda_only("trainer.amp=fp16 (autocast to float16, GradScaler)")),
]


@pytest.mark.parametrize("amp", AMP)
def test_amp_trains_and_the_checkpoint_keeps_the_grad_scaler(tmp_path, amp):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    overrides = [*COMMON, "sparsity=srigl", "sparsity.delta_t=10", f"trainer.amp={amp}"]
    loop, _ = probed_loop(overrides, tmp_path)
    outputs = OutputDtypes(loop.module)
    loop.hooks.append(InterruptAt(15))
    with pytest.raises(Preempted):
        loop.fit()
    assert outputs.seen == {dtype}  # the forward passes ran under autocast
    saved = checkpoint(loop)
    assert saved["step"] == 15
    scaler = loop.precision.scaler
    if amp == "fp16":
        assert saved["scaler"]["scale"] == scaler.get_scale()
        assert math.isfinite(saved["scaler"]["scale"]) and saved["scaler"]["scale"] > 0
        assert saved["scaler"]["_growth_tracker"] == scaler._get_growth_tracker()
    else:
        assert not scaler.is_enabled() and saved["scaler"] == {}

    resumed, probe = probed_loop(overrides, tmp_path)
    assert resumed.resume()
    if amp == "fp16":
        assert resumed.precision.scaler.get_scale() == saved["scaler"]["scale"]
        growth = resumed.precision.scaler._get_growth_tracker()
        assert growth == saved["scaler"]["_growth_tracker"]
    summary = resumed.fit()
    assert summary["steps"] == STEPS
    assert probe.checks == STEPS - 15
    assert summary["sparsity_masked_layers"] == pytest.approx(0.9, abs=0.01)
    assert_learned(summary, chance=10.0)


# ----------------------------------------------------------------------------- channels-last
class ChannelsLastProbe(Hook):
    """Every training forward of a conv gets a channels-last input, and every 4-D weight
    stays channels-last through the optimizer steps and the mask updates."""

    name = "channels_last_probe"

    def __init__(self, model: nn.Module) -> None:
        self.weights = [p for p in model.parameters() if p.dim() == 4]
        self.inputs: list[bool] = []
        self.steps = 0
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            self.inputs.append(args[0].is_contiguous(memory_format=torch.channels_last))

    def after_optimizer_step(self) -> None:
        for weight in self.weights:
            assert weight.is_contiguous(memory_format=torch.channels_last), weight.shape
        self.steps += 1


@on_device
def test_channels_last_training_keeps_inputs_and_weights_channels_last(tmp_path):
    overrides = [
        *COMMON,
        *SYNTHETIC_RESNET,
        "trainer.epochs=3",
        "trainer.channels_last=true",
        "sparsity=srigl",
        "sparsity.delta_t=4",
    ]
    loop, probe = probed_loop(overrides, tmp_path)
    layout = ChannelsLastProbe(loop.module)
    loop.hooks.append(layout)
    summary = loop.fit()
    assert summary["steps"] == 24 == layout.steps
    assert layout.inputs and all(layout.inputs)
    assert probe.checks == 24 + 1 and probe.changes >= 1
    assert summary["sparsity_masked_layers"] == pytest.approx(0.9, abs=0.01)
    assert_learned(summary, chance=25.0)


# ----------------------------------------------------------------------------- condensed export
EXPORT_RUNS = {
    "srigl": ["sparsity=srigl", "sparsity.delta_t=5"],  # constant fan-in, neurons ablated
    "nm": ["sparsity=rigl", "sparsity.structure=nm", "sparsity.density=0.5"],  # 2:4 masks
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(name)``: the MLP trained on the device with ``EXPORT_RUNS[name]`` (eval
    mode) and its boolean masks there; each run is trained once for the module."""
    models: dict[str, tuple[nn.Module, dict[str, torch.Tensor]]] = {}

    def get(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        if name not in models:
            overrides = [*COMMON, *EXPORT_RUNS[name]]
            loop, _ = probed_loop(overrides, tmp_path_factory.mktemp(name))
            loop.fit()
            masks = {n: m.bool() for n, m in sparsity_method(loop).masks.items()}
            models[name] = loop.module.eval(), masks
        return models[name]

    return get


def digits_batch(batch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(batch)
    return torch.rand(batch, 1, 8, 8, generator=gen).to(DEVICE)


def assert_matches(output: torch.Tensor, reference: torch.Tensor, tolerance=TOLERANCE) -> None:
    """Within ``tolerance`` of the output scale, as ``export_model`` checks."""
    assert output.device == reference.device and output.shape == reference.shape
    error, scale = max_error(output.float(), reference.float())
    assert error <= tolerance * scale, (error, scale)


@on_device
@pytest.mark.parametrize("formats", ["condensed", "auto"])
def test_condense_on_the_device_matches_the_masked_model(trained, formats):
    model, masks = trained("srigl")
    assert {m.device.type for m in masks.values()} == {DEVICE}
    reference = masked_reference(model, masks)
    fast = condense(model, masks, example_input=digits_batch(64), formats=formats)
    layers = [m for m in fast.modules() if isinstance(m, CondensedLinear)]
    if formats == "condensed":  # every masked layer (constant fan-in) is condensed
        assert len(layers) == len(masks)
    for layer in layers:
        assert {b.device.type for b in layer.buffers()} == {DEVICE}
    with torch.inference_mode():
        for batch in (1, 64):
            x = digits_batch(batch)
            assert_matches(fast(x), reference(x))


EXPORTS = [
    # run, formats, compress
    pytest.param("srigl", "condensed", False, id="srigl-condensed"),
    pytest.param("srigl", "condensed", True, id="srigl-condensed-compressed"),
    pytest.param("srigl", "auto", False, id="srigl-measured-formats"),
    pytest.param("nm", "condensed", False, id="nm-condensed"),
]


@on_device
@pytest.mark.parametrize(("name", "formats", "compress"), EXPORTS)
def test_export_model_on_the_device_checks_saves_and_reloads(
    trained, tmp_path, name, formats, compress
):
    model, masks = trained(name)
    path = tmp_path / "model.safetensors"
    x = digits_batch(64)
    result = export_model(model, masks, path, example_input=x, formats=formats, compress=compress)
    assert result.max_abs_error is not None
    assert result.max_abs_error <= TOLERANCE * result.reference_scale
    codecs = {e["codec"] for e in read_description(path)["encodings"].values()}
    if name == "nm":  # N:M layers are stored as values + packed metadata
        assert codecs == {"nm"}
    elif compress:
        assert codecs == {"zdelta"}
    reloaded = load(path).to(DEVICE)
    with torch.inference_mode():
        assert_matches(reloaded(x), masked_reference(model, masks)(x))


# ----------------------------------------------------------------------------- Triton kernel
TRITON_CASES = {
    # case: (bias, every 5th neuron ablated, value dtype, input dtype, relative tolerance)
    "fp32": (True, False, torch.float32, torch.float32, TOLERANCE),
    "ablated_no_bias": (False, True, torch.float32, torch.float32, TOLERANCE),
    "bf16_values": (True, False, torch.bfloat16, torch.float32, TOLERANCE),
    "fp16_input": (True, True, torch.float32, torch.float16, 2e-3),  # fp16 output rounding
}


def fan_in_linear(in_features: int, out_features: int, density: float, ablate: bool, bias: bool):
    """A Linear with a random constant fan-in mask (SRigL's structure) applied, and the mask;
    with ``ablate`` every 5th neuron is empty."""
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    shape = tuple(linear.weight.shape)
    mask = Structure("constant_fanin").random_mask(shape, density, gen)
    if ablate:
        mask[::5] = False
    with torch.no_grad():
        linear.weight.mul_(mask)
    return linear, mask


@needs_triton
@pytest.mark.parametrize("batch", [1, 256 if DEVICE == "cuda" else 20])  # interpreter: slow
@pytest.mark.parametrize("case", list(TRITON_CASES))
def test_triton_kernel_matches_the_dense_layer(monkeypatch, case, batch):
    bias, ablate, values, inputs, tolerance = TRITON_CASES[case]
    linear, mask = fan_in_linear(3072, 768, 0.1, ablate, bias)  # the SRigL paper's layer, 90%
    module = CondensedLinear.from_linear(linear, mask, dtype=values).to(DEVICE)
    assert (module.rows is not None) == ablate
    x = torch.randn(batch, 3072, generator=torch.Generator().manual_seed(1)).to(DEVICE, inputs)
    # the dense layer of the values as stored (bf16 ones are exact in fp32), in fp32
    expected = F.linear(x.float(), module.dense_weight().float(), module.bias)
    kernel = condensed_gpu.triton_linear(x, module.matrix(), module.bias)
    assert kernel.dtype == inputs
    assert_matches(kernel, expected, tolerance)
    if DEVICE == "cuda":  # CondensedLinear must run the kernel, not the PyTorch fallback

        def fallback(*args):
            raise AssertionError("CondensedLinear ran the PyTorch fallback on CUDA")

        monkeypatch.setattr(condensed_gpu, "linear_reference", fallback)
    with torch.inference_mode():
        assert_matches(module(x), expected, tolerance)


# ----------------------------------------------------------------------------- 2:4
@cuda_only("2:4 semi-structured sparsity (to_sparse_semi_structured)")
@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_semi_structured_2_4_matches_dense(dtype, batch):
    from torch.sparse import SparseSemiStructuredTensor

    from sst.condensed.semi_structured import semi_structured

    if torch.cuda.get_device_capability() < (8, 0):
        capability = ".".join(map(str, torch.cuda.get_device_capability()))
        pytest.skip(f"2:4 sparse tensor cores need sm_80+, this device is sm_{capability}")
    torch.manual_seed(0)
    linear = nn.Linear(3072, 768)
    structure = Structure("nm", 2, 4)
    mask = structure.top_mask(linear.weight.detach().abs(), structure.n)  # 2 largest of 4
    structure.verify(mask, 2)
    with torch.no_grad():
        linear.weight.mul_(mask)
    condensed = CondensedLinear.from_linear(linear, mask, nm=(2, 4))  # what condense makes
    x = torch.randn(batch, 3072, device="cuda", dtype=dtype)
    dense = linear.to("cuda", dtype)
    with torch.inference_mode():
        expected = dense(x)
        for source in (condensed, linear):
            sparse = semi_structured(source, dtype)
            assert isinstance(sparse.weight, SparseSemiStructuredTensor)
            output = sparse(x)
            assert output.dtype == dtype
            assert_matches(output, expected, tolerance=1e-2)


# ----------------------------------------------------------------------------- nccl
@on_device
def test_one_process_nccl_group_trains_under_ddp(tmp_path):
    backend = "nccl" if DEVICE == "cuda" else "gloo"
    if backend == "nccl" and not torch.distributed.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    torch.distributed.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{free_port()}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        assert torch.distributed.get_backend() == backend
        loop, probe = probed_loop([*COMMON, "sparsity=rigl", "sparsity.delta_t=5"], tmp_path)
        assert isinstance(loop.model, nn.parallel.DistributedDataParallel)
        if DEVICE == "cuda":
            assert loop.model.device_ids == [torch.cuda.current_device()]
        summary = loop.fit()
        assert dist.control_group() is not None  # sst's gloo group for its CPU votes
        reduced = dist.all_reduce_sum(torch.full((3,), 2.0, device=DEVICE))
        assert reduced.tolist() == [2.0, 2.0, 2.0]
    finally:
        dist.teardown()
    assert not dist.is_initialized()
    assert summary["steps"] == STEPS and probe.checks == STEPS + 1
    assert summary["sparsity_masked_layers"] == pytest.approx(0.9, abs=0.01)
    assert_learned(summary, chance=10.0)
