"""Pictures of attribution maps, each method drawn the way its paper draws it.

- ``"magnitude"`` (saliency, SmoothGrad, input x gradient, integrated gradients): the max
  over channels of ``|map|``, clipped at the 99th percentile, white on black (Simonyan et al.).
- ``"rgb"`` (deconvnet, guided backprop, guided Grad-CAM): the signed map as an RGB image
  centred on grey, scaled by its 99th percentile of ``|map|`` (Springenberg et al.).
- ``"overlay"`` (CAM, Grad-CAM, Grad-CAM++, Score-CAM): the map min-max scaled and drawn in
  the jet colormap over the image (Zhou et al., Selvaraju et al.).
- ``"diverging"`` (occlusion, LIME): red where the evidence supports the class, blue where it
  opposes it, symmetric around zero, over a faded copy of the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .render import colormap, subplots, to_numpy_image

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
    if style == "magnitude":
        m = a.abs().amax(0)
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
    raise ValueError(f"style: expected one of magnitude, rgb, overlay, diverging; got {style!r}")


def attribution_figure(images: torch.Tensor, maps: Mapping[str, torch.Tensor], *,
                       row_titles: Sequence[str] | None = None, styles: Mapping[str, str] | None = None,
                       cell: float = 1.45, title: str | None = None):
    """Images x methods: each row an input (titled, e.g. with class and score), each column a method.

    Args:
        images: ``[N, C, H, W]`` in [0, 1].
        maps: method name -> ``[N, C or 1, H, W]`` attributions (as returned by the methods).
        row_titles: one line per image (class name and score, say).
        styles: override the default style of a method (see :data:`STYLES`).
    """
    names = list(maps)
    n, cols = len(images), len(names) + 1
    fig, axes = subplots(n, cols, figsize=(cols * cell, n * cell + 0.35), squeeze=False)
    for i in range(n):
        axes[i][0].imshow(to_numpy_image(images[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if row_titles is not None:
            axes[i][0].set_title(row_titles[i], fontsize=7.5)
        for j, name in enumerate(names, start=1):
            style = (styles or {}).get(name, STYLES.get(name, "magnitude"))
            axes[i][j].imshow(render_map(maps[name][i], style, images[i]), interpolation="nearest")
            if i == 0:
                axes[i][j].set_title(LABELS.get(name, name), fontsize=8, fontweight="bold")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.25, w_pad=0.2, h_pad=0.5)
    return fig


def strips_figure(image: torch.Tensor | None, rows: Mapping[str, Sequence[torch.Tensor]], stages: Sequence[str], *,
                  cell: float = 1.2, title: str | None = None, styles: Mapping[str, str] | None = None):
    """Sanity-check strips: one row per method, one column per stage (e.g. cascading randomisation).

    ``image`` is drawn under the overlay styles (grey when ``None``)."""
    names = list(rows)
    fig, axes = subplots(len(names), len(stages), figsize=(len(stages) * cell + 0.8, len(names) * cell + 0.4),
                             squeeze=False)
    for i, name in enumerate(names):
        style = (styles or {}).get(name, STYLES.get(name, "magnitude"))
        for j, m in enumerate(rows[name]):
            axes[i][j].imshow(render_map(m, style, image), interpolation="nearest")
            if i == 0:
                axes[i][j].set_title(stages[j], fontsize=7, rotation=30, ha="left", va="bottom",
                                     rotation_mode="anchor")
        axes[i][0].set_ylabel(LABELS.get(name, name), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.3, w_pad=0.15, h_pad=0.3)
    return fig


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
    fig, axes = subplots(1, len(kinds), figsize=(4.75 * len(kinds), 3.4), sharey=True, squeeze=False)
    axes = list(axes[0])
    cmap = colormap("tab20")
    for i, (name, c) in enumerate(curves.items()):
        for ax, kind in zip(axes, kinds):
            if kind in c:
                y = np.asarray(c[kind], dtype=float)
                ax.plot(np.linspace(0, 1, len(y)), y, color=cmap(i % 20), lw=1.4, label=LABELS.get(name, name))
    for ax, kind in zip(axes, kinds):
        better = "lower" if kind == "deletion" else "higher"
        ax.set_title(f"{kind.capitalize()} (area {better} is better)", fontsize=9)
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'restored'}, most important first",
                      fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel("class probability", fontsize=8)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
