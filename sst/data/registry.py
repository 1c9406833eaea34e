"""Dataset name -> builder."""

from __future__ import annotations

from collections.abc import Callable

from .cifar import cifar10, cifar100
from .digits import digits
from .folder import imagefolder, imagenet
from .splits import DataSplits
from .synthetic import synthetic

DATASETS: dict[str, Callable[..., DataSplits]] = {
    "digits": digits,
    "synthetic": synthetic,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "imagefolder": imagefolder,
    "imagenet": imagenet,
}
