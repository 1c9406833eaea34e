"""Datasets, transforms and deterministic loaders for sparse training."""

from .archive import find_split_root, unpack_once
from .cifar import cifar10, cifar100
from .digits import digits
from .folder import imagefolder, imagenet
from .loaders import EpochLoader, make_loader
from .splits import DataSplits
from .synthetic import synthetic

__all__ = [
    "DataSplits",
    "EpochLoader",
    "cifar10",
    "cifar100",
    "digits",
    "find_split_root",
    "imagefolder",
    "imagenet",
    "make_loader",
    "synthetic",
    "unpack_once",
]
