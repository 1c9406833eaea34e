"""MobileNets (``sst.models.mobilenet``) and the 1x1-conv layer selection (``PointwiseConv2d``)."""

from __future__ import annotations

import pytest
import torch
from runs import compose_run
from torch import nn

from sst.models import mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small
from sst.sparsity.layers import select_layers, weight_layers


@pytest.fixture(autouse=True)
def one_thread():
    """Forward passes at 224x224 on a shared 2-core machine: one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BUILDERS = [mobilenet_v1, mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large]


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The feature map before the global pool."""
    body = model.features if hasattr(model, "features") else nn.Sequential(model.stem, model.blocks)
    return body(x)


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize(
    ("stem", "input_shape", "classes", "spatial"),
    [
        ("imagenet", (3, 224, 224), 1000, 7),
        ("cifar", (3, 32, 32), 10, None),
        ("imagenet", (3, 32, 32), 10, 1),
    ],
)
def test_output_and_feature_map_sizes(builder, stem, input_shape, classes, spatial) -> None:
    torch.manual_seed(0)
    model = builder(classes, input_shape, stem=stem).eval()
    x = torch.randn(1, *input_shape)
    with torch.no_grad():
        assert model(x).shape == (1, classes)
        fmap = features(model, x)
    # the CIFAR stem: V1 only drops the input conv's stride (32 -> 2x2), V2/V3 also the first
    # downsampling block's (32 -> 4x4)
    expected = spatial or (2 if builder is mobilenet_v1 else 4)
    assert fmap.shape[-2:] == (expected, expected)


def test_mobilenet_v1_matches_the_paper() -> None:
    # Howard et al. 2017, Table 1/8: 1.0 MobileNet-224 has 4.2M parameters; width 0.5: 1.3M
    def count(width: float) -> int:
        return sum(p.numel() for p in mobilenet_v1(1000, (3, 224, 224), width=width).parameters())

    assert count(1.0) == pytest.approx(4.2e6, rel=0.01)
    assert count(0.5) == pytest.approx(1.3e6, rel=0.03)
    model = mobilenet_v1(1000, (3, 224, 224))
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13 and all(m.groups == m.in_channels for m in depthwise)
    assert model.fc.in_features == 1024


@pytest.mark.parametrize(
    ("builder", "published"),
    [(mobilenet_v2, 3.4e6), (mobilenet_v3_small, 2.5e6), (mobilenet_v3_large, 5.4e6)],
)
def test_torchvision_mobilenets_parameter_counts(builder, published: float) -> None:
    # Sandler et al. 2018 Table 4 (3.4M); Howard et al. 2019 Tables 3-4 (2.5M, 5.4M)
    model = builder(1000, (3, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(published, rel=0.04)


@pytest.mark.parametrize("builder", BUILDERS)
def test_cifar_stem_changes_strides_only(builder) -> None:
    imagenet, cifar = builder(10, (3, 32, 32)), builder(10, (3, 32, 32), stem="cifar")
    shapes = [tuple(p.shape) for p in imagenet.parameters()]
    assert shapes == [tuple(p.shape) for p in cifar.parameters()]
    strides = [m.stride for m in cifar.modules() if isinstance(m, nn.Conv2d)]
    assert strides[0] == (1, 1)


def test_one_input_channel_and_bad_settings() -> None:
    for builder in BUILDERS:
        model = builder(10, (1, 8, 8), stem="cifar").eval()
        with torch.no_grad():
            assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"stem='tiny'.*\['imagenet', 'cifar'\]"):
        mobilenet_v1(10, (3, 32, 32), stem="tiny")
    with pytest.raises(ValueError, match="width"):
        mobilenet_v2(10, (3, 32, 32), width=0.0)


def test_pointwise_conv2d_selects_exactly_the_1x1_convs() -> None:
    model = mobilenet_v1(10, (3, 32, 32), width=0.25, stem="cifar")
    chosen = select_layers(model, layer_types=["PointwiseConv2d"])
    assert list(chosen) == [f"blocks.{i}.pointwise.0" for i in range(13)]
    for name in chosen:
        conv = model.get_submodule(name)
        assert conv.kernel_size == (1, 1) and conv.groups == 1
    everything = weight_layers(model, ["Linear", "Conv2d"])
    dense = set(everything) - set(chosen)
    assert dense == {"stem.0", "fc", *(f"blocks.{i}.depthwise.0" for i in range(13))}


def test_bad_layer_type_lists_the_allowed_values() -> None:
    model = mobilenet_v1(10, (3, 32, 32), width=0.25)
    with pytest.raises(
        ValueError, match=r"\['pointwise'\] unknown: allowed values are .*'PointwiseConv2d'"
    ):
        weight_layers(model, ["pointwise"])


def test_gmp_on_the_1x1_convs_trains_mobilenet_v1(tmp_path) -> None:
    """``sst-train model=mobilenet_v1 sparsity=gmp sparsity.layer_types=[PointwiseConv2d]``:
    exactly the 1x1 convs end sparse; the input conv, depthwise convs and classifier dense."""
    import sst.launch.run as run_module

    overrides = [
        "model=mobilenet_v1",
        "model.width=0.25",
        "model.stem=cifar",
        "dataset=digits",
        "sparsity=gmp",
        "sparsity.density=0.25",
        "sparsity.layer_types=[PointwiseConv2d]",
        "sparsity.delta_t=2",
        "trainer.epochs=1",
        "trainer.max_steps=12",
        "trainer.batch_size=64",
        "trainer.progress_bar=false",
        "logger=none",
    ]
    cfg, run_dir, choices = compose_run(overrides, tmp_path)
    summary = run_module.run(cfg, run_dir, choices)
    assert summary["finished"] and summary["steps"] == 12
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    masks = state["sparsity"]["masks"]
    assert sorted(masks) == sorted(f"blocks.{i}.pointwise.0" for i in range(13))
    for name, mask in masks.items():
        assert mask.float().mean().item() == pytest.approx(0.25, abs=0.02), name
        assert torch.all(state["model"][f"{name}.weight"][~mask] == 0)
    assert torch.all(state["model"]["blocks.0.depthwise.0.weight"] != 0)


def test_gmp_preset_prunes_the_1x1_convs_and_its_teacher_is_dense() -> None:
    """``experiment=mobilenet_study_cifar10``: GMP on MobileNetV1 (CIFAR stem) masks exactly
    the 13 1x1 convs; the KD teacher, ``[sparsity=dense]`` on the student's command, composes
    to the dense method on the same model."""
    from hydra.utils import instantiate
    from runs import compose_with_hydra, hydra_conf_single_thread

    from sst.launch.teacher import teacher_overrides

    student = ["experiment=mobilenet_study_cifar10", "sparsity.density=0.2", "distill=kd"]
    with hydra_conf_single_thread():
        cfg = compose_with_hydra(student)
        teacher = compose_with_hydra(teacher_overrides(student, cfg.distill.teacher_run))
    assert (cfg.model.stem, cfg.model.width, cfg.distill.enabled) == ("cifar", 0.5, True)
    model = instantiate(cfg.model, num_classes=10, input_shape=(3, 32, 32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = instantiate(cfg.sparsity, model=model, optimizer=optimizer, total_steps=780)
    assert sorted(method.candidates) == sorted(f"blocks.{i}.pointwise.0" for i in range(13))
    assert method.layer_density == {name: pytest.approx(0.2) for name in method.candidates}
    assert teacher.sparsity._target_ == "sst.sparsity.Dense" and not teacher.distill.enabled
    assert teacher.model == cfg.model and teacher.dataset == cfg.dataset
    dense = instantiate(teacher.sparsity, model=model, optimizer=optimizer, total_steps=780)
    assert dense.density == 1.0
