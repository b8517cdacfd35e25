"""The ``Normalized`` wrapper: a model that takes ``[0, 1]`` pixels.

Normalisation belongs to the model, so every gradient, budget and clip elsewhere is in
pixel units. The wrapper adds no prefix to layer names: underhood resolves names inside
``.net`` (see :func:`underhood.core.layers.inner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.names import Wrapper


class Normalized(Wrapper):
    """``net((x - mean) / std)`` for pixels ``x`` in ``[0, 1]``, carrying class names and metadata.

    Args:
        net: the network, expecting normalised inputs.
        mean, std: per-channel statistics (length C).
        classes: class names, one per output logit.
        input_size: ``(C, H, W)`` the network was trained on, or ``None`` if any size works.
        meta: free-form metadata (architecture, accuracy, provenance).
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], classes: Sequence[str],
                 input_size: Sequence[int] | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.classes = list(classes)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.meta = dict(meta or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"classes={len(self.classes)}, input_size={self.input_size}"
