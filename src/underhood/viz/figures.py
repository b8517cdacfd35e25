"""Figures shared by the CLI, the report and notebooks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .render import normalize, to_numpy_image

TITLE_KW = {"fontsize": 8}


def _grid_axes(n: int, ncols: int, cell: float, title_space: float = 0.0):
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(ncols * cell, nrows * (cell + title_space)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, list(axes.flat)


def image_grid(images: torch.Tensor, *, titles: Sequence[str] | None = None, ncols: int = 8,
               cell: float = 1.3, cmap: str = "gray", suptitle: str | None = None,
               title_colors: Sequence[str] | None = None):
    """A grid of images ``[N, C, H, W]`` in [0, 1] (C = 1 drawn with ``cmap``), with optional titles."""
    fig, axes = _grid_axes(len(images), ncols, cell, 0.25 if titles else 0.0)
    for i, img in enumerate(images):
        arr = to_numpy_image(img)
        axes[i].imshow(arr, cmap=cmap if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        if titles is not None:
            color = title_colors[i] if title_colors is not None else "black"
            axes[i].set_title(titles[i], color=color, **TITLE_KW)
    if suptitle:  # a band of its own above the axes and their titles
        height = fig.get_figheight() + 0.35
        fig.set_figheight(height)
        fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.35 / height))
        fig.suptitle(suptitle, fontsize=10, y=1 - 0.05 / height, va="top")
    else:
        fig.tight_layout(pad=0.3)
    return fig


def predictions_figure(images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor,
                       classes: Sequence[str], *, ncols: int = 8):
    """Sample predictions: each image titled with predicted class and confidence (red when wrong)."""
    conf, pred = probs.max(1)
    titles = [f"{classes[p]} {c:.0%}" + ("" if p == y else f"\n(true: {classes[y]})")
              for p, c, y in zip(pred.tolist(), conf.tolist(), labels.tolist())]
    colors = ["#1a7f37" if p == y else "#cf222e" for p, y in zip(pred.tolist(), labels.tolist())]
    fig, axes = _grid_axes(len(images), ncols, 1.35, 0.5)
    for i, img in enumerate(images):
        arr = to_numpy_image(img)
        axes[i].imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        axes[i].set_title(titles[i], color=colors[i], fontsize=9.5)
    fig.tight_layout(pad=0.3)
    return fig


def filters_figure(weight: torch.Tensor, *, max_filters: int = 64, max_channels: int = 15, ncols: int = 16,
                   title: str | None = None):
    """Convolution kernels ``[out, in, kh, kw]`` as pictures.

    With 3 input channels each filter is one RGB image (the first-layer view); otherwise a
    grid of the first ``max_channels`` channels (columns) of the first filters (rows), each
    kernel normalised on its own, grey-scale.
    """
    w = weight.detach().float().cpu()
    if w.ndim != 4:
        from ..core.errors import InputError

        raise InputError(f"weight: expected a conv kernel [out, in, kh, kw], got shape {tuple(w.shape)}")
    if w.shape[1] == 3:
        import numpy as np
        from matplotlib.figure import Figure

        w = w[:max_filters]
        # one scale for all filters keeps their relative contrast (as in the AlexNet figure)
        shown = normalize(w, per="all")
        n, (kh, kw) = len(shown), shown.shape[2:]
        cols = min(ncols, max(4, math.ceil(n / 2)), n)
        rows = math.ceil(n / cols)
        scale = max(1, 32 // max(kh, kw))  # each kernel drawn about 32 px wide
        gap = max(2, scale // 2)           # white gaps: kernels stay apart at any display size
        mosaic = np.ones((rows * (kh * scale + gap) - gap, cols * (kw * scale + gap) - gap, 3))
        for i, k in enumerate(shown):
            r, c = divmod(i, cols)
            tile = np.kron(to_numpy_image(k), np.ones((scale, scale, 1)))
            mosaic[r * (kh * scale + gap):r * (kh * scale + gap) + kh * scale,
                   c * (kw * scale + gap):c * (kw * scale + gap) + kw * scale] = tile
        fig = Figure(figsize=(0.62 * cols + 0.2, 0.62 * rows + (0.45 if title else 0.2)))
        ax = fig.subplots()
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout(pad=0.2)
        return fig
    else:
        import numpy as np

        rows, cols = min(w.shape[0], 20), min(w.shape[1], max_channels)
        kh, kw = w.shape[2:]
        scale = max(1, 24 // max(kh, kw))  # each kernel drawn about 24 px wide
        gap = max(2, scale // 3)
        shown = normalize(w[:rows, :cols].reshape(rows * cols, 1, kh, kw)).view(rows, cols, kh, kw)
        cell_h, cell_w = kh * scale + gap, kw * scale + gap
        # kernels span black to white, so they are separated by coloured lines
        mosaic = np.empty((rows * cell_h - gap, cols * cell_w - gap, 3))
        mosaic[:] = (0.45, 0.62, 0.85)
        for r in range(rows):
            for c in range(cols):
                tile = np.kron(shown[r, c].numpy(), np.ones((scale, scale)))
                mosaic[r * cell_h:r * cell_h + kh * scale, c * cell_w:c * cell_w + kw * scale] = tile[..., None]
        from matplotlib.figure import Figure

        fig = Figure(figsize=(0.42 * cols + 0.8, 0.42 * rows + 1.0))
        ax = fig.subplots()
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_xticks([c * cell_w + (kw * scale - 1) / 2 for c in range(cols)], [str(c) for c in range(cols)],
                      fontsize=9)
        ax.set_yticks([r * cell_h + (kh * scale - 1) / 2 for r in range(rows)], [str(r) for r in range(rows)],
                      fontsize=9)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_xlabel("input channel", fontsize=10)
        ax.set_ylabel("filter", fontsize=10)
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout(pad=0.3)
        return fig


def feature_maps_figure(stages: Sequence[tuple[str, torch.Tensor]], image: torch.Tensor | None = None, *,
                        k: int = 8, cmap: str = "viridis", select: str = "top", seed: int = 0):
    """Feature maps of one input: one row per stage, ``k`` of its channels.

    ``stages`` is a list of ``(layer name, activation [C, H, W])``; each map is normalised
    on its own. ``select="top"`` shows the ``k`` channels with the highest mean activation,
    ``"random"`` ``k`` channels drawn with ``seed`` (in channel order). The input image, when
    given, opens the figure.
    """
    if select not in ("top", "random"):
        from ..core.errors import InputError

        raise InputError(f"select: expected 'top' or 'random', got {select!r}")
    from matplotlib.figure import Figure

    rows = len(stages) + (image is not None)
    fig = Figure(figsize=(k * 1.05, rows * 1.2))
    axes = fig.subplots(rows, k, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    r = 0
    if image is not None:
        arr = to_numpy_image(image)
        axes[0, 0].imshow(arr, cmap="gray" if arr.ndim == 2 else None, interpolation="nearest")
        axes[0, 0].set_title("input", fontsize=10)
        r = 1
    for name, act in stages:
        act = act.detach().float().cpu()
        if select == "top":
            order = act.flatten(1).mean(1).argsort(descending=True)[:k]
        else:
            g = torch.Generator().manual_seed(seed)
            order = torch.randperm(len(act), generator=g)[:k].sort().values
        maps = normalize(act[order])
        for j, (c, m) in enumerate(zip(order.tolist(), maps)):
            axes[r, j].imshow(m.numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            axes[r, j].set_title(f"ch {c}", fontsize=9.5)
        axes[r, 0].text(-0.12, 0.5, f"{name}\n{'x'.join(map(str, act.shape))}", transform=axes[r, 0].transAxes,
                        ha="right", va="center", fontsize=10)
        r += 1
    fig.tight_layout(pad=0.3)
    return fig
