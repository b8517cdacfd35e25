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
