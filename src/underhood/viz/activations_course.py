"""Figures of the lectures' activation experiments.

- :func:`invariance_figure`: Zeiler & Fergus's Fig. 5, one column per transformation: an example image
  transformed, the feature distance at chosen layers and the true-class probability against the amount.
- :func:`evolution_figure`: Zeiler & Fergus's Fig. 4, units by rows and training snapshots by columns.
- :func:`swiss_roll_figure`: a swiss roll in 3-D beside its 2-D layouts, coloured by the position on the roll.
- :func:`grid_mosaic` / :func:`tsne_grid_figure`: images placed on a regular grid from their 2-D embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .embedding import MUTED, class_colors
from .render import to_numpy_image
from .units import pattern_image

TITLES = {"translate": "Vertical translation", "scale": "Scale", "rotate": "Rotation"}
AXES = {"translate": "vertical shift (pixels)", "scale": "scale (ratio)", "rotate": "rotation (degrees)"}


def _style(ax) -> None:
    ax.grid(True, color="#eaeef2", linewidth=0.8)
    ax.tick_params(labelsize=8.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def invariance_figure(results: Sequence, *, layers: Sequence[str] | None = None, relative: bool = False,
                      strips: Sequence[tuple[torch.Tensor, Sequence[float]]] | None = None,
                      classes: Sequence[str] | None = None,
                      panel: tuple[float, float] = (3.4, 2.1)):
    """Zeiler & Fergus's Fig. 5: one column per :class:`~underhood.activations.invariance.Invariance`.

    Rows: ``strips[j] = (images [M, C, H, W], amounts)``, one image transformed at a few amounts for column
    ``j`` (when given; :meth:`Invariance.figure` makes them), then for each
    of ``layers`` (default: the first and the last measured, as the paper's layers 1 and 7) the distance
    of every image's features to its untransformed ones (``relative``: divided by their norm), then the
    probability of each image's true class. One line per image (the mean in black beyond 10 images).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    results = list(results)
    first = results[0]
    shown = list(layers) if layers is not None else list(dict.fromkeys([first.layers[0], first.layers[-1]]))
    strip = strips is not None
    nrows = len(shown) + 1 + strip
    heights = ([0.8] if strip else []) + [1.0] * (len(shown) + 1)
    fig = Figure(figsize=(panel[0] * len(results), panel[1] * sum(heights) + 0.9))
    grid = fig.add_gridspec(nrows, len(results), height_ratios=heights, hspace=0.42, wspace=0.3)
    n = first.labels.numel()
    many = n > 10
    palette = class_colors(max(n, 1)) if not many else None
    for col, res in enumerate(results):
        amounts = res.amounts.numpy()
        row = 0
        if strip:
            _strip(fig, grid[0, col], strips[col][0], strips[col][1], res.transform)
            row = 1
        series = [(f"{name}: {'relative ' if relative else ''}distance",
                   (res.relative if relative else res.distance)[name]) for name in shown]
        series.append(("p(true class)", res.probability))
        for r, (label, values) in enumerate(series):
            ax = fig.add_subplot(grid[row + r, col])
            v = values.numpy()
            if many:
                lo, hi = np.percentile(v, [25, 75], axis=1)
                ax.fill_between(amounts, lo, hi, color="#8c959f", alpha=0.3, linewidth=0)
            else:
                for i in range(n):
                    ax.plot(amounts, v[:, i], color=palette[i], linewidth=1.3, marker="o", markersize=2.5)
            if many:
                ax.plot(amounts, v.mean(1), color="black", linewidth=1.8)
            if label.startswith("p("):
                ax.set_ylim(-0.03, 1.03)
                ax.set_xlabel(AXES.get(res.transform, res.transform), fontsize=9)
            else:
                ax.set_ylim(bottom=0)
            if col == 0:
                ax.set_ylabel(label.replace(": ", "\n"), fontsize=9)
            if r == 0 and not strip:
                ax.set_title(TITLES.get(res.transform, res.transform), fontsize=11, fontweight="bold")
            _style(ax)
    if not many:
        names = [f"image {i + 1}" + (f" ({classes[int(first.labels[i])]})" if classes is not None else "")
                 for i in range(n)]
        handles = [Line2D([], [], color=palette[i], marker="o", markersize=4, linewidth=1.3) for i in range(n)]
        fig.legend(handles, names, loc="lower center", ncol=min(n, 5), frameon=False, fontsize=9,
                   bbox_to_anchor=(0.5, 0.0))
    else:
        fig.text(0.5, 0.01, f"black: mean over {n} images; grey band: their middle half", ha="center",
                 fontsize=9, color=MUTED)
    fig.subplots_adjust(left=0.1, right=0.98, top=1 - 0.35 / fig.get_figheight(), bottom=0.75 / fig.get_figheight())
    return fig


def _strip(fig, cell, images: torch.Tensor, amounts: Sequence[float], transform: str) -> None:
    """A row of transformed ``images`` ``[M, C, H, W]`` labelled with their ``amounts``, under the transform's title."""
    sub = cell.subgridspec(1, len(images), wspace=0.06)
    for j, (img, a) in enumerate(zip(images, amounts)):
        ax = fig.add_subplot(sub[0, j])
        arr = to_numpy_image(img)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{float(a):g}", fontsize=8, labelpad=1)
        if j == len(images) // 2:
            ax.set_title(TITLES.get(transform, transform), fontsize=11, fontweight="bold")


def evolution_figure(result, *, show: str = "both", cell: float = 0.95, title: str | None = None):
    """Zeiler & Fergus's Fig. 4: one row per unit, one column per snapshot; each cell the unit's strongest
    patch at that snapshot and (``show="both"``) its projection beside it (``"patch"`` / ``"pattern"``: one).

    Column heads give the epoch and the held-out accuracy of the snapshot.
    """
    from matplotlib.figure import Figure

    from ..core.errors import InputError

    if show not in ("both", "patch", "pattern"):
        raise InputError(f"show: expected 'both', 'patch' or 'pattern', got {show!r}")
    if show != "patch" and result.patterns is None:
        show = "patch"
    e, u = result.index.shape[:2]
    wide = 2 if show == "both" else 1
    fig = Figure(figsize=(cell * wide * e + 0.9, cell * u + 0.95))
    grid = fig.add_gridspec(u, e, wspace=0.08, hspace=0.08, left=0.9 / (cell * wide * e + 0.9), right=0.995,
                            top=1 - 0.62 / (cell * u + 0.95), bottom=0.05 / (cell * u + 0.95))
    for j in range(u):
        for i in range(e):
            ax = fig.add_subplot(grid[j, i])
            tiles = []
            if show in ("both", "patch"):
                tiles.append(result.patches[i, j, 0].float().clamp(0, 1))
            if show in ("both", "pattern"):
                tiles.append(pattern_image(result.patterns[i, j, 0]))
            if len(tiles) == 2:
                gap = torch.ones(tiles[0].shape[0], tiles[0].shape[1], max(1, tiles[0].shape[2] // 16))
                tiles = [tiles[0], gap, tiles[1]]
            arr = to_numpy_image(torch.cat(tiles, -1))
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("#d0d7de")
            if j == 0:
                acc = float(result.accuracy[i])
                head = f"epoch {int(result.epochs[i])}" + ("" if np.isnan(acc) else f"\n{acc:.0%} acc.")
                ax.set_title(head, fontsize=9)
            if i == 0:
                ax.set_ylabel(f"unit {int(result.units[j])}", fontsize=9)
    rule = {"deconvnet": "deconvnet projection", "guided": "guided-backprop pattern"}.get(result.rule or "",
                                                                                         "gradient")
    what = {"both": f"strongest patch and its {rule}", "patch": "strongest patch", "pattern": rule}[show]
    fig.suptitle(title or f"{result.layer}: each unit's {what} at each snapshot", fontsize=10.5,
                 y=1 - 0.08 / fig.get_figheight(), va="top")
    return fig


def swiss_roll_figure(points: torch.Tensor, position: torch.Tensor, layouts: dict[str, torch.Tensor], *,
                      scores: dict[str, str] | None = None, panel: float = 3.3):
    """The roll in 3-D (its first three coordinates) beside each 2-D layout of ``layouts`` (name -> ``[N, 2]``),
    every point coloured by ``position`` (its place along the roll, viridis); ``scores`` (name -> text)
    are written under the panels' titles."""
    from matplotlib.figure import Figure

    p = points.detach().float().cpu().numpy()
    t = position.detach().float().cpu().numpy()
    fig = Figure(figsize=(panel * (1 + len(layouts)), panel + 0.5))
    ax = fig.add_subplot(1, 1 + len(layouts), 1, projection="3d")
    ax.scatter(p[:, 0], p[:, 2] if p.shape[1] > 2 else np.zeros(len(p)), p[:, 1], c=t, cmap="viridis", s=5,
               linewidths=0)
    ax.set_title(f"swiss roll ({p.shape[1] - 2} noise dim.)", fontsize=11, fontweight="bold")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    ax.view_init(elev=12, azim=-65)
    scatter = None
    for i, (name, xy) in enumerate(layouts.items(), start=2):
        ax = fig.add_subplot(1, 1 + len(layouts), i)
        xy = xy.detach().float().cpu().numpy()
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=t, cmap="viridis", s=5, linewidths=0)
        ax.set_title(name, fontsize=11, fontweight="bold", pad=16 if scores and name in scores else 6)
        if scores and name in scores:
            ax.text(0.5, 1.015, scores[name], transform=ax.transAxes, ha="center", va="bottom", fontsize=9,
                    color=MUTED)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
        for spine in ax.spines.values():
            spine.set_color("#d0d7de")
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=fig.axes, fraction=0.02, pad=0.01)
        bar.set_label("position along the roll (t)", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    return fig


def grid_mosaic(images: torch.Tensor, cells: torch.Tensor, shape: tuple[int, int], *, gap: int = 1,
                fill: float = 1.0, frames: torch.Tensor | None = None, frame: int = 2) -> torch.Tensor:
    """``[C, H', W']`` mosaic: image ``i`` in grid cell ``cells[i] = (row, col)`` of a ``shape`` grid, ``gap``
    pixels apart, empty cells ``fill``; ``frames`` (``[N, 3]`` RGB in [0, 1]) draws a ``frame``-pixel border
    of that colour inside each image (the image must then be RGB or is repeated to RGB)."""
    images = images.detach().float().cpu()
    if frames is not None and images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    n, c, h, w = images.shape
    rows, cols = shape
    out = torch.full((c, rows * (h + gap) - gap, cols * (w + gap) - gap), fill)
    for i in range(n):
        r, q = int(cells[i, 0]), int(cells[i, 1])
        tile = images[i].clone()
        if frames is not None:
            colour = torch.as_tensor(frames[i], dtype=torch.float32)[:3, None, None]
            tile[:, :frame], tile[:, -frame:] = colour, colour
            tile[:, :, :frame], tile[:, :, -frame:] = colour, colour
        out[:, r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = tile
    return out


def tsne_grid_figure(images: torch.Tensor, cells: torch.Tensor, shape: tuple[int, int], *,
                     labels: torch.Tensor | None = None, classes: Sequence[str] | None = None,
                     title: str | None = None, inches: float = 7.5):
    """The "t-SNE grid": each image in its grid cell (from :func:`underhood.activations.embed.grid_cells`),
    framed in its class colour when ``labels`` are given (a legend names the classes)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    frames = None
    if labels is not None:
        labels = torch.as_tensor(labels).long().cpu()
        palette = class_colors(max(int(labels.max()) + 1, len(classes or [])))
        frames = torch.as_tensor(palette[labels.numpy()][:, :3], dtype=torch.float32)
    side = max(2, images.shape[-1] // 24)
    mosaic = grid_mosaic(images, cells, shape, frames=frames, frame=side)
    arr = to_numpy_image(mosaic)
    aspect = arr.shape[0] / arr.shape[1]
    legend = labels is not None
    fig = Figure(figsize=(inches, inches * aspect + 0.35 + (0.45 if legend else 0)))
    ax = fig.add_axes((0.01, (0.45 if legend else 0.02) / fig.get_figheight(), 0.98,
                       inches * aspect / fig.get_figheight()))
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="antialiased")
    ax.set_axis_off()
    if title:
        fig.text(0.5, 1 - 0.08 / fig.get_figheight(), title, ha="center", va="top", fontsize=11)
    if legend:
        present = sorted(set(labels.tolist()))
        names = [classes[c] if classes is not None and c < len(classes) else str(c) for c in present]
        handles = [Line2D([], [], marker="s", linestyle="", markersize=8, markerfacecolor="white",
                          markeredgewidth=2, markeredgecolor=palette[c]) for c in present]
        fig.legend(handles, names, loc="lower center", ncol=min(len(present), 8), frameon=False, fontsize=9.5,
                   handletextpad=0.2, columnspacing=1.0, bbox_to_anchor=(0.5, 0.0))
    return fig


__all__ = ["invariance_figure", "evolution_figure", "swiss_roll_figure", "grid_mosaic", "tsne_grid_figure"]
