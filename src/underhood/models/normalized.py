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
from ..core.outputs import Output, check_output, logits_of


class Normalized(Wrapper):
    """``net((x - mean) / std)`` for pixels ``x`` in ``[0, 1]``, carrying class names and metadata.

    Args:
        net: the network, expecting normalised inputs.
        mean, std: per-channel statistics (length C).
        classes: class names, one per output logit.
        input_size: ``(C, H, W)`` the network was trained on, or ``None`` if any size works.
        meta: free-form metadata (architecture, accuracy, provenance).
        output: which tensor of the network's output is the logits, when ``net`` returns a tuple,
            list, dict or an object with ``.logits`` (see :func:`underhood.core.outputs.logits_of`):
            ``None`` (``"logits"`` / ``.logits`` / the first tensor), an int index, a str key or a
            callable ``output -> Tensor``. ``forward`` returns that tensor.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], classes: Sequence[str],
                 input_size: Sequence[int] | None = None, meta: dict[str, Any] | None = None,
                 output: Output = None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.classes = list(classes)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.meta = dict(meta or {})
        self.output = check_output(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net((x - self.mean) / self.std)
        output = getattr(self, "output", None)  # a Normalized pickled before ``output`` existed has none
        return out if output is None and isinstance(out, torch.Tensor) else logits_of(out, output)

    def extra_repr(self) -> str:
        return f"classes={len(self.classes)}, input_size={self.input_size}"
