"""The report's "How general is each layer" section: the probe on the shared held-out images, a caption that
follows the measured numbers."""

from __future__ import annotations

from types import SimpleNamespace

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
