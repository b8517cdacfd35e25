"""Figures of adversarial examples beyond neural networks: one image pushed to every class, and the logits along
the FGSM direction (Goodfellow et al. 2015's "excessive linearity")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .adversarial import BAD, GOOD, INK, MUTED, _name, _show, magnify
from .figures import TITLE_KW
from .render import colormap, new_figure


def flip_grid_figure(original: torch.Tensor, result, *, classes: Sequence[str] | None = None,
                     clean_prob: float | None = None, title: str | None = None, cell: float = 1.3):
    """One image and its targeted versions (MAP583 / CMP784: a 9 turned into every other digit).

    Top row: the original (titled with its label, and the model's probability of it when
    ``clean_prob`` is given), then each adversarial image of ``result`` (an
    :class:`~underhood.adversarial.AttackResult` with a ``target``), titled with the class the model
    predicts (red: no longer the label, as the lectures' yellow boxes) and the perturbation's L2 norm.
    Bottom row: the perturbations at one shared magnification around mid-grey.
    """
    n = len(result)
    shown, factor = magnify(result.perturbation)
    fig = new_figure(figsize=(cell * (n + 1), 2 * cell + 0.55 + (0.3 if title else 0)))
    axes = fig.subplots(2, n + 1, squeeze=False)
    label = int(result.labels[0])
    _show(axes[0, 0], original.squeeze(0) if original.ndim == 4 else original)
    prob = f"\np = {clean_prob:.2f}" if clean_prob is not None else ""
    axes[0, 0].set_title(f"original: {_name(classes, label)}{prob}", color=INK, **TITLE_KW)
    axes[1, 0].set_axis_off()
    axes[1, 0].text(0.5, 0.5, f"perturbations\n×{factor:.0f}\n(grey = 0)", ha="center", va="center",
                    color=MUTED, fontsize=8, transform=axes[1, 0].transAxes)
    pred, l2 = result.predicted.tolist(), result.norms["l2"].tolist()
    targets = result.target.tolist() if result.target is not None else pred
    for j in range(n):
        top, bottom = axes[0, j + 1], axes[1, j + 1]
        _show(top, result.adversarial[j])
        top.set_title(f"→ {_name(classes, targets[j])}: sees {_name(classes, pred[j])}\nL2 {l2[j]:.2f}",
                      color=BAD if pred[j] != label else GOOD, **TITLE_KW)
        _show(bottom, shown[j])
    if title:
        height = fig.get_figheight()
        fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.3 / height))
        fig.suptitle(title, fontsize=10, y=1 - 0.04 / height, va="top")
    else:
        fig.tight_layout(pad=0.3)
    return fig


def _strip(ax, eps: np.ndarray, pred: np.ndarray, colors, classes: Sequence[str] | None) -> None:
    """The predicted class along the path as a band of class colours, named where a run is wide enough."""
    edges = np.concatenate([[eps[0]], (eps[1:] + eps[:-1]) / 2, [eps[-1]]])
    start = 0
    for i in range(1, len(pred) + 1):
        if i == len(pred) or pred[i] != pred[start]:
            lo, hi = edges[start], edges[i]
            ax.axvspan(lo, hi, color=colors(int(pred[start]) % 10), lw=0)
            if hi - lo > 0.07 * (eps[-1] - eps[0]):
                ax.text((lo + hi) / 2, 0.5, _name(classes, int(pred[start])), ha="center", va="center", fontsize=7,
                        color="white", fontweight="bold")
            start = i
    ax.set_xlim(eps[0], eps[-1])
    ax.set_yticks([])
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def linearity_figure(paths: Mapping[str, object], *, index: int = 0, classes: Sequence[str] | None = None,
                     probs: bool = False, title: str | None = None):
    """Goodfellow et al. 2015's plot: every class's logit along ``x + eps * sign(grad)``, one panel per model.

    ``paths`` maps a model's name to its :class:`~underhood.adversarial.LogitPath`; sample ``index`` of each
    is drawn. One line per class (tab10 colours, the label's line thick), ``eps = 0`` (the clean input)
    dotted; above each panel a band gives the predicted class along the path. The panel title gives the
    R^2 of straight lines through the logits (:meth:`~underhood.adversarial.LogitPath.linearity`).
    ``probs`` draws the softmax instead of the logits.
    """
    colors = colormap("tab10")
    n = len(paths)
    fig = new_figure(figsize=(4.3 * n, 3.5))
    grid = fig.add_gridspec(2, n, height_ratios=[0.09, 1], hspace=0.06)
    for j, (name, path) in enumerate(paths.items()):
        band, ax = fig.add_subplot(grid[0, j]), fig.add_subplot(grid[1, j])
        eps = np.asarray(path.eps, dtype=float)
        values = np.asarray((path.probs if probs else path.logits)[index], dtype=float)
        label = int(path.labels[index])
        for k in range(values.shape[1]):
            ax.plot(eps, values[:, k], color=colors(k % 10), lw=2.4 if k == label else 1.1,
                    label=_name(classes, k) + (" (label)" if k == label else ""), zorder=3 if k == label else 2)
        ax.axvline(0, color=MUTED, lw=0.9, ls=":")
        ax.set_xlim(eps[0], eps[-1])
        ax.set_xlabel("ε along sign(∇x loss)  (pixel units)", fontsize=8)
        ax.set_ylabel("softmax probability" if probs else "logit", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        _strip(band, eps, np.asarray(path.predicted[index]), colors, classes)
        r2 = float(path.linearity()[index])
        band.set_title(f"{name}: R² of straight lines {r2:.3f}", fontsize=8.5, color=INK)
    handles, labels = fig.axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False, title="class", title_fontsize=7)
    fig.subplots_adjust(left=0.07 if n > 1 else 0.13, right=0.88 if n > 1 else 0.78, bottom=0.14, top=0.88,
                        wspace=0.25)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


__all__ = ["flip_grid_figure", "linearity_figure"]
