"""The transfer figures draw from results built by hand: every kind, one seed or three, with or without the
controls, and the text a reader needs (titles, treatments, levels) on them."""

from __future__ import annotations

import random

import pytest

from underhood.transfer import FinetuneResult, TransferResult
from underhood.viz import figure_to_png
from underhood.viz.transfer_curves import dissimilar_figure, finetune_figure, generality_figure, transfer_figure

LAYERS = ["features.3", "features.6", "features.10", "features.13", "features.17"]


def _result(seeds: int = 3, controls: bool = True, split: str = "random", drop: float = 0.2) -> TransferResult:
    rng = random.Random(seeds)
    runs = []
    for s in range(seeds):
        base = 0.9 + 0.02 * s
        runs += [{"treatment": "baseA", "depth": 0, "seed": s, "accuracy": 0.88},
                 {"treatment": "baseB", "depth": 0, "seed": s, "accuracy": base},
                 {"treatment": "reduced", "depth": 0, "seed": s, "fraction": 0.25, "accuracy": 0.6}]
        for d in range(1, 6):
            runs += [{"treatment": "BnB", "depth": d, "seed": s, "accuracy": base + rng.uniform(-0.01, 0.01)},
                     {"treatment": "BnB+", "depth": d, "seed": s, "accuracy": base + 0.02},
                     {"treatment": "AnB", "depth": d, "seed": s, "accuracy": base - drop * (d / 5) ** 3},
                     {"treatment": "AnB+", "depth": d, "seed": s, "accuracy": base + 0.015}]
            if controls:
                runs.append({"treatment": "random", "depth": d, "seed": s, "accuracy": base - 0.13 * d})
    cka = [{n: 0.9 - 0.05 * i for i, n in enumerate(LAYERS)} for _ in range(seeds)]
    probe = [{n: 0.3 + 0.12 * i for i, n in enumerate(LAYERS)} for _ in range(seeds)]
    halves = [{"A": ["circle", "triangle", "star", "crescent"], "B": ["square", "cross", "ring", "tee"]}] * seeds
    return TransferResult(arch="shapes", dataset="shapes", split=split, halves=halves, layers=LAYERS, runs=runs,
                          cka=cka, probe_ab=probe, probe_bb=probe, rf={n: str(4 + 6 * i) for i, n in enumerate(LAYERS)},
                          chance=0.27, settings={"finetune_epochs": 3})


def _texts(fig) -> str:
    parts = [t.get_text() for ax in fig.axes for t in ax.texts + [ax.xaxis.label, ax.yaxis.label]]
    parts += [ax.get_title(loc) for ax in fig.axes for loc in ("left", "center", "right")]
    parts += [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    parts += [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    parts += [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    parts += [t.get_text() for t in fig.texts]
    return "\n".join(parts)


def _boxes(fig, artists) -> list:
    renderer = _renderer(fig)
    return [a.get_window_extent(renderer) for a in artists]


def _renderer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return (fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)).get_renderer()


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("seeds,controls", [(3, True), (1, False)])
def test_the_grid_figure(seeds, controls):
    r = _result(seeds, controls)
    fig = transfer_figure(r, controls=controls)
    text = _texts(fig)
    for needed in ("BnB: B's blocks, frozen", "AnB+: A's blocks, fine-tuned", "baseB", "features.17", "rf 28",
                   f"{seeds} seed(s)"):
        assert needed in text, needed
    assert ("random blocks, frozen" in text) == controls
    assert "baseB on 25% of B" in text and "chance" in text  # drawn, or named below the axis
    assert figure_to_png(fig)[:4] == b"\x89PNG"
    # the legend sits in its own band under the axes and their tick labels: no point can hide behind it
    (legend,) = _boxes(fig, fig.legends)
    ax = fig.axes[0]
    assert legend.y1 <= ax.get_tightbbox(_renderer(fig)).y0 + 1 and legend.y0 >= 0
    # the level labels at the right edge (baseB, chance) do not overlap, however close the levels
    r.chance = r.base()[0] - 0.002
    fig = transfer_figure(r)
    levels = [t for t in fig.axes[0].texts if t.get_position()[0] > max(r.depths)]
    boxes = _boxes(fig, levels)
    assert len(boxes) == 2 and not _overlap(*boxes)
    assert r.figure().axes  # the result's own figure() is this one


def test_the_dissimilar_and_generality_figures():
    similar, dissimilar = _result(), _result(split="dissimilar", drop=0.05)
    dissimilar.halves = [{"A": ["square", "star"], "B": ["circle", "ring"]}] * 3
    fig = dissimilar_figure(similar, dissimilar)
    text = _texts(fig)
    assert len(fig.axes) == 3
    for needed in ("A = square, star", "random frozen filters", "transfer from a dissimilar half (AnB)",
                   "relative to each split's own baseB"):
        assert needed in text, needed
    fig = generality_figure(similar)
    text = _texts(fig)
    assert "Spearman(CKA, drop) = -1.00" in text  # CKA falls as the built-in drop grows: a perfect inverse rank
    assert "linear CKA, baseA vs baseB" in text and "AnB drop (points below baseB)" in text
    assert similar.figure("generality").axes
    no_random = _result(controls=False)
    assert dissimilar_figure(no_random, _result(controls=False)).axes  # without the control: its line is left out


def test_the_finetune_figure():
    runs = [{"treatment": t, "layer": n, "seed": s, "accuracy": a + da}
            for n, a in (("layer1", 0.5), ("layer2", 0.7), ("layer3", 0.8))
            for t, s, da in (("frozen", 0, 0.0), ("finetuned", 0, 0.05), ("finetuned", 1, 0.07), ("random", 0, -0.2))]
    r = FinetuneResult(layers=["layer1", "layer2", "layer3"], runs=runs, rf={"layer1": "7", "layer3": "global"},
                       chance=0.25, classes=["a", "b", "c", "d"], info={"n_train": 90, "n_test": 30})
    fig = finetune_figure(r)
    text = _texts(fig)
    for needed in ("frozen features + linear head", "fine-tuned up to the layer", "random copy, frozen", "rf 7",
                   "4 classes, 90 train / 30 test images", "chance 25.0", "76.0", "30.0"):
        assert needed in text, needed
    assert r.curve("finetuned")["layer2"][0] == pytest.approx(0.76)
    # close means (layer1: 50.0, 56.0 and 30.0; below, three within 2 points) keep their labels apart
    close = [{"treatment": t, "layer": n, "seed": 0, "accuracy": a}
             for n in ("a", "b") for t, a in (("frozen", 0.50), ("finetuned", 0.51), ("random", 0.49))]
    fig = finetune_figure(FinetuneResult(layers=["a", "b"], runs=close, chance=0.5, classes=["x", "y"]))
    ax = fig.axes[0]
    boxes = _boxes(fig, [t for t in ax.texts if t.get_text() in ("50.0", "51.0", "49.0")])
    assert len(boxes) == 6
    assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
