"""The transfer family's figure: linear-probe accuracy against depth, with its baselines.

It reads a :class:`underhood.transfer.ProbeResult`'s plain fields (no family import): ``accuracy``,
``random``, ``pixels``, ``model_accuracy``, ``chance``, ``layers`` and ``rf``.
"""

from __future__ import annotations

from typing import Any

from .render import subplots

TRAINED = "#1f5fa8"
RANDOM = "#8c8c8c"
MODEL = "#d62728"
PIXELS = "#2e8540"
CHANCE = "#555555"


def _tick(name: str, rf: dict[str, str]) -> str:
    if name == "pixels":
        return "pixels\n(8x8)"
    field = rf.get(name)
    return f"{name}\nrf {field}" if field and field != "global" else (f"{name}\nglobal" if field else name)


def _levels_and_axes(ax, levels: list, right: float, xs: list, names: list[str], rf: dict[str, str]) -> None:
    """The probe figures' horizontal levels ``(value, colour, style, width, label)``, labelled at the right edge and
    pushed apart so close levels stay readable, and their shared axes: layer ticks, 0-105%, grid, no top/right."""
    placed: list[float] = []
    for value, color, style, lw, label in sorted((lv for lv in levels if lv[0] is not None), key=lambda lv: lv[0]):
        ax.axhline(100 * value, color=color, ls=style, lw=lw, zorder=2, alpha=0.9)
        y = max(100 * value, placed[-1] + 4.5) if placed else 100 * value
        placed.append(y)
        ax.text(right + 0.05, y, f"{label} {100 * value:.1f}", color=color, fontsize=8, va="center", ha="left",
                clip_on=False)
    ax.set_xticks(xs, [_tick(n, rf) for n in names], fontsize=8.5)
    ax.set_xlim(-0.35, right)
    ax.set_ylim(0, 105)
    ax.set_ylabel("held-out probe accuracy (%)")
    ax.set_xlabel("layer (input to output; rf: receptive field in pixels)")
    ax.grid(axis="y", color="#e4e4e4", lw=0.8, zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def probe_figure(result: Any, *, title: str | None = None, figsize: tuple[float, float] | None = None):
    """Probe accuracy against layer: the trained model's line, its randomly re-initialised copy, the pixels and
    chance levels as horizontal lines and the model's own accuracy as a dashed line.

    x: ``"pixels"`` (when probed) then the layers in order, labelled with their receptive field when known.
    """
    names = list(result.accuracy)
    xs = list(range(len(names)))
    width = max(5.8, 1.25 * len(names) + 2.6)
    fig, ax = subplots(figsize=figsize or (width, 4.3))
    pct = [100 * result.accuracy[n] for n in names]
    ax.plot(xs, pct, "-o", color=TRAINED, lw=2.2, ms=7, zorder=4, label="trained model")
    for x, v in zip(xs, pct):
        ax.annotate(f"{v:.1f}", (x, v), textcoords="offset points", xytext=(0, 8), ha="center",
                    fontsize=8.5, color=TRAINED, fontweight="bold")
    if result.random:
        rx = [xs[names.index(n)] for n in result.random if n in names]
        ry = [100 * v for n, v in result.random.items() if n in names]
        if "pixels" in names and result.pixels is not None:  # untrained weights start from the same pixels
            rx, ry = [0, *rx], [100 * result.pixels, *ry]
        ax.plot(rx, ry, "--s", color=RANDOM, lw=1.6, ms=5.5, zorder=3, label="random re-initialised copy")
        for x, v in list(zip(rx, ry))[1 if "pixels" in names else 0:]:
            ax.annotate(f"{v:.1f}", (x, v), textcoords="offset points", xytext=(6, 4), ha="left",
                        fontsize=8, color=RANDOM)
    right = xs[-1] + 0.45 if xs else 0.5
    levels = [(result.model_accuracy, MODEL, "--", 1.4, "the model itself"),
              (result.pixels, PIXELS, ":", 1.4, "pixels"),
              (result.chance, CHANCE, "-", 0.8, "chance")]
    _levels_and_axes(ax, levels, right, xs, names, getattr(result, "rf", {}) or {})
    pool = getattr(result, "pool", "avg")
    ax.set_title(title or f"How general is each layer: linear probes on {pool}-pooled features "
                 f"({result.n_train} train / {result.n_test} test images)", fontsize=10, loc="left")
    ax.legend(fontsize=8.5, loc="upper left", bbox_to_anchor=(0.0, 0.9), frameon=False)
    fig.tight_layout()
    return fig



EPOCHS_CMAP = "viridis"
LEGEND_LINES = 10
"""Up to this many epochs get a legend entry each; more get a colour bar."""


def probe_history_figure(history: Any, *, title: str | None = None, figsize: tuple[float, float] | None = None):
    """Probe accuracy against layer, one line per epoch, coloured by epoch (viridis: dark early, light late).

    Reads a :class:`underhood.transfer.ProbeHistory`'s fields: ``epochs``, ``curves``, ``pixels``, ``chance``,
    ``model_accuracy``, ``rf``. The initialisation (epoch 0) is dashed; the last epoch is drawn thickest with its
    values written on; the pixels and chance levels and the trained model's own accuracy are horizontal lines.
    """
    from matplotlib.colors import Normalize

    from .render import colormap

    epochs = list(history.epochs)
    names = list(history.layers) or (list(history.curves[epochs[0]]) if epochs else [])
    xs = list(range(len(names)))
    width = max(6.4, 1.3 * len(names) + 3.4)
    fig, ax = subplots(figsize=figsize or (width, 4.5))
    cmap = colormap(EPOCHS_CMAP)
    norm = Normalize(vmin=min(epochs, default=0), vmax=max(max(epochs, default=1), 1))
    shade = lambda e: cmap(0.88 * norm(e))  # noqa: E731  (viridis' last tenth is too pale on white)
    for i, e in enumerate(epochs):
        curve = history.curves[e]
        pts = [(x, 100 * curve[n]) for x, n in zip(xs, names) if curve.get(n) is not None]
        last = i == len(epochs) - 1
        label = f"epoch {e}" + (" (initialisation)" if e == 0 else " (trained)" if last else "")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if e == 0 else "-", marker="o",
                color=shade(e), lw=2.4 if last else 1.5, ms=6.5 if last else 4.5, zorder=4 if last else 3,
                label=label)
        if last:
            for x, v in pts:
                ax.annotate(f"{v:.1f}", (x, v), textcoords="offset points", xytext=(0, 8), ha="center",
                            fontsize=8.5, color=[0.55 * c for c in shade(e)[:3]], fontweight="bold")
    right = xs[-1] + 0.45 if xs else 0.5
    own = history.model_accuracy.get(epochs[-1]) if epochs else None
    levels = [(own, MODEL, "--", 1.3, "the trained model"), (history.pixels, PIXELS, ":", 1.4, "pixels"),
              (history.chance, CHANCE, "-", 0.8, "chance")]
    _levels_and_axes(ax, levels, right, xs, names, getattr(history, "rf", {}) or {})
    if len(epochs) > LEGEND_LINES:  # a colour bar instead of a long legend
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm=Normalize(norm.vmin, norm.vmin + (norm.vmax - norm.vmin) / 0.88),
                                          cmap=cmap), ax=ax, fraction=0.035, pad=0.16)
        bar.set_label("epoch", fontsize=8.5)
        bar.ax.set_ylim(norm.vmin, norm.vmax)
        bar.ax.tick_params(labelsize=8)
    else:
        ax.legend(fontsize=8, loc="upper left", frameon=False, ncol=2 if len(epochs) > 5 else 1)
    pool = getattr(history, "pool", "avg")
    ax.set_title(title or f"Probes over training: linear probes on {pool}-pooled features, one line per snapshot "
                 f"({history.n_train} train / {history.n_test} test images)", fontsize=9.5, loc="left")
    fig.tight_layout()
    return fig


__all__ = ["probe_figure", "probe_history_figure"]
