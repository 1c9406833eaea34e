"""Mixed precision (``trainer.amp``): the autocast dtype, and fp16's gradient scaler."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

AMP_MODES = ("none", "bf16", "fp16")


class Precision:
    """``none`` trains in fp32; ``bf16`` autocasts the forward pass to bfloat16 (CUDA and
    CPU; other devices run fp32); ``fp16`` autocasts to float16 and scales the loss with a
    ``GradScaler`` (CUDA only), whose state the checkpoint keeps."""

    def __init__(self, amp: str, device: torch.device) -> None:
        if amp not in AMP_MODES:
            raise ValueError(f"trainer.amp={amp!r} is unknown: allowed values are {AMP_MODES}")
        if amp == "fp16" and device.type != "cuda":
            raise ValueError(
                f"trainer.amp=fp16 needs a CUDA device (the device is {device.type}): "
                "use trainer.amp=bf16 or trainer.amp=none"
            )
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.dtype = dtype if device.type in ("cuda", "cpu") else None
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)
