"""Sparse training methods and the pieces they are made of.

Library use, in any PyTorch loop::

    from sst.sparsity import SRigL
    method = SRigL(model, optimizer, density=0.1, total_steps=total_steps)
    ...
    loss.backward(); method.before_step(); optimizer.step(); method.after_step()
"""

from .dynamic import DynamicSparsity
from .gmp import GMP
from .lr_rewinding import LRRewinding
from .method import Dense, SparsityMethod, Static
from .oneshot import OneShot
from .pruning import PruningMethod
from .rigl import RigL
from .set import SET
from .srigl import SRigL
from .targeted_dropout import TargetedDropout

__all__ = [
    "GMP",
    "SET",
    "Dense",
    "DynamicSparsity",
    "LRRewinding",
    "OneShot",
    "PruningMethod",
    "RigL",
    "SRigL",
    "SparsityMethod",
    "Static",
    "TargetedDropout",
]
