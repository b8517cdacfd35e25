"""The influence figures: what each draws (axes, images, the numbers given, colours), any k from 1 to 16, grey
images, figures small enough for the report, captions that do not overlap, and bad input named in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex

from underhood.core.errors import InputError
from underhood.data import shapes
from underhood.viz.adversarial import BAD, GOOD, INK
from underhood.viz.influence import (
    OTHER_CLASS,
    dog_fish_figure,
    influence_figure,
    lds_figure,
    mislabel_figure,
    signed,
    validation_scatter,
)
from underhood.viz.render import figure_to_png

DATA = shapes(40, seed=1)
NAMES = [DATA.classes[i] for i in DATA.labels.tolist()]


def _texts(fig) -> dict[str, str]:
    """Every text of a figure (titles, annotations, figure texts, legends) -> its colour."""
    from matplotlib.text import Text

    return {t.get_text(): to_hex(t.get_color()) for t in fig.findobj(Text) if t.get_text()}


def _lecture(k: int = 8, grey: bool = False, **kwargs):
    images = DATA.images[:, :1] if grey else DATA.images
    helpful = torch.linspace(5e-3, 1e-4, k)
    harmful = -torch.linspace(2e-3, 1e-5, k)
    return influence_figure(images[0], NAMES[0], kwargs.pop("query_pred", NAMES[0]), images[1:1 + k], helpful,
                            NAMES[1:1 + k], images[20:20 + k], harmful, NAMES[20:20 + k], **kwargs)


def test_signed_scores_are_short_and_keep_their_sign():
    assert [signed(v) for v in (0.0031, -0.00098, 12.5, 0.0)] == ["+3.1e-3", "-9.8e-4", "+1.2e1", "0"]


def test_lecture_figure_draws_the_query_then_each_image_framed_and_captioned():
    fig = _lecture(8, actual={0: 0.0046, 2: 0.0031}, query_pred="wrong")
    assert len(fig.axes) == 1 + 8 + 8
    texts = _texts(fig)
    assert "pred +5.0e-3" in texts and "actual +4.6e-3" in texts and "actual +3.1e-3" in texts
    assert "-2.0e-3" in texts and "+1.0e-4" in texts  # the last helpful score, bare (no retraining known)
    assert texts["predicted: wrong"] == BAD and texts[f"label: {NAMES[0]}"] == INK
    frames = [to_hex(ax.spines["top"].get_edgecolor()) for ax in fig.axes[1:]]
    assert frames == [GOOD] * 8 + [BAD] * 8
    for ax, name in zip(fig.axes[1:9], NAMES[1:9]):  # the label under each image: orange when another class
        caption = ax.texts[0]
        assert caption.get_text() == name
        assert to_hex(caption.get_color()) == (INK if name == NAMES[0] else OTHER_CLASS)
    assert "8 most helpful training images" in "".join(texts) and "8 most harmful" in "".join(texts)


def test_lecture_figure_works_for_one_image_and_for_grey_images():
    fig = _lecture(1, grey=True)
    assert len(fig.axes) == 3
    assert all(ax.images[0].get_array().ndim == 2 for ax in fig.axes)  # drawn grey, not as a fake RGB
    assert "1 most helpful training image" in "".join(_texts(fig))


def test_lecture_figure_wraps_sixteen_images_onto_two_rows_and_stays_report_sized():
    fig = _lecture(16)
    assert len(fig.axes) == 1 + 16 + 16
    rows = {round(ax.get_position().y0, 4) for ax in fig.axes[1:17]}
    assert len(rows) == 2
    for figure in (fig, _lecture(8, actual={0: 1e-3}), _lecture(6), _lecture(1)):
        inches = figure.get_tightbbox(FigureCanvasAgg(figure).get_renderer()).width  # what the PNG's crop keeps
        assert inches * 110 <= 1000  # the report shows PNGs at 110 dpi, natural width


def test_lecture_figure_renders_to_a_png_of_the_size_it_is_laid_out():
    import io

    from PIL import Image

    fig = _lecture(3, actual={0: 1e-3})
    inches = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer()).width
    width, _ = Image.open(io.BytesIO(figure_to_png(fig))).size
    assert abs(width - inches * 110) < 25


def test_lecture_captions_do_not_overlap_even_with_long_labels():
    long = ["a golden retriever puppy", "great white shark", "x", "cassette player"] * 2
    images = DATA.images
    fig = influence_figure(images[0], "x", "x", images[1:9], torch.full((8,), 0.0123), long, images[9:17],
                           torch.full((8,), -0.0045), long, actual={0: 0.011, 1: 0.01, 2: 0.009})
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for ax in fig.axes for t in ax.texts]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


@pytest.mark.parametrize(("change", "name"), [
    ({"helpful_scores": torch.zeros(7)}, "helpful_scores"),
    ({"harmful_labels": ["a"] * 3}, "harmful_labels"),
    ({"actual": {8: 0.1}}, "actual"),
    ({"actual_harmful": {-1: 0.1}}, "actual_harmful"),
    ({"query": torch.zeros(2, 8, 8)}, "query"),
    ({"helpful": torch.zeros(8, 2, 8, 8)}, "helpful"),
    ({"helpful_scores": torch.full((8,), float("nan"))}, "helpful_scores"),
])
def test_lecture_figure_names_the_bad_argument(change, name):
    args = {"query": DATA.images[0], "query_label": "a", "query_pred": None, "helpful": DATA.images[1:9],
            "helpful_scores": torch.ones(8), "helpful_labels": ["a"] * 8, "harmful": DATA.images[9:17],
            "harmful_scores": -torch.ones(8), "harmful_labels": ["b"] * 8}
    args.update(change)
    with pytest.raises(InputError, match=rf"^{name}: "):
        influence_figure(**args)


def test_mislabel_curve_marks_the_share_found_at_ten_percent_and_the_auc():
    fraction = torch.linspace(0, 1, 101)
    recalls = {"self-influence (exact)": (fraction * 8).clamp(max=1), "training loss": (fraction * 5).clamp(max=1)}
    fig = mislabel_figure(fraction, recalls, auc={"self-influence (exact)": 0.973}, flipped_share=0.1)
    assert len(fig.axes) == 1
    texts = _texts(fig)
    assert "80%" in texts and "50%" in texts  # recall at the 10% mark, written beside the curve
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "self-influence (exact): 80% at 10%, ROC AUC 0.973" in legend
    assert "training loss: 50% at 10%" in legend and "random (expected)" in legend and "perfect ranking" in legend
    assert "10% of the training labels flipped" in fig.axes[0].get_title()
    perfect = next(line for line in fig.axes[0].lines if line.get_label() == "perfect ranking")
    x, y = perfect.get_data()
    assert np.interp(5.0, x, y) == pytest.approx(50.0, abs=0.5)  # flipped_share 10%: half found at 5% inspected


def test_mislabel_curve_draws_a_given_random_ranking_instead_of_the_diagonal():
    fraction = torch.linspace(0, 1, 11)
    fig = mislabel_figure(fraction, {"loss": fraction.sqrt(), "random": fraction}, flipped_share=0.2)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert "random (expected)" not in labels and "random: 10% at 10%" in labels


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"recalls": {"loss": torch.zeros(5)}}, r"recalls\['loss'\]"),
    ({"flipped_share": 0.0}, "flipped_share"),
    ({"auc": {"nope": 0.5}}, "auc"),
    ({"fraction": torch.tensor([0.0, 2.0])}, "fraction"),
])
def test_mislabel_curve_names_the_bad_argument(kwargs, name):
    args = {"fraction": torch.linspace(0, 1, 11), "recalls": {"loss": torch.linspace(0, 1, 11)},
            "flipped_share": 0.1, **kwargs}
    with pytest.raises(InputError, match=rf"^{name}: "):
        mislabel_figure(**args)


def test_validation_scatter_is_symmetric_with_the_correlations_in_the_title():
    predicted = torch.tensor([3e-3, -2e-3, 1e-3, -5e-4])
    actual = torch.tensor([2.5e-3, -2.2e-3, 1.5e-3, -6e-4])
    fig = validation_scatter(predicted, actual, label="exact", pearson=0.991, spearman=0.984)
    (ax,) = fig.axes
    assert "exact" in ax.get_title() and "Pearson 0.991" in ax.get_title() and "Spearman 0.984" in ax.get_title()
    lo, hi = ax.get_xlim()
    assert ax.get_ylim() == (lo, hi) and lo == -hi and hi >= 3.0  # drawn in units of 1e-3
    assert "×1e-3" in ax.get_xlabel() and "×1e-3" in ax.get_ylabel()
    (points,) = ax.collections
    np.testing.assert_allclose(points.get_offsets(), torch.stack([predicted, actual], 1).numpy() * 1e3, rtol=1e-6)
    assert [to_hex(c) for c in points.get_facecolors()] == [GOOD, BAD, GOOD, BAD]  # by predicted sign


def test_validation_scatter_draws_one_panel_per_method_on_shared_axes():
    p, a = torch.randn(20, generator=torch.Generator().manual_seed(0)), torch.randn(20)
    fig = validation_scatter({"exact": (p, a), "cg": (p, a), "lissa": (2 * p, a), "ekfac": (p, a)},
                             pearson={"exact": 0.5, "cg": 0.25}, ncols=2)
    assert len(fig.axes) == 4
    assert "Pearson 0.500" in fig.axes[0].get_title() and "Pearson" not in fig.axes[2].get_title()
    assert len({ax.get_xlim() for ax in fig.axes}) == 1


@pytest.mark.parametrize(("args", "kwargs", "name"), [
    ((torch.zeros(3), torch.zeros(4)), {}, "actual"),
    ((torch.zeros(3),), {}, "actual"),
    (({"a": (torch.zeros(3), torch.zeros(3))}, torch.zeros(3)), {}, "actual"),
    (({"a": (torch.zeros(3), torch.zeros(2))},), {}, r"actual\['a'\]"),
    (({"a": (torch.zeros(3), torch.zeros(3))},), {"pearson": 0.9}, "pearson"),
    (({"a": (torch.zeros(3), torch.zeros(3))},), {"spearman": {"b": 0.9}}, "spearman"),
    ((torch.zeros(3), torch.zeros(3)), {"pearson": {"influence": 0.9}}, "pearson"),
])
def test_validation_scatter_names_the_bad_argument(args, kwargs, name):
    with pytest.raises(InputError, match=rf"^{name}: "):
        validation_scatter(*args, **kwargs)


def test_dog_fish_figure_shows_each_models_most_helpful_beside_the_query():
    images, labels = DATA.images[1:31], NAMES[1:31]
    distances = (images - DATA.images[0]).flatten(1).norm(dim=1)
    rbf = -distances  # the nearest helps most
    cnn = torch.tensor([1.0 if name == NAMES[0] else -1.0 for name in labels]) + torch.arange(30) * 1e-3
    fig = dog_fish_figure(DATA.images[0], NAMES[0], images, labels, distances,
                          {"RBF model on pixels": rbf, "CNN features": cnn})
    assert len(fig.axes) == 2 * (1 + 1 + 3)  # per model: scatter, query, top 3
    scatter = fig.axes[0]
    assert scatter.get_title() == "RBF model on pixels"
    nearest = int(distances.argmin())
    first = fig.axes[2].texts  # the RBF model's most helpful image: the pixel-nearest
    assert first[0].get_text() == f"1. {labels[nearest]}" and first[1].get_text() == signed(rbf[nearest])
    same = [name == NAMES[0] for name in labels]
    colors = [to_hex(c) for c in scatter.collections[0].get_facecolors()]
    assert sorted(colors) == sorted(GOOD if s else BAD for s in same)


def test_dog_fish_figure_works_on_grey_images_with_one_model():
    images = DATA.images[:12, :1]
    fig = dog_fish_figure(images[0], "a", images[1:], ["a", "b"] * 5 + ["a"], torch.rand(11), {"m": torch.rand(11)},
                          top=1)
    assert len(fig.axes) == 3 and fig.axes[1].images[0].get_array().ndim == 2


@pytest.mark.parametrize(("change", "name"), [
    ({"distances": torch.zeros(5)}, "distances"),
    ({"train_labels": ["a"] * 4}, "train_labels"),
    ({"scores": {"m": torch.zeros(3)}}, r"scores\['m'\]"),
    ({"scores": {}}, "scores"),
    ({"top": 0}, "top"),
])
def test_dog_fish_figure_names_the_bad_argument(change, name):
    args = {"query": DATA.images[0], "query_label": "a", "train_images": DATA.images[1:7], "train_labels": ["a"] * 6,
            "distances": torch.ones(6), "scores": {"m": torch.ones(6)}, **change}
    with pytest.raises(InputError, match=rf"^{name}: "):
        dog_fish_figure(**args)


def test_lds_figure_writes_each_score_and_its_interval():
    fig = lds_figure({"cg": 0.31, "tracin": 0.14}, intervals={"cg": (0.25, 0.37)}, n_subsets=50)
    (ax,) = fig.axes
    texts = _texts(fig)
    assert "0.31" in texts and "0.14" in texts and "50 retrained subsets" in ax.get_title()
    rows = {t.get_text(): t.get_position()[1] for t in ax.get_yticklabels()}
    assert rows["cg"] > rows["tracin"]  # the first method on top
    bars = ax.containers[0]
    assert [b.get_width() for b in bars] == pytest.approx([0.31, 0.14])
    with pytest.raises(InputError, match=r"^intervals: "):
        lds_figure({"cg": 0.3}, intervals={"ekfac": (0.1, 0.2)})
    with pytest.raises(InputError, match=r"^lds: "):
        lds_figure({})
