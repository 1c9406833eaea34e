"""Test metrics of a model over a loader, reduced over the DDP ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sst import dist


def to_device(inputs, targets, device: torch.device, channels_last: bool):
    inputs = inputs.to(device, non_blocking=True)
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, targets.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    num_classes: int,
    autocast: Callable,
    channels_last: bool,
) -> dict[str, float]:
    """Test loss, top-1 and (with more than 10 classes) top-5 accuracy in percent. Under
    DDP each rank evaluates its shard of the test set (every example once, no padding) and
    the sums and counts are all-reduced, so every rank returns the same metrics."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float32 if device.type == "mps" else torch.float64)
    loss_sum, correct1, correct5, total = sums.to(device).unbind()
    for inputs, targets in loader:
        inputs, targets = to_device(inputs, targets, device, channels_last)
        with autocast():
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum")
        top = logits.topk(min(5, num_classes), dim=1).indices
        hits = top == targets.unsqueeze(1)
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        total += targets.numel()
    model.train(was_training)
    loss, hits1, hits5, count = dist.all_reduce_sum(
        torch.stack([loss_sum, correct1, correct5, total])
    ).tolist()
    out = {"test/loss": loss / count, "test/acc": 100.0 * hits1 / count}
    if num_classes > 10:
        out["test/acc_top5"] = 100.0 * hits5 / count
    return out
