"""Image transform presets (CIFAR-style and ImageNet-style)."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

Stats = tuple[Sequence[float], Sequence[float]]

CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _finish(steps: list, stats: Stats | None) -> T.Compose:
    steps.append(T.ToTensor())
    if stats is not None:
        steps.append(T.Normalize(*stats))
    return T.Compose(steps)


def cifar_transform(
    train: bool,
    *,
    augment: bool = True,
    stats: Stats | None = None,
    size: int = 32,
    center_crop: bool = False,
) -> T.Compose:
    """CIFAR preset: reflect-pad 4 + random crop + flip for training, plain ToTensor for test.

    ``stats`` (mean, std) adds a Normalize; ``None`` leaves pixels in [0, 1].
    ``center_crop`` center-crops non-augmented images to ``size`` (for image
    folders whose images may not already be ``size`` pixels square).
    """
    steps: list = []
    if train and augment:
        steps += [
            T.RandomCrop(size, padding=4, padding_mode="reflect"),
            T.RandomHorizontalFlip(),
        ]
    elif center_crop:
        steps.append(T.CenterCrop(size))
    return _finish(steps, stats)


def imagenet_transform(train: bool, *, size: int = 224, stats: Stats | None = None) -> T.Compose:
    """ImageNet preset: RandomResizedCrop + flip for training, Resize + CenterCrop for test."""
    if train:
        steps: list = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
    return _finish(steps, stats)
