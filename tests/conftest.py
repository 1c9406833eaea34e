import os

import pytest
import torch
from torch import nn

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")


@pytest.fixture
def one_thread():
    """Tiny models: torch's thread pool only costs time on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyConvNet(nn.Module):
    """Conv + linear layers with fan-ins that N:M 2:4 divides (27 does not: kept dense)."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def batches(n: int, seed: int = 0, batch: int = 16, classes: int = 4):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 3, 8, 8, generator=gen),
            torch.randint(0, classes, (batch,), generator=gen),
        )
        for _ in range(n)
    ]


def train_steps(model, optimizer, method, data, check=None):
    for inputs, targets in data:
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        method.before_step()
        optimizer.step()
        method.after_step()
        if check is not None:
            check(method)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyConvNet()
