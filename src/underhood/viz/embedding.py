"""Pictures of layer embeddings and of nearest neighbours.

- :func:`embedding_figure`: the same images laid out in 2-D at several layers side by side,
  coloured by class, each panel titled with its k-NN accuracy and trustworthiness, with a few
  image thumbnails spread over the layout (the t-SNE figures of the CNN lectures).
- :func:`neighbors_figure`: per query, its nearest images in pixel space, then at a layer
  (Krizhevsky et al. 2012, fig. 4), class names green when they match the query's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .render import to_numpy_image

SAME, OTHER, MUTED = "#1a7f37", "#cf222e", "#57606a"
METHOD_NAMES = {"tsne": "t-SNE", "pca": "PCA", "umap": "UMAP"}


def class_colors(n: int) -> np.ndarray:
    """``[n, 4]`` RGBA colours that tell ``n`` classes apart (tab10, tab20, then a sampled turbo)."""
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"](np.arange(n))
    if n <= 20:
        return colormaps["tab20"](np.arange(n))
    return colormaps["turbo"](np.linspace(0.05, 0.95, n))


def spread_points(xy: np.ndarray, m: int) -> list[int]:
    """``m`` indices of points far apart: greedy farthest-point sampling, from the point
    farthest from the centre (deterministic)."""
    m = min(m, len(xy))
    if m <= 0:
        return []
    chosen = [int(np.argmax(((xy - xy.mean(0)) ** 2).sum(1)))]
    d = ((xy - xy[chosen[0]]) ** 2).sum(1)
    while len(chosen) < m:
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, ((xy - xy[i]) ** 2).sum(1))
    return chosen


def _show(ax, image: torch.Tensor) -> None:
    arr = to_numpy_image(image)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")


def _thumbnails(ax, xy: np.ndarray, images: torch.Tensor, index: list[int], colors: list, size: float) -> None:
    """Each picked image ``size`` points wide, set off its point outward from the layout's centre
    (so the cluster under it stays visible) and tied to it by a thin line in its class colour."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    centre = (xy.min(0) + xy.max(0)) / 2
    for i, color in zip(index, colors):
        arr = to_numpy_image(images[i])
        # zoom is relative to the image's pixels at 72 dpi: ``size`` points wide whatever its resolution
        box = OffsetImage(arr, zoom=size / arr.shape[1], cmap="gray" if arr.ndim == 2 else None,
                          interpolation="nearest")
        box.get_children()[0].set_clim(0, 1)
        direction = xy[i] - centre
        direction = direction / max(float(np.hypot(*direction)), 1e-12)
        ab = AnnotationBbox(box, tuple(xy[i]), xybox=tuple(direction * 0.9 * size), boxcoords="offset points",
                            frameon=True, pad=0.1, zorder=3,
                            bboxprops={"edgecolor": color, "linewidth": 1.4, "facecolor": "white"},
                            arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.9, "shrinkA": 0,
                                        "shrinkB": 1})
        ab.set_in_layout(False)  # kept inside the panel by _fit, not by shrinking it
        ax.add_artist(ab)


def _fit(ax, xy: np.ndarray, pad: float) -> None:
    """Equal-aspect limits that keep every point ``pad`` points inside the panel (thumbnails too)."""
    box = ax.get_window_extent()
    dpi = ax.figure.dpi
    w, h = box.width * 72 / dpi, box.height * 72 / dpi  # the panel in points
    lo, hi = xy.min(0), xy.max(0)
    span = np.maximum(hi - lo, 1e-9)
    per_point = max(span[0] / max(w - 2 * pad, 1.0), span[1] / max(h - 2 * pad, 1.0))
    centre = (lo + hi) / 2
    ax.set_xlim(centre[0] - w * per_point / 2, centre[0] + w * per_point / 2)
    ax.set_ylim(centre[1] - h * per_point / 2, centre[1] + h * per_point / 2)


def embedding_figure(embedding, *, classes: Sequence[str] | None = None, images: torch.Tensor | None = None,
                     thumbnails: int = 0, title: str | None = None, panel: float = 3.6,
                     thumb_size: float = 20.0, ncols: int | None = None):
    """One scatter panel per layer of an :class:`~underhood.activations.embed.Embedding`, side by side.

    Points are coloured by class (a legend names them: ``classes[label]``, or the label
    itself); each panel is titled with its layer, the leave-one-out k-NN accuracy of the 2-D
    layout and its trustworthiness. With ``images`` (``[N, C, H, W]``, the embedded images in
    order) and ``thumbnails > 0``, that many images (``thumb_size`` points wide, framed in
    their class colour) are drawn on each panel next to points spread over the layout. Axes
    carry no ticks: t-SNE and UMAP coordinates have no units. ``ncols`` panels per row (default:
    all in one row; 2 lays four layers out as a readable square).

    Example:
        >>> fig = embedding_figure(e, classes=data.classes, images=data.images, thumbnails=12)  # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    layers = list(embedding.layers)
    n = len(next(iter(embedding.coords.values())))
    labels = embedding.labels
    ncols = len(layers) if ncols is None else max(1, min(int(ncols), len(layers)))
    nrows = -(-len(layers) // ncols)
    fig = Figure(figsize=(panel * ncols, (panel + 0.45) * nrows + 0.4))
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for ax in grid.flat[len(layers):]:
        fig.delaxes(ax)
    axes = list(grid.flat)[:len(layers)]
    if labels is not None:
        labels = labels.cpu().numpy()
        n_classes = max(int(labels.max()) + 1, len(classes) if classes is not None else 0)
        palette = class_colors(n_classes)
        point_colors = palette[labels]
    else:
        palette, point_colors = None, np.array([[0.2, 0.4, 0.7, 1.0]])
    size = float(np.clip(5000 / max(n, 1), 3, 40))
    for ax, name in zip(axes, layers):
        xy = embedding.coords[name].detach().float().cpu().numpy()
        order = np.random.default_rng(0).permutation(n)  # no class is hidden under the others by drawing order
        ax.scatter(xy[order, 0], xy[order, 1], s=size, c=point_colors[order] if labels is not None else
                   point_colors, linewidths=0, alpha=0.85, rasterized=n > 2000)
        scores = []
        if name in embedding.knn_accuracy:
            scores.append(f"{embedding.k}-NN acc. {embedding.knn_accuracy[name]:.0%}")
        if name in embedding.trustworthiness:
            scores.append(f"trust. {embedding.trustworthiness[name]:.2f}")
        ax.set_title(name, fontsize=12, fontweight="bold", pad=18 if scores else 6)
        if scores:
            ax.text(0.5, 1.015, "  ·  ".join(scores), transform=ax.transAxes, ha="center", va="bottom",
                    fontsize=10, color=MUTED)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#d0d7de")
        if images is not None and thumbnails > 0:
            pick = spread_points(xy, thumbnails)
            frames = [palette[labels[i]] if labels is not None else "#57606a" for i in pick]
            _thumbnails(ax, xy, images, pick, frames, size=thumb_size)
    method = METHOD_NAMES.get(embedding.method, embedding.method)
    fig.suptitle(title or f"{method} of {n} images at each layer", fontsize=13, y=0.995)
    if labels is not None:
        from matplotlib.lines import Line2D

        present = sorted(set(labels.tolist()))
        names = [classes[c] if classes is not None and c < len(classes) else str(c) for c in present]
        handles = [Line2D([], [], marker="o", linestyle="", markersize=7, color=palette[c]) for c in present]
        ncol = min(len(present), 10 if len(present) <= 10 else int(np.ceil(len(present) / 2)))
        rows = -(-len(present) // min(ncol, max(4, 3 * ncols)))  # a narrow figure wraps the legend, evenly
        ncol = -(-len(present) // rows)
        fig.legend(handles, names, loc="lower center", ncol=ncol, frameon=False, fontsize=10.5,
                   handletextpad=0.2, columnspacing=1.2, bbox_to_anchor=(0.5, 0.0))
        legend_rows = -(-len(present) // ncol)
        fig.tight_layout(rect=(0, 0.3 * legend_rows / fig.get_figheight(), 1, 1 - 0.4 / fig.get_figheight()),
                         w_pad=1.0, h_pad=1.2)
    else:
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()), w_pad=1.0, h_pad=1.2)
    shown = images is not None and thumbnails > 0
    for ax, name in zip(axes, layers):  # once the panels have their final size
        _fit(ax, embedding.coords[name].detach().float().cpu().numpy(), 1.45 * thumb_size + 4 if shown else 6.0)
    return fig


def _caption(ax, text: str, color: str, distance: float | None = None) -> None:
    ax.text(0.5, -0.04, text, transform=ax.transAxes, ha="center", va="top", fontsize=10, color=color,
            fontweight="bold" if color != MUTED else "normal")
    if distance is not None:
        ax.text(0.5, -0.23, f"{distance:.3g}", transform=ax.transAxes, ha="center", va="top", fontsize=9,
                color=MUTED)


def _frame(ax, color: str = "#24292f") -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(color)
        spine.set_linewidth(2)


def neighbors_figure(query_images: torch.Tensor, dataset_images, neighbors, *, classes: Sequence[str] | None = None,
                     labels: torch.Tensor | None = None, query_labels: torch.Tensor | None = None,
                     cell: float = 1.0, distances: bool = True):
    """Per query, one row: the query, its ``k`` nearest images in pixel space, then at the layer.

    Args:
        query_images: ``[Q, C, H, W]`` (or one ``[C, H, W]``), the queries of ``neighbors``.
        dataset_images: ``[N, C, H, W]``, or an ImageSet (its labels and class names are then
            the defaults of ``labels`` and ``classes``).
        neighbors: a :class:`~underhood.activations.neighbors.Neighbors`.
        classes: class names; ``labels``: ``[N]`` dataset labels; ``query_labels``: ``[Q]``.
            With labels, each neighbour is captioned with its class, green when it is the
            query's class and red otherwise (grey when the query's class is unknown).
        cell: inches per image.
        distances: print each neighbour's distance under its caption.

    Example:
        >>> nb = neighbors(model, data.images[:4], data, "fc2")                       # doctest: +SKIP
        >>> fig = neighbors_figure(data.images[:4], data, nb, query_labels=data.labels[:4])  # doctest: +SKIP
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    labels = getattr(dataset_images, "labels", None) if labels is None else labels
    classes = getattr(dataset_images, "classes", None) if classes is None else classes
    data = getattr(dataset_images, "images", dataset_images)
    query = query_images[None] if query_images.ndim == 3 else query_images
    q, k = neighbors.pixel_index.shape
    name = (lambda c: classes[c] if classes is not None else str(c))  # noqa: E731
    # columns: query | gap | k pixel-space neighbours | gap | k feature-space neighbours
    ratios = [1.0, 0.25] + [1.0] * k + [0.35] + [1.0] * k
    spaces = (("pixel space", 2, neighbors.pixel_index, neighbors.pixel_distance),
              (f"feature space at {neighbors.layer}", 3 + k, neighbors.feature_index, neighbors.feature_distance))
    below = 0.45 if distances else 0.28  # caption room under each row, in cells
    height = q * cell * (1 + below) + 0.55
    fig = Figure(figsize=(cell * sum(ratios), height))
    grid = fig.add_gridspec(q, len(ratios), width_ratios=ratios, wspace=0.08, hspace=below, left=0.01,
                            right=0.99, top=1 - 0.5 / height, bottom=below * cell / height)
    heads = {}
    for r in range(q):
        ax = fig.add_subplot(grid[r, 0])
        _show(ax, query[r])
        _frame(ax)
        truth = int(query_labels[r]) if query_labels is not None else None
        if truth is not None:
            _caption(ax, name(truth), "#24292f")
        heads.setdefault("query", (ax, ax))
        for head, first, index, dist in spaces:
            row = []
            for j in range(k):
                ax = fig.add_subplot(grid[r, first + j])
                i = int(index[r, j])
                _show(ax, data[i])
                ax.set_axis_off()
                row.append(ax)
                d = float(dist[r, j]) if distances else None
                if labels is not None:
                    lab = int(labels[i])
                    _caption(ax, name(lab), MUTED if truth is None else SAME if lab == truth else OTHER, d)
                elif d is not None:
                    _caption(ax, f"{d:.3g}", MUTED)
            heads.setdefault(head, (row[0], row[-1]))
    # headers over the first row (a rule under the two spaces' headers), and a dashed rule between the spaces
    top = max(first.get_position().y1 for first, _ in heads.values())
    lift = 1 / height  # one inch in figure coordinates
    for text, (first, last) in heads.items():
        x0, x1 = first.get_position().x0, last.get_position().x1
        fig.text((x0 + x1) / 2, top + 0.12 * lift, text, ha="center", va="bottom", fontsize=11, fontweight="bold")
        if first is not last:
            fig.add_artist(Line2D([x0, x1], [top + 0.06 * lift] * 2, color="#8c959f", linewidth=1))
    (_, pixel_last), (feature_first, _) = heads[spaces[0][0]], heads[spaces[1][0]]
    sep = (pixel_last.get_position().x1 + feature_first.get_position().x0) / 2
    fig.add_artist(Line2D([sep, sep], [0.01, top], color="#8c959f", linewidth=1, linestyle=(0, (4, 3))))
    return fig


__all__ = ["embedding_figure", "neighbors_figure", "class_colors", "spread_points"]
