"""Commands of the synthesis family: outputs equal the library's, errors are one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import underhood
from underhood.cli import EXAMPLES
from underhood.cli import main as _main
from underhood.core.results import Collection, load
from underhood.synthesis import (
    Inversion,
    Priors,
    RenderResult,
    StyleResult,
    caricature,
    deep_dream,
    invert,
    render,
    style_transfer,
)
from underhood.synthesis import objectives as O

from .conftest import DEVICE, same

COMMANDS = ("render", "dream", "invert", "caricature", "style")
pytestmark = pytest.mark.usefixtures("deterministic")
ITERATED = 1e-3
"""GPU tolerance of optimised images, in pixels (see conftest.same): a quarter of one 8-bit grey level; losses
and probabilities get a relative 1e-3."""


def main(argv: list[str]) -> int:
    """The command line on DEVICE, where the library side's model is (``--device auto`` would pick CUDA)."""
    return _main([*argv, "--device", DEVICE])


@pytest.fixture(scope="module")
def model():
    return underhood.load_model("shapes", device=DEVICE)


@pytest.fixture
def images(shape_pngs):
    return shape_pngs


def _loaded(path):
    from underhood.data.io import load_image

    return load_image(path, size=(64, 64))


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_every_command_has_an_example_and_help(capsys):
    for name in COMMANDS:
        assert EXAMPLES[name].startswith("underhood " + name)
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        assert "example:" in text and "--out" in text and "--seed" in text and "--steps" in text


def test_render_channels_equals_the_library(tmp_path, model):
    out = tmp_path / "r"
    assert main(["render", "--layer", "features.9", "--channels", "0:3", "--steps", "3", "--no-progress",
                 "--out", str(out)]) == 0
    saved = load(out)
    ref = render(model, [O.channel("features.9", c) for c in range(3)], steps=3, seed=0)
    assert isinstance(saved, RenderResult) and saved.trace.shape == (3, 3)
    same(saved.images, ref.images, atol=1e-6, rtol=1e-5, gpu_atol=ITERATED)
    same(saved.trace, ref.trace, atol=1e-5, rtol=1e-5, gpu_rtol=1e-3)
    same(saved.final, ref.final, atol=1e-5, rtol=1e-5, gpu_rtol=1e-3)
    assert saved.info["titles"] == ["features.9:0", "features.9:1", "features.9:2"]
    m = _manifest(out)
    assert m["ids"] == [0, 1, 2] and m["objective"] == "channel" and m["command"] == "render"
    assert all((out / f).exists() for f in m["files"]) and len([f for f in m["files"] if f.startswith("images/")]) == 3
    assert {"render.png", "trace.png"} <= set(m["files"]) and not (out / "render.safetensors").exists()


def test_render_classes_by_name_with_priors_on_pixels(tmp_path, model):
    out = tmp_path / "c"
    assert main(["render", "--class", "star,circle", "--steps", "2", "--param", "pixels", "--priors",
                 "tv=1e-3,blur=0.5", "--no-progress", "--out", str(out)]) == 0
    saved = load(out)
    ids = [model.classes.index("star"), model.classes.index("circle")]
    ref = render(model, [O.class_logit(k) for k in ids], steps=2, param="pixels",
                 priors=Priors.parse("tv=1e-3,blur=0.5"))
    same(saved.images, ref.images, atol=1e-6, rtol=1e-5, gpu_atol=ITERATED)
    with torch.no_grad():
        probs = model(ref.images).softmax(1)
    same(saved.info["probabilities"], probs, atol=1e-5, rtol=1e-5, gpu_rtol=1e-3)
    assert _manifest(out)["priors"] == str(Priors.parse("tv=1e-3,blur=0.5"))


def test_render_facets_are_different_images(tmp_path):
    out = tmp_path / "f"
    assert main(["render", "--layer", "features.16", "--channels", "2", "--facets", "2", "--steps", "3",
                 "--no-progress", "--out", str(out)]) == 0
    saved = load(out)
    assert isinstance(saved, RenderResult) and saved.trace.shape == (3, 2)
    images = saved.images
    assert images.shape[0] == 2 and not torch.allclose(images[0], images[1])


def test_dream_invert_caricature_equal_the_library(tmp_path, model, images):
    x = torch.cat([_loaded(p) for p in images])
    out = tmp_path / "d"
    assert main(["dream", *images, "--layer", "features.6", "--steps", "2", "--octaves", "2", "--no-progress",
                 "--out", str(out)]) == 0
    dreams = load_file(str(out / "dream.safetensors"))["dreams"]
    same(dreams, deep_dream(model, x, "features.6", octaves=2, steps=2), atol=1e-6, rtol=1e-5, gpu_atol=ITERATED)

    out = tmp_path / "i"
    assert main(["invert", images[0], "--layer", "features.2,features.6", "--steps", "3", "--seeds", "2",
                 "--no-progress", "--out", str(out)]) == 0
    saved = load(out)
    ref = invert(model, x[:1], "features.6", seeds=(0, 1), steps=3)
    assert isinstance(saved, Collection) and list(saved.items) == ["features.2", "features.6"]
    assert isinstance(saved["features.6"], Inversion) and saved["features.6"].layer == "features.6"
    same(saved["features.6"].images, ref.images, atol=1e-6, rtol=1e-5, gpu_atol=ITERATED)
    same(saved["features.6"].psnr, ref.psnr, atol=1e-4, rtol=1e-5, gpu_atol=1e-2)  # dB
    same(saved["features.2"].original, x[:1])
    summary = json.loads((out / "invert.json").read_text())
    assert set(summary) == {"features.2", "features.6"}
    assert (out / "invert.png").exists()

    out = tmp_path / "k"
    assert main(["caricature", images[1], "--layer", "features.6", "--steps", "2", "--no-progress",
                 "--out", str(out)]) == 0
    saved = load_file(str(out / "caricature.safetensors"))["caricatures"]
    same(saved, caricature(model, x[1:], "features.6", steps=2), atol=1e-6, rtol=1e-5, gpu_atol=ITERATED)


def test_style_equals_the_library(tmp_path, model, images):
    out = tmp_path / "s"
    assert main(["style", images[0], images[1], "--steps", "2", "--no-progress", "--out", str(out)]) == 0
    saved = load(out)
    ref = style_transfer(model, _loaded(images[0]), _loaded(images[1]), steps=2)
    assert isinstance(saved, StyleResult) and saved.layers == ref.layers
    same(saved.image, ref.image, atol=1e-6, rtol=1e-5, gpu_atol=ITERATED)
    same(saved.trace["total"], ref.trace["total"], atol=1e-5, rtol=1e-5, gpu_rtol=1e-3)
    assert _manifest(out)["layers"] == ref.layers


@pytest.mark.parametrize("argv, message", [
    (["render"], "--layer / --class"),
    (["render", "--layer", "features.9", "--class", "0"], "--layer / --class"),
    (["render", "--class", "hexagon"], "--class"),
    (["render", "--class", "99"], "--class"),
    (["render", "--layer", "features.99"], "features.99"),
    (["render", "--layer", "features.9", "--channels", "9:2"], "--channels"),
    (["render", "--layer", "features.9", "--priors", "tvv=1"], "priors"),
    (["render", "--layer", "features.9", "--priors", "blur=0.5"], "priors"),
    (["render", "--layer", "features.9", "--steps", "0"], "--steps"),
    (["dream", "missing.png"], "missing.png"),
    (["dream", "IMG", "--octave-scale", "1"], "--octave-scale"),
    (["invert", "IMG", "--layer", "nope"], "nope"),
    (["style", "IMG", "IMG", "--content-layers", "nope", "--steps", "1"], "nope"),
])
def test_bad_input_is_one_line(argv, message, images, capsys):
    argv = [images[0] if a == "IMG" else a for a in argv]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
