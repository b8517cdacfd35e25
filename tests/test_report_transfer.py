"""The report's "How general is each layer" section: the probe on the shared held-out images, a caption that
follows the measured numbers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import underhood
from underhood.report import Context
from underhood.report.sections import activations as act_sections
from underhood.report.sections import transfer as sections


def _result(accuracy, random, pixels=0.12, own=1.0, chance=0.15):
    return SimpleNamespace(layers=list(accuracy), accuracy={"pixels": pixels, **accuracy}, random=random,
                           pixels=pixels, model_accuracy=own, chance=chance)


def test_the_section_probes_the_shared_held_out_images_and_says_what_it_measured(shapes_model, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(act_sections, "POPULATION", 160)
    monkeypatch.setattr(sections, "N_PROBE", {False: 120, True: 120})
    ctx = Context(model=shapes_model, spec="shapes", data=underhood.datasets.shapes(8, seed=3), out=tmp_path, seed=0)
    html = str(sections.probes(ctx))
    result = ctx.cache["transfer-probe"]
    assert (result.n_train, result.n_test) == (120, 120) and result.layers == ["features.3", "features.10",
                                                                               "features.17"]
    assert (tmp_path / "figures" / "transfer-probes.png").is_file()
    train, test = sections.probe_sets(ctx, 120)
    assert not any(bool((test.images == x).flatten(1).all(1).any()) for x in train.images)  # no held-out image
    last = result.layers[-1]
    for number in (f"{result.accuracy[last]:.0%}", f"{result.pixels:.0%}", f"{result.chance:.0%}",
                   f"{result.model_accuracy:.1%}"):
        assert number in html
    assert result.accuracy[last] > result.random[last] + 0.3


def test_the_reading_follows_the_numbers():
    rising = sections.reading(_result({"a": 0.2, "b": 0.6, "c": 1.0}, {"a": 0.15, "b": 0.17, "c": 0.16}))
    assert "rises with depth (a 20% -> b 60% -> c 100%)" in rising and "matches the model itself" in rising
    assert "not from the architecture" in rising and "nothing about these classes is linear" in rising
    dip = sections.reading(_result({"a": 0.5, "b": 0.4, "c": 0.9}, {}, own=0.95, pixels=0.4))
    assert "not at every step: b (40%) is below a (50%)" in dip and "5.0 points below the model itself" in dip
    assert "random" not in dip and "nothing about" not in dip
    flat = sections.reading(_result({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.45}))
    assert "do not get better with depth" in flat and "not from the architecture" not in flat


def test_the_transfer_grid_runs_only_with_full(shapes_model, tmp_path, monkeypatch):
    ctx = Context(model=shapes_model, spec="shapes", data=underhood.datasets.shapes(8, seed=3), out=tmp_path, seed=0)
    for name in ("transfer_curve", "finetune_curve"):
        monkeypatch.setattr(underhood.transfer, name, lambda *a, **k: pytest.fail("trained without --full"))
    assert sections.grid(ctx) is None  # the demo's default report does not pay for it: nothing trains
    assert not list(tmp_path.iterdir())


def test_the_transfer_grid_with_full(shapes_model, tmp_path, monkeypatch):
    ctx = Context(model=shapes_model, spec="shapes", data=underhood.datasets.shapes(8, seed=3), out=tmp_path, seed=0)
    monkeypatch.setattr(sections, "GRID", {"shapes": {"data": "shapes:320", "size": 16, "seeds": 2, "epochs": 1,
                                                      "finetune_epochs": 1, "depths": [1, 5], "n_cka": 64}})
    ctx.options.update(full=True, keep=tmp_path / "shards")
    html = str(sections.grid(ctx))
    result = ctx.cache["transfer-grid"]
    # every network is kept under the demo's resume folder, so the next report resumes from it
    assert json.loads((tmp_path / "shards" / "transfer-grid-shapes" / "runs.json").read_text())["runs"] == result.runs
    assert {r["treatment"] for r in result.runs} >= {"BnB", "BnB+", "AnB", "AnB+", "random", "baseB"}
    for name in ("transfer-grid", "transfer-generality"):
        assert (tmp_path / "figures" / f"{name}.png").is_file()
    from markupsafe import escape

    for line in result.statements():
        assert str(escape(line)) in html


def test_a_model_without_a_built_in_recipe_gets_frozen_against_fine_tuned(tmp_path, monkeypatch):
    import torch

    from tests.transformer_models import build

    vit = build("vit")
    monkeypatch.setattr(sections, "N_PROBE", {False: 40, True: 40})
    data = underhood.datasets.shapes(80, size=32, seed=3)
    data.labels = data.labels % 4
    data.classes = ["a", "b", "c", "d"]
    monkeypatch.setattr(sections, "population", lambda ctx: data)  # held-out images at the ViT's 32 pixels
    ctx = Context(model=vit, spec="vit", data=data, out=tmp_path, seed=0, options={"full": True})
    html = str(sections.grid(ctx))
    result = ctx.cache["transfer-finetune"]
    assert {r["treatment"] for r in result.runs} == {"frozen", "finetuned", "random"}
    assert "Frozen features are best at" in html and (tmp_path / "figures" / "transfer-finetune.png").is_file()
    assert not any(m._forward_hooks for m in vit.modules()) and isinstance(vit, torch.nn.Module)
