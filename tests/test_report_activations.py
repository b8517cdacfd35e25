"""The report's model, weights and activations sections: the shared pass equals the family functions,
captions follow the measured numbers."""

from __future__ import annotations

import pytest
import torch

import underhood
from underhood.activations.embed import features
from underhood.activations.neighbors import neighbors
from underhood.activations.patches import scan
from underhood.report import Context
from underhood.report.sections import activations as sections
from underhood.report.sections import models as model_sections


@pytest.fixture
def ctx(shapes_model, tmp_path, monkeypatch):
    monkeypatch.setattr(sections, "POPULATION", 40)
    data = underhood.datasets.shapes(48, seed=3)
    return Context(model=shapes_model, spec="shapes", data=data, out=tmp_path, seed=0)


def test_the_shared_pass_gives_the_family_functions_results(ctx):
    model, data = ctx.model, sections.population(ctx)
    assert len(data) == 40 and torch.equal(data.images, ctx.data.images[:40])
    layers = ["input", "features.3", "features.10", "pool"]
    shared, direct = sections.population_features(ctx, layers), features(model, data, layers, batch_size=7)
    for name in layers:
        assert torch.allclose(shared[name], direct[name], atol=1e-5), name
    for layer in ("features.10", "features.17"):
        ids = torch.arange(8)
        state = sections.top_state(ctx, layer, ids, 9)
        reference = scan(model, data, layer, 9, channels=ids, batch_size=5)
        assert torch.allclose(state.values, reference.values, atol=1e-5)
        assert torch.equal(state.index, reference.index) and torch.equal(state.position, reference.position)
    logits = sections.population_pass(ctx)["logits"]
    with torch.no_grad():
        assert torch.allclose(logits, model(data.images), atol=1e-4)


def test_neighbours_from_the_shared_pass_equal_neighbors(ctx):
    from underhood.activations.neighbors import neighbors_of_features

    data = sections.population(ctx)
    feats = sections.population_features(ctx, ["input", "pool"])
    shared = neighbors_of_features({k: v[-3:] for k, v in feats.items()}, {k: v[:-3] for k, v in feats.items()},
                                   "pool", k=4)
    direct = neighbors(ctx.model, data.images[-3:], data.images[:-3], "pool", k=4, batch_size=8)
    assert torch.equal(shared.pixel_index, direct.pixel_index)
    assert torch.equal(shared.feature_index, direct.feature_index)
    assert torch.allclose(shared.feature_distance, direct.feature_distance, atol=1e-4)


def test_the_embedding_trend_holds_for_every_layer_shown():
    layers = ["input", "features.3", "features.10", "pool"]
    dip = sections._trend(layers, {"input": 0.15, "features.3": 0.14, "features.10": 0.45, "pool": 1.0})
    assert "not at every step" in dip and "features.3 (14%) is below input (15%)" in dip
    rising = sections._trend(layers, {"input": 0.15, "features.3": 0.3, "features.10": 0.45, "pool": 1.0})
    assert "layer after layer" in rising and "below" not in rising
    flat = sections._trend(layers, {"input": 0.5, "features.3": 0.6, "features.10": 0.45, "pool": 0.4})
    assert "no purer" in flat


def test_the_ablation_finding_follows_the_curves():
    class Fake:
        def __init__(self, **means):
            self.curves = {k.replace("_", "-"): torch.full((5,), v) for k, v in means.items()}

    assert "most class-selective units first" in sections._finding(Fake(random=0.7, selectivity=0.45,
                                                                          selectivity_low=0.6))
    assert "least class-selective" in sections._finding(Fake(random=0.7, selectivity=0.6, selectivity_low=0.45))
    assert "No order" in sections._finding(Fake(random=0.6, selectivity=0.595, selectivity_low=0.7))


def test_the_model_card_shows_the_recorded_test_accuracy_without_a_pass(ctx, monkeypatch):
    def no_pass(_):
        raise AssertionError("the model card ran a pass although the accuracy is recorded")

    monkeypatch.setattr(sections, "population_pass", no_pass)
    meta = ctx.model.meta
    html = str(model_sections.model_card(ctx))
    assert f"{meta['test_accuracy']:.2%}" in html and "recorded by the training run" in html
