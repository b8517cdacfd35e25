"""The synthesis and adversarial sections' captions follow the measured numbers, and their figures keep one
colour meaning (green: correct / kept, red: wrong / changed by the attack; never red for "confident")."""

from __future__ import annotations

import torch
from matplotlib.colors import to_hex

from underhood.adversarial.base import AttackResult
from underhood.adversarial.evaluation import RobustnessCurve
from underhood.report.sections import adversarial as adv_sections
from underhood.report.sections import synthesis as syn_sections
from underhood.viz.adversarial import BAD, GOOD, fooling_figure
from underhood.viz.synthesis import class_images_figure, gallery_figure

CLASSES = ["circle", "square", "triangle"]


def _texts(fig) -> dict[str, str]:
    """Every text of a figure (titles included) and its colour."""
    out = {}
    for ax in fig.axes:
        for t in [ax.title, *ax.texts]:
            if t.get_text():
                out[t.get_text()] = to_hex(t.get_color())
    return out


def test_the_inversion_sentence_holds_for_every_layer_shown():
    dip = syn_sections._trend(["a", "b", "c"], [20.0, 11.0, 12.5])
    assert "worse with depth" not in dip and "does not fall at every step" in dip
    assert "the best is a, the worst b" in dip and "c (12.5 dB) is above b (11.0 dB)" in dip
    falling = syn_sections._trend(["a", "b", "c"], [20.0, 13.0, 12.5])
    assert "worse at every step in depth" in falling
    rising = syn_sections._trend(["a", "b"], [10.0, 12.0])
    assert "better with depth" in rising and "worse" not in rising


def test_class_images_are_green_when_the_model_sees_the_class_and_red_with_the_winner_otherwise():
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.5, 0.4], [0.2, 0.7, 0.1]])  # the third sees a square
    texts = _texts(class_images_figure(torch.rand(3, 3, 8, 8), probs, CLASSES, ncols=3))
    assert texts["circle\np = 0.60"] == GOOD  # the top class, however unconfident
    assert texts["square\np = 0.50"] == GOOD
    assert texts["triangle\np = 0.10\n(sees square)"] == BAD


def test_gallery_is_one_mosaic_with_every_title_in_its_colour():
    fig = gallery_figure(torch.rand(5, 1, 8, 8), [f"c{i}" for i in range(5)], ncols=3, title="five",
                         title_colors=[GOOD, BAD, GOOD, BAD, GOOD], cell=1.0)
    texts = _texts(fig)
    assert len(fig.axes) == 1 and [texts[f"c{i}"] for i in range(5)] == [GOOD, BAD, GOOD, BAD, GOOD]
    assert 2.8 < fig.get_figwidth() <= 3.0  # three columns of one inch (less the last gap), whatever the image size


def test_fooling_images_are_never_titled_red_or_green():
    n = 3
    x = torch.rand(n, 3, 8, 8)
    r = AttackResult(adversarial=x, perturbation=x, success=torch.tensor([True, False, False]),
                     labels=torch.zeros(n, dtype=torch.long), predicted=torch.tensor([0, 1, 0]),
                     confidence=torch.tensor([0.995, 0.9, 0.6]), norms={"l2": torch.ones(n), "linf": torch.ones(n)},
                     target=torch.tensor([0, 1, 2]))
    colours = set(_texts(fooling_figure(r, classes=CLASSES, ncols=3)).values())
    assert GOOD not in colours and BAD not in colours and len(colours) == 2  # reached / not reached


def _curve(acc: list[float]) -> RobustnessCurve:
    return RobustnessCurve(eps=torch.tensor([0, 2, 8]) / 255, accuracy=torch.tensor(acc), clean_accuracy=acc[0],
                           attack="pgd", norm="linf")


def test_the_robustness_caption_reads_the_curves():
    grid = [0, 2 / 255, 8 / 255]
    curves = {"m": _curve([1.0, 0.5, 0.1]), "robust": _curve([0.9, 0.85, 0.7])}
    text = adv_sections._robustness_text("m", curves, grid, "robust")
    assert "m: 100% clean, 50% at 2/255, 10% at 8/255" in text
    assert "clean accuracy 90% (10% below)" in text and "keeps 70% at 8/255, against 10% for m" in text
    assert "collapses" not in text and "far longer" not in text
    alone = adv_sections._robustness_text("m", {"m": curves["m"]}, grid, None)
    assert "adversarially trained" not in alone


def test_the_control_paragraph_claims_only_what_the_numbers_show():
    def run(acc: float, l2: float) -> AttackResult:
        n = 4
        ok = torch.tensor([i >= acc * n for i in range(n)])
        return AttackResult(adversarial=torch.zeros(n, 1, 2, 2), perturbation=torch.zeros(n, 1, 2, 2), success=ok,
                            labels=torch.zeros(n, dtype=torch.long), predicted=ok.long(), confidence=torch.ones(n),
                            norms={"l2": torch.full((n,), l2), "linf": torch.ones(n)})

    class Control:
        share = 0.0

    harmless = adv_sections._control_text(4, 1.0, {"noise": run(1.0, 3.0), "pgd": run(0.0, 2.0)}, Control(), 10)
    assert "its direction is" in harmless and "(none of them)" in harmless and "larger than" in harmless
    harmful = adv_sections._control_text(4, 1.0, {"noise": run(0.5, 1.0), "pgd": run(0.0, 2.0)}, Control(), 10)
    assert "its direction is" not in harmful and "no larger than" in harmful
