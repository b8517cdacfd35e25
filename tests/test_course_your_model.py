"""``underhood course --model SPEC``: the lectures' figures on the user's own model (a zoo network, a file, a
factory, a built-in), each page's "On your model" part, and what the subject's fingerprint keeps apart."""

from __future__ import annotations

import json
import re

import pytest
import torch

from underhood.cli import main
from underhood.core.errors import InputError
from underhood.data import splits
from underhood.models import load_model
from underhood.report.course.base import DECKS, Subject, deck_experiments, discover, run_experiments
from underhood.report.course.pages import build

from .test_zoo import fake_torchvision  # noqa: F401  (the fixture: torchvision.models without a network)
from .transformer_models import build as tiny


def _yours() -> list[str]:
    return [e.id for e in discover().values() if e.subject]


def test_a_built_in_subject_is_shown_its_own_held_out_images_with_their_true_classes():
    model = load_model("digits", device="cpu")
    s = Subject.of("digits", model, n=3)
    held = splits.test_set("digits", n=3)
    assert torch.equal(s.images, held.images) and torch.equal(s.labels, held.labels)
    assert s.names == ["held-out #0", "held-out #1", "held-out #2"]
    with pytest.raises(InputError, match="^images: .*--images"):
        Subject.of("vit", tiny("vit"))                       # a model with no data of its own needs images
    with pytest.raises(InputError, match="^names: 1 names for 2 images"):
        Subject.of("vit", tiny("vit"), torch.rand(2, 3, 32, 32), ["a.png"])


def test_the_fingerprint_changes_with_the_weights_the_spec_and_the_images():
    x = torch.rand(2, 3, 32, 32)
    a, b = tiny("vit", seed=0), tiny("vit", seed=1)
    key = Subject.of("vit", a, x).key
    assert Subject.of("vit", a, x.clone()).key == key         # same weights, same pixels: same results
    assert Subject.of("vit", b, x).key != key
    assert Subject.of("other", a, x).key != key
    y = x.clone()
    y[0, 0, 0, 0] += 1e-3
    assert Subject.of("vit", a, y).key != key


def test_every_deck_has_figures_on_the_users_model_and_they_need_one(tmp_path):
    for key in DECKS:
        assert deck_experiments(key, subject=True), key
        assert not [e for e in deck_experiments(key) if e.subject]   # the built-in part stays apart
    with pytest.raises(InputError, match="^subject: 'your-filters'"):
        run_experiments(["your-filters"], tmp_path)


def test_a_vision_transformer_gets_every_figure_that_applies_and_one_line_for_the_rest(tmp_path):
    model = tiny("vit")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = ["your-filters", "your-top5-cam", "your-saliency"]   # the CNN of the next test runs them all
    out = run_experiments(ids, tmp_path, subject=Subject.of("tiny-vit", model, x, ["a.png", "b.png"]))
    assert "patch" in out["your-filters"]                       # the patch embedding is its first convolution
    cam = str(out["your-top5-cam"])
    assert cam.startswith("<p>Not shown for this model: CAM") and "<img" not in cam
    assert "data:image/png;base64," in out["your-saliency"] and "a.png, b.png" in out["your-saliency"]
    assert "Grad-CAM at the default layer" in out["your-saliency"]   # on the last block's tokens


def test_the_command_shows_a_torchvision_model_the_users_images_on_every_page(fake_torchvision, shape_pngs,  # noqa: F811
                                                                            tmp_path, monkeypatch):
    import underhood.report.course.pages as pages

    monkeypatch.setattr(pages, "deck_experiments",   # the built-in part as one cheap experiment (tested elsewhere)
                        lambda d, subject=False: deck_experiments(d, subject=True) if subject else
                        [e for e in deck_experiments(d) if e.id == "course-filters"])
    out = tmp_path / "course"
    assert main(["course", "cmp784", "ee559", "--quick", "--no-progress", "--model", "torchvision:tinynet",
                 "--weights", "none", "--images", *shape_pngs, "--out", str(out)]) == 0
    assert fake_torchvision == [None]                            # no download asked for
    for key in ("cmp784", "ee559"):
        page = (out / f"{key}.html").read_text()
        assert 'id="your-model"' in page and "torchvision:tinynet" in page and "shape0.png, shape1.png" in page
        ours = [e.id for e in deck_experiments(key, subject=True)]
        assert all(f'<section id="{i}">' in page for i in ours), key
        assert not re.search(r'<img[^>]+src="(?!data:)', page)
    assert "CAM of the 3 most probable classes" in (out / "cmp784.html").read_text()   # tinynet: pooling + linear
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "torchvision:tinynet" and len(manifest["images"]) == 2


def test_options_for_the_users_model_need_the_model(shape_pngs, tmp_path, capsys):
    assert main(["course", "csc413", "--images", *shape_pngs, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("underhood course: error: --images:") and "--model" in err[0]
    assert not (tmp_path / "x").exists()


def test_a_resumed_course_reuses_the_users_figures_only_for_the_same_model(tmp_path, monkeypatch):
    import underhood.report.course.pages as pages

    ran: list[str] = []
    real = pages.run

    def counting(lab, experiments, **kw):
        ran.extend(e.id for e in experiments)
        return real(lab, experiments, **kw)
    monkeypatch.setattr(pages, "run", counting)
    monkeypatch.setattr(pages, "deck_experiments",
                        lambda d, subject=False: [e for e in deck_experiments(d, subject=subject)
                                                  if e.id in ("your-filters", "course-filters")])
    keep = tmp_path / "keep"
    x = torch.rand(1, 3, 32, 32)
    one = Subject.of("vit", tiny("vit", seed=0), x)
    build(["diy"], tmp_path / "a", quick=True, progress=False, keep=keep, subject=one)
    assert ran == ["course-filters", "your-filters"]
    build(["diy"], tmp_path / "b", quick=True, progress=False, keep=keep, subject=Subject.of("vit", tiny("vit"), x))
    assert ran == ["course-filters", "your-filters"]              # the same model and images: nothing reruns
    assert "On your model" in (tmp_path / "b" / "diy.html").read_text()
    build(["diy"], tmp_path / "c", quick=True, progress=False, keep=keep,
          subject=Subject.of("vit", tiny("vit", seed=1), x))
    assert ran == ["course-filters", "your-filters", "your-filters"]   # other weights: only the user's part reruns
    assert (keep / "quick-seed0" / f"subject-{one.key}" / "your-filters.json").is_file()
