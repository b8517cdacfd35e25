"""Figures of the synthesis family: galleries of synthetic images, inversion strips, dreams, style transfer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .figures import TITLE_KW
from .render import to_numpy_image

GOOD, BAD = "#1a7f37", "#cf222e"


def _show(ax, image: torch.Tensor) -> None:
    arr = to_numpy_image(image)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def gallery_figure(images: torch.Tensor, titles: Sequence[str] | None = None, *, ncols: int = 8,
                   title: str | None = None, title_colors: Sequence[str] | None = None, cell: float = 1.25):
    """Synthetic images ``[N, C, H, W]`` in a grid, one title each (e.g. the channel or the class).

    Drawn as one mosaic in a single axes, white gaps between the images and each title as text above its
    image: a grid of one axes per image costs tens of milliseconds per image to lay out and draw.
    """
    import math

    import numpy as np
    from matplotlib.figure import Figure

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    tiles = [to_numpy_image(im) for im in images]
    tiles = [np.repeat(t[..., None], 3, 2) if t.ndim == 2 else t for t in tiles]
    h, w = tiles[0].shape[:2]
    gap = max(1, round(0.06 * w))
    per_inch = (w + gap) / cell                      # mosaic pixels per inch of the figure
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles else 0
    band = math.ceil((lines * 8 * 1.3 / 72 + 0.06) * per_inch) if lines else 0  # 8 pt text, in mosaic pixels
    row, col = band + h + gap, w + gap
    mosaic = np.ones((nrows * row - gap, ncols * col - gap, 3))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        mosaic[r * row + band:r * row + band + h, c * col:c * col + w] = np.clip(tile, 0, 1)
    top = 0.4 if title else 0.0
    size = (mosaic.shape[1] / per_inch, mosaic.shape[0] / per_inch)
    fig = Figure(figsize=(size[0], size[1] + top))
    ax = fig.add_axes((0, 0, 1, size[1] / (size[1] + top)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for i, text in enumerate(titles or []):
        r, c = divmod(i, ncols)
        ax.text(c * col + w / 2, r * row + band - 0.02 * per_inch, text, ha="center", va="bottom", fontsize=8,
                color=title_colors[i] if title_colors is not None else "black", linespacing=1.15)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.06 / (size[1] + top), va="top")
    return fig


def class_images_figure(images: torch.Tensor, probabilities: torch.Tensor, classes: Sequence[str], *,
                        ids: Sequence[int] | None = None, ncols: int = 8, title: str | None = None,
                        cell: float = 1.35):
    """Images rendered for classes (image ``i`` for class ``ids[i]``, default ``i``), titled with the
    model's probability of that class: green when that class is the model's top class for the image,
    red (with the class it sees instead) when another class wins, as in every figure of the report."""
    p = probabilities.detach().float().cpu()
    ids = list(range(len(images))) if ids is None else list(ids)
    top = p.argmax(1).tolist()
    titles = [f"{classes[k]}\np = {p[i, k]:.2f}" + ("" if top[i] == k else f"\n(sees {classes[top[i]]})")
              for i, k in enumerate(ids)]
    return gallery_figure(images, titles, ncols=ncols, title=title,
                          title_colors=[GOOD if top[i] == k else BAD for i, k in enumerate(ids)], cell=cell)


def inversion_figure(original: torch.Tensor, inversions: Sequence, *, index: int = 0, title: str | None = None,
                     psnr_curve: bool = True):
    """Pre-images of one image across layers: the original, then one column per layer (early to last)
    with one row per random start; on the right, pixel PSNR to the original per layer (dots: each start).

    ``inversions``: :class:`~underhood.synthesis.render.Inversion` results for the same images, one per layer.
    """
    from matplotlib.figure import Figure

    seeds = inversions[0].images.shape[0]
    cols = 1 + len(inversions)
    widths = [1.0] * cols + ([0.55, 2.4] if psnr_curve else [])
    fig = Figure(figsize=(sum(widths) * 1.3, seeds * 1.3 + 0.7))
    grid = fig.add_gridspec(seeds, len(widths), width_ratios=widths, wspace=0.06, hspace=0.08)
    ax = fig.add_subplot(grid[0, 0])
    _show(ax, original[index])
    ax.set_title("original", **TITLE_KW)
    for j, inv in enumerate(inversions):
        for s in range(seeds):
            ax = fig.add_subplot(grid[s, 1 + j])
            _show(ax, inv.images[s, index])
            if s == 0:
                ax.set_title(inv.layer, **TITLE_KW)
            ax.set_xlabel(f"{float(inv.psnr[s, index]):.1f} dB", fontsize=8, labelpad=1)
    for s in range(1, seeds):
        fig.add_subplot(grid[s, 0]).set_axis_off()
    if psnr_curve:
        ax = fig.add_subplot(grid[:, -1])
        xs = list(range(len(inversions)))
        values = torch.stack([inv.psnr[:, index] for inv in inversions], 1)  # [S, L]
        for s in range(seeds):
            ax.scatter(xs, values[s].tolist(), s=12, color="#8c959f", zorder=2)
        ax.plot(xs, values.mean(0).tolist(), color="#0969da", marker="o", lw=2, zorder=3)
        ax.set_xticks(xs)
        ax.set_xticklabels([inv.layer for inv in inversions], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel("PSNR to the original (dB)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.set_title("reconstruction quality", **TITLE_KW)
    if title:
        fig.suptitle(title, fontsize=10, y=0.99, va="bottom")
    return fig


def pairs_figure(rows: Sequence[Sequence[torch.Tensor]], headers: Sequence[str], *,
                 row_titles: Sequence[str] | None = None, title: str | None = None, cell: float = 2.0):
    """Images side by side, one row per example (e.g. original | dream, or content | style | result)."""
    from matplotlib.figure import Figure

    n, k = len(rows), len(headers)
    fig = Figure(figsize=(k * cell, n * cell + (0.5 if title else 0.25)))
    axes = fig.subplots(n, k, squeeze=False)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            _show(axes[i, j], image)
            if i == 0:
                axes[i, j].set_title(headers[j], **TITLE_KW)
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
    fig.tight_layout(pad=0.3)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0, va="bottom")
    return fig


def trace_figure(trace: torch.Tensor, *, labels: Sequence[str] | None = None, title: str | None = None,
                 ylabel: str = "objective"):
    """The objective of each image over the optimisation steps (``trace [steps, N]``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 2.8))
    ax = fig.subplots()
    t = trace.detach().float().cpu()
    for i in range(t.shape[1]):
        ax.plot(t[:, i].tolist(), lw=1, label=labels[i] if labels and t.shape[1] <= 10 else None)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if labels and t.shape[1] <= 10:
        ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    return fig
