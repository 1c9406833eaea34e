"""The compiled training kernels (``_sparse_train.cpp``) behind ``sparse_train.py``."""

from __future__ import annotations

import os

try:
    from . import _sparse_train as _ext
except ImportError:  # not built (no compiler at install time): the fallback runs
    _ext = None

# Set SST_SPARSE_TRAIN_FALLBACK=1 (read at import) or this flag to run the PyTorch fallback.
FORCE_FALLBACK = os.environ.get("SST_SPARSE_TRAIN_FALLBACK", "") == "1"


def compiled_available() -> bool:
    """True when the C++ training kernels are built and not disabled (``FORCE_FALLBACK``)."""
    return _ext is not None and not FORCE_FALLBACK
