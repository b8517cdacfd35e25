"""Figures of single units over a dataset: top patches with their patterns, channel statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .render import to_numpy_image

RULE_NAMES = {"guided": "guided-backprop", "deconvnet": "deconvnet", "gradient": "gradient"}


def _mosaic(tiles: torch.Tensor, ncols: int, gap: int = 1, fill: float = 1.0) -> np.ndarray:
    """``[n, C, h, w]`` tiles in [0, 1] -> one ``[H, W(, 3)]`` array with ``gap``-pixel white lines."""
    n, c, h, w = tiles.shape
    nrows = math.ceil(n / ncols)
    out = torch.full((c, nrows * (h + gap) - gap, ncols * (w + gap) - gap), fill)
    for i, t in enumerate(tiles):
        r, q = divmod(i, ncols)
        out[:, r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = t
    return to_numpy_image(out)


def pattern_image(pattern: torch.Tensor) -> torch.Tensor:
    """A deconvnet / guided-backprop pattern ``[C, H, W]`` for display: mid-grey is 0, scaled by its
    99.5th percentile of its absolute value (the Zeiler & Fergus presentation, with a little clipping
    so that one bright pixel does not hide the rest)."""
    p = pattern.detach().float().cpu()
    scale = torch.quantile(p.abs().flatten(), 0.995).clamp(min=1e-12)
    return (p / (2 * scale) + 0.5).clamp(0, 1)


def top_patches_figure(result, *, units: Sequence[int] | None = None, ncols: int = 4, title: str | None = None):
    """The Zeiler & Fergus figure: for each unit, its top-k receptive-field patches (left) and, beside
    them, the unit's pattern in each patch (right: deconvnet or guided backprop).

    Args:
        result: a :class:`~underhood.activations.TopPatches` with patches (and patterns).
        units: rows of ``result`` to draw (default: the first 16).
        ncols: units per figure row.
    """
    from matplotlib.figure import Figure

    if result.patches is None:
        from ..core.errors import InputError

        raise InputError("result: it has no patches; call top_patches(..., crops=True)")
    rows = list(units) if units is not None else list(range(min(16, len(result.channels))))
    k = result.patches.shape[1]
    side = math.ceil(math.sqrt(k))
    has_patterns = result.patterns is not None
    ncols = max(1, min(ncols, len(rows)))
    nrows = math.ceil(len(rows) / ncols)
    width = 2.0 * (2 if has_patterns else 1) + 0.35
    cells = getattr(result, "info", {}).get("box") == "cell"  # units that see the whole image: their patch cells
    head = title if title is not None else f"{result.layer}: the top {k} patches of each channel" + (
        " (the patch cell of each token; the unit sees the whole image)" if cells else "") + (
        f" (left) and the unit's {RULE_NAMES.get(result.rule, result.rule or 'backward')} pattern in each (right)"
        if has_patterns else "")
    fig = Figure(figsize=(ncols * width, nrows * 2.45 + 0.45))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, row in zip(axes.flat, rows):
        tiles = result.patches[row].float().clamp(0, 1)
        left = _mosaic(tiles, side)
        if has_patterns:
            right = _mosaic(torch.stack([pattern_image(p) for p in result.patterns[row]]), side)
            spacer = np.ones((left.shape[0], max(2, left.shape[1] // 12)) + left.shape[2:], dtype=left.dtype)
            left = np.concatenate([left, spacer, right], 1)
        ax.imshow(left, cmap="gray" if left.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"channel {int(result.channels[row])}  (max {float(result.values[row, 0]):.2g})", fontsize=11)
    if head:
        fig.suptitle(head, fontsize=11.5, y=1 - 0.08 / fig.get_figheight(), va="top")
    fig.tight_layout(pad=0.4, w_pad=1.6, h_pad=0.8, rect=(0, 0, 1, 1 - (0.4 if head else 0) / fig.get_figheight()))
    return fig


def statistics_figure(stats, *, max_channels: int = 64, title: str | None = None):
    """Per-channel distributions of a layer: the histogram of each channel's response (one column per
    channel, darker = more inputs), its mean response, and the share of inputs on which it is active
    (dead units in red)."""
    from matplotlib.figure import Figure

    c = min(len(stats.mean), max_channels)
    hist = stats.histogram[:c].float()
    hist = hist / hist.sum(1, keepdim=True).clamp(min=1)
    fig = Figure(figsize=(max(6.0, 0.13 * c + 2), 5.6))
    top, mid, bottom = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2, 1.2]})
    edges = stats.edges.numpy()
    top.imshow(hist.T.numpy(), origin="lower", aspect="auto", cmap="Greys",
               extent=(-0.5, c - 0.5, float(edges[0]), float(edges[-1])), interpolation="nearest")
    top.set_ylabel("response\n(mean over positions)", fontsize=8)
    means = stats.mean[:c].numpy()
    mid.bar(np.arange(c), means, color="#4c72b0", width=0.8)
    mid.axhline(0, color="black", lw=0.6)
    mid.set_ylabel("mean", fontsize=8)
    active = stats.active[:c].numpy()
    colours = ["#cf222e" if d else "#55a868" for d in stats.dead[:c].tolist()]
    bottom.bar(np.arange(c), active, color=colours, width=0.8)
    bottom.set_ylim(0, 1.02)
    bottom.set_ylabel("share active", fontsize=8)
    bottom.set_xlabel("channel", fontsize=8)
    for ax in (top, mid, bottom):
        ax.tick_params(labelsize=7)
    dead = int(stats.dead.sum())
    fig.suptitle(title or f"{stats.layer}: {len(stats.mean)} channels over {stats.n} inputs, {dead} dead"
                 + ("" if c == len(stats.mean) else f" (first {c} shown)"), fontsize=10)
    fig.tight_layout(pad=0.4)
    return fig
