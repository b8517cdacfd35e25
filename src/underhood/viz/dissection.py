"""Network dissection figures (Bau et al. 2017): detectors per layer by concept, and units drawn with their
thresholded region over images.

They read a :class:`underhood.activations.DissectionResult`'s plain fields and methods (no family import):
``layers``, ``concepts``, ``threshold``, ``iou_threshold`` and ``detectors(layer)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .render import subplots, to_numpy_image

MARKER_COLOR = "#24292f"
REGION = "#ffd33d"   # the unit's region outline: yellow reads on every shapes background
TRUTH = "#58a6ff"    # the concept's ground-truth outline (a light blue: the images are dark)


def concept_colors(concepts: Sequence[str]) -> dict[str, Any]:
    """A colour per concept: the class colours of the embedding figures, near-black for ``"marker"``."""
    from .embedding import class_colors

    plain = [c for c in concepts if c != "marker"]
    colors = dict(zip(plain, class_colors(len(plain))))
    if "marker" in concepts:
        colors["marker"] = MARKER_COLOR
    return colors


def _short(layer: str) -> str:
    return layer if len(layer) <= 12 else "..." + layer[-10:]


def detectors_figure(results: Any | Mapping[str, Any], *, title: str | None = None,
                     figsize: tuple[float, float] | None = None):
    """Bau et al.'s bar chart: the number of detector units in each layer, stacked by the concept they detect.

    ``results``: one :class:`~underhood.activations.DissectionResult`, or ``{label: result}`` to draw several
    models side by side (one panel each, a shared y axis and legend). Above each bar: detectors of units.
    """
    panels = dict(results) if isinstance(results, Mapping) else {"": results}
    first = next(iter(panels.values()))
    concepts = list(first.concepts)
    colors = concept_colors(concepts)
    widest = max(len(r.layers) for r in panels.values())
    fig, axes = subplots(1, len(panels), figsize=figsize or (max(4.8, 0.85 * widest + 2.2) * len(panels) + 1.4, 3.9),
                         sharey=True, squeeze=False)
    top = max(len(r.threshold[layer]) for r in panels.values() for layer in r.layers)
    used: set[str] = set()
    for ax, (label, r) in zip(axes[0], panels.items()):
        xs = np.arange(len(r.layers))
        base = np.zeros(len(r.layers))
        counts = [r.detectors(layer) for layer in r.layers]
        for concept in concepts:
            h = np.array([c.get(concept, 0) for c in counts], dtype=float)
            if h.any():
                used.add(concept)
                ax.bar(xs, h, bottom=base, width=0.62, color=colors[concept], edgecolor="white", lw=0.6, zorder=3)
            base += h
        for x, layer, total in zip(xs, r.layers, base):
            ax.text(x, total + top * 0.015, f"{int(total)}/{len(r.threshold[layer])}", ha="center", va="bottom",
                    fontsize=8.5, color="#57606a")
        ax.set_xticks(xs, [_short(layer) for layer in r.layers], fontsize=8.5)
        ax.set_xlim(-0.6, len(r.layers) - 0.4)
        ax.set_ylim(0, top * 1.1)
        ax.set_xlabel("layer (input to output)", fontsize=9.5)
        ax.set_title(label or f"IoU > {r.iou_threshold:g}, top {r.quantile:.1%} of each unit, {r.n} images",
                     fontsize=10)
        ax.grid(axis="y", color="#e4e4e4", lw=0.8, zorder=0)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0][0].set_ylabel("detector units", fontsize=9.5)
    from matplotlib.patches import Patch

    handles = [Patch(color=colors[c], label=c) for c in concepts if c in used]
    if handles:
        axes[0][-1].legend(handles=handles, title="concept", fontsize=8.5, title_fontsize=9, frameon=False,
                           loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _outline(ax, mask: np.ndarray, color: str, lw: float) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=lw)


def units_figure(images: torch.Tensor, masks: torch.Tensor, *, labels: Sequence[str],
                 truth: torch.Tensor | None = None, dim: float = 0.45, title: str | None = None, cell: float = 1.25):
    """Each unit on the images it fires on most (Bau et al.'s unit figures): a row per unit, the image kept
    bright inside the unit's thresholded region ``M_k(x)`` (outlined in yellow) and dimmed to ``dim``
    outside, the concept's ground-truth mask outlined in blue when ``truth`` is given.

    Args:
        images: ``[U, m, C, H, W]`` in ``[0, 1]``: ``m`` images per unit.
        masks: ``[U, m, H, W]`` bool, the unit's region on each.
        labels: ``U`` row labels (e.g. ``"features.16 #45\\nmarker, IoU 0.21"``).
        truth: ``[U, m, H, W]`` bool, the unit's best concept's mask on each image, or ``None``.
    """
    n_units, m = images.shape[:2]
    margin, head = 1.3, (0.45 if title else 0.05)
    width, height = cell * m * 1.04 + margin, cell * n_units * 1.04 + head
    fig, axes = subplots(n_units, m, figsize=(width, height), squeeze=False,
                         gridspec_kw={"wspace": 0.04, "hspace": 0.04})
    fig.subplots_adjust(left=margin / width, right=0.995, bottom=0.02 / height, top=1 - head / height)
    for u in range(n_units):
        for j in range(m):
            ax = axes[u][j]
            region = masks[u, j].cpu().numpy().astype(bool)
            img = to_numpy_image(images[u, j])
            img = img if img.ndim == 3 else np.repeat(img[..., None], 3, -1)
            ax.imshow(np.where(region[..., None], img, img * dim), interpolation="nearest")
            if truth is not None:
                _outline(ax, truth[u, j].cpu().numpy().astype(bool), TRUTH, 0.9)
            _outline(ax, region, REGION, 1.1)
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
        axes[u][0].set_ylabel(labels[u], fontsize=8.5, rotation=0, ha="right", va="center", labelpad=6)
    if title:
        fig.suptitle(title, fontsize=10.5, y=1 - 0.08 / height)
    return fig
