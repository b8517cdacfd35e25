"""The attribution sections of the report: shared passes give the same numbers, tables and captions
say what the numbers say, and the figures are laid out to be read."""

from __future__ import annotations

import re

import pytest
import torch

import underhood
from underhood import attribution as A
from underhood.attribution.evaluate import COLUMNS, cam_layer, evaluate
from underhood.attribution.explain import explain
from underhood.attribution.metrics import curves_for_methods, deletion_curve, insertion_curve, model_randomization
from underhood.report.base import table
from underhood.report.sections import attribution as S
from underhood.viz.attribution import GROUPS, LABELS, PALETTE, attribution_figure, line_style, strips_figure

# ------------------------------------------------------------------ report.base.table(best=...)


def test_table_marks_the_best_cell_of_each_column_by_its_direction():
    html = str(table(["m", "up", "down"], [["a", "0.50", "0.30"], ["b", "0.90", "-"], ["c", "0.90", "0.10"]],
                     numeric=(1, 2), best={1: "max", 2: "min"}))
    cells = re.findall(r"<td([^>]*)>([^<]*)</td>", html)
    best = [(i // 3, i % 3) for i, (attrs, _) in enumerate(cells) if "best" in attrs]
    assert best == [(1, 1), (2, 1), (2, 2)]          # both tied maxima, the minimum, never the "-"
    assert 'class="num best"' in html and 'title="best in this column"' in html


def test_table_without_best_is_unchanged_and_a_bad_direction_is_refused():
    html = str(table(["m", "x"], [["a", "1"]], numeric=(1,)))
    assert "best" not in html and 'class="num"' in html
    with pytest.raises(ValueError, match="best"):
        table(["m", "x"], [["a", "1"]], best={1: "largest"})


def test_report_css_styles_the_best_cells():
    from pathlib import Path

    css = (Path(underhood.__file__).parent / "report" / "templates" / "report.css").read_text()
    assert "td.best" in css and ".trust-table th" in css


# ------------------------------------------------------------------ shared passes, same numbers


def test_curves_for_methods_equal_one_curve_per_map(shapes_model):
    x = underhood.datasets.shapes(3, seed=5).images
    maps = [A.saliency(shapes_model, x), A.gradcam(shapes_model, x), torch.rand(3, 1, 64, 64)]
    deletion, insertion = curves_for_methods(shapes_model, x, maps, steps=6, batch_size=16)
    assert deletion.shape == insertion.shape == (3, 3, 7)
    for j, m in enumerate(maps):
        one = {"steps": 6, "batch_size": 16}
        assert torch.allclose(deletion[j], deletion_curve(shapes_model, x, m, **one).curves, atol=1e-6)
        assert torch.allclose(insertion[j], insertion_curve(shapes_model, x, m, **one).curves, atol=1e-6)


def test_evaluate_with_given_maps_scores_as_it_computes_them(shapes_model):
    data = underhood.datasets.shapes(4, seed=8)
    methods = ["saliency", "gradcam", "occlusion"]
    opts = {"gradcam": {"layer": cam_layer(shapes_model)}, "occlusion": {"window": 32, "stride": 32, "batch_size": 16}}
    plain = evaluate(shapes_model, data, methods, n=4, steps=4, options=opts, sanity_n=2)
    maps = explain(shapes_model, data.images, methods, **opts)
    shared = evaluate(shapes_model, data, methods, n=4, steps=4, options=opts, sanity_n=2, maps=maps)
    for m in methods:
        for c in plain.values[m]:
            assert shared.values[m][c] == pytest.approx(plain.values[m][c], abs=1e-5), (m, c)
    assert plain.settings["sanity_n"] == 2
    with pytest.raises(underhood.UnderhoodError, match="maps"):
        evaluate(shapes_model, data, methods, n=4, steps=4, maps={"saliency": maps["saliency"][:2]})


def test_model_randomization_by_block_ends_at_the_fully_randomised_model(shapes_model):
    x = underhood.datasets.shapes(1, seed=2).images
    blocks = model_randomization(shapes_model, x, "saliency", by="block")
    layers = model_randomization(shapes_model, x, "saliency")
    # one stage per weight layer, output side first, each with the batch norm after it
    assert blocks.stages[1:] == ["classifier", "features.14", "features.11", "features.7", "features.4", "features.0"]
    assert len(blocks.stages) < len(layers.stages)
    assert torch.equal(blocks.maps[-1], layers.maps[-1])
    with pytest.raises(underhood.UnderhoodError, match="by"):
        model_randomization(shapes_model, x, "saliency", by="stage")


# ------------------------------------------------------------------ captions chosen by the numbers


class _Ev:
    def __init__(self, values):
        self.values = values


def test_trust_text_names_the_method_the_numbers_favour():
    ev = _Ev({"saliency": {"pointing": 0.25, "model_rand": 0.10, "deletion": 0.30, "insertion": 0.5},
              "gradcam": {"pointing": 0.75, "model_rand": 0.62, "deletion": 0.20, "insertion": 0.7}})
    text = S._trust_text(ev)
    assert "Grad-CAM peaks on the object most often (0.75" in text
    assert "Saliency's maps change most when the weights are randomised (rank correlation 0.10), Grad-CAM's least" \
        in text
    assert "0.5 or more after randomising every weight (Grad-CAM)" in text
    tied = _Ev({**ev.values, "lime": {"pointing": 0.75}})
    assert "Grad-CAM and LIME peaks on the object most often (0.75" in S._trust_text(tied)
    flipped = _Ev({k: {**v, "model_rand": 0.7 - v["model_rand"]} for k, v in ev.values.items()})
    assert "Grad-CAM's maps change most" in S._trust_text(flipped)


def test_strip_text_follows_the_last_stage():
    assert S._strip_text({"gradcam": 0.42, "guided_backprop": 0.08}).startswith(
        "With every block re-initialised, Guided backprop changes most (ρ 0.08) and Grad-CAM least (ρ 0.42)")
    assert "still shows the image's edges" in S._strip_text({"gradcam": 0.1, "guided_backprop": 0.8})
    assert "still shows" not in S._strip_text({"gradcam": 0.1, "guided_backprop": 0.3})
    assert S._shortcut_text({"lime": 0.6, "saliency": 0.05}).startswith("LIME puts the most on the marker (60%")


def test_trust_headers_cover_every_column_in_plain_words():
    assert set(S.HEADERS) == set(COLUMNS)
    for header, sentence in S.HEADERS.values():
        assert "_" not in header and sentence.endswith(".")


def test_pick_is_class_balanced_and_nested():
    data = underhood.datasets.shapes(40, seed=3)
    eight, four = S._pick(data, 8), S._pick(data, 4)
    assert eight[:4] == four and len(set(data.labels[eight].tolist())) == min(8, len(data.classes))
    assert len(S._pick(data, 40)) == 40


# ------------------------------------------------------------------ figures


def test_groups_partition_the_methods_and_each_curve_has_its_own_look():
    members = [m for g in GROUPS.values() for m in g]
    assert sorted(members) == sorted(LABELS)
    looks = {line_style(m) for m in members}
    assert len(looks) == len(members) and len({c for c, _ in looks}) == len(members) <= len(PALETTE)


def test_grid_figures_are_one_picture_with_titles_beside_the_rows():
    x = torch.rand(3, 3, 16, 16)
    fig = attribution_figure(x, {"saliency": torch.randn(3, 3, 16, 16), "gradcam": torch.rand(3, 1, 16, 16)},
                             row_titles=["a 90%", "b 80%", "c 70%"], row_colors=["#1a7f37", "#cf222e", "#1a7f37"])
    (ax,) = fig.axes
    texts = {t.get_text(): t for t in ax.texts}
    assert {"input", "Saliency", "Grad-CAM", "a 90%", "b 80%", "c 70%"} <= set(texts)
    assert texts["b 80%"].get_rotation() == 90 and texts["b 80%"].get_color() == "#cf222e"
    # a row title sits beside its own row: left of the images, vertically inside the row
    assert texts["a 90%"].get_position()[0] < 0 and 0 < texts["b 80%"].get_position()[1] - 16 < 16 + 4
    strips = strips_figure(x[0], {"saliency": list(torch.randn(3, 3, 3, 16, 16)[0])}, ["trained", "+ fc", "+ conv"],
                           notes={"saliency": ["", "ρ 0.50", "ρ 0.10"]})
    assert {"ρ 0.50", "Saliency", "+ conv"} <= {t.get_text() for t in strips.axes[0].texts}
    assert all(t.get_fontsize() >= 9 for t in strips.axes[0].texts)
