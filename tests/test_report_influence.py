"""The influence sections of the report: they render, write their figures, state the convention and the measured
numbers, and share one feature pass."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

import underhood
from underhood.influence import influence
from underhood.report import Context
from underhood.report.sections import influence as S


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    from underhood.models import load_model

    mp = pytest.MonkeyPatch()
    for name, n in (("N_TRAIN", 120), ("N_MISLABEL", 120), ("N_CONVEX", 120)):
        mp.setattr(S, name, {False: n, True: n})
    model = load_model("shapes", device="cpu")
    ctx = Context(model=model, spec="shapes", data=underhood.datasets.shapes(16, seed=3),
                  out=tmp_path_factory.mktemp("report"), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        html = {fn.__name__: str(fn(ctx)) for fn in (S.examples, S.mislabels, S.validation)}
    yield ctx, html
    mp.undo()


def _captions(html: str) -> list[str]:
    return re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)


def test_every_section_writes_its_figures(rendered):
    ctx, html = rendered
    assert ctx.figures == ["figures/influence-query-0.png", "figures/influence-query-1.png",
                           "figures/influence-mislabel.png", "figures/influence-validation.png"]
    for name in ctx.figures:
        assert (ctx.out / name).read_bytes()[:4] == b"\x89PNG"
    assert all("<img" in h for h in html.values())


def test_the_captions_state_the_convention_and_measured_numbers(rendered):
    ctx, html = rendered
    examples = _captions(html["examples"])
    assert len(examples) == 2
    for caption in examples:
        assert "predicted change of the query&#39;s loss if that training image were removed" in caption
        assert "positive = the image helped" in caption
        assert re.search(r"changed the query&#39;s loss by [+-]\d\.\d\de-\d\d, [+-]", caption)
        assert re.search(r"same sign in \d of 3", caption)
    assert "ROC AUC" in _captions(html["mislabels"])[0]
    val = _captions(html["validation"])[0]
    assert re.search(r"exact: Pearson (0\.9\d\d|1\.000), Spearman", val) and "positive = helpful" in val


def test_the_shared_features_give_the_model_s_scores(rendered):
    ctx, _ = rendered
    shared = ctx.cache["influence"]
    assert shared["head"] == "classifier" and len(shared["train"]) == 120
    x, y, train = ctx.data.images[:2], ctx.data.labels[:2], shared["train"][:40]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = influence(ctx.model, train, (x, y), method="exact", params="classifier", damping=S.DAMPING,
                          progress=False, fragility=False)
        head = influence(shared["problem"].model, (shared["features"][:40], train.labels),
                         (shared["problem"].prepare(x), y), method="exact", damping=S.DAMPING, progress=False,
                         fragility=False)
    torch.testing.assert_close(head.scores, whole.scores, rtol=1e-4, atol=1e-8)


def test_the_sign_sentence_reads_the_numbers():
    assert S._sign_text([1.0, 2.0, -1.0], [0.5, 1.0, 0.5]) == "same sign in 2 of 3, actual / predicted 0.17 on average"
    assert S._sign_text([1.0, 2.0], [0.5, 1.0]) == "same sign in 2 of 2, actual / predicted 0.50 on average"


def test_a_model_without_a_known_training_set_gets_no_examples_section(tmp_path):
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    ctx = Context(model=model, spec="tiny", data=underhood.datasets.shapes(2, seed=1, size=16), out=tmp_path)
    assert S.examples(ctx) is None and ctx.figures == []
