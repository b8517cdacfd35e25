"""Pictures of attribution maps, each method drawn the way its paper draws it.

- ``"magnitude"`` (saliency, SmoothGrad, input x gradient, integrated gradients): the max
  over channels of ``|map|``, clipped at the 99th percentile, white on black (Simonyan et al.).
- ``"rgb"`` (deconvnet, guided backprop, guided Grad-CAM): the signed map as an RGB image
  centred on grey, scaled by its 99th percentile of ``|map|`` (Springenberg et al.).
- ``"overlay"`` (CAM, Grad-CAM, Grad-CAM++, Score-CAM): the map min-max scaled and drawn in
  the jet colormap over the image (Zhou et al., Selvaraju et al.).
- ``"diverging"`` (occlusion, LIME): red where the evidence supports the class, blue where it
  opposes it, symmetric around zero, over a faded copy of the image.
- ``"magnitude-sum"``: as ``"magnitude"`` but the channels' ``|map|`` summed (EE-559's SmoothGrad
  display, ``acc_grad.abs().sum(1)``).

The channel reduction alone is :func:`reduce_channels` (``"abs-max"``, ``"abs-sum"``, ``"sum"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .render import new_figure, subplots, to_numpy_image

STYLES = {
    "saliency": "magnitude", "input_x_gradient": "magnitude", "smoothgrad": "magnitude",
    "integrated_gradients": "magnitude", "deconvnet": "rgb", "guided_backprop": "rgb", "guided_gradcam": "rgb",
    "cam": "overlay", "gradcam": "overlay", "gradcam_pp": "overlay", "scorecam": "overlay",
    "occlusion": "diverging", "lime": "diverging",
}
LABELS = {
    "saliency": "Saliency", "input_x_gradient": "Input × gradient", "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated grad.", "deconvnet": "Deconvnet", "guided_backprop": "Guided backprop",
    "guided_gradcam": "Guided Grad-CAM", "cam": "CAM", "gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++",
    "scorecam": "Score-CAM", "occlusion": "Occlusion", "lime": "LIME",
}


# the methods in groups that share a picture convention (one readable figure each in the report)
GROUPS = {
    "gradients": ("saliency", "input_x_gradient", "smoothgrad", "integrated_gradients"),
    "relu rules": ("deconvnet", "guided_backprop", "guided_gradcam"),
    "cam": ("cam", "gradcam", "gradcam_pp", "scorecam"),
    "perturbation": ("occlusion", "lime"),
}
# one colour and one line style per method: a qualitative palette (tab10 and three more), and the
# style of the method's group, so no two curves look alike in colour or in grey
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#e6ab02", "#1b3a6b")
DASHES = {"gradients": "-", "relu rules": "--", "cam": "-.", "perturbation": ":"}
CORRECT, WRONG = "#1a7f37", "#cf222e"  # green = right / same class, red = wrong: one meaning across the report


REDUCTIONS = ("abs-max", "abs-sum", "sum")


def reduce_channels(maps: torch.Tensor, how: str = "abs-max") -> torch.Tensor:
    """One value per pixel from a pixel map's channels (axis -3 of ``[N, C, H, W]`` or ``[C, H, W]``, kept as 1).

    ``"abs-max"``: ``max_c |map|`` (Simonyan et al.'s saliency picture, the ``"magnitude"`` style);
    ``"abs-sum"``: ``sum_c |map|`` (EE-559's and CSC413's SmoothGrad, ``acc_grad.abs().sum(1)``);
    ``"sum"``: ``sum_c map``, signed.

    Example:
        >>> reduce_channels(torch.tensor([[[1.0]], [[-2.0]], [[0.5]]]), "abs-sum").flatten().tolist()
        [3.5]
    """
    if how not in REDUCTIONS:
        raise ValueError(f"how: expected one of {', '.join(REDUCTIONS)}; got {how!r}")
    if maps.ndim < 3:
        raise ValueError(f"maps: expected [N, C, H, W] or [C, H, W], got shape {tuple(maps.shape)}")
    if how == "abs-max":
        return maps.abs().amax(-3, keepdim=True)
    return (maps.abs() if how == "abs-sum" else maps).sum(-3, keepdim=True)


def _scale(values: torch.Tensor, clip: float) -> float:
    s = float(torch.quantile(values.flatten().float(), clip / 100)) if values.numel() > 1 else float(values.max())
    return s if s > 0 else max(float(values.max()), 1e-12)


def _grey(image: torch.Tensor | None, shape: tuple[int, int]) -> np.ndarray:
    if image is None:
        return np.full((*shape, 3), 0.5)
    arr = to_numpy_image(image)
    arr = arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)
    return np.repeat(arr.mean(2, keepdims=True), 3, axis=2)


def render_map(attribution: torch.Tensor, style: str, image: torch.Tensor | None = None, *,
               clip: float = 99.0) -> np.ndarray:
    """One map ``[C, H, W]`` (or ``[H, W]``) -> an ``[H, W, 3]`` RGB array in [0, 1], drawn in ``style``."""
    from matplotlib import colormaps

    a = attribution.detach().float().cpu()
    a = a[None] if a.ndim == 2 else a
    if style in ("magnitude", "magnitude-sum"):
        m = reduce_channels(a, "abs-max" if style == "magnitude" else "abs-sum")[0]
        return np.repeat((m / _scale(m, clip)).clamp(0, 1).numpy()[..., None], 3, axis=2)
    if style == "rgb":
        rgb = (a / (2 * _scale(a.abs(), clip)) + 0.5).clamp(0, 1)
        rgb = rgb.expand(3, -1, -1) if rgb.shape[0] == 1 else rgb[:3]
        return rgb.permute(1, 2, 0).numpy()
    if style == "overlay":
        m = a.sum(0)
        m = ((m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)).numpy()
        return 0.5 * _grey(image, m.shape) + 0.5 * colormaps["jet"](m)[..., :3]
    if style == "diverging":
        m = a.sum(0)
        m = (m / (2 * _scale(m.abs(), clip)) + 0.5).clamp(0, 1).numpy()
        return 0.3 * _grey(image, m.shape) + 0.7 * colormaps["RdBu_r"](m)[..., :3]
    raise ValueError(f"style: expected one of magnitude, magnitude-sum, rgb, overlay, diverging; got {style!r}")


def _mosaic(cells: Sequence[Sequence[np.ndarray | None]], *, cell: float, col_titles: Sequence[str] = (),
            row_titles: Sequence[str] = (), row_colors: Sequence[str] | None = None,
            notes: Sequence[Sequence[str]] | None = None, fontsize: float = 10, bold_rows: bool = False,
            bold_cols: bool = True, title: str | None = None):
    """One figure holding a grid of equal-sized RGB cells on a single axes, with white gaps between them.

    A grid of images drawn as one picture costs a fraction of one axes per cell to build and save.
    Column titles go above the first row, row titles to the left of each row (vertical, so they
    never reach into the row above), ``notes[i][j]`` under cell ``(i, j)``.
    """
    rows, cols = len(cells), max(len(r) for r in cells)
    h, w = next(c for r in cells for c in r if c is not None).shape[:2]
    gx = max(1, round(0.06 * w))
    gy = gx + (round(0.2 * h) if notes else 0)
    canvas = np.ones((rows * h + (rows - 1) * gy, cols * w + (cols - 1) * gx, 3))
    for i, r in enumerate(cells):
        for j, c in enumerate(r):
            if c is not None:
                canvas[i * (h + gy):i * (h + gy) + h, j * (w + gx):j * (w + gx) + w] = c[..., :3]
    px = cell / w  # inches per canvas pixel
    fig = new_figure(figsize=(canvas.shape[1] * px, canvas.shape[0] * px))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for j, t in enumerate(col_titles):
        ax.text(j * (w + gx) + w / 2, -0.04 * h, t, ha="center", va="bottom", fontsize=fontsize,
                fontweight="bold" if bold_cols else "normal")
    for i, t in enumerate(row_titles):
        ax.text(-0.04 * w, i * (h + gy) + h / 2, t, ha="right", va="center", rotation=90, fontsize=fontsize,
                fontweight="bold" if bold_rows else "normal", color=row_colors[i] if row_colors else "black")
    for i, r in enumerate(notes or ()):
        for j, t in enumerate(r):
            if t:
                ax.text(j * (w + gx) + w / 2, i * (h + gy) + h + 0.03 * h, t, ha="center", va="top",
                        fontsize=fontsize - 1)
    if title:
        fig.suptitle(title, fontsize=fontsize + 1, y=1 + 0.35 / (canvas.shape[0] * px))
    return fig


def attribution_figure(images: torch.Tensor, maps: Mapping[str, torch.Tensor], *,
                       row_titles: Sequence[str] | None = None, styles: Mapping[str, str] | None = None,
                       cell: float = 1.45, title: str | None = None, row_colors: Sequence[str] | None = None,
                       fontsize: float = 10):
    """Images x methods: each row an input (labelled on its left, e.g. with class and score), each column a method.

    Args:
        images: ``[N, C, H, W]`` in [0, 1].
        maps: method name -> ``[N, C or 1, H, W]`` attributions (as returned by the methods).
        row_titles: one line per image (class name and score, say), written beside the row, so it
            never runs into the row above.
        styles: override the default style of a method (see :data:`STYLES`).
        cell: the size of one image, in inches.
        row_colors: a colour per row title (e.g. :data:`CORRECT` / :data:`WRONG`).
        fontsize: of the titles, in points.
    """
    names = list(maps)
    cells = []
    for i in range(len(images)):
        picture = to_numpy_image(images[i])
        picture = picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, axis=2)
        cells.append([picture] + [render_map(maps[name][i], (styles or {}).get(name, STYLES.get(name, "magnitude")),
                                             images[i]) for name in names])
    return _mosaic(cells, cell=cell, col_titles=["input"] + [LABELS.get(n, n) for n in names],
                   row_titles=row_titles or (), row_colors=row_colors, fontsize=fontsize, title=title)


def strips_figure(image: torch.Tensor | None, rows: Mapping[str, Sequence[torch.Tensor]], stages: Sequence[str], *,
                  cell: float = 1.2, title: str | None = None, styles: Mapping[str, str] | None = None,
                  fontsize: float = 10, notes: Mapping[str, Sequence[str]] | None = None):
    """Sanity-check strips: one row per method, one column per stage (e.g. cascading randomisation).

    ``image`` is drawn under the overlay styles (grey when ``None``). Stage titles are written
    horizontally, broken at a space onto two lines when long; ``notes[method][j]`` (e.g. the rank
    correlation with the first map) is written under cell ``j`` of that row."""
    names = list(rows)
    cells = [[render_map(m, (styles or {}).get(name, STYLES.get(name, "magnitude")), image) for m in rows[name]]
             for name in names]
    labels = [s if len(s) <= 16 else "\n".join(s.rsplit(" ", 1)) for s in stages]
    return _mosaic(cells, cell=cell, col_titles=labels, row_titles=[LABELS.get(n, n) for n in names],
                   notes=[list((notes or {}).get(n, ())) for n in names] if notes else None, fontsize=fontsize,
                   bold_rows=True, bold_cols=False, title=title)


def metric_table_figure(values: Mapping[str, Mapping[str, float]], directions: Mapping[str, str], *,
                        title: str | None = None):
    """A method x metric table drawn as a heatmap: each column coloured from worst (light) to best (dark
    green) according to its direction (``"up"``: higher is better), the value written in each cell."""
    methods, cols = list(values), list(directions)
    data = np.array([[values[m].get(c, np.nan) for c in cols] for m in methods], dtype=float)
    score = np.full_like(data, np.nan)
    for j, c in enumerate(cols):
        col = data[:, j]
        lo, hi = np.nanmin(col) if np.isfinite(col).any() else 0, np.nanmax(col) if np.isfinite(col).any() else 1
        s = (col - lo) / (hi - lo) if hi > lo else np.full_like(col, 0.5)
        score[:, j] = s if directions[c] == "up" else 1 - s
    fig, ax = subplots(figsize=(1.05 * len(cols) + 1.8, 0.32 * len(methods) + 0.9))
    ax.imshow(np.nan_to_num(score, nan=0.0), cmap="Greens", vmin=-0.15, vmax=1.25, aspect="auto")
    for i in range(len(methods)):
        for j in range(len(cols)):
            text = "-" if np.isnan(data[i, j]) else f"{data[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if np.nan_to_num(score[i, j]) > 0.7 else "black")
    ax.set_xticks(range(len(cols)), [f"{c}\n{'↑ better' if directions[c] == 'up' else '↓ better'}" for c in cols],
                  fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(methods)), [LABELS.get(m, m) for m in methods], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10, pad=28)
    fig.tight_layout()
    return fig


def curves_figure(curves: Mapping[str, Mapping[str, Sequence[float]]], *, title: str | None = None,
                  kinds: Sequence[str] = ("deletion", "insertion")):
    """Deletion and insertion curves (Petsiuk et al. 2018), one line per method: the class probability
    against the fraction of pixels removed (deletion, lower is better) or restored (insertion, higher).
    ``kinds`` picks the panels (e.g. ``("deletion",)``)."""
    fig, axes = subplots(1, len(kinds), figsize=(4.1 * len(kinds) + 1.6, 3.6), sharey=True, squeeze=False)
    axes = list(axes[0])
    for i, (name, c) in enumerate(curves.items()):
        color, dash = line_style(name, i)
        for ax, kind in zip(axes, kinds):
            if kind in c:
                y = np.asarray(c[kind], dtype=float)
                ax.plot(np.linspace(0, 1, len(y)), y, color=color, ls=dash, lw=1.6, label=LABELS.get(name, name))
    for ax, kind in zip(axes, kinds):
        better = "lower" if kind == "deletion" else "higher"
        ax.set_title(f"{kind.capitalize()} (area {better} is better)", fontsize=10)
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'restored'}\n(most important first)",
                      fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)
    axes[0].set_ylabel("class probability", fontsize=9)
    axes[-1].legend(fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, handlelength=2.6)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def line_style(name: str, index: int = 0) -> tuple[str, str]:
    """``(colour, line style)`` of a method's curve: its own colour (registry order) and its group's dashes;
    a name outside the registry gets the ``index``-th colour and a solid line."""
    order = [m for group in GROUPS.values() for m in group]
    if name in order:
        group = next(g for g, members in GROUPS.items() if name in members)
        return PALETTE[order.index(name) % len(PALETTE)], DASHES[group]
    return PALETTE[index % len(PALETTE)], "-"


CHANNEL_COLORS = ("#d62728", "#2ca02c", "#1f77b4")  # R, G, B
PIXEL_DASHES = ("-", "--", ":", "-.")


def _mark(ax, image: torch.Tensor, pixels: torch.Tensor | None, title: str) -> None:
    picture = to_numpy_image(image)
    ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    for j, (y, x) in enumerate((pixels if pixels is not None else torch.zeros(0, 2)).tolist()):
        ax.plot([x], [y], marker="o", ms=9, mfc="none", mec="yellow", mew=1.6)
        ax.annotate(str(j + 1) if len(pixels) > 1 else "", (x, y), xytext=(5, -5), textcoords="offset points",
                    color="yellow", fontsize=8, fontweight="bold")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def gradient_line_figure(t: torch.Tensor, raw: torch.Tensor, smoothed: torch.Tensor, *,
                         image: torch.Tensor | None = None, end: torch.Tensor | None = None,
                         pixels: torch.Tensor | None = None,
                         relative_to: tuple[torch.Tensor, torch.Tensor] | None = None,
                         labels: tuple[str, str] = ("gradient", "SmoothGrad"), title: str | None = None):
    """Smilkov et al.'s Fig. 2: partial derivatives along a line from ``x`` to ``x + eps d``, raw beside smoothed.

    Args:
        t: ``[T]`` positions on the line (0 = the image, 1 = its end).
        raw, smoothed: ``[T, P, C]`` partial derivatives of ``P`` pixels (one line style each) and ``C``
            channels (red, green, blue lines).
        image, end: ``[C, H, W]`` drawn left (with the pixels ringed) and right, as in the paper.
        pixels: ``[P, 2]`` ``(y, x)`` of the pixels followed.
        relative_to: ``(raw_max [T], smoothed_max [T])``: plot each derivative as a fraction of the largest
            ``|entry|`` of its gradient at that point, as the paper does.
        labels: the two panels' titles.
    """
    t = np.asarray(t.detach().cpu(), dtype=float)
    widths = ([1.0] if image is not None else []) + [1.6, 1.6] + ([1.0] if end is not None else [])
    fig, axes = subplots(1, len(widths), figsize=(2.35 * sum(widths) + 0.4, 2.9), width_ratios=widths)
    axes = list(np.atleast_1d(axes))
    if image is not None:
        _mark(axes.pop(0), image, pixels, "x")
    if end is not None:
        _mark(axes.pop(-1), end, pixels, "x + ε d")
    channels = raw.shape[-1]
    names = ("R", "G", "B") if channels == 3 else ("value",) if channels == 1 else tuple(map(str, range(channels)))
    for k, (ax, values) in enumerate(zip(axes, (raw, smoothed))):
        v = values.detach().cpu().float()
        if relative_to is not None:
            v = v / relative_to[k].detach().cpu().float().clamp_min(1e-12).view(-1, 1, 1)
        for p in range(v.shape[1]):
            for c in range(v.shape[2]):
                ax.plot(t, v[:, p, c].numpy(), color=CHANNEL_COLORS[c % 3] if channels == 3 else PALETTE[c % 10],
                        ls=PIXEL_DASHES[p % len(PIXEL_DASHES)], lw=1.3,
                        label=names[c] if v.shape[1] == 1 else f"pixel {p + 1}, {names[c]}")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(labels[k], fontsize=10)
        ax.set_xlabel("t  (x + t ε d)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    ylabel = "∂S_c/∂x_i  /  max_i |∂S_c/∂x_i|" if relative_to is not None else "∂S_c / ∂x_i"
    axes[0].set_ylabel(ylabel, fontsize=9)
    if relative_to is None:  # one scale for both panels, so the raw derivative's swings read against the smoothed
        lo = min(ax.get_ylim()[0] for ax in axes[:2])
        hi = max(ax.get_ylim()[1] for ax in axes[:2])
        for ax in axes[:2]:
            ax.set_ylim(lo, hi)
    axes[1].legend(fontsize=7, loc="best", frameon=False, ncol=1 if raw.shape[1] == 1 else 2)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def top_cams_figure(image: torch.Tensor | None, maps: torch.Tensor, titles: Sequence[str], *, cell: float = 1.6,
                    title: str | None = None, fontsize: float = 10):
    """One CAM overlay per class (``maps`` ``[k, H, W]`` or ``[k, 1, H, W]``), each titled (e.g. class and
    probability), in one row after the image: CMP784's "class activation maps of top 5 predictions".

    ``image``: ``[C, H, W]``, drawn first and under every overlay; or ``[k, C, H, W]``, one image under each
    map and no input column ("class activation maps for one object class" across images)."""
    m = maps.detach().float().cpu()
    m = m[:, None] if m.ndim == 3 else m
    under = [image[j] if image is not None and image.ndim == 4 else image for j in range(len(m))]
    cells = [render_map(m[j], "overlay", under[j]) for j in range(len(m))]
    heads = list(titles)
    if image is not None and image.ndim == 3:
        picture = to_numpy_image(image)
        cells.insert(0, picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, axis=2))
        heads.insert(0, "input")
    return _mosaic([cells], cell=cell, col_titles=heads, fontsize=fontsize, title=title)
