"""Explicit seeding: the same ``seed`` gives the same result."""

from __future__ import annotations

import random

import numpy as np
import torch


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh :class:`torch.Generator` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators (for training loops)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
