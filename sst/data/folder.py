"""Image-folder datasets (ImageNet, the CIFAR-10 JPEG copy, ...)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from torch.utils.data import Dataset, Subset
from torchvision import datasets

from .archive import find_split_root
from .errors import missing_data
from .splits import DataSplits
from .transforms import CIFAR10_STATS, IMAGENET_STATS, cifar_transform, imagenet_transform

TRANSFORMS = ("imagenet", "cifar")


def _folder(path: Path) -> Path:
    if not path.is_dir():
        raise missing_data("image folder", path)
    return path


def read_image(path: str):
    """torchvision's image loader, with an error that names the file and what to do."""
    try:
        return datasets.folder.default_loader(path)
    except OSError as err:  # PIL's UnidentifiedImageError, a truncated file, ...
        raise OSError(
            f"dataset: the image {path} cannot be read ({type(err).__name__}): remove or replace it"
        ) from err


def _load(path: Path, transform: Callable) -> datasets.ImageFolder:
    try:
        return datasets.ImageFolder(str(path), transform=transform, loader=read_image)
    except FileNotFoundError as err:  # no class folders, or no images in them
        raise missing_data("class folders with images", path, str(err)) from err


def per_class_subset(data: datasets.ImageFolder, size: int | None, key: str) -> Dataset:
    """The first ``size // classes`` images of every class (in file-name order, so the same
    subset on every machine and for every seed); the whole set for ``size`` None."""
    if size is None:
        return data
    classes = len(data.classes)
    if size < classes:
        raise ValueError(f"dataset.{key}={size} must be at least the number of classes ({classes})")
    per_class = size // classes
    taken: dict[int, int] = {}
    indices = []
    for index, target in enumerate(data.targets):
        if taken.get(target, 0) < per_class:
            taken[target] = taken.get(target, 0) + 1
            indices.append(index)
    return Subset(data, indices)


def imagefolder(
    root: str,
    *,
    image_size: int = 224,
    transform: str = "imagenet",
    normalize: bool = True,
    train_dir: str = "train",
    test_dir: str = "val",
    num_classes: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    train_crop: str = "random_resized",
) -> DataSplits:
    """torchvision ImageFolder on ``root/train_dir`` and ``root/test_dir``.

    ``transform`` picks the preset: "imagenet" (random-resized crop / resize +
    center crop) or "cifar" (reflect-pad 4 + random crop + flip). ``normalize``
    uses ImageNet or CIFAR-10 statistics to match the preset. ``train_subset`` /
    ``test_subset`` keep that many images, the same number from every class (CPU-scale
    studies); None keeps all. ``train_crop`` is the ImageNet preset's training crop
    (``sst.data.transforms.IMAGENET_CROPS``).
    """
    if transform == "imagenet":
        stats = IMAGENET_STATS if normalize else None
        train_tf = imagenet_transform(True, size=image_size, stats=stats, crop=train_crop)
        test_tf = imagenet_transform(False, size=image_size, stats=stats, crop=train_crop)
    elif transform == "cifar":
        if train_crop != "random_resized":
            raise ValueError("dataset.train_crop is an option of transform=imagenet only")
        stats = CIFAR10_STATS if normalize else None
        train_tf = cifar_transform(True, size=image_size, stats=stats)
        test_tf = cifar_transform(False, size=image_size, stats=stats, center_crop=True)
    else:
        raise ValueError(
            f"dataset.transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}"
        )
    base = Path(root).expanduser()
    if base.is_file():  # a packed .tar.gz / .tar: unpacked once into the cache folder
        found = find_split_root(base, train_dir, test_dir)
        if found is None:
            raise missing_data(f"{train_dir}/ and {test_dir}/ folders inside the archive", base)
        base = found
    base = _folder(base)
    train_path, test_path = _folder(base / train_dir), _folder(base / test_dir)
    train, test = _load(train_path, train_tf), _load(test_path, test_tf)
    if train.classes != test.classes:
        raise ValueError(
            f"class folders differ between {train_path} ({len(train.classes)}) "
            f"and {test_path} ({len(test.classes)})"
        )
    found = len(train.classes)
    if num_classes is not None and num_classes != found:
        raise ValueError(f"dataset.num_classes is {num_classes} but {base} has {found} classes")
    return DataSplits(
        train=per_class_subset(train, train_subset, "train_subset"),
        test=per_class_subset(test, test_subset, "test_subset"),
        num_classes=found,
        input_shape=(3, image_size, image_size),
        name="imagefolder",
    )


def imagenet(
    root: str,
    *,
    image_size: int = 224,
    normalize: bool = True,
    num_classes: int | None = None,
    train_crop: str = "random_resized",
) -> DataSplits:
    """ImageNet laid out as ``root/train/<wnid>/*`` and ``root/val/<wnid>/*``; ``train_crop``
    is how a training image is cropped (``sst.data.transforms.IMAGENET_CROPS``)."""
    splits = imagefolder(
        root,
        image_size=image_size,
        transform="imagenet",
        normalize=normalize,
        train_dir="train",
        test_dir="val",
        num_classes=num_classes,
        train_crop=train_crop,
    )
    return replace(splits, name="imagenet")
