"""torchvision CIFAR-10 / CIFAR-100 builders."""

from __future__ import annotations

import shutil
from pathlib import Path

from torchvision import datasets

from .errors import missing_data
from .splits import DataSplits
from .transforms import CIFAR10_STATS, CIFAR100_STATS, Stats, cifar_transform


def _build(
    cls: type[datasets.CIFAR10],
    name: str,
    num_classes: int,
    stats: Stats,
    root: str,
    download: bool,
    augment: bool,
    normalize: bool,
) -> DataSplits:
    root_path = Path(root).expanduser()
    norm = stats if normalize else None
    train_tf = cifar_transform(True, augment=augment, stats=norm)
    test_tf = cifar_transform(False, stats=norm)
    existed = root_path.exists()
    try:
        train = cls(str(root_path), train=True, transform=train_tf, download=download)
        test = cls(str(root_path), train=False, transform=test_tf, download=False)
    except OSError as err:  # urllib's URLError, a refused connection, a full disk, ...
        if not download:
            raise
        if not existed:
            shutil.rmtree(root_path, ignore_errors=True)  # leave no empty or partial folder
        raise missing_data(
            name,
            root_path / cls.base_folder,
            f"dataset.download=true could not download it ({err}); on a machine without "
            f"internet, download {name} elsewhere and put its {cls.base_folder} folder under "
            "dataset.root",
        ) from err
    except RuntimeError as err:
        if download or "not found" not in str(err).lower():
            raise
        raise missing_data(
            f"a complete copy of {name}",
            root_path / cls.base_folder,
            "add dataset.download=true to download it there, or set dataset.root to the "
            f"folder that holds {cls.base_folder}",
        ) from err
    return DataSplits(
        train=train, test=test, num_classes=num_classes, input_shape=(3, 32, 32), name=name
    )


def cifar10(
    root: str, *, download: bool = False, augment: bool = True, normalize: bool = False
) -> DataSplits:
    """CIFAR-10 with pad-crop-flip training augmentation; Normalize only if ``normalize``."""
    return _build(
        datasets.CIFAR10, "cifar10", 10, CIFAR10_STATS, root, download, augment, normalize
    )


def cifar100(
    root: str, *, download: bool = False, augment: bool = True, normalize: bool = False
) -> DataSplits:
    """CIFAR-100 with pad-crop-flip training augmentation; Normalize only if ``normalize``."""
    return _build(
        datasets.CIFAR100, "cifar100", 100, CIFAR100_STATS, root, download, augment, normalize
    )
