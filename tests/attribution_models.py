"""Tiny models with known attributions, shared by the attribution tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """``logits = W x + b`` on flattened pixels: saliency is ``W[c]``, IG from 0 is ``x * W[c]``."""

    def __init__(self, shape=(3, 6, 6), classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = int(torch.tensor(shape).prod())
        self.fc = nn.Linear(n, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, n, generator=g))
            self.fc.bias.copy_(torch.randn(classes, generator=g))
        self.shape = shape

    def row(self, c: int) -> torch.Tensor:
        return self.fc.weight[c].detach().view(self.shape)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Quadratic(nn.Module):
    """One output ``sum(x^2)`` (per sample): gradient ``2x``."""

    def forward(self, x):
        return x.pow(2).flatten(1).sum(1, keepdim=True)


class ReluZoo(nn.Module):
    """ReLUs of every kind: an in-place module, one module reused, F.relu, torch.relu and Tensor.relu_."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 5)

    def ops(self):
        """The forward as a list of ``(kind, function)``: the slow reference walks it layer by layer."""
        return [("lin", self.conv1), ("relu", None), ("lin", self.pool), ("lin", self.conv2), ("relu", None),
                ("lin", lambda t: t - 0.05), ("relu", None), ("lin", self.conv3), ("relu", None),
                ("lin", lambda t: t * 1.0), ("relu", None), ("lin", lambda t: self.fc(t.mean((2, 3))))]

    def forward(self, x):
        x = self.relu(self.conv1(x))            # nn.ReLU in place
        x = self.pool(x)
        x = F.relu(self.conv2(x))               # functional
        x = self.relu(x - 0.05)                 # the same module, reused
        x = torch.relu(self.conv3(x))           # torch.relu
        x = x * 1.0
        x.relu_()                               # Tensor.relu_, in place
        return self.fc(x.mean((2, 3)))


class Residual(nn.Module):
    """A ResNet-style block: one ReLU module called before and after a skip connection."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.relu(self.stem(x))
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        out += x
        out = self.relu(out)
        return self.fc(out.mean((2, 3)))


class GapNet(nn.Module):
    """conv -> ReLU -> conv (no downsampling) -> global average pool -> linear: CAM's architecture."""

    def __init__(self, seed: int = 0, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 7, 3, padding=1),
                                      nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(7, classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class Broken(nn.Module):
    """Raises in forward after its first layer ran."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        self.relu(self.conv(x))
        raise RuntimeError("boom")
