"""Low-level rendering: display normalisation and PNG encoding."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch


def normalize(t: torch.Tensor, *, per: str = "item", eps: float = 1e-12) -> torch.Tensor:
    """Min-max scale to ``[0, 1]``: per first-axis item (``per="item"``) or over the whole tensor."""
    t = t.detach().float()
    if per == "all":
        return (t - t.min()) / (t.max() - t.min()).clamp_min(eps)
    flat = t.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (t.ndim - 1)
    return (t - lo.view(shape)) / (hi - lo).clamp_min(eps).view(shape)


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` (C in 1, 3) or ``[H, W]`` in [0, 1] -> ``[H, W, 3]`` or ``[H, W]`` float array."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    return image.permute(1, 2, 0).numpy() if image.ndim == 3 else image.numpy()


def to_png(image: torch.Tensor, *, scale: int = 1) -> bytes:
    """PNG bytes of one image in [0, 1] (``[C, H, W]`` or ``[H, W]``), enlarged ``scale`` times (nearest)."""
    from PIL import Image

    array = (to_numpy_image(image) * 255).round().astype(np.uint8)
    im = Image.fromarray(array)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kwargs):
    """``(figure, axes)`` as ``pyplot.subplots`` gives them, on a bare :class:`matplotlib.figure.Figure`.

    No pyplot: the user's backend, figure registry and interactive state are left alone, and
    nothing needs closing. ``kwargs`` go to ``Figure.subplots`` (``squeeze``, ``sharex``,
    ``sharey``, ``gridspec_kw``, ``subplot_kw``) or, otherwise, to ``Figure`` (``dpi``, ...).
    """
    keys = ("squeeze", "sharex", "sharey", "gridspec_kw", "subplot_kw", "width_ratios", "height_ratios")
    fig = new_figure(figsize=figsize, **{k: v for k, v in kwargs.items() if k not in keys})
    return fig, fig.subplots(nrows, ncols, **{k: v for k, v in kwargs.items() if k in keys})


def new_figure(*, figsize: tuple[float, float] | None = None, **kwargs):
    """A bare :class:`matplotlib.figure.Figure` (no pyplot, no global state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, **kwargs)


def colormap(name: str):
    """The registered matplotlib colormap ``name`` (as ``pyplot.get_cmap``)."""
    import matplotlib

    return matplotlib.colormaps[name]


def figure_to_png(fig, *, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure; a figure made through pyplot is closed after."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor=fig.get_facecolor())
    _release(fig)
    return buf.getvalue()


def _release(fig) -> None:
    """Close ``fig`` in pyplot's registry if pyplot made it (a user's figure); bare figures need nothing."""
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None and getattr(fig, "number", None) is not None and plt.fignum_exists(fig.number):
        plt.close(fig)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    from ..core.io import write_bytes

    return write_bytes(path, figure_to_png(fig, dpi=dpi))
