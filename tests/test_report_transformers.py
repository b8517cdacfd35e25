"""The report on the transformers users bring (tiny ViT and Swin, 8 classes at 64x64): blocks for stages,
tokens read over C, ReLU-rule and CAM methods left out with their reason, every section rendered."""

from __future__ import annotations

import pytest
import torch

import underhood
from underhood.activations.embed import features
from underhood.activations.maps import embedding_layers, maps
from underhood.core.layers import last_hidden, stages
from underhood.report import Context, build
from underhood.report.sections import activations as act_sections
from underhood.report.sections import attribution as attr_sections

from .transformer_models import TinySwin, TinyViT
from .transformer_models import build as build_tiny

SECTIONS = ["feature-maps", "top-patches", "ablation", "attribution", "synthesis-units", "synthesis-dream"]


def _model(kind: str):
    torch.manual_seed(0)
    net = (TinyViT if kind == "vit" else TinySwin)(classes=8, size=64).eval()
    return underhood.load_model(net, device="cpu")


def _ctx(kind: str, tmp_path, monkeypatch) -> Context:
    monkeypatch.setattr(act_sections, "POPULATION", 24)
    data = underhood.datasets.shapes(24, seed=3)
    return Context(model=_model(kind), spec=f"tiny-{kind}", data=data, out=tmp_path, seed=0,
                   options={"n_attribution": 2, "k_maps": 4})


@pytest.mark.parametrize("kind, blocks", [("vit", ["blocks.0", "blocks.1"]), ("vit-reg", ["blocks.0", "blocks.1"]),
                                          ("swin", ["stage1.0", "stage1.1", "stage2.0"]),
                                          ("convnext", ["stages.0", "stages.1"])])
def test_stages_of_a_transformer_are_its_blocks_and_last_hidden_the_last(kind, blocks):
    model = build_tiny(kind)
    assert stages(model) == blocks and last_hidden(model) == blocks[-1]  # not the patch embedding / stem
    if kind in ("swin", "convnext"):  # any size the model takes
        assert stages(model, input_size=(3, 64, 64)) == blocks


def test_stages_of_a_transformer_need_an_input_size():
    from underhood.core.errors import InputError

    model = build_tiny("vit")
    del model.input_size
    with pytest.raises(InputError, match="input_size"):
        stages(model)
    assert stages(model, input_size=(3, 32, 32)) == ["blocks.0", "blocks.1"]


def test_stages_of_the_built_in_cnns_are_unchanged():
    expected = {"shapes": (["features.3", "features.10", "features.17"], "pool"),
                "shapes-resnet": (["layer1.0", "layer2.0", "layer3.0"], "avgpool"),
                "digits": (["pool1", "pool2"], "fc2")}
    for spec, (names, hidden) in expected.items():
        model = underhood.load_model(spec, device="cpu")
        assert (stages(model), last_hidden(model)) == (names, hidden), spec


def test_features_of_tokens_are_channel_means_over_the_patch_positions():
    model = _model("vit")
    x = underhood.datasets.shapes(6, seed=1).images
    f = features(model, x, ["blocks.1", "blocks.0"], batch_size=4)
    view = maps(model, x, ["blocks.1", "blocks.0"])  # [N, 32, 8, 8]: the class token left out
    for name in ("blocks.1", "blocks.0"):
        assert f[name].shape == (6, 32)
        assert torch.allclose(f[name], view[name].mean((2, 3)), atol=1e-5)
    assert torch.allclose(features(model, x, "blocks.1", pool="max")["blocks.1"], view["blocks.1"].amax((2, 3)),
                          atol=1e-5)
    assert features(model, x, "blocks.1", pool="flatten")["blocks.1"].shape == (6, 65 * 32)  # every value


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_the_shared_pass_reads_token_and_channels_last_layers_over_channels(kind, tmp_path, monkeypatch):
    ctx = _ctx(kind, tmp_path, monkeypatch)
    data = act_sections.population(ctx)
    names = [n for n in embedding_layers(ctx.model) if n != "input"]
    shared = act_sections.population_pass(ctx)
    direct = features(ctx.model, data, names, batch_size=7)
    for name in names:
        view = maps(ctx.model, data.images, name)[name]
        assert shared["mean"][name].shape == (len(data), view.shape[1])
        assert torch.allclose(shared["mean"][name], direct[name], atol=1e-5)
        best, at = view.flatten(2).max(2)
        assert torch.allclose(shared["max"][name], best, atol=1e-5)
        assert torch.equal(shared["where"][name], torch.stack([at // view.shape[3], at % view.shape[3]], -1))


def test_the_attribution_choices_leave_out_what_does_not_apply_and_say_why(tmp_path, monkeypatch, shapes_model):
    from underhood.attribution.evaluate import applicable_methods
    from underhood.attribution.registry import get

    vit = _ctx("vit", tmp_path, monkeypatch)
    methods, overrides, notes = attr_sections._choices(vit)
    for gone in ("deconvnet", "guided_backprop", "guided_gradcam", "cam"):
        assert gone not in methods
    assert {"saliency", "gradcam", "occlusion", "lime"} <= set(methods)
    assert notes["left out"].startswith("Left out for this model: CAM needs") and "(it uses GELU" in notes["left out"]
    # Grad-CAM at the last block is blank (the head reads the class token only): the block before is used
    x = vit.data.images[:2]
    assert not get("gradcam")(vit.model, x, layer="blocks.1").any()
    assert notes["layer"].startswith("at blocks.0: at blocks.1, the last block")
    assert get("gradcam")(vit.model, x, layer="blocks.0").any() and "blocks.0" in notes["layer"]

    swin = _ctx("swin", tmp_path / "swin", monkeypatch)
    methods, overrides, notes = attr_sections._choices(swin)
    assert "cam" in methods and "guided_backprop" not in methods and "CAM needs" not in notes["left out"]
    assert "layer" not in notes  # CAM's own layer: the norm whose spatial mean the head reads

    cnn = Context(model=shapes_model, spec="shapes", data=underhood.datasets.shapes(4, seed=3), out=tmp_path)
    methods, overrides, notes = attr_sections._choices(cnn)
    assert methods == applicable_methods(shapes_model) and overrides == attr_sections.LIGHTER and notes == {}


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_the_report_sections_render_on_a_transformer_at_its_blocks(kind, tmp_path, monkeypatch):
    ctx = _ctx(kind, tmp_path, monkeypatch)
    html = build(ctx, tmp_path / "report.html", progress=False, only=SECTIONS).read_text()
    for sid in SECTIONS:
        assert f'id="{sid}"' in html, sid
    blocks = stages(ctx.model)
    shown = {f.split("/")[-1] for f in ctx.figures}
    assert {f"top-patches-{blocks[-1]}.png", f"units-{blocks[-1]}.png"} <= shown
    assert not any(name.endswith("-patch.png") for name in shown)  # never the patch embedding
    assert f"as the {len(act_sections.population_pass(ctx)['mean'][blocks[-1]][0])} channels of {blocks[-1]}" in html
    assert "Left out for this model" in html and "GELU" in html
    assert "guided-backprop rule acts at ReLUs" in html  # the top patches' pattern is the plain gradient
    if kind == "vit":
        assert "all at blocks.0: at blocks.1, the last block" in html
        assert "at the model&#39;s own 64x64 size, in one octave" in html  # a fixed number of tokens
        assert "the block&#39;s output" in html  # the units are rendered at the blocks, not at a convolution
    else:
        assert "all at layer norm (the feature map the classifier averages)" in html
        assert "over 3 octaves of scale" in html  # Swin takes other sizes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_the_whole_report_runs_on_a_transformer(kind, tmp_path, monkeypatch):
    from underhood.report import discover

    ctx = _ctx(kind, tmp_path, monkeypatch)
    rows: list[dict] = []
    html = build(ctx, tmp_path / "report.html", progress=False, timings=rows).read_text()
    assert [r["id"] for r in rows] == [s[1] for s in discover() if s[1] != "hardware"]  # no benchmark: left out
    assert "Left out for this model" in html and "The methods left out above for this model are not scored" in html
