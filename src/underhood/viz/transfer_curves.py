"""Figures of Yosinski et al. (2014)'s transfer experiment and of frozen-versus-fine-tuned curves.

They read the plain fields and methods of :class:`underhood.transfer.TransferResult` (``runs``, ``layers``,
``rf``, ``curve``, ``drop``, ``base``, ``fractions``, ``values``, ``generality``) and
:class:`underhood.transfer.FinetuneResult` (``layers``, ``rf``, ``curve``, ``values``, ``chance``); no family
import.

* :func:`transfer_figure`: Fig. 2 of the paper: every network a point, the four treatments' mean lines;
* :func:`dissimilar_figure`: Fig. 3: the dissimilar split, the random-filter control, and both against the
  random split as accuracy relative to baseB;
* :func:`generality_figure`: the AnB drop per layer beside two scores that need no retraining;
* :func:`finetune_figure`: a pre-trained model's frozen and fine-tuned features per layer on new data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .render import subplots

STYLE = {
    # treatment: (colour, marker, label); Yosinski's colours: selffer blue, transfer red, "+" lighter
    "BnB": ("#1f5fa8", "o", "BnB: B's blocks, frozen"),
    "BnB+": ("#7fb2e5", "o", "BnB+: B's blocks, fine-tuned"),
    "AnB": ("#c0392b", "D", "AnB: A's blocks, frozen"),
    "AnB+": ("#f39c12", "D", "AnB+: A's blocks, fine-tuned"),
    "random": ("#7f7f7f", "s", "random blocks, frozen"),
}
TREATMENTS = ("BnB", "BnB+", "AnB", "AnB+")
BASE = "#222222"
CHANCE = "#999999"
OFFSETS = {"BnB": -0.18, "BnB+": -0.06, "AnB": 0.06, "AnB+": 0.18, "random": 0.0}


def _tick(depth: int, layer: str, rf: dict[str, str]) -> str:
    field = rf.get(layer)
    return f"{depth}\n{layer}" + (f"\nrf {field}" if field and field != "global" else "")


def _style(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(axis="y", color="#e6e6e6", lw=0.8, zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8.5)


def _mean_line(ax, curve: dict[int, tuple[float, float, float]], treatment: str, *, scale: float = 100.0,
               shift: float = 0.0, label: str | None = None, band: bool = True) -> None:
    color, marker, name = STYLE[treatment]
    xs = sorted(curve)
    mean = [scale * curve[d][0] for d in xs]
    ax.plot([d + shift for d in xs], mean, "-", color=color, lw=2.2, zorder=4, label=label or name)
    if band and any(curve[d][1] != curve[d][2] for d in xs):
        ax.fill_between([d + shift for d in xs], [scale * curve[d][1] for d in xs],
                        [scale * curve[d][2] for d in xs], color=color, alpha=0.14, lw=0, zorder=1)


def _points(ax, result: Any, treatment: str) -> None:
    color, marker, _ = STYLE[treatment]
    rows = [r for r in result.runs if r["treatment"] == treatment]
    xs = [r["depth"] + OFFSETS[treatment] for r in rows]
    filled = not treatment.endswith("+")
    ax.scatter(xs, [100 * r["accuracy"] for r in rows], s=30, marker=marker, zorder=5,
               facecolors=color if filled else "white", edgecolors=color, linewidths=1.3)


def _levels(ax, result: Any, right: float, low: float) -> None:
    """baseB's mean (dashed), the reduced-data baselines (dotted) and chance, labelled at the right edge; a level
    below the axis (``low``, in %) is named in a note instead."""
    levels = [(result.base()[0], BASE, "--", 1.3, "baseB")]
    for f in result.fractions:
        v = result.values("reduced", 0, f)
        levels.append((sum(v) / len(v), "#6c3483", ":", 1.4, f"baseB on {f:.0%} of B"))
    levels.append((result.chance, CHANCE, "-", 0.8, "chance"))
    below = []
    shown = []
    for value, color, style, lw, label in sorted(levels, key=lambda lv: lv[0]):
        if 100 * value < low:
            below.append(f"{label}: {100 * value:.1f}%")
            continue
        ax.axhline(100 * value, color=color, ls=style, lw=lw, zorder=2, alpha=0.9)
        shown.append((100 * value, color, label))
    # about one 8-point line apart on a 3.5-inch axis, whatever the range
    for (value, color, label), y in zip(shown, _dodge([v for v, _, _ in shown], 0.04 * (100.5 - low))):
        ax.text(right + 0.05, y, f"{label} {value:.1f}", color=color, fontsize=8, va="center", ha="left",
                clip_on=False)
    if below:
        ax.text(0.995, 0.02, "below the axis: " + ";  ".join(below), transform=ax.transAxes, fontsize=7.5,
                ha="right", va="bottom", color="#555555")


def _handle(treatment: str):
    """A legend entry showing both a treatment's points (marker; white-filled when fine-tuned) and its mean line."""
    from matplotlib.lines import Line2D

    color, marker, name = STYLE[treatment]
    return Line2D([], [], color=color, lw=2.2, marker=marker, ms=6, mew=1.3, mec=color,
                  mfc="white" if treatment.endswith("+") else color, label=name)


def _base_handle(result: Any):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=BASE, ls="--", lw=1.3, marker="o", ms=6, mew=1.3, mfc="white", mec=BASE,
                  label=f"baseB: each seed, mean {100 * result.base()[0]:.1f} (dashed)")


LEGEND_H = 0.5
"""Inches below the axes for a legend of up to two rows (:func:`_legend_below`)."""


def _legend_below(fig, handles: list, ncol: int = 3) -> None:
    """The legend in a band under the axes, where no point or line can hide behind it; lays the figure out."""
    height = fig.get_size_inches()[1]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.005), ncol=ncol, fontsize=8.5,
               frameon=False, handlelength=2.6, columnspacing=1.8)
    fig.tight_layout(rect=(0, LEGEND_H * (1 + (len(handles) > ncol)) / 2 / height + 0.02, 1, 1))


def _dodge(wanted: list[float], gap: float) -> list[float]:
    """Label positions at least ``gap`` apart, each as close to its wanted position as a bottom-up sweep allows."""
    order = sorted(range(len(wanted)), key=lambda i: wanted[i])
    placed = [0.0] * len(wanted)
    last = -float("inf")
    for i in order:
        placed[i] = last = max(wanted[i], last + gap)
    return placed


def _depth_label(result: Any) -> str:
    names = result.layers
    return f"n: blocks copied (1 = {names[0]} ... {len(names)} = {names[-1]})"


def _base_points(ax, result: Any) -> None:
    base = result.values("baseB")
    ax.scatter([0.0] * len(base), [100 * v for v in base], s=34, marker="o", facecolors="white", edgecolors=BASE,
               linewidths=1.3, zorder=5, label="baseB (each seed)")


def transfer_figure(result: Any, *, title: str | None = None, figsize: tuple[float, float] | None = None,
                    controls: bool = False):
    """Yosinski et al.'s Fig. 2 for ``result``: held-out accuracy on B against the depth ``n`` of the copied blocks.

    Every network is a point (white-filled: fine-tuned), offset a little per treatment; lines join the means over
    seeds (no interval bands: each seed draws its own split, whose difficulty varies; the paired intervals are in
    :func:`dissimilar_figure` and the statements). baseB (n = 0) is drawn as points and as a dashed level; the
    reduced-data baselines and chance as levels (named in a note when below the axis); with ``controls``, the
    random-filter control as a grey line (it is in :func:`dissimilar_figure` by default).
    """
    depths = result.depths
    fig, ax = subplots(figsize=figsize or (max(7.4, 1.25 * len(depths) + 4.2), 4.9 + LEGEND_H))
    _base_points(ax, result)
    handles = [_base_handle(result)]
    for t in ("BnB", "BnB+", "AnB", "AnB+"):  # no bands: the seeds' splits differ in difficulty (see drop())
        if t in result.treatments:
            _points(ax, result, t)
            _mean_line(ax, result.curve(t), t, shift=OFFSETS[t], band=False)
            handles.append(_handle(t))
    shown = [100 * r["accuracy"] for r in result.runs if r["treatment"] in ("baseB", *TREATMENTS)]
    if controls and "random" in result.treatments:
        _points(ax, result, "random")
        _mean_line(ax, result.curve("random"), "random", band=False)
        handles.append(_handle("random"))
        shown += [100 * v for v in result.values("random")]
    low = max(0.0, 5 * np.floor((min(shown + [100.0]) - 3) / 5))
    right = max(depths) + 0.45
    _levels(ax, result, right, low)
    ax.set_xticks([0, *depths], ["0\nbaseB", *[_tick(d, result.layers[d - 1], result.rf) for d in depths]])
    ax.set_xlim(-0.4, right)
    ax.set_ylim(low, 100.5)
    _style(ax, "n: blocks copied from a base network (layer they end with; rf: receptive field in pixels)",
           "top-1 accuracy on B's held-out images (%)")
    halves = result.halves[0] if result.halves else {}
    split = {"random": "random halves (a new split per seed)", "dissimilar": "dissimilar halves"}.get(result.split,
                                                                                                    "given halves")
    ax.set_title(title or f"How transferable are the features of '{result.arch}'? {split}, {len(result.seeds)} "
                 f"seed(s)" + (f"\nA = {', '.join(halves.get('A', []))};  B = {', '.join(halves.get('B', []))}"
                               if result.split != "random" and halves else ""), fontsize=10, loc="left")
    _legend_below(fig, handles, ncol=3)
    return fig


def dissimilar_figure(similar: Any, dissimilar: Any, *, title: str | None = None,
                      figsize: tuple[float, float] | None = None):
    """Yosinski et al.'s Fig. 3: transfer from a dissimilar half, random filters, and both against the random split.

    Left: AnB on the dissimilar split (points and mean) with its baseB. Middle: the random-filter control of the
    random split (points and mean) with its baseB. Right: the three as accuracy relative to their own baseB (points
    of accuracy, paired by seed; mean and 95% band): AnB from a random half, AnB from a dissimilar half, random
    filters.
    """
    fig, axes = subplots(1, 3, figsize=figsize or (14.5, 4.6))
    panels = ((axes[0], dissimilar, "AnB", f"dissimilar split: A = {', '.join(dissimilar.halves[0]['A'])}\n"
               f"B = {', '.join(dissimilar.halves[0]['B'])}"),
              (axes[1], similar if "random" in similar.treatments else dissimilar, "random",
               "random frozen filters (Jarrett et al. 2009)"))
    for ax, result, t, head in panels:
        _base_points(ax, result)
        handles = [_base_handle(result)]
        if t in result.treatments:
            _points(ax, result, t)
            _mean_line(ax, result.curve(t), t, shift=OFFSETS[t], band=False)
            handles.append(_handle(t))
        right = max(result.depths) + 0.45
        ax.axhline(100 * result.base()[0], color=BASE, ls="--", lw=1.2)
        ax.axhline(100 * result.chance, color=CHANCE, lw=0.8)
        ax.text(0.6, 100 * result.chance + 1.5, f"chance {100 * result.chance:.1f}", fontsize=8, ha="left",
                color=CHANCE)
        ax.set_xticks([0, *result.depths], ["0\nbaseB", *[str(d) for d in result.depths]])
        ax.set_xlim(-0.4, right)
        ax.set_ylim(0, 101)
        _style(ax, _depth_label(result), "top-1 accuracy on B (%)")
        ax.set_title(head, fontsize=9.5, loc="left")
        ax.legend(handles=handles, fontsize=7.5, loc="best", frameon=True, framealpha=0.92, edgecolor="#dddddd")
    ax = axes[2]
    lines = [(similar, "AnB", "#c0392b", "transfer from a random half (AnB)"),
             (dissimilar, "AnB", "#8e44ad", "transfer from a dissimilar half (AnB)"),
             (similar if "random" in similar.treatments else dissimilar, "random", "#7f7f7f", "random filters")]
    for result, t, color, label in lines:
        drop = result.drop(t)
        if not drop:
            continue
        xs = sorted(drop)
        ax.plot(xs, [100 * drop[d][0] for d in xs], "-o", color=color, lw=2.0, ms=5, label=label, zorder=4)
        ax.fill_between(xs, [100 * drop[d][1] for d in xs], [100 * drop[d][2] for d in xs], color=color, alpha=0.14,
                        lw=0)
    ax.axhline(0, color=BASE, ls="--", lw=1.2)
    ax.set_xticks(similar.depths, [str(d) for d in similar.depths])
    _style(ax, _depth_label(similar), "accuracy relative to baseB (points)")
    ax.set_title("relative to each split's own baseB (paired by seed)", fontsize=9.5, loc="left")
    ax.legend(fontsize=7.5, loc="best", frameon=True, framealpha=0.92, edgecolor="#dddddd")
    fig.suptitle(title or f"Transfer from dissimilar tasks and random filters ('{similar.arch}', "
                 f"{len(similar.seeds)} seed(s))", fontsize=10.5, x=0.01, ha="left")
    fig.tight_layout()
    return fig


def generality_figure(result: Any, *, title: str | None = None, figsize: tuple[float, float] | None = None):
    """Per layer: the AnB drop (points of accuracy, mean and 95% interval; left axis) beside linear CKA between baseA
    and baseB and the accuracy on B of a linear probe on baseA's features (right axis, 0-1), with their Spearman
    rank correlations with the drop."""
    g = result.generality()
    layers = result.layers
    xs = np.arange(1, len(layers) + 1)
    fig, ax = subplots(figsize=figsize or (max(7.0, 1.2 * len(layers) + 3.5), 4.4))
    drop = result.drop("AnB")
    if drop:
        d = sorted(drop)
        ax.bar(d, [-100 * drop[k][0] for k in d], width=0.5, color="#e6b0aa", edgecolor="#c0392b", zorder=3,
               label="AnB drop (points below baseB)")
        ax.errorbar(d, [-100 * drop[k][0] for k in d],
                    yerr=[[100 * (drop[k][2] - drop[k][0]) for k in d], [100 * (drop[k][0] - drop[k][1]) for k in d]],
                    fmt="none", ecolor="#922b21", capsize=3, lw=1.2, zorder=4)
    ax.axhline(0, color="#444444", lw=0.8)
    _style(ax, "layer (depth n)", "AnB drop (points)")
    twin = ax.twinx()
    for key, color, marker, label in (("cka", "#117a65", "o", "linear CKA, baseA vs baseB"),
                                      ("probe_ab", "#1f5fa8", "s", "probe on B of baseA's features")):
        vals = g.get(key) or {}
        if vals:
            twin.plot([xs[layers.index(n)] for n in vals], list(vals.values()), "-" + marker, color=color, lw=2.0,
                      ms=6, label=label, zorder=5)
    twin.set_ylim(0, 1.3)  # room above 1 for the legend
    twin.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    twin.set_ylabel("CKA / probe accuracy", fontsize=9)
    twin.spines["top"].set_visible(False)
    twin.tick_params(labelsize=8.5)
    ax.set_xticks(xs, [_tick(int(x), n, result.rf) for x, n in zip(xs, layers)])
    rhos = []
    if "rho_cka" in g:
        rhos.append(f"Spearman(CKA, drop) = {g['rho_cka']:+.2f}")
    if "rho_probe" in g:
        rhos.append(f"Spearman(probe, drop) = {g['rho_probe']:+.2f}")
    ax.set_title(title or "Generality without retraining, beside the AnB drop" + (f"\n{';  '.join(rhos)}" if rhos
                                                                                 else ""), fontsize=10, loc="left")
    handles, labels = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    twin.legend(handles + h2, labels + l2, fontsize=8, loc="upper left", frameon=True, framealpha=0.95,
                edgecolor="#dddddd", ncol=3)
    top = max([0.0] + [-100 * drop[k][1] for k in drop]) if drop else 1.0
    ax.set_ylim(min(-2.0, min([-100 * drop[k][2] for k in drop] + [0]) - 1) if drop else -1, max(5.0, top * 1.3))
    fig.tight_layout()
    return fig


def finetune_figure(result: Any, *, title: str | None = None, figsize: tuple[float, float] | None = None):
    """A pre-trained model's layers on new data: a linear head on the frozen features, the same cut fine-tuned, and
    the frozen head on a randomly re-initialised copy (mean and 95% band over seeds, each mean written beside its
    point); chance, and the model's own accuracy when the result has one, as levels."""
    layers = result.layers
    xs = np.arange(len(layers))
    fig, ax = subplots(figsize=figsize or (max(6.8, 1.3 * len(layers) + 3.6), 4.4 + LEGEND_H))
    look = {"frozen": ("#c0392b", "D", "frozen features + linear head"),
            "finetuned": ("#f39c12", "o", "fine-tuned up to the layer"),
            "random": ("#7f7f7f", "s", "random copy, frozen")}
    handles, labels = [], []  # (x, accuracy in %, colour) per point, written once the axes' size is known
    from matplotlib.lines import Line2D

    for t in ("frozen", "finetuned", "random"):
        curve = result.curve(t)
        if not curve:
            continue
        color, marker, label = look[t]
        names = [n for n in layers if n in curve]
        x = [xs[layers.index(n)] for n in names]
        face = "white" if t == "finetuned" else color
        ax.plot(x, [100 * curve[n][0] for n in names], "-" + marker, color=color, lw=2.1, ms=6.5, zorder=4,
                mfc=face, mew=1.4)
        handles.append(Line2D([], [], color=color, lw=2.1, marker=marker, ms=6.5, mfc=face, mew=1.4, label=label))
        if any(curve[n][1] != curve[n][2] for n in names):
            ax.fill_between(x, [100 * curve[n][1] for n in names], [100 * curve[n][2] for n in names], color=color,
                            alpha=0.15, lw=0)
        labels += [(xi, 100 * curve[n][0], color) for xi, n in zip(x, names)]
    right = xs[-1] + 0.4
    levels = [(v, c, ls, lw, name) for v, c, ls, lw, name in (
        (getattr(result, "model_accuracy", None), "#d62728", "--", 1.3, "the model itself"),
        (result.chance, CHANCE, "-", 0.9, "chance")) if v is not None]
    for value, color, style, lw, _ in levels:
        ax.axhline(100 * value, color=color, ls=style, lw=lw, zorder=2)
    for (value, color, _, _, name), y in zip(levels, _dodge([100 * lv[0] for lv in levels], 4.5)):
        ax.text(right + 0.05, y, f"{name} {100 * value:.1f}", color=color, fontsize=8, va="center", ha="left",
                clip_on=False)
    ax.set_xticks(xs, [(f"{n}\nrf {result.rf[n]}" if result.rf.get(n) and result.rf[n] != "global" else n)
                       for n in layers])
    ax.set_xlim(-0.4, right)
    ax.set_ylim(0, 105)
    _style(ax, "cut after layer (input to output; rf: receptive field in pixels)", "held-out accuracy on the new "
           "task (%)")
    info = getattr(result, "info", {}) or {}
    ax.set_title(title or f"Frozen or fine-tuned: a new task on each layer ({len(result.classes)} classes, "
                 f"{info.get('n_train', '?')} train / {info.get('n_test', '?')} test images)", fontsize=10, loc="left")
    _legend_below(fig, handles, ncol=3)
    # the means, in the points' colours: at each layer the highest above its point, the others below theirs,
    # pushed down so that no two labels overlap (in points, now that the layout fixed the axes' height)
    per_unit = ax.get_position().height * fig.get_size_inches()[1] * 72 / 105
    for x in xs:
        here = sorted((lb for lb in labels if lb[0] == x), key=lambda lb: -lb[1])
        floor = float("inf")
        for i, (_, value, color) in enumerate(here):
            at = value * per_unit
            y = at + 8 if i == 0 else min(at - 13, floor - 10)
            floor = y if i else at - 4
            ax.annotate(f"{value:.1f}", (x, value), textcoords="offset points", xytext=(0, y - at), ha="center",
                        va="bottom", fontsize=7.5, color=color)
    return fig


__all__ = ["transfer_figure", "dissimilar_figure", "generality_figure", "finetune_figure"]
