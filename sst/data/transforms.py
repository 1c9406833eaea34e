"""Image transform presets (CIFAR-style and ImageNet-style)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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


# How an ImageNet training image is cropped to ``size``:
# - random_resized: torchvision's RandomResizedCrop (a random 8-100% area, aspect 3/4-4/3,
#   resized to ``size``), the Inception-style crop of the torchvision and RigL TF recipes;
# - resize_256_480: the shorter side resized to 256 or 480 (for size 224; both scale with
#   size) at random, then a random ``size`` crop: the SRigL authors' ResNet-50 training
#   (calgaryml/condensed-sparsity, src/rigl_torch/datasets/_imagenet.py, _get_transform).
IMAGENET_CROPS = ("random_resized", "resize_256_480")


class RandomShorterSide(torch.nn.Module):
    """Resizes an image's shorter side to one of ``sizes``, picked uniformly with torch's
    generator (so the loader's per-batch seed decides it, as for the other transforms)."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        self.resizes = [T.Resize(int(s)) for s in sizes]

    def forward(self, image):
        pick = int(torch.randint(len(self.resizes), ()).item())
        return self.resizes[pick](image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={[r.size for r in self.resizes]})"


def imagenet_train_crop(crop: str, size: int) -> list:
    """The training crop ``crop`` (one of ``IMAGENET_CROPS``) to ``size`` pixels square."""
    if crop == "random_resized":
        return [T.RandomResizedCrop(size)]
    if crop == "resize_256_480":
        return [
            RandomShorterSide([round(size * 256 / 224), round(size * 480 / 224)]),
            T.RandomCrop(size),
        ]
    raise ValueError(unknown_crop(crop))


def unknown_crop(crop: str) -> str:
    return f"dataset.train_crop={crop!r} is unknown: allowed values are {', '.join(IMAGENET_CROPS)}"


def imagenet_transform(
    train: bool, *, size: int = 224, stats: Stats | None = None, crop: str = "random_resized"
) -> T.Compose:
    """ImageNet preset: the training crop ``crop`` (``IMAGENET_CROPS``; RandomResizedCrop by
    default) + flip for training, Resize + CenterCrop for test."""
    if crop not in IMAGENET_CROPS:
        raise ValueError(unknown_crop(crop))
    if train:
        steps: list = [*imagenet_train_crop(crop, size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
    return _finish(steps, stats)
