"""The unit-ablation figure of Morcos et al. (2018): accuracy as units are zeroed, and the
importance of single units against their class selectivity."""

from __future__ import annotations

import numpy as np

# red and green mean wrong and right elsewhere in the report: the orders get neutral hues and line styles
ORDER_STYLE = {
    "random": ("random order", "#57606a", "-"),
    "selectivity": ("most selective first", "#8250df", "-"),
    "selectivity-low": ("least selective first", "#0969da", "--"),
}


def ablation_figure(ablation, *, title: str | None = None):
    """Two panels from an :class:`underhood.activations.ablate.Ablation`.

    Left: accuracy against the number of units zeroed, one line per order, with the baseline
    (dotted) and chance ``1 / n_classes`` (dashed). Right: each unit's importance when zeroed alone
    against its class selectivity index, with the Pearson correlation; the units whose loss hurts
    most are labelled with their channel index. Importance is the drop in the true class's mean
    softmax probability (``baseline_probability - single_probability``, in percentage points) when
    the ablation measured it, else the accuracy drop (``baseline - single``), which is often zero
    for every unit of a confident model.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    units = ablation.units.numpy()
    steps = ablation.counts.numpy() if ablation.counts is not None else np.arange(len(units) + 1)
    chance = 1.0 / max(ablation.n_classes, 1)
    left.axhline(ablation.baseline, color="#1a7f37", ls=":", lw=1.2, label=f"intact ({ablation.baseline:.1%})")
    left.axhline(chance, color="#8c959f", ls="--", lw=1.0, label=f"chance (1/{ablation.n_classes})")
    for order, curve in ablation.curves.items():
        label, color, style = ORDER_STYLE.get(order, (order, None, "-"))
        left.plot(steps, curve.numpy(), color=color, ls=style, lw=1.8, label=label,
                  marker="o" if len(steps) < 30 else None, ms=3)
    left.set_xlim(0, len(units))
    left.set_ylim(0, 1.03)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.yaxis.set_major_formatter(PercentFormatter(1.0))
    left.set_xlabel(f"units zeroed (of {len(units)} in {ablation.layer})", fontsize=10)
    left.set_ylabel(f"accuracy on {ablation.n} inputs", fontsize=10)
    left.set_title("Units zeroed cumulatively", fontsize=11)
    left.legend(fontsize=9.5, loc="lower left", framealpha=0.9, edgecolor="none")

    confidence = getattr(ablation, "single_probability", None) is not None
    if confidence:
        drop = ablation.baseline_probability - ablation.single_probability.numpy()
        label = "drop in true-class probability"
    else:
        drop = ablation.baseline - ablation.single.numpy()
        label = "accuracy drop when zeroed alone"
    selectivity = ablation.selectivity.numpy()[units]
    right.axhline(0, color="#8c959f", lw=0.8)
    right.scatter(selectivity, drop, s=26, color="#8250df", alpha=0.75, edgecolors="white", linewidths=0.5)
    for i in np.argsort(-drop)[:3]:
        if drop[i] > 0:
            right.annotate(f"#{units[i]}", (selectivity[i], drop[i]), xytext=(4, 3), textcoords="offset points",
                           fontsize=9, color="#57606a")
    varies = len(units) > 2 and drop.std() > 0 and selectivity.std() > 0
    r = f" (r = {np.corrcoef(selectivity, drop)[0, 1]:.2f})" if varies else ""
    right.set_title(f"One unit zeroed alone{r}", fontsize=11)
    right.set_xlabel("class selectivity index", fontsize=10)
    right.set_ylabel(label + (" (points)" if confidence else ""), fontsize=10)
    if confidence:
        right.yaxis.set_major_formatter(lambda v, _: f"{v * 100:.1f}")
    else:
        right.yaxis.set_major_formatter(PercentFormatter(1.0))
    low, high = min(0.0, float(selectivity.min())), max(1.0, float(selectivity.max()))
    right.set_xlim(low - 0.03, high + 0.03)
    span = float(np.abs(drop).max())
    if span > 0:
        right.set_ylim(min(0.0, float(drop.min())) - 0.1 * span, max(0.0, float(drop.max())) + 0.15 * span)
    else:
        right.set_ylim(-0.01, 0.03)
        right.text(0.5, 0.55, "zeroing any one unit alone\nleaves the accuracy unchanged", transform=right.transAxes,
                   ha="center", va="center", fontsize=10, color="#57606a")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9.5)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
