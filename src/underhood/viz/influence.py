"""Figures of the influence family: which training images made a prediction, and how far to trust the scores.

- :func:`influence_figure`: the lecture figure (Koh & Liang 2017): a query, its most helpful training images
  (green frames) and its most harmful ones (red frames), each with its label and score, and for a few of them
  the loss change actually measured by retraining beside the prediction.
- :func:`mislabel_figure`: the mislabel finder: share of the flipped labels found against the share of the
  training set inspected, one curve per ranking, against random inspection and a perfect ranking.
- :func:`validation_scatter`: predicted against actual leave-one-out loss change, one panel per method.
- :func:`dog_fish_figure`: Koh & Liang's Fig. 4: influence against pixel distance to the query, per model.
- :func:`lds_figure`: the linear datamodeling score of each method, with its interval.

Every function takes plain tensors, lists and numbers (no result object): a score is always the predicted
change of the query's loss when that training image is removed, positive = the image helped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from ..core.errors import InputError
from .adversarial import BAD, GOOD, INK, MUTED
from .render import colormap, new_figure, subplots, to_numpy_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Numbers = torch.Tensor | np.ndarray | Sequence[float]  # a 1-D tensor, array or list of numbers

OTHER_CLASS = "#bc4c00"  # a training label that is not the query's: neither "right" (green) nor "wrong" (red)
ROW_COLS = 8  # images per row of the lecture figure; more wrap onto further rows


def signed(value: float) -> str:
    """A score in a short signed form: ``+3.1e-3``, ``-1.2e+1``, ``0``."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    mantissa, exponent = f"{value:+.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _vector(name: str, values, n: int | None = None, what: str = "") -> np.ndarray:
    """``values`` (a tensor, array or sequence of numbers) as a finite 1-D float array, of length ``n`` if given."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected numbers (a 1-D tensor or a list of floats), got "
                         f"{type(values).__name__}") from None
    if arr.ndim != 1:
        raise InputError(f"{name}: expected a 1-D tensor or list of numbers, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise InputError(f"{name}: expected {n} values{what}, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: {int((~np.isfinite(arr)).sum())} values are NaN or infinite; give finite numbers")
    return arr


def _images(name: str, images, *, single: bool = False) -> torch.Tensor:
    """``images`` as ``[N, C, H, W]`` (``[C, H, W]`` with ``single``) float on the CPU, C in (1, 3)."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name}: expected a tensor of images, got {type(images).__name__}")
    want = 3 if single else 4
    x = images[0] if single and images.ndim == 4 and len(images) == 1 else images
    if x.ndim != want or x.shape[-3] not in (1, 3) or (not single and len(x) == 0):
        form = "[C, H, W]" if single else "[N, C, H, W] with N >= 1"
        raise InputError(f"{name}: expected images {form} with 1 or 3 channels, got shape {tuple(images.shape)}")
    return x.detach().float().cpu()


def _labels(name: str, labels, n: int, what: str = "") -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise InputError(f"{name}: expected a list of {n} class names{what}, got {type(labels).__name__}")
    if len(labels) != n:
        raise InputError(f"{name}: expected {n} class names{what}, got {len(labels)}")
    return [str(s) for s in labels]


def _show(ax, image: torch.Tensor, frame: str | None = None, width: float = 2.0) -> None:
    """An image without ticks, framed in ``frame`` (no frame when ``None``)."""
    arr = to_numpy_image(image.clamp(0, 1))
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_color(frame)
            spine.set_linewidth(width)


def _lines(ax, lines: Sequence[tuple[str, str, bool]], fontsize: float = 7.5, gap: float = 2.0) -> None:
    """Caption lines ``(text, colour, bold)`` under an image, one under the other."""
    step = fontsize * 1.25
    for i, (text, color, bold) in enumerate(lines):
        ax.annotate(text, (0.5, 0), xycoords="axes fraction", xytext=(0, -gap - i * step), textcoords="offset points",
                    ha="center", va="top", fontsize=fontsize, color=color, fontweight="bold" if bold else "normal")


def _fit_text(text: str, inches: float, fontsize: float = 7.5) -> str:
    """``text`` cut (with an ellipsis) to about the width of ``inches`` at ``fontsize`` (bold)."""
    room = max(3, int(inches * 72 / (0.62 * fontsize)))
    return text if len(text) <= room else text[:room - 1] + "…"


def _actual(name: str, actual: Mapping[int, float] | None, k: int) -> dict[int, float]:
    if actual is None:
        return {}
    if not isinstance(actual, Mapping):
        raise InputError(f"{name}: expected a dict {{position: actual loss change}}, got {type(actual).__name__}")
    out = {}
    for pos, value in actual.items():
        if isinstance(pos, bool) or not isinstance(pos, (int, np.integer)) or not 0 <= pos < k:
            raise InputError(f"{name}: position {pos!r} is not one of the {k} images shown (0..{k - 1})")
        out[int(pos)] = float(_vector(f"{name}[{pos}]", [value])[0])
    return out


def influence_figure(query: torch.Tensor, query_label: str, query_pred: str | None, helpful: torch.Tensor,
                     helpful_scores: Numbers, helpful_labels: Sequence[str], harmful: torch.Tensor,
                     harmful_scores: Numbers, harmful_labels: Sequence[str], *,
                     actual: Mapping[int, float] | None = None, actual_harmful: Mapping[int, float] | None = None,
                     title: str | None = None, method: str | None = None) -> Figure:
    """The lecture figure (Koh & Liang 2017, Fig. 1): a query and the training images that most helped and
    most hurt its prediction.

    The query is drawn on the left with its label and the model's prediction (green when right, red when
    wrong). On the right, a row of the most helpful training images (green frames) and a row of the most
    harmful (red frames), more than 8 wrapping onto further rows, each captioned with its training label and
    its score: the predicted change of the query's loss if that image were removed from training (positive:
    it helped). Labels other than the query's class are written in orange, so the surprising cases stand
    out: a helpful image of another class (orange under green), a harmful one of the query's class (black
    under red). Where the loss change measured by retraining without the image is known (``actual``), it is
    written under the prediction.

    Args:
        query: ``[C, H, W]`` in [0, 1] (C = 1 or 3).
        query_label: the query's class name.
        query_pred: the class the model predicts for it, or ``None``.
        helpful: ``[k, C, H, W]``, the most helpful training images, most helpful first.
        helpful_scores: their ``k`` scores (tensor or list).
        helpful_labels: their ``k`` class names.
        harmful: ``[k', C, H, W]``, the most harmful, most harmful (most negative score) first.
        harmful_scores: their ``k'`` scores.
        harmful_labels: their ``k'`` class names.
        actual: position in ``helpful`` (0..k-1) -> actual loss change after retraining without it.
        actual_harmful: the same for positions in ``harmful``.
        title: the figure's title (default: says what the scores are; names ``method`` when given).
        method: the estimator, for the default title.

    Returns:
        A matplotlib ``Figure`` with one axes per image (the query first, then helpful, then harmful).

    Example:
        >>> fig = influence_figure(x, "circle", "circle", train[h], s[h], names_h, train[b], s[b], names_b,
        ...                        actual={0: 0.011, 1: 0.004, 2: 0.003})  # doctest: +SKIP
    """
    query = _images("query", query, single=True)
    groups = [_group("helpful", helpful, helpful_scores, helpful_labels, actual, "actual"),
              _group("harmful", harmful, harmful_scores, harmful_labels, actual_harmful, "actual_harmful")]
    ncols = min(ROW_COLS, max(len(g.images) for g in groups))
    cell = min(1.1, 6.6 / ncols)  # inches per image: 8 across fit ~9 inches with the query
    gx, line = 0.08, 7.5 * 1.25 / 72
    narrow = ncols * cell + (ncols - 1) * gx < 7.0  # headers and notes broken onto more lines
    notes = ["orange label: not the query's class",
             "score: predicted change of the query's loss if the image were removed"]
    if any(g.actual for g in groups):
        notes.append("actual: the change measured by retraining without it")
    if not narrow:
        notes = [notes[0], ";  ".join(notes[1:])]
    qw, left, sep, top = max(1.15, min(1.6 * cell, 1.45)), 0.1, 0.32, 0.45
    width = left + qw + sep + max(ncols * cell + (ncols - 1) * gx, 4.2) + 0.1  # room for the notes
    layout, y = [], top  # (group, row, y of the row's top) in inches from the top
    for group in groups:
        y += 0.27 + (0.16 if narrow else 0)
        for r in range(math.ceil(len(group.images) / ncols)):
            layout.append((group, r, y))
            shown = range(r * ncols, min(len(group.images), (r + 1) * ncols))
            y += cell + (3 if any(p in group.actual for p in shown) else 2) * line + 0.12
        y += 0.1
    foot = 0.14 + len(notes) * 1.3 * line
    height = max(y + foot, top + qw + 5 * line + foot)
    fig = new_figure(figsize=(width, height))

    def place(x: float, y_top: float, w: float, h: float):  # an axes at inches from the top left
        return fig.add_axes((x / width, 1 - (y_top + h) / height, w / width, h / height))

    from matplotlib.lines import Line2D

    body = (top, y - 0.1)
    _query_panel(place(left, sum(body) / 2 - (qw + 2 * line) / 2, qw, qw), query, query_label, query_pred,
                 qw + sep)
    rule = (left + qw + sep / 2) / width
    fig.add_artist(Line2D([rule, rule], [1 - body[1] / height, 1 - body[0] / height], color="#d0d7de", lw=1))
    x0 = left + qw + sep
    for group, r, y_row in layout:
        if r == 0:
            n = len(group.images)
            sign, change = (">", "raise") if group.key == "helpful" else ("<", "lower")
            text = (f"{n} most {group.key} training image{'s' * (n > 1)}" + ("\n" if narrow else "  ")
                    + f"(score {sign} 0: removing it would {change} the query's loss)")
            fig.text(x0 / width, 1 - (y_row - 0.07) / height, text, ha="left", va="bottom", fontsize=9,
                     fontweight="bold", color=group.color)
        for p in range(r * ncols, min(len(group.images), (r + 1) * ncols)):
            ax = place(x0 + (p - r * ncols) * (cell + gx), y_row, cell, cell)
            _training_cell(ax, group, p, query_label, cell + gx)
    for i, note in enumerate(reversed(notes)):
        fig.text(x0 / width, (0.12 + i * 1.3 * line) / height, note, ha="left", va="bottom", fontsize=7.5,
                 color=OTHER_CLASS if note is notes[0] else MUTED)
    default = "Which training images made this prediction" + (f" ({method})" if method else "")
    fig.suptitle(title or default, fontsize=11, y=1 - 0.1 / height, va="top")
    return fig


class _Group(NamedTuple):
    """One row group of the lecture figure, checked: helpful or harmful images and what is written under them."""

    key: str
    images: torch.Tensor
    scores: np.ndarray
    labels: list[str]
    actual: dict[int, float]
    color: str


def _group(key: str, images, scores, labels, actual, actual_name: str) -> _Group:
    images = _images(key, images)
    k, what = len(images), f" (one per image in {key})"
    return _Group(key, images, _vector(f"{key}_scores", scores, k, what), _labels(f"{key}_labels", labels, k, what),
                  _actual(actual_name, actual, k), GOOD if key == "helpful" else BAD)


def _query_panel(ax, query: torch.Tensor, label: str, pred: str | None, room: float) -> None:
    """The query, titled, with its label and the prediction (green when right, red when wrong) under it; a
    caption longer than ``room`` inches goes on two lines."""
    _show(ax, query, INK, 1.2)
    ax.set_title("query", fontsize=10, fontweight="bold", color=INK, pad=4)
    caption = []
    for head, value, color, bold in (("label", label, INK, False),
                                     ("predicted", pred, GOOD if pred == label else BAD, True)):
        if value is not None:
            text = f"{head}: {value}"
            long = len(text) > room * 72 / (0.62 * 9)
            caption += [(head + ":", color, bold), (value, color, bold)] if long else [(text, color, bold)]
    _lines(ax, caption, fontsize=9)


def _training_cell(ax, group: _Group, p: int, query_label: str, room: float) -> None:
    """Training image ``p`` of ``group`` in its group's frame: its label (orange when not the query's class),
    its score, and the retrained loss change when known."""
    _show(ax, group.images[p], group.color)
    same = group.labels[p] == query_label
    caption = [(_fit_text(group.labels[p], room), INK if same else OTHER_CLASS, not same)]
    if p in group.actual:
        caption += [(f"pred {signed(group.scores[p])}", INK, False), (f"actual {signed(group.actual[p])}", INK, True)]
    else:
        caption.append((signed(group.scores[p]), INK, False))
    _lines(ax, caption)


def _interp(x: np.ndarray, y: np.ndarray, at: float) -> float:
    order = np.argsort(x, kind="stable")
    return float(np.interp(at, x[order], y[order]))


def _spread(ys: Sequence[float], gap: float, low: float, high: float) -> list[float]:
    """Label heights near ``ys`` at least ``gap`` apart, inside ``[low, high]`` (same order as ``ys``)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    out = [0.0] * len(ys)
    prev = -math.inf
    for i in order:
        out[i] = prev = max(ys[i], prev + gap, low)
    over = max(out) - high if ys else 0
    if over > 0:
        prev = math.inf
        for i in reversed(order):
            out[i] = prev = min(out[i] - over, prev - gap) if prev < math.inf else out[i] - over
    return out


def mislabel_figure(fraction: Numbers, recalls: Mapping[str, Numbers], *, auc: Mapping[str, float] | None = None,
                    flipped_share: float, mark: float = 0.1, title: str | None = None) -> Figure:
    """The mislabel finder's curve: the share of the flipped labels found against the share of the training
    set inspected, most suspicious first, one line per ranking (e.g. self-influence, training loss).

    Inspecting at random finds them in proportion (the diagonal); a perfect ranking finds them all once
    ``flipped_share`` of the set is inspected (the thin dashed line). The share found at ``mark`` (10%) is
    marked on each curve and written beside it; the ROC AUC of each ranking, when given, is in the legend.

    Args:
        fraction: ``[m]`` shares of the training set inspected, in [0, 1].
        recalls: ranking name -> ``[m]`` share of the flipped labels found at each ``fraction``. A ranking
            named ``"random"`` is drawn as the muted baseline instead of the diagonal.
        auc: ranking name -> ROC AUC of its scores as a detector of the flipped labels.
        flipped_share: the share of the training labels that were flipped, in (0, 1].
        mark: the share inspected to highlight.
        title: the figure's title (default: names ``flipped_share``).

    Returns:
        A matplotlib ``Figure`` with one axes.
    """
    from ..core.checks import number

    x = _vector("fraction", fraction)
    if len(x) < 2 or x.min() < 0 or x.max() > 1:
        raise InputError("fraction: expected at least 2 shares of the training set inspected, in [0, 1]")
    share = number("flipped_share", flipped_share, low=0.0, strict=True, high=1.0)
    mark = number("mark", mark, low=0.0, strict=True, high=1.0)
    if not isinstance(recalls, Mapping) or not recalls:
        raise InputError("recalls: expected a dict {ranking name: recall at each fraction}, with at least one entry")
    curves = {name: _vector(f"recalls[{name!r}]", r, len(x), " (one per fraction)") for name, r in recalls.items()}
    for name, r in curves.items():
        if r.min() < 0 or r.max() > 1:
            raise InputError(f"recalls[{name!r}]: expected shares of the flipped labels found, in [0, 1]")
    auc = dict(auc or {})
    unknown = [n for n in auc if n not in curves]
    if unknown:
        raise InputError(f"auc: {unknown[0]!r} is not a ranking in recalls ({', '.join(curves)})")
    fig, ax = subplots(figsize=(5.6, 3.9))
    grid = np.linspace(0, x.max(), 201)
    ax.plot(grid * 100, np.minimum(1, grid / share) * 100, color=MUTED, lw=0.9, ls=(0, (4, 3)),
            label="perfect ranking")
    if "random" not in curves:
        ax.plot(grid * 100, grid * 100, color=MUTED, lw=1.2, ls=":", label="random (expected)")
    colors = colormap("tab10")
    at_mark, i = [], 0
    for name, r in curves.items():
        muted = name == "random"
        color = MUTED if muted else colors(i % 10)
        i += 0 if muted else 1
        found = _interp(x, r, mark) * 100 if x.min() <= mark <= x.max() else None
        facts = ([f"{found:.0f}% at {mark:.0%}"] if found is not None else []) + \
            ([f"ROC AUC {auc[name]:.3f}"] if name in auc else [])
        label = name + (f": {', '.join(facts)}" if facts else "")
        ax.plot(x * 100, r * 100, color=color, lw=1.2 if muted else 1.8, ls=":" if muted else "-", label=label)
        if found is not None:
            at_mark.append((found, color))
    if at_mark:
        ax.axvline(mark * 100, color=INK, lw=0.8, alpha=0.5, zorder=0)
        ax.text(mark * 100, 101.5, f"{mark:.0%} inspected", ha="center", va="bottom", fontsize=8, color=INK,
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"}, zorder=5)
        heights = _spread([v for v, _ in at_mark], 6.5, 3, 97)
        for (v, color), h in zip(at_mark, heights):
            ax.plot([mark * 100], [v], "o", ms=5, color=color, mec="white", mew=0.8, zorder=4)
            ax.annotate(f"{v:.0f}%", (mark * 100, v), xytext=(mark * 100 + 2 * x.max(), h), textcoords="data",
                        fontsize=8.5, fontweight="bold", color=color, va="center", ha="left", zorder=5,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9},
                        arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6, "shrinkA": 0, "shrinkB": 3})
    ax.set_xlim(0, x.max() * 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("training set inspected, most suspicious first (%)", fontsize=9)
    ax.set_ylabel("flipped labels found (%)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=True, framealpha=0.9, edgecolor="none", loc="lower right")
    ax.set_title(title or f"Finding flipped labels ({share:.0%} of the training labels flipped)", fontsize=10,
                 pad=14)
    fig.tight_layout(pad=0.4)
    return fig


def _power(top: float) -> float:
    """The power of ten that brings ``top`` (a largest magnitude) into [1, 10), or 1 when it is in [0.1, 1000)."""
    return 1.0 if top == 0 or 0.1 <= top < 1000 else 10.0 ** math.floor(math.log10(top))


def _scaled(values: np.ndarray) -> tuple[np.ndarray, str]:
    """``values`` in a unit that keeps tick labels short, and that unit for the axis label (`` (×1e-3)``):
    the unit is written in the label, never as matplotlib's offset text, which collides with titles."""
    scale = _power(float(np.abs(values).max()) if len(values) else 0.0)
    return values / scale, f" (×1e{round(math.log10(scale))})" if scale != 1 else ""


def _pairs(predicted, actual) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if isinstance(predicted, Mapping):
        if actual is not None:
            raise InputError("actual: give it only with a single method's predicted tensor; with a dict of methods "
                             "pass {name: (predicted, actual)}")
        if not predicted:
            raise InputError("predicted: expected at least one method {name: (predicted, actual)}")
        out = {}
        for name, pair in predicted.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InputError(f"predicted[{name!r}]: expected a pair (predicted, actual)")
            p = _vector(f"predicted[{name!r}]", pair[0])
            out[str(name)] = (p, _vector(f"actual[{name!r}]", pair[1], len(p), " (one per predicted value)"))
        return out
    if actual is None:
        raise InputError("actual: expected the measured loss changes, one per predicted value")
    p = _vector("predicted", predicted)
    return {"": (p, _vector("actual", actual, len(p), " (one per predicted value)"))}


def _stats(name: str, values, methods: list[str], single: bool) -> dict[str, float]:
    """``pearson`` / ``spearman`` as ``{method: value}``: a number for a single method, else a dict over
    (some of) the methods."""
    if values is None:
        return {}
    if single:
        if isinstance(values, Mapping):
            raise InputError(f"{name}: with one method's predicted tensor, expected a number, got a dict")
        return {methods[0]: float(_vector(name, [values])[0])}
    if not isinstance(values, Mapping):
        raise InputError(f"{name}: with several methods, expected a dict {{method: {name}}}")
    unknown = [k for k in values if k not in methods]
    if unknown:
        raise InputError(f"{name}: {unknown[0]!r} is not one of the methods drawn ({', '.join(methods)})")
    return {k: float(_vector(f"{name}[{k!r}]", [v])[0]) for k, v in values.items()}


def validation_scatter(predicted: Numbers | Mapping[str, tuple[Numbers, Numbers]], actual: Numbers | None = None, *,
                       label: str = "influence", pearson: float | Mapping[str, float] | None = None,
                       spearman: float | Mapping[str, float] | None = None, title: str | None = None,
                       ncols: int = 3) -> Figure:
    """Predicted against actual leave-one-out loss change: one small panel per method, shared symmetric axes.

    Each point is one training image removed: x its score (the predicted change of the query's loss), y the
    change measured by retraining without it. A perfect estimator puts every point on the dashed ``y = x``
    line. Points predicted helpful are green, harmful red. Pearson and Spearman correlations, when given, are
    written in each panel's title.

    Args:
        predicted: ``[m]`` predicted loss changes of one method, or a dict ``{method: (predicted, actual)}``.
        actual: ``[m]`` actual loss changes (only with a single method's ``predicted``).
        label: the method's name (single method).
        pearson: the Pearson correlation (single method) or a dict ``{method: value}``.
        spearman: the same for Spearman's rank correlation.
        title: the figure's title.
        ncols: panels per row.

    Returns:
        A matplotlib ``Figure``, one axes per method.

    Example:
        >>> fig = validation_scatter({"exact": (p1, a), "cg": (p2, a)}, pearson={"exact": 0.99, "cg": 0.98})
        ...                                                                        # doctest: +SKIP
    """
    from ..core.checks import positive_int

    pairs = _pairs(predicted, actual)
    single = "" in pairs
    if single:
        pairs = {str(label): pairs[""]}
    r, rho = (_stats(k, v, list(pairs), single) for k, v in (("pearson", pearson), ("spearman", spearman)))
    ncols = min(positive_int("ncols", ncols), len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    panel = 3.3 if ncols <= 2 else 2.75
    fig, axes = subplots(nrows, ncols, figsize=(panel * ncols + 0.5, (panel + 0.45) * nrows - 0.1), squeeze=False,
                         sharex=True, sharey=True)
    axes = list(axes.flat)
    for ax in axes[len(pairs):]:
        fig.delaxes(ax)
    lim = max(max(np.abs(p).max(), np.abs(a).max()) for p, a in pairs.values()) * 1.08 or 1.0
    _, unit = _scaled(np.array([lim]))
    scale = _power(lim)
    lim, pairs = lim / scale, {k: (p / scale, a / scale) for k, (p, a) in pairs.items()}
    for ax, (name, (p, a)) in zip(axes, pairs.items()):
        ax.axhline(0, color="#d0d7de", lw=0.8, zorder=0)
        ax.axvline(0, color="#d0d7de", lw=0.8, zorder=0)
        ax.plot([-lim, lim], [-lim, lim], color=MUTED, lw=1, ls="--", zorder=1, label="y = x")
        ax.scatter(p, a, s=14, c=np.where(p >= 0, GOOD, BAD), alpha=0.8, linewidths=0, zorder=2)
        stats = [f"{head} {table[name]:.3f}" for head, table in (("Pearson", r), ("Spearman", rho)) if name in table]
        ax.set_title(name + ("\n" + " · ".join(stats) if stats else ""), fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_box_aspect(1)  # square, and with equal limits the y = x line at 45 degrees
        ax.grid(alpha=0.25)
        ax.tick_params(labelsize=7.5)
    for i, ax in enumerate(axes[:len(pairs)]):
        if i % ncols == 0:
            ax.set_ylabel(f"actual loss change{unit}\n(retrained without it)", fontsize=8.5)
        if i >= len(pairs) - ncols:
            ax.set_xlabel(f"predicted loss change{unit}", fontsize=8.5)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=MUTED, lw=1, ls="--")] + \
        [Line2D([], [], marker="o", ls="", ms=4, color=c) for c in (GOOD, BAD)]
    axes[0].legend(handles, ["y = x (perfect)", "predicted helpful", "predicted harmful"], loc="upper left",
                   fontsize=7, frameon=True, framealpha=0.9, edgecolor="none", handletextpad=0.3, borderaxespad=0.3)
    n = len(next(iter(pairs.values()))[0])
    text = title or (f"Predicted vs actual leave-one-out loss change{chr(10) if len(pairs) == 1 else ' '}"
                     f"({n} training images, each removed in turn)")
    band = 0.22 * (text.count("\n") + 1) + 0.12
    fig.set_figheight(fig.get_figheight() + band)
    fig.tight_layout(pad=0.4, w_pad=0.8, rect=(0, 0, 1, 1 - band / fig.get_figheight()))
    fig.suptitle(text, fontsize=10, y=1 - 0.06 / fig.get_figheight(), va="top")
    return fig


def dog_fish_figure(query: torch.Tensor, query_label: str, train_images: torch.Tensor,
                    train_labels: Sequence[str], distances: Numbers, scores: Mapping[str, Numbers], *, top: int = 3,
                    title: str | None = None) -> Figure:
    """Koh & Liang's Fig. 4: influence against pixel distance to the query, one panel per model.

    Each point is a training image: x its Euclidean pixel distance to the query, y its score (the predicted
    change of the query's loss if it were removed), green when it has the query's class, red otherwise. The
    ``top`` most helpful points of each model are ringed and numbered, and drawn under its panel beside the
    query. An RBF-kernel model on pixels draws its help from the pixel-nearest images of either class; a
    model on a CNN's features from images of the query's class, near or far.

    Args:
        query: ``[C, H, W]`` in [0, 1].
        query_label: its class name.
        train_images: ``[n, C, H, W]`` training images.
        train_labels: their ``n`` class names.
        distances: ``[n]`` Euclidean pixel distances from each training image to the query.
        scores: panel title (e.g. ``"RBF model on pixels"``, ``"CNN features"``) -> ``[n]`` scores.
        top: helpful images shown per model.
        title: the figure's title.

    Returns:
        A matplotlib ``Figure``: per model a scatter axes, then the query and ``top`` thumbnails.
    """
    from matplotlib.lines import Line2D

    from ..core.checks import positive_int

    query = _images("query", query, single=True)
    images = _images("train_images", train_images)
    n = len(images)
    what = " (one per training image)"
    labels = _labels("train_labels", train_labels, n, what)
    dist = _vector("distances", distances, n, what)
    if not isinstance(scores, Mapping) or not scores:
        raise InputError("scores: expected a dict {model name: one score per training image}, with at least one entry")
    panels = {str(k): _vector(f"scores[{k!r}]", v, n, what) for k, v in scores.items()}
    top = min(positive_int("top", top), n)
    same = np.array([s == query_label for s in labels])
    others = sorted({s for s in labels if s != query_label})
    other_name = others[0] if len(others) == 1 else "other classes"
    m = len(panels)
    pw, ph, thumb = 4.15 if m > 1 else 4.6, 2.7, min(0.78, 3.4 / (top + 1.3))
    y_axes = 0.95  # inches from the top: title band, legend band, panel titles
    y_strip = y_axes + ph + 0.64  # the caption over the thumbnails
    width, height = pw * m + 0.15 * (m - 1), y_strip + 0.2 + thumb + 2 * 7.5 * 1.25 / 72 + 0.12
    fig = new_figure(figsize=(width, height))
    order = np.random.default_rng(0).permutation(n)  # neither class hidden under the other by drawing order
    offsets = ((5, 3), (5, -11), (-11, 3), (-11, -11))
    for i, (name, raw) in enumerate(panels.items()):
        s, unit = _scaled(raw)
        x0 = i * (pw + 0.15)
        ax = fig.add_axes(((x0 + 0.72) / width, 1 - (y_axes + ph) / height, (pw - 0.85) / width, ph / height))
        ax.axhline(0, color="#d0d7de", lw=0.8, zorder=0)
        ax.scatter(dist[order], s[order], s=10, c=np.where(same[order], GOOD, BAD), alpha=0.65, linewidths=0)
        best = np.argsort(-raw, kind="stable")[:top]
        ax.scatter(dist[best], s[best], s=70, facecolors="none", edgecolors=INK, linewidths=1.1, zorder=3)
        for r, b in enumerate(best):
            ax.annotate(str(r + 1), (dist[b], s[b]), xytext=offsets[r % 4], textcoords="offset points", fontsize=8,
                        fontweight="bold", color=INK, zorder=4)
        ax.margins(x=0.04, y=0.1)
        ax.set_title(name, fontsize=10, fontweight="bold")
        ax.set_xlabel("pixel distance to the query (Euclidean)", fontsize=8.5)
        ax.set_ylabel(f"score{unit} (+ = helpful)" if i else f"score{unit}: predicted loss change\nif removed "
                      "(+ = helpful)", fontsize=8.5)
        ax.tick_params(labelsize=7.5)
        ax.grid(alpha=0.25)
        strip = (top + 1) * thumb + top * 0.06 + 0.25
        left = x0 + 0.72 + (pw - 0.85 - strip) / 2
        fig.text((left + strip / 2) / width, 1 - y_strip / height, f"the query, then this model's {top} most helpful",
                 ha="center", va="top", fontsize=8, color=MUTED)
        y_thumb = y_strip + 0.2
        tax = fig.add_axes((left / width, 1 - (y_thumb + thumb) / height, thumb / width, thumb / height))
        _show(tax, query, INK, 1.2)
        _lines(tax, [("query", INK, True), (query_label, INK, False)])
        for r, b in enumerate(best):
            tx = left + thumb + 0.25 + r * (thumb + 0.06)
            tax = fig.add_axes((tx / width, 1 - (y_thumb + thumb) / height, thumb / width, thumb / height))
            _show(tax, images[b], GOOD if same[b] else BAD)
            _lines(tax, [(f"{r + 1}. {labels[b]}", GOOD if same[b] else BAD, True), (signed(raw[b]), INK, False)])
    handles = [Line2D([], [], marker="o", ls="", ms=6, color=GOOD), Line2D([], [], marker="o", ls="", ms=6, color=BAD),
               Line2D([], [], marker="o", ls="", ms=8, mfc="none", mec=INK)]
    fig.legend(handles, [f"{query_label} (the query's class)", other_name, f"top {top} helpful"], ncol=3,
               loc="center", bbox_to_anchor=(0.5, 1 - 0.5 / height), fontsize=8, frameon=False)
    fig.suptitle(title or "Which training images help: pixel look-alikes or the same class?", fontsize=11,
                 y=1 - 0.06 / height, va="top")
    return fig


def lds_figure(lds: Mapping[str, float], *, intervals: Mapping[str, tuple[float, float]] | None = None,
               n_subsets: int | None = None, title: str | None = None) -> Figure:
    """The linear datamodeling score (Park et al. 2023) of each method as a horizontal bar with its interval.

    LDS: the Spearman correlation, over models retrained on random subsets of the training set, between the
    predicted and the actual loss of the queries; 1 is perfect, 0 no better than chance.

    Args:
        lds: method name -> LDS.
        intervals: method name -> ``(low, high)``, e.g. a 95% bootstrap interval over the queries.
        n_subsets: how many retrained subsets it was measured on (for the title).
        title: the figure's title.

    Returns:
        A matplotlib ``Figure`` with one axes.
    """
    if not isinstance(lds, Mapping) or not lds:
        raise InputError("lds: expected a dict {method: LDS}, with at least one entry")
    names = [str(k) for k in lds]
    values = _vector("lds", list(lds.values()))
    intervals = dict(intervals or {})
    for k, iv in intervals.items():
        if k not in lds:
            raise InputError(f"intervals: {k!r} is not a method in lds ({', '.join(names)})")
        if not isinstance(iv, (tuple, list)) or len(iv) != 2:
            raise InputError(f"intervals[{k!r}]: expected a pair (low, high)")
    fig, ax = subplots(figsize=(5.2, 0.42 * len(names) + 1.15))
    y = np.arange(len(names))[::-1]
    colors = colormap("tab10")
    ax.barh(y, values, height=0.6, color=[colors(i % 10) for i in range(len(names))], alpha=0.85)
    low = min(0.0, float(values.min()))
    for yi, name, v in zip(y, lds, values):
        text_at = v
        if name in intervals:
            lo, hi = (float(t) for t in _vector(f"intervals[{name!r}]", intervals[name]))
            ax.errorbar(v, yi, xerr=[[v - lo], [hi - v]], color=INK, lw=1, capsize=3)
            text_at, low = max(v, hi), min(low, lo)
        ax.text(text_at + 0.02, yi, f"{v:.2f}", va="center", ha="left", fontsize=8.5, color=INK)
    ax.axvline(0, color=INK, lw=0.8)
    ax.set_xlim(low - 0.02 if low < 0 else 0, 1)
    ax.set_yticks(y, names, fontsize=9)
    ax.set_xlabel("LDS: Spearman of predicted vs actual query loss (0 = chance, 1 = perfect)", fontsize=8.5)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    subsets = f" over {n_subsets} retrained subsets" if n_subsets else ""
    ax.set_title(title or f"Linear datamodeling score{subsets}", fontsize=10)
    fig.tight_layout(pad=0.4)
    return fig


__all__ = ["influence_figure", "mislabel_figure", "validation_scatter", "dog_fish_figure", "lds_figure", "signed"]
