"""Figures of the adversarial family: the lectures' three panels, robustness curves, universal perturbations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .figures import TITLE_KW
from .render import colormap, new_figure, subplots, to_numpy_image

GOOD, BAD, INK, MUTED = "#1a7f37", "#cf222e", "#24292f", "#8c959f"
# one meaning across the report: green = correct / the class kept, red = wrong / the decision the attack changed;
# a colour never stands for "confident"
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D")


def _show(ax, image: torch.Tensor) -> None:
    arr = to_numpy_image(image.detach().float().cpu().clamp(0, 1))
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def magnify(delta: torch.Tensor, factor: float | None = None) -> tuple[torch.Tensor, float]:
    """``(0.5 + factor * delta, factor)``: a perturbation made visible around mid-grey.

    The default factor maps the largest ``|delta|`` of the batch to 0.5 (full contrast), so
    panels of one figure share a scale.
    """
    d = delta.detach().float().cpu()
    if factor is None:
        top = float(d.abs().max())
        factor = 0.5 / top if top > 0 else 1.0
    return (0.5 + factor * d).clamp(0, 1), factor


def _name(classes: Sequence[str] | None, k: int) -> str:
    return classes[k] if classes is not None and 0 <= k < len(classes) else str(k)


def attack_figure(inputs: torch.Tensor, result, *, classes: Sequence[str] | None = None,
                  clean_probs: torch.Tensor | None = None, max_rows: int = 6, title: str | None = None,
                  cell: float = 1.9, relative: bool = True):
    """The lectures' figure: original | perturbation (magnified) | adversarial, one row per image.

    The original is titled with its label (and the model's confidence in it when ``clean_probs``
    ``[N, K]`` are given), the adversarial with the predicted class and its confidence, red when
    the attack succeeded. The perturbation's title gives the magnification, shared by all rows, its
    L-inf norm (in /255) and L2 norm and, with ``relative``, its relative norm
    ``||x - x_adv||_2 / ||x||_2`` as the EE-559 lecture prints it (1.02%, 0.27%).
    """
    n = min(len(inputs), max_rows)
    shown, factor = magnify(result.perturbation[:n])
    head = 0.42 + (0.14 if relative else 0.0)
    fig, axes = subplots(n, 3, figsize=(3 * cell, n * (cell + head) + (0.35 if title else 0)), squeeze=False)
    labels, pred = result.labels.tolist(), result.predicted.tolist()
    conf, ok = result.confidence.tolist(), result.success.tolist()
    linf = result.norms["linf"].tolist()
    l2 = result.norms["l2"].tolist()
    rel = result.relative_norm[:n].tolist() if relative else []  # ||x - x_adv|| / ||x||, per image
    for i in range(n):
        a, b, c = axes[i]
        _show(a, inputs[i])
        clean = f"\np = {float(clean_probs[i, labels[i]]):.2f}" if clean_probs is not None else ""
        a.set_title(f"original: {_name(classes, labels[i])}{clean}", color=INK, **TITLE_KW)
        _show(b, shown[i])
        size = f"perturbation ×{factor:.0f}\nL∞ {linf[i] * 255:.1f}/255, L2 {l2[i]:.2f}"
        if relative:
            size += f"\n‖x − x̌‖ / ‖x‖ = {_percent(rel[i])}"
        b.set_title(size, color=INK, **TITLE_KW)
        _show(c, result.adversarial[i])
        target = ""
        if result.target is not None:
            target = f" (target {_name(classes, int(result.target[i]))})"
        c.set_title(f"adversarial: {_name(classes, pred[i])}{target}\np = {conf[i]:.2f}",
                    color=BAD if ok[i] else GOOD, **TITLE_KW)
    if title:
        height = fig.get_figheight()
        fig.tight_layout(pad=0.4, rect=(0, 0, 1, 1 - 0.35 / height))
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / height, va="top")
    else:
        fig.tight_layout(pad=0.4)
    return fig


def _percent(value: float) -> str:
    """A share as the lecture writes it, in percent with two decimals (1.02%); three significant digits below
    0.1%."""
    return f"{value:.2%}" if not 0 < value < 1e-3 else f"{value * 100:.3g}%"


def _eps_label(norm: str) -> str:
    return "ε (L∞, in /255)" if norm == "linf" else f"ε ({'L2' if norm == 'l2' else norm})"


def robustness_figure(curves: Mapping[str, object], *, title: str | None = None, chance: float | None = None):
    """Accuracy against the budget, one line per curve (``{name: RobustnessCurve}``).

    L-inf budgets are drawn in /255 units. A minimal-norm curve (``norms`` set, no fixed grid)
    is drawn as a step curve.
    """
    fig, ax = subplots(figsize=(5.2, 3.3))
    colors = colormap("tab10")
    norm = "linf"
    for i, (name, curve) in enumerate(curves.items()):
        norm = curve.norm
        scale = 255.0 if norm == "linf" else 1.0
        eps = np.asarray(curve.eps, dtype=float) * scale
        acc = np.asarray(curve.accuracy, dtype=float) * 100
        style = {"marker": MARKERS[i % len(MARKERS)], "ms": 4} if len(eps) <= 20 else {}
        if curve.norms is not None:  # accuracy(e) = share of minimal norms above e: a step function
            style["drawstyle"] = "steps-post"
        ax.plot(eps, acc, color=colors(i % 10), lw=1.6, ls=STYLES[i % len(STYLES)], label=name, **style)
    if chance is not None:
        ax.axhline(chance * 100, color=MUTED, lw=1, ls=(0, (2, 3)), label="chance")
    ax.set_ylim(-2, 102)
    return _curve_axes(fig, ax, _eps_label(norm), "accuracy under attack (%)", title)


def _curve_axes(fig, ax, xlabel: str, ylabel: str, title: str | None):
    """Labels, grid, legend and title of a curve plot; the figure, laid out."""
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.4)
    return fig


def norms_figure(norms: Mapping[str, torch.Tensor], *, norm: str = "l2", title: str | None = None):
    """Per-sample minimal adversarial norms as cumulative curves: the share of images fooled within ε."""
    fig, ax = subplots(figsize=(5.2, 3.1))
    colors = colormap("tab10")
    for i, (name, values) in enumerate(norms.items()):
        v = np.sort(np.asarray(values.detach().float().cpu(), dtype=float))
        v = v[np.isfinite(v)]
        if len(v):
            ax.plot(v, np.arange(1, len(v) + 1) / len(values) * 100, drawstyle="steps-post", color=colors(i % 10),
                    lw=1.6, ls=STYLES[i % len(STYLES)], label=f"{name} (median {np.median(v):.2f})")
    return _curve_axes(fig, ax, f"minimal perturbation ({'L2' if norm == 'l2' else norm})", "images fooled (%)",
                       title)


def universal_figure(perturbation: torch.Tensor, images: torch.Tensor, clean_pred: Sequence[int],
                     adv_pred: Sequence[int], *, classes: Sequence[str] | None = None, title: str | None = None,
                     cell: float = 1.45):
    """One perturbation for all images: the perturbation (magnified) and a row of images before and after."""
    n = len(images)
    shown, factor = magnify(perturbation[None])
    fig = new_figure(figsize=(cell * (n + 1.3), 2 * cell + 0.7))
    grid = fig.add_gridspec(2, n + 1, width_ratios=[1.3] + [1] * n)
    ax = fig.add_subplot(grid[:, 0])
    _show(ax, shown[0])
    linf = float(perturbation.abs().max()) * 255
    ax.set_title(f"universal perturbation\n×{factor:.0f}, L∞ {linf:.0f}/255", color=INK, **TITLE_KW)
    adv = (images + perturbation.to(images.device)).clamp(0, 1)
    for j in range(n):
        top, bottom = fig.add_subplot(grid[0, j + 1]), fig.add_subplot(grid[1, j + 1])
        _show(top, images[j])
        top.set_title(_name(classes, int(clean_pred[j])), color=INK, **TITLE_KW)
        _show(bottom, adv[j])
        fooled = int(adv_pred[j]) != int(clean_pred[j])
        bottom.set_title(_name(classes, int(adv_pred[j])), color=BAD if fooled else GOOD, **TITLE_KW)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.4)
    return fig


def fooling_figure(result, *, classes: Sequence[str] | None = None, ncols: int = 8, title: str | None = None,
                   cell: float = 1.35):
    """Images made from scratch, titled with the class each was made for and the model's probability of it
    (or the class it sees instead): dark where the image reached the attack's confidence, grey where not.
    Neither green nor red: an image of noise has no correct class."""
    from .figures import image_grid

    cls = (result.target if result.target is not None else result.predicted).tolist()
    pred, conf = result.predicted.tolist(), result.confidence.tolist()
    titles = [f"{_name(classes, k)}\np = {c:.3f}" if p == k else f"{_name(classes, k)}\n(sees {_name(classes, p)})"
              for k, p, c in zip(cls, pred, conf)]
    colors = [INK if ok else MUTED for ok in result.success.tolist()]
    return image_grid(result.adversarial.detach().cpu(), titles=titles, ncols=ncols, cell=cell, suptitle=title,
                      title_colors=colors)


def linear_figure(demo, *, cell: float = 1.9):
    """The linear-model demonstration: input, the step ``eps * sign(w)``, and the flipped input."""
    shape = demo.image_shape
    fig, axes = subplots(1, 3, figsize=(3 * cell, cell + 0.55))
    step = demo.x_adv - demo.x
    shown, factor = magnify(step.view(shape))
    c0, c1 = demo.classes
    for ax, image, text in (
            (axes[0], demo.x.view(shape), f"x: p({c1}) = {demo.prob:.3f}"),
            (axes[1], shown, f"step ε·sign(w), ε = {demo.eps * 255:.1f}/255\n(×{factor:.0f})"),
            (axes[2], demo.x_adv.view(shape), f"x + step: p({c1}) = {demo.prob_adv:.3f}")):
        _show(ax, image)
        ax.set_title(text, color=INK, **TITLE_KW)
    fig.tight_layout(pad=0.4)
    return fig


def transfer_figure(matrix, *, title: str | None = None, value: str = "accuracy"):
    """A transfer matrix (:class:`~underhood.adversarial.TransferMatrix`) as a heat map: row ``i``, column ``j`` is
    model ``j``'s accuracy (%) on the adversarial inputs crafted on model ``i``; the clean accuracy in brackets
    on the column labels. Low (red) off the diagonal: the examples transfer. ``value="fooling"`` draws the
    fooling rate (:attr:`~underhood.adversarial.TransferMatrix.fooling`) instead, high in red."""
    if value not in ("accuracy", "fooling") or (value == "fooling" and matrix.fooling is None):
        raise ValueError(f"value: expected 'accuracy' or 'fooling' (for a matrix that has it), got {value!r}")
    fooling = value == "fooling"
    names = list(matrix.names)
    acc = np.asarray(matrix.fooling if fooling else matrix.accuracy, dtype=float) * 100
    clean = np.asarray(matrix.clean, dtype=float) * 100
    side = 0.9 * len(names) + 1.6
    fig, ax = subplots(figsize=(side + 0.6, side))
    image = ax.imshow(acc, cmap="RdYlGn_r" if fooling else "RdYlGn", vmin=0, vmax=100)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, "-" if np.isnan(acc[i, j]) else f"{acc[i, j]:.0f}", ha="center", va="center",
                    fontsize=8, color=INK)
    ax.set_xticks(range(len(names)), [f"{n}\n({c:.0f}% clean)" for n, c in zip(names, clean)], fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("scored on", fontsize=8)
    ax.set_ylabel("crafted on", fontsize=8)
    ax.tick_params(length=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label(f"{value} (%)", fontsize=8)
    budget = "" if matrix.eps is None else (f", ε = {matrix.eps * 255:.3g}/255" if matrix.norm == "linf"
                                            else f", ε = {matrix.eps:.3g} ({matrix.norm})")
    what = "fooling rate under transfer" if fooling else "accuracy under transfer"
    ax.set_title(title or f"{matrix.attack}{budget}: {what}", fontsize=9)
    fig.tight_layout(pad=0.4)
    return fig
