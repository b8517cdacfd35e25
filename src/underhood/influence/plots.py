"""The lecture figure of an influence result: a query, its most helpful and most harmful training images.

:func:`influence_plot` reads the images back from the data the scores were computed on and draws them with
:func:`underhood.viz.influence.influence_figure` (:meth:`InfluenceResult.figure` calls it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.errors import InputError


def _take(data: Any, name: str, idx: Sequence[int]) -> torch.Tensor:
    """The inputs at ``idx`` (CPU) of an ImageSet, an ``(inputs, labels)`` pair, a tensor or a Dataset of pairs."""
    if isinstance(data, torch.Tensor):
        x = data
    elif hasattr(data, "images") and hasattr(data, "labels"):
        x = data.images
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x = data[0]
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        if max(idx) >= len(data):
            raise InputError(f"{name}: index {max(idx)} is outside its {len(data)} examples; pass the data the "
                             "scores were computed on")
        return torch.stack([torch.as_tensor(data[i][0]) for i in idx]).detach().cpu()
    else:
        raise InputError(f"{name}: expected the data the scores were computed on (an ImageSet, an (images, labels) "
                         f"pair or a Dataset), got {type(data).__name__}")
    if max(idx) >= len(x):
        raise InputError(f"{name}: index {max(idx)} is outside its {len(x)} examples; pass the data the scores "
                         "were computed on")
    x = x[torch.as_tensor(list(idx), device=x.device)].detach().cpu()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise InputError(f"{name}: the figure draws images [N, C, H, W] with 1 or 3 channels, got inputs of shape "
                         f"{tuple(x.shape[1:])} per example; pass the images the scores were computed from")
    return x


def _classes(*sources: Any) -> list[str] | None:
    for s in sources:
        names = getattr(s, "classes", None)
        if names:
            return [str(c) for c in names]
    return None


def _name(classes: Sequence[str] | None, k: int | str) -> str:
    if isinstance(k, str):
        return k
    return classes[k] if classes is not None and 0 <= k < len(classes) else str(k)


def influence_plot(result: Any, train: Any, queries: Any, *, q: int = 0, k: int = 8,
                   actual: Mapping[int, float] | None = None, actual_harmful: Mapping[int, float] | None = None,
                   predicted: int | str | None = None, classes: Sequence[str] | None = None,
                   title: str | None = None):
    """The lecture figure (Koh & Liang 2017) for query ``q`` of an :class:`~underhood.influence.InfluenceResult`.

    The query with its label and the model's prediction; its ``k`` most helpful training images (largest
    scores: removing them would raise the query's loss most) and its ``k`` most harmful (most negative), each
    with its training label and score. ``actual`` gives, for positions among the helpful images (0 = the most
    helpful), the loss change measured by retraining without them (:func:`~underhood.influence.retrain.loo_change`),
    written beside the prediction.

    Args:
        result: the influence result.
        train, queries: the data the scores were computed on: ImageSets, ``(images, labels)`` pairs or Datasets
            (``queries`` may be a tensor of images). Class names come from an ImageSet's ``classes`` (or
            ``classes``).
        q: the query; k: images per row group.
        actual, actual_harmful: ``{position: actual loss change}`` among the helpful / harmful images shown.
        predicted: the model's predicted class for the query (index or name); default ``result``'s
            ``query_predictions`` when it has them.
        title: the figure's title.

    Returns:
        A matplotlib ``Figure``.

    Example:
        >>> r = influence(model, train, queries, params="classifier", method="exact")  # doctest: +SKIP
        >>> fig = influence_plot(r, train, queries, q=0, k=8)                          # doctest: +SKIP
    """
    from ..viz.influence import influence_figure

    if train is None or queries is None:
        raise InputError("train, queries: the figure needs the images the scores were computed on; pass "
                         "result.figure(train, queries)")
    help_idx, harm_idx = result.helpful(q, k).tolist(), result.harmful(q, k).tolist()   # checks q and k
    q = q % len(result.scores)
    names = list(classes) if classes is not None else _classes(train, queries)
    query = _take(queries, "queries", [q])[0]
    train_labels, row = result.train_labels, result.scores[q]
    if predicted is None:
        preds = result.query_predictions
        predicted = None if preds is None else int(preds[q])
    return influence_figure(
        query, _name(names, int(result.query_labels[q])), None if predicted is None else _name(names, predicted),
        _take(train, "train", help_idx), row[help_idx], [_name(names, int(train_labels[i])) for i in help_idx],
        _take(train, "train", harm_idx), row[harm_idx], [_name(names, int(train_labels[i])) for i in harm_idx],
        actual=actual, actual_harmful=actual_harmful, title=title, method=result.method)



def _mosaic(ax, images: torch.Tensor, titles: Sequence[str], colors: Sequence[str], ncols: int, cell: float,
            lines: int) -> None:
    """``images`` as one mosaic in ``ax`` (one axes for all: fast to draw), each with its title above it."""
    import math

    import numpy as np

    from ..viz.render import to_numpy_image

    tiles = [to_numpy_image(im.clamp(0, 1)) for im in images]
    tiles = [np.repeat(t[..., None], 3, 2) if t.ndim == 2 else t for t in tiles]
    h, w = tiles[0].shape[:2]
    gap = max(1, round(0.08 * w))
    per_inch = (w + gap) / cell
    band = math.ceil((lines * 7.5 * 1.3 / 72 + 0.05) * per_inch)
    row, col = band + h + gap, w + gap
    nrows = math.ceil(len(tiles) / ncols)
    mosaic = np.ones((nrows * row - gap, ncols * col - gap, 3))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        mosaic[r * row + band:r * row + band + h, c * col:c * col + w] = np.clip(tile, 0, 1)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for i, text in enumerate(titles):
        r, c = divmod(i, ncols)
        ax.text(c * col + w / 2, r * row + band - 0.03 * per_inch, text, ha="center", va="bottom", fontsize=7.5,
                color=colors[i], linespacing=1.2)


def self_influence_plot(result: Any, train: Any, *, k: int = 16, predicted: torch.Tensor | None = None,
                        classes: Sequence[str] | None = None, ncols: int = 8, title: str | None = None):
    """The mislabel finder's figure: the ``k`` training images with the highest self-influence, and beside them
    (below) the ``k`` with the highest training loss, the usual baseline ranking.

    Each image is titled with its rank and value, its training label and, when ``predicted`` (the model's
    class for every training image) is given, the prediction; red when the two disagree (the first to check).

    Args:
        result: a :class:`~underhood.influence.SelfInfluenceResult`.
        train: the training data the scores were computed on (ImageSet, ``(images, labels)`` or Dataset).
        k: images per ranking; predicted: ``[N]`` predicted classes; classes: class names (default the
            ImageSet's).
        ncols: images per row; title: the figure's title.

    Returns:
        A matplotlib ``Figure`` with two axes (self-influence, training loss).
    """
    from ..core.checks import positive_int
    from ..viz.adversarial import BAD, INK
    from ..viz.render import new_figure

    k = min(positive_int("k", k), len(result.scores))
    ncols = min(positive_int("ncols", ncols), k)
    names = list(classes) if classes is not None else _classes(train)
    rankings = (("self-influence", result.top(k).tolist(), result.scores),
                ("training loss (baseline)", torch.topk(result.losses, k).indices.tolist(), result.losses))
    cell = min(1.05, 8.4 / ncols)
    lines = 3 if predicted is not None else 2
    rows = -(-k // ncols)
    band = lines * 7.5 * 1.3 / 72 + 0.05
    block = rows * (cell + band) + 0.35          # inches per ranking: its rows and its heading
    width, top = ncols * cell * 1.08, 0.45
    fig = new_figure(figsize=(width, top + 2 * block))
    for g, (what, idx, values) in enumerate(rankings):
        y0 = top + g * block + 0.3
        ax = fig.add_axes((0.0, 1 - (y0 + block - 0.35) / (top + 2 * block), 1.0, (block - 0.35) / (top + 2 * block)))
        titles, colors = [], []
        for r, i in enumerate(idx):
            label = _name(names, int(result.labels[i]))
            text = f"#{r + 1}: {float(values[i]):.2g}\n{label}"
            wrong = False
            if predicted is not None:
                guess = _name(names, int(predicted[i]))
                wrong = guess != label
                text += f"\npred {guess}"
            titles.append(text)
            colors.append(BAD if wrong else INK)
        _mosaic(ax, _take(train, "train", idx), titles, colors, ncols, cell, lines)
        fig.text(0.01, 1 - (y0 - 0.05) / (top + 2 * block), f"{len(idx)} highest {what}", ha="left", va="bottom",
                 fontsize=9.5, fontweight="bold", color=INK)
    note = "red: the model's prediction differs from the training label" if predicted is not None else ""
    fig.suptitle(title or f"Training images to inspect first ({result.method}, {len(result.scores)} images)"
                 + (f"\n{note}" if note else ""), fontsize=10.5, y=1 - 0.06 / (top + 2 * block), va="top")
    return fig


__all__ = ["influence_plot", "self_influence_plot"]
