"""Figures of a network's geometry: dilated taps and receptive fields, measured fields, sliding classifiers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..core.errors import InputError
from .render import colormap, new_figure, to_numpy_image

TAP = "#d62728"        # the taps of one unit
FIELD = "#fdae6b"      # its receptive field
OUTPUT = "#9ecae1"     # where output units sit
GRID = "#bdbdbd"


def _grid(ax, h: int, w: int, colours: np.ndarray, title: str) -> None:
    """An ``h x w`` grid of square cells, filled with ``colours [h, w, 3]``."""
    ax.imshow(colours, interpolation="nearest", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, h, 1), minor=True)
    ax.grid(which="minor", color=GRID, lw=0.5)
    ax.tick_params(which="both", length=0, labelsize=8)
    ax.set_xticks(range(0, w, 5))
    ax.set_yticks(range(0, h, 5))
    ax.set_title(title, fontsize=10)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])


def dilation_figure(size: Sequence[int] = (20, 30), kernel_size: int = 3, dilation: int = 4, *,
                    position: Sequence[int] | None = None, stack: Sequence[int] = (1, 2, 4), width: int = 19):
    """EE-559's dilated convolution, drawn: the input grid with one output unit's taps, and a 1-D stack.

    Left: the ``size`` input of a ``kernel_size`` convolution with ``dilation``; the ``k x k`` taps of the output
    unit at ``position`` (default the output's centre) in red, the ``1 + (k-1)d`` span they cover in orange, and
    in blue the input positions where output units sit (the output is smaller by ``(k-1)d``: 20x30 -> 12x22).
    Right: the lecture's "Input / Output" view, 1-D: a stack of kernel-``kernel_size`` convolutions with the
    dilations ``stack`` (no padding, ``width`` input positions), with the connections that reach the top unit
    and its receptive field (3, 7, 15 for dilations 1, 2, 4: exponential growth, linear parameters).
    """
    from ..core.receptive import conv_output_size, stack_fields, support, taps

    h, w = (int(size[0]), int(size[1]))
    k, d = int(kernel_size), int(dilation)
    oh, ow = conv_output_size((h, w), k, dilation=d)
    pos = (oh // 2, ow // 2) if position is None else (int(position[0]), int(position[1]))
    if not (0 <= pos[0] < oh and 0 <= pos[1] < ow):
        raise InputError(f"position: {tuple(position)!r} is outside the {oh}x{ow} output; give (row, col) inside it")
    fig = new_figure(figsize=(11.5, 4.2))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    colours = np.ones((h, w, 3))
    span = d * (k - 1)
    colours[:oh, :ow] = _rgb(OUTPUT) * 0.45 + 0.55
    colours[pos[0]:pos[0] + span + 1, pos[1]:pos[1] + span + 1] = _rgb(FIELD)
    for r in taps(pos[0], (k, 1, 0, d)):
        for c in taps(pos[1], (k, 1, 0, d)):
            colours[r, c] = _rgb(TAP)
    _grid(left, h, w, colours, f"input {h}x{w}, kernel {k}, dilation {d} -> output {oh}x{ow}")
    from matplotlib.patches import Patch

    left.legend(handles=[Patch(color=TAP, label=f"the {k}x{k} taps of output unit {pos}"),
                         Patch(color=FIELD, label=f"their span: 1 + ({k}-1)x{d} = {span + 1} pixels"),
                         Patch(color=_rgb(OUTPUT) * 0.45 + 0.55, label=f"top-left corners of the {oh}x{ow} windows")],
                loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, fontsize=8.5, frameon=False)
    _stack_panel(right, k, list(stack), width, stack_fields, support)
    fig.tight_layout(pad=0.4)
    return fig


def _stack_panel(ax, k: int, dilations: list[int], width: int, stack_fields, support) -> None:
    convs = [(k, 1, 0, dd) for dd in dilations]
    sizes = [width]
    for dd in dilations:
        sizes.append(sizes[-1] - dd * (k - 1))
    if sizes[-1] < 1:
        raise InputError(f"width: {width} input positions are too few for dilations {dilations}; give a larger width")
    offsets = [(width - s) / 2 for s in sizes]  # each layer's units sit over the centre of their window
    top = sizes[-1] // 2
    active = [None] * len(sizes)
    active[-1] = {top}
    for level in range(len(convs), 0, -1):  # back-project the top unit through each layer's taps
        dd = dilations[level - 1]
        active[level - 1] = {i + a * dd for i in active[level] for a in range(k)}
    for level, s in enumerate(sizes):
        xs = offsets[level] + np.arange(s)
        on = np.array([i in active[level] for i in range(s)])
        if level > 0:
            dd = dilations[level - 1]
            for i in sorted(active[level]):
                for a in range(k):
                    ax.plot([offsets[level] + i, offsets[level - 1] + i + a * dd], [level, level - 1],
                            color=TAP, lw=1.0, alpha=0.8, zorder=1)
        ax.scatter(xs[~on], np.full((~on).sum(), level), s=38, c="white", edgecolors="#969696", zorder=2)
        ax.scatter(xs[on], np.full(on.sum(), level), s=46, c=TAP if level else FIELD, edgecolors="#333333",
                   zorder=3)
    fields = stack_fields(convs)
    seen = int(support(width, convs).sum())  # the exact count: a stack can leave holes (dilations 2, 2, ...)
    labels = ["input"] + [f"dilation {dd}: field {int(f.r)}" for dd, f in zip(dilations, fields)]
    ax.set_yticks(range(len(sizes)), labels, fontsize=9)
    ax.set_xticks([])
    ax.set_ylim(-0.6, len(sizes) - 0.4)
    ax.set_xlim(-1, width)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    holes = "" if seen == int(fields[-1].r) else f" ({int(fields[-1].r) - seen} holes)"
    ax.set_title(f"a 1-D stack of kernel-{k} convolutions: the top unit sees {seen} inputs{holes}", fontsize=10)


def receptive_fields_figure(fields: Sequence, image: torch.Tensor | None = None, *, ncols: int = 6):
    """Measured receptive fields (:class:`underhood.core.receptive.EffectiveField`), one panel per layer.

    Each panel shows ``sqrt`` of the mean absolute gradient of the layer's centre unit w.r.t. the input (pixels
    with none are left transparent over ``image``, ``[C, H, W]``, when given), the analytic receptive field of
    that unit as a dashed box and, in the panel title, the field's size and the size of the gradient's support.
    """
    from matplotlib.patches import Rectangle

    if not fields:
        raise InputError("fields: give at least one EffectiveField")
    ncols = max(1, min(ncols, len(fields)))
    nrows = -(-len(fields) // ncols)
    fig = new_figure(figsize=(2.05 * ncols, 2.35 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    cmap = colormap("magma")
    for ax in axes[len(fields):]:
        ax.set_axis_off()
    for ax, f in zip(axes, fields):
        g = f.gradient.float()
        g = (g / g.max().clamp_min(1e-12)).sqrt().numpy()
        if image is not None:
            base = to_numpy_image(image)
            base = base.mean(-1) if base.ndim == 3 else base
            ax.imshow(base, cmap="gray", interpolation="nearest")
            ax.imshow(np.ma.masked_where(g == 0, g), cmap=cmap, vmin=0, vmax=1, interpolation="nearest", alpha=0.85)
        else:
            ax.imshow(g, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        if f.box is not None:
            t, l_, b, r = f.box
            ax.add_patch(Rectangle((l_ - 0.5, t - 0.5), r - l_ + 1, b - t + 1, fill=False, ec="#41b6c4", lw=1.3,
                                   ls="--"))
        rf = "global" if f.rf is None else "x".join(f"{v:g}" for v in f.rf)
        seen = f.measured_box
        got = "none" if seen is None else f"{seen[2] - seen[0] + 1}x{seen[3] - seen[1] + 1}"
        ax.set_title(f"{f.layer}\nfield {rf}, gradient {got}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    return fig


def dense_map_figure(image: torch.Tensor, scores: torch.Tensor, classes: Sequence[str], *, window: int,
                     stride: int, title: str | None = None):
    """A classifier slid over a large image: the image, then the predicted class and its probability per window.

    Args:
        image: ``[C, H, W]`` in [0, 1].
        scores: ``[K, h, w]`` logits of the fully convolutional network (one per window).
        classes: the ``K`` class names.
        window, stride: the window the classifier sees and the step between windows, in input pixels (the
            output ``(i, j)`` reads pixels ``[i stride, i stride + window)``).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    if scores.ndim != 3 or len(classes) != scores.shape[0]:
        raise InputError(f"scores: expected [K, h, w] with K = {len(classes)} classes, got {tuple(scores.shape)}")
    probs = torch.softmax(scores.float(), 0)
    conf, label = probs.max(0)
    k, (h, w) = len(classes), label.shape
    palette = colormap("tab10" if k <= 10 else "tab20")
    colours = ListedColormap([palette(i % palette.N) for i in range(k)])
    fig = new_figure(figsize=(12.5, 3.9))
    a, b, c = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.08]})
    arr = to_numpy_image(image)
    a.imshow(arr, cmap="gray" if arr.ndim == 2 else None, interpolation="nearest")
    a.add_patch(Rectangle((-0.5, -0.5), window, window, fill=False, ec="#e6550d", lw=1.6))
    a.text(window / 2, window + 1, f"one window: {window}x{window}", color="#e6550d", fontsize=8.5, ha="center",
           va="top", bbox={"fc": "white", "ec": "none", "alpha": 0.75, "pad": 1})
    a.set_title(f"input {arr.shape[0]}x{arr.shape[1]}", fontsize=10)
    b.imshow(label.numpy(), cmap=colours, vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
    for i in range(h):
        for j in range(w):
            if h * w <= 400:
                b.text(j, i, classes[int(label[i, j])][:2], ha="center", va="center", fontsize=6.5, color="white")
    b.set_title(f"predicted class per window ({h}x{w}, stride {stride} px)", fontsize=10)
    shown = sorted(set(label.flatten().tolist()))
    b.legend(handles=[Patch(color=colours(i), label=classes[i]) for i in shown], fontsize=7.5, loc="upper center",
             bbox_to_anchor=(0.5, -0.04), ncol=min(5, len(shown)), frameon=False)
    im = c.imshow(conf.numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    c.set_title("probability of that class", fontsize=10)
    fig.colorbar(im, cax=c.inset_axes([1.03, 0, 0.04, 1]))  # as tall as the map
    for ax in (a, b, c):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(pad=0.4)
    return fig


__all__ = ["dilation_figure", "receptive_fields_figure", "dense_map_figure"]
