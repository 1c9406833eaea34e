"""Tests for the model zoo in ``sst.models``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sst.models
from sst.models import (
    mlp,
    resnet18_cifar,
    resnet20,
    resnet50,
    resnet56,
    resnet_cifar,
    vit_b_16,
    wide_resnet,
    wrn22_2,
)

CIFAR = (3, 32, 32)
DIGITS = (1, 8, 8)
BATCH = 2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def logits(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(BATCH, *input_shape))


@pytest.mark.parametrize(
    "name",
    [
        "mlp",
        "resnet18_cifar",
        "wrn22_2",
        "wide_resnet",
        "resnet20",
        "resnet32",
        "resnet56",
        "resnet_cifar",
        "resnet50",
    ],
)
@pytest.mark.parametrize("input_shape", [CIFAR, DIGITS])
def test_builder_outputs_logits(name: str, input_shape: tuple[int, int, int]) -> None:
    model = getattr(sst.models, name)(10, input_shape)
    assert isinstance(model, nn.Module)
    assert logits(model, input_shape).shape == (BATCH, 10)


@pytest.mark.parametrize(("input_shape", "patch_size"), [(CIFAR, 16), (DIGITS, 4)])
def test_vit_outputs_logits(input_shape: tuple[int, int, int], patch_size: int) -> None:
    model = sst.models.vit_b_16(10, input_shape, patch_size=patch_size)
    assert logits(model, input_shape).shape == (BATCH, 10)


def test_train_mode_backward() -> None:
    model = resnet20(10, CIFAR)
    model.train()
    loss = model(torch.randn(BATCH, *CIFAR)).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("builder", "num_classes", "input_shape", "published"),
    [
        (resnet18_cifar, 10, CIFAR, 11.17e6),
        (wrn22_2, 10, CIFAR, 1.10e6),
        (resnet20, 10, CIFAR, 0.27e6),
        (resnet56, 10, CIFAR, 0.85e6),
        (resnet50, 1000, (3, 224, 224), 25.56e6),
        (vit_b_16, 1000, (3, 224, 224), 86.57e6),
    ],
)
def test_parameter_counts_match_papers(
    builder, num_classes: int, input_shape: tuple[int, int, int], published: float
) -> None:
    assert n_params(builder(num_classes, input_shape)) == pytest.approx(published, rel=0.02)


def test_wide_resnet_matches_wrn_paper_table() -> None:
    # Zagoruyko & Komodakis 2016, Table 4: WRN-16-8 has 11.0M parameters.
    assert n_params(wide_resnet(10, CIFAR, depth=16, width=8)) == pytest.approx(11.0e6, rel=0.02)


def test_mlp_layout() -> None:
    model = mlp(10, DIGITS, hidden=(32, 16), dropout=0.5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 10)]
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    assert logits(mlp(3, DIGITS, hidden=()), DIGITS).shape == (BATCH, 3)


def test_resnet18_cifar_layout() -> None:
    model = resnet18_cifar(10, DIGITS)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.in_channels == 1 and model.conv1.bias is None
    assert isinstance(model.fc, nn.Linear) and model.fc.in_features == 512
    assert logits(model, (1, 1, 1)).shape == (BATCH, 10)


@pytest.mark.parametrize(("builder", "head_in"), [(wrn22_2, 128), (resnet20, 64), (resnet56, 64)])
def test_fc_head(builder, head_in: int) -> None:
    model = builder(7, CIFAR)
    assert isinstance(model.fc, nn.Linear)
    assert (model.fc.in_features, model.fc.out_features) == (head_in, 7)


def test_standard_init() -> None:
    model = resnet20(10, CIFAR)
    conv = model.conv1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.25)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_torchvision_models_adapt_input_channels() -> None:
    model = resnet50(10, DIGITS)
    assert model.conv1.in_channels == 1
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert model.conv1.padding == (3, 3) and model.conv1.bias is None
    vit = vit_b_16(10, DIGITS, patch_size=4)
    assert vit.conv_proj.in_channels == 1 and vit.conv_proj.stride == (4, 4)


@pytest.mark.parametrize(
    ("build", "setting"),
    [
        (lambda: wide_resnet(10, CIFAR, depth=20), "depth"),
        (lambda: resnet_cifar(10, CIFAR, depth=21), "depth"),
        (lambda: vit_b_16(10, (3, 32, 48)), "input_shape"),
        (lambda: vit_b_16(10, CIFAR, patch_size=12), "patch_size"),
    ],
)
def test_invalid_settings_raise(build, setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        build()
