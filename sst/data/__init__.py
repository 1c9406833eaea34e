"""Datasets, transforms and deterministic loaders for sparse training."""

from .archive import find_cifar10_jpeg, unpack_once
from .cifar import cifar10, cifar100
from .digits import digits
from .folder import imagefolder, imagenet
from .loaders import EpochLoader, make_loader
from .registry import DATASETS
from .splits import DataSplits
from .synthetic import synthetic

__all__ = [
    "DATASETS",
    "DataSplits",
    "EpochLoader",
    "cifar10",
    "cifar100",
    "digits",
    "find_cifar10_jpeg",
    "imagefolder",
    "imagenet",
    "make_loader",
    "synthetic",
    "unpack_once",
]
