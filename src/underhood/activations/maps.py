"""Feature maps of inputs at named layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import InputError
from ..core.hooks import capture
from ..core.inputs import check_inputs
from ..core.layers import last_hidden, stages


def maps(model: nn.Module, inputs: torch.Tensor, layers: str | Sequence[str]) -> dict[str, torch.Tensor]:
    """The activations of ``inputs`` at each named layer, ``{layer: [N, C, H, W]}``, in eval mode.

    Draw them with :func:`underhood.viz.feature_maps_figure`.

    Example:
        >>> acts = maps(model, x, ["features.0", "features.3"])   # doctest: +SKIP
    """
    inputs = check_inputs(model, inputs)
    names = [layers] if isinstance(layers, str) else list(layers)
    with capture(model, names, eval=True) as cap, torch.no_grad():
        model(inputs)
    missing = [n for n in names if n not in cap.activations]
    if missing:
        raise InputError(f"layers: {missing} did not run in forward; pick layers that do (see `underhood layers`)")
    return {n: cap.activations[n] for n in names}


def embedding_layers(model: nn.Module) -> list[str]:
    """The lectures' embedding figure: the input, an early and a middle stage, and the last hidden layer."""
    st = stages(model)
    picks = ["input"] + ([st[0], st[len(st) // 2]] if len(st) >= 2 else st[:1])
    hidden = last_hidden(model)
    if hidden not in picks:
        picks.append(hidden)
    return picks
