"""Convolution kernels of a layer."""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import LayerError
from ..core.layers import conv_layers, resolve


def filters(model: nn.Module, layer: str | None = None) -> torch.Tensor:
    """The kernels ``[out, in, kh, kw]`` of a convolutional layer (default: the first one).

    Draw them with :func:`underhood.viz.filters_figure` (RGB images for a first layer, a grid
    of channels of filters deeper in).

    Example:
        >>> w = filters(load_model("shapes"))   # doctest: +SKIP
        >>> w.shape                              # doctest: +SKIP
        torch.Size([16, 3, 3, 3])
    """
    if layer is None:
        convs = conv_layers(model)
        if not convs:
            raise LayerError("layer: the model has no Conv2d layer; name a convolutional layer")
        layer = convs[0]
    module = resolve(model, layer)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise LayerError(f"layer: {layer!r} is a {type(module).__name__}, not a 2-D convolution; "
                         "pick a Conv2d layer (see `underhood layers`)")
    return weight.detach().clone()
