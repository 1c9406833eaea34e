"""2:4 sparse Linear layers on NVIDIA GPUs (Ampere and later) through PyTorch's
semi-structured sparse tensors (cuSPARSELt / CUTLASS).

``torch.sparse.to_sparse_semi_structured`` takes a 2-D, contiguous fp16/bf16 CUDA weight whose
every group of 4 consecutive inputs holds at most 2 non-zeros; it keeps half the values plus
2-bit metadata.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import CondensedLinear


class SemiStructuredLinear(nn.Module):
    """A 2:4 sparse Linear on an NVIDIA GPU (sm_80+): the weight is a
    ``SparseSemiStructuredTensor`` (half the values plus 2-bit metadata)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        self.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def semi_structured(
    module: nn.Module, dtype: torch.dtype = torch.float16, device: str | torch.device = "cuda"
) -> SemiStructuredLinear:
    """``SemiStructuredLinear`` from a 2:4 ``CondensedLinear`` or ``nn.Linear``.

    Raises:
        ValueError: if the weight is not 2:4 along its inputs or the dtype is not fp16/bf16.
        RuntimeError: without CUDA.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("2:4 semi-structured sparsity needs a CUDA GPU")
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype={dtype}: to_sparse_semi_structured takes float16 or bfloat16")
    if isinstance(module, CondensedLinear):
        weight, bias = module.dense_weight(), module.bias
    elif isinstance(module, nn.Linear):
        weight, bias = module.weight.detach(), module.bias
    else:
        raise ValueError(f"expected a Linear or CondensedLinear, got {type(module).__name__}")
    if weight.shape[1] % 4:
        raise ValueError(f"the weight's {weight.shape[1]} inputs do not split into groups of 4")
    groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
    if bool((groups > 2).any()):
        raise ValueError("the weight is not 2:4 sparse along its inputs")
    weight = weight.to(device=device, dtype=dtype).contiguous()
    bias = None if bias is None else bias.detach().to(device=device, dtype=dtype)
    return SemiStructuredLinear(weight, bias)
