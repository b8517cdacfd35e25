"""Shared pieces of the adversarial tests: models that fail on demand or have no gradient; one thread."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def one_thread():
    """Small batches gain nothing from a second thread, and on a busy 2-core machine lose up to 40x waiting for it."""
    from underhood.core.device import threads

    with threads(1):
        yield


class Flaky(nn.Module):
    """A small conv net with dropout and BatchNorm whose forward raises on call ``fail_at``."""

    def __init__(self, fail_at: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Flatten(), nn.Linear(16, 3))
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.net(x)


class Quantized(nn.Module):
    """A linear model on rounded pixels: its input gradient is zero everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x * 4).round().flatten(1) / 4)


def tiny(classes: int = 3, seed: int = 0) -> nn.Module:
    """``logits = W x + b`` on ``[N, 1, 4, 4]`` images: the cheapest model every attack runs on."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, 16, generator=g))
        model[1].bias.zero_()
    return model


def tiny_inputs(n: int = 6, seed: int = 1) -> torch.Tensor:
    """``[n, 1, 4, 4]`` pixels away from the box's faces."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, 1, 4, 4, generator=g)
