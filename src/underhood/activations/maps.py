"""Feature maps of inputs at named layers.

Layers whose output is a token sequence ``[N, L, C]`` (vision transformers) or a channels-last
map ``[N, h, w, C]`` (Swin stages, ConvNeXt blocks in NHWC) are read as ``[N, C, h, w]`` by
:mod:`underhood.core.layout` (prefix tokens such as the class token dropped, the grid inferred
from the input size; ``tokens=``, ``grid=`` and ``layout=`` fix that reading). The same reading
serves :func:`maps`, :func:`underhood.activations.statistics` and
:func:`underhood.activations.top_patches`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import InputError, LayerError
from ..core.hooks import capture
from ..core.inputs import check_inputs
from ..core.layers import last_hidden, stages
from ..core.layout import Layout, infer, to_nchw


def feature_view(a: torch.Tensor, size: Sequence[int], layer: str, *, tokens: int | None = None,
                 grid: Sequence[int] | int | None = None,
                 layout: str | None = None) -> tuple[torch.Tensor, Layout | None]:
    """``(a as [N, C, h, w], its Layout)`` for a spatial output of ``layer`` on inputs of ``size=(H, W)``;
    ``(a, None)`` unchanged for an output without a spatial reading (``[N, C]`` vectors).

    A view (no copy; differentiable), so the same call converts activations and their gradients.
    Raises :class:`~underhood.core.errors.LayerError` when a token sequence forms no grid, or when
    ``tokens=`` / ``grid=`` / ``layout=`` are given for an output that has no positions.
    """
    lay = infer(a.shape, size, layout=layout, tokens=tokens, grid=grid, layer=layer)
    if lay is not None:
        return to_nchw(a, lay), lay
    given = [f"{k}=" for k, v in (("tokens", tokens), ("grid", grid), ("layout", layout)) if v is not None]
    if given:
        raise LayerError(f"{given[0][:-1]}: {layer!r} outputs {tuple(a.shape[1:])}, which has no positions; "
                         f"drop {' and '.join(given)} or pick a spatial layer")
    return a, None


def maps(model: nn.Module, inputs: torch.Tensor, layers: str | Sequence[str], *, tokens: int | None = None,
         grid: Sequence[int] | int | None = None, layout: str | None = None) -> dict[str, torch.Tensor]:
    """The activations of ``inputs`` at each named layer, ``{layer: [N, C, h, w]}``, in eval mode, on the
    model's device.

    A token layer ``[N, L, C]`` or a channels-last layer ``[N, h, w, C]`` is returned as
    ``[N, C, h, w]`` (a contiguous copy; prefix tokens such as a class token are left out, see
    :mod:`underhood.core.layout`), so the feature-map figures draw it like a convolutional map; a
    layer with ``[N, C]`` output is returned as it is.

    Args:
        tokens: the number of prefix tokens (class, register) before the patch tokens (default: inferred
            from ``L`` and the input size).
        grid: ``(h, w)`` of the patch grid (default: inferred).
        layout: ``"nchw"``, ``"nhwc"`` or ``"tokens"`` (default: inferred from the shape).
            The three options apply to every named layer.

    Draw them with :func:`underhood.viz.feature_maps_figure`.

    Example:
        >>> acts = maps(model, x, ["features.0", "features.3"])   # doctest: +SKIP
        >>> maps(vit, x, "encoder.layers.5")["encoder.layers.5"].shape   # [N, 197, 768] tokens  # doctest: +SKIP
        torch.Size([8, 768, 14, 14])
    """
    inputs = check_inputs(model, inputs)
    names = [layers] if isinstance(layers, str) else list(layers)
    with capture(model, names, eval=True) as cap, torch.no_grad():
        model(inputs)
    missing = [n for n in names if n not in cap.activations]
    if missing:
        raise InputError(f"layers: {missing} did not run in forward; pick layers that do (see `underhood layers`)")
    size = tuple(inputs.shape[-2:])
    out = {}
    for n in names:
        a, lay = feature_view(cap.activations[n], size, n, tokens=tokens, grid=grid, layout=layout)
        out[n] = a.contiguous() if lay is not None else a
    return out


def embedding_layers(model: nn.Module) -> list[str]:
    """The lectures' embedding figure: the input, an early and a middle stage, and the last hidden layer."""
    st = stages(model)
    picks = ["input"] + ([st[0], st[len(st) // 2]] if len(st) >= 2 else st[:1])
    hidden = last_hidden(model)
    if hidden not in picks:
        picks.append(hidden)
    return picks
