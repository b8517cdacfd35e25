"""Feature maps, statistics and top patches on token ([N, L, C]) and channels-last ([N, h, w, C]) layers.

Oracles: the tiny transformers' layer outputs recomputed by hand and reshaped by hand (the class and
register tokens dropped); statistics and a brute-force top-k over that hand view; a ViT whose blocks
are the identity and whose channel 0 is the mean of its patch, with one planted bright patch; input
gradients of a unit indexed by hand; receptive fields against the support of an input gradient.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import underhood
from underhood.activations import maps, statistics, top_patches
from underhood.activations.patches import boxes, crop, scan, unit_gradients
from underhood.activations.statistics import accumulate, from_state, histogram_edges, merge
from underhood.cli import main as _main
from underhood.core.errors import LayerError, ModelError
from underhood.core.results import load
from underhood.data import from_spec
from underhood.viz.render import figure_to_png, to_png

from .conftest import DEVICE, same
from .test_activations_patches import _brute  # top-k by brute force over [N, C, h, w]
from .transformer_models import build


def tiny_vit():
    """The CLI tests' model spec ``tests.test_tokens_activations:tiny_vit``."""
    return build("vit")


def tiny_swin():
    return build("swin")


def _x(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _vit_view(model, x: torch.Tensor, blocks: int = 2) -> torch.Tensor:
    """``blocks.{blocks-1}`` of a TinyViT as [N, C, 4, 4], by hand: the prefix tokens dropped, row-major patches."""
    t = model.patch(x).flatten(2).transpose(1, 2)
    t = torch.cat([model.cls.expand(len(x), -1, -1), t], 1) + model.pos
    t = model.blocks[:blocks](t)
    return t[:, model.prefix:].reshape(len(x), 4, 4, t.shape[-1]).permute(0, 3, 1, 2)


@torch.no_grad()
def _swin_view(model, x: torch.Tensor, stage: str) -> torch.Tensor:
    """``stage1`` / ``stage2`` of a TinySwin ([N, h, w, C]) as [N, C, h, w], by hand."""
    t = model.stage1(model.patch(x).permute(0, 2, 3, 1))
    if stage == "stage2":
        t = model.stage2(model.merge(t))
    return t.permute(0, 3, 1, 2)




# ----------------------------------------------------------------------------- feature maps


@pytest.mark.parametrize("name", ["vit", "vit-reg"])
def test_maps_of_a_vit_block_are_the_patch_tokens_reshaped_by_hand(name):
    model, x = build(name), _x(3)
    out = maps(model, x, ["blocks.0", "blocks.1", "head"])
    assert out["blocks.1"].shape == (3, 32, 4, 4) and out["blocks.1"].is_contiguous()
    assert torch.allclose(out["blocks.1"], _vit_view(model, x), atol=1e-5)
    assert torch.allclose(out["blocks.0"], _vit_view(model, x, blocks=1), atol=1e-5)
    assert out["head"].shape == (3, 4)  # a vector layer as it was
    # an explicit reading gives the same; a wrong one is refused with the option's name
    prefix = model.prefix
    fixed = maps(model, x, "blocks.1", tokens=prefix, grid=(4, 4), layout="tokens")["blocks.1"]
    assert torch.equal(fixed, out["blocks.1"])
    with pytest.raises(LayerError, match="tokens"):
        maps(model, x, "blocks.1", tokens=prefix + 1)
    with pytest.raises(LayerError, match="tokens"):
        maps(model, x, "patch", tokens=1)  # a 4-D map is not a token sequence
    with pytest.raises(LayerError, match="grid"):
        maps(model, x, "head", grid=(2, 2))  # no positions at all


def test_maps_of_channels_last_stages_and_the_feature_maps_figure():
    from underhood.viz import feature_maps_figure

    model, x = build("swin"), _x(2)
    out = maps(model, x, ["patch", "stage1", "stage2"])
    assert out["stage1"].shape == (2, 16, 8, 8) and out["stage2"].shape == (2, 32, 4, 4)
    assert torch.allclose(out["stage1"], _swin_view(model, x, "stage1"), atol=1e-5)
    assert torch.allclose(out["stage2"], _swin_view(model, x, "stage2"), atol=1e-5)
    with torch.no_grad():
        assert torch.equal(out["patch"], model.patch(x))  # NCHW untouched
    fig = feature_maps_figure([(n, a[0]) for n, a in out.items()], x[0], k=4)
    assert len(figure_to_png(fig, dpi=50)) > 1000


# ----------------------------------------------------------------------------- statistics


def _by_hand(view: torch.Tensor, st) -> None:
    a = view.double()
    assert torch.allclose(st.mean.double(), a.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(st.std.double(), a.transpose(0, 1).flatten(1).std(1, unbiased=False), atol=1e-5)
    assert torch.equal(st.active, (a.flatten(2).amax(2) > 0).double().mean(0).float())
    assert st.n == len(view) and st.mean.shape == (view.shape[1],)
    response = a.mean((2, 3)).float()
    for c in range(view.shape[1]):
        expected = torch.bincount(torch.bucketize(response[:, c].contiguous(), st.edges[1:-1]),
                                  minlength=len(st.edges) - 1)
        assert torch.equal(st.histogram[c], expected), c


def test_statistics_of_a_vit_block_leave_the_class_token_out():
    model, x = build("vit"), _x(21)
    st = statistics(model, x, "blocks.1", batch_size=5, bins=8)
    _by_hand(_vit_view(model, x), st)
    with torch.no_grad():  # the class token would change the means: the oracle above can tell
        t = model.blocks(torch.cat([model.cls.expand(21, -1, -1), model.patch(x).flatten(2).transpose(1, 2)], 1)
                         + model.pos)
    assert not torch.allclose(st.mean.double(), t.double().mean((0, 1)), atol=1e-3)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_statistics_of_channels_last_stages(stage):
    model, x = build("swin"), _x(19, seed=1)
    _by_hand(_swin_view(model, x, stage), statistics(model, x, stage, batch_size=4, bins=6))


def test_sharded_statistics_of_a_token_layer_merge_into_the_whole():
    model, x = build("vit-reg"), _x(30, seed=2)
    whole = statistics(model, x, "blocks.1", batch_size=30, bins=5, tokens=5)
    edges = histogram_edges(model, x, "blocks.1", bins=5, batch_size=7)
    assert torch.equal(edges, whole.edges)
    parts = [accumulate(model, x, "blocks.1", edges, start=a, stop=b, batch_size=4, grid=(4, 4))
             for a, b in ((0, 11), (11, 30))]
    assert all(v.device.type == "cpu" for p in parts for v in p.values())
    merged = from_state("blocks.1", merge(parts))
    assert torch.equal(merged.histogram, whole.histogram) and torch.equal(merged.active, whole.active)
    assert torch.allclose(merged.mean, whole.mean, atol=1e-6) and torch.allclose(merged.std, whole.std, atol=1e-5)
    _by_hand(_vit_view(model, x), whole)


# ----------------------------------------------------------------------------- top patches


def _planted_vit(channel: int = 0):
    """A TinyViT whose blocks add nothing and whose ``channel`` is the mean pixel of each token's patch."""
    model = build("vit")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.out_proj.weight.zero_()
            block.attn.out_proj.bias.zero_()
            block.mlp[2].weight.zero_()
            block.mlp[2].bias.zero_()
        model.patch.weight[channel] = 1.0 / (3 * 8 * 8)
        model.patch.bias[channel] = 0.0
        model.pos[0, :, channel] = 0.0
    return model


def test_top_patches_find_a_planted_bright_patch_and_box_its_cell():
    model = _planted_vit()
    x = _x(10, seed=3) * 0.5
    x[7, :, 16:24, 24:32] = 1.0  # the patch of token (2, 3) of image 7: channel 0 reads 1.0 there, <= 0.5 elsewhere
    tp = top_patches(model, x, "blocks.1", k=3, channels=[0], batch_size=4)
    assert int(tp.index[0, 0]) == 7 and tp.position[0, 0].tolist() == [2, 3]
    assert float(tp.values[0, 0]) == pytest.approx(1.0, abs=1e-5) and float(tp.values[0, 1]) < 0.5
    assert tp.box[0, 0].tolist() == [16, 24, 24, 32] and tp.field is None and tp.info["box"] == "cell"
    assert tp.info["layout"] == "tokens on a 4x4 grid after 1 prefix token"
    assert torch.equal(tp.patches[0, 0], x[7, :, 16:24, 24:32])
    # no ReLU in a GELU transformer: the guided rule has nothing to act on, the pattern is the gradient, said so
    assert tp.rule == "gradient" and "no ReLU" in tp.info["pattern"]
    assert torch.allclose(tp.patterns[0, 0], torch.full((3, 8, 8), 1.0 / 192), atol=1e-6)
    assert tp.scalars()["box"] == "patch cell"


def test_top_patches_of_a_vit_block_equal_a_brute_force_scan_and_their_boxes_are_patch_cells():
    model, x = build("vit-reg"), _x(23, seed=4)
    tp = top_patches(model, x, "blocks.1", k=4, channels=[0, 3, 7, 30], batch_size=6, pattern="gradient")
    values, index, position = _brute(_vit_view(model, x)[:, [0, 3, 7, 30]], 4)
    assert torch.allclose(tp.values, values, atol=1e-5) and torch.equal(tp.index, index)
    assert torch.equal(tp.position, position) and len({tuple(p) for p in tp.position.flatten(0, 1).tolist()}) > 1
    y, xx = tp.position[..., 0], tp.position[..., 1]
    assert torch.equal(tp.box, torch.stack([8 * y, 8 * xx, 8 * y + 8, 8 * xx + 8], -1))
    assert tp.patches.shape == (4, 4, 3, 8, 8) and tp.rule == "gradient" and "pattern" not in tp.info
    for row in range(4):
        i, b = int(tp.index[row, 0]), tp.box[row, 0]
        assert torch.equal(tp.patches[row, 0], x[i, :, b[0]:b[2], b[1]:b[3]])
    box, field = boxes(model, "blocks.1", torch.tensor([[1, 2]]), (3, 32, 32), tokens=5)
    assert box.tolist() == [[8, 16, 16, 24]] and field is None


def _hand_gradient(model, x: torch.Tensor, unit) -> torch.Tensor:
    """d unit / d x for one image; ``unit(x)`` computes the unit's value by hand."""
    xi = x[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(unit(xi), xi)
    return g[0]


def _swin_unit(model, c: int, y: int, xx: int):
    """``stage1[0, y, x, c]`` of a TinySwin, by hand."""
    return lambda xi: model.stage1(model.patch(xi).permute(0, 2, 3, 1))[0, y, xx, c]


def test_unit_gradients_on_tokens_and_channels_last_maps_equal_the_hand_gradient():
    vit, swin, x = build("vit"), build("swin"), _x(3, seed=5)
    channels, position = torch.tensor([2, 9, 31]), torch.tensor([[0, 0], [1, 3], [3, 2]])
    got = unit_gradients(vit, x, "blocks.1", channels, position, rule="gradient", batch_size=2)
    for i in range(3):
        c, (y, xx) = int(channels[i]), position[i].tolist()

        def unit(xi, c=c, y=y, xx=xx):
            t = torch.cat([vit.cls, vit.patch(xi).flatten(2).transpose(1, 2)], 1) + vit.pos
            return vit.blocks(t)[0, 1 + 4 * y + xx, c]

        hand = _hand_gradient(vit, x[i], unit)
        assert torch.allclose(got[i], hand, atol=1e-6)
        outside = hand.abs().sum(0).clone()
        outside[8 * y:8 * y + 8, 8 * xx:8 * xx + 8] = 0
        assert outside.max() > 0  # attention: the unit sees the whole image, its box is only the cell it sits on
    with pytest.raises(ModelError, match="rule='gradient'"):
        unit_gradients(vit, x, "blocks.1", channels, position, rule="guided", batch_size=3)
    got = unit_gradients(swin, x, "stage1", channels % 16, position * 2, rule="gradient", batch_size=3)
    for i in range(3):
        c, (y, xx) = int(channels[i]) % 16, (position[i] * 2).tolist()
        hand = _hand_gradient(swin, x[i], _swin_unit(swin, c, y, xx))
        assert torch.allclose(got[i], hand, atol=1e-6)


def test_top_patches_of_a_channels_last_stage_keep_their_receptive_field():
    model, x = build("swin"), _x(17, seed=6)
    tp = top_patches(model, x, "stage1", k=3, channels=[1, 5, 12], batch_size=5, pattern="gradient")
    values, index, position = _brute(_swin_view(model, x, "stage1")[:, [1, 5, 12]], 3)
    assert torch.allclose(tp.values, values, atol=1e-5) and torch.equal(tp.index, index)
    assert torch.equal(tp.position, position)
    assert tp.field == (20, 20) and tp.info == {"layout": "NHWC 8x8", "box": "field"}
    assert tp.patches.shape == (3, 3, 3, 20, 20)
    for row in range(3):
        i, (y, xx), b = int(tp.index[row, 0]), tp.position[row, 0].tolist(), tp.box[row, 0]
        c = int(tp.channels[row])
        assert torch.equal(tp.patches[row, 0], crop(x[i], b))
        hand = _hand_gradient(model, x[i], _swin_unit(model, c, y, xx))
        support = hand.abs().sum(0) > 0
        inside = torch.zeros_like(support)
        inside[max(int(b[0]), 0):b[2], max(int(b[1]), 0):b[3]] = True
        assert support.any() and not (support & ~inside).any()
        assert torch.allclose(tp.patterns[row, 0], crop(hand, b, fill=0.0), atol=1e-6)
    # after the patch merging (a reshape) the tracer marks the field global: the boxes are the 8x8 cells
    deep = top_patches(model, x, "stage2", k=2, channels=[0], batch_size=17, pattern=None)
    values, index, position = _brute(_swin_view(model, x, "stage2")[:, [0]], 2)
    assert torch.equal(deep.index, index) and torch.equal(deep.position, position)
    y, xx = deep.position[..., 0], deep.position[..., 1]
    assert deep.field is None and torch.equal(deep.box, torch.stack([8 * y, 8 * xx, 8 * y + 8, 8 * xx + 8], -1))


def test_scan_splits_merge_and_the_state_comes_back_on_the_cpu():
    from underhood.activations.patches import merge as merge_patches

    model, x = build("vit"), _x(20, seed=7)
    whole = scan(model, x, "blocks.1", 3, batch_size=20)
    parts = [scan(model, x, "blocks.1", 3, start=a, stop=b, batch_size=3, tokens=1) for a, b in ((0, 8), (8, 20))]
    merged = merge_patches(parts, 3)
    assert torch.allclose(merged.values, whole.values, atol=1e-5) and torch.equal(merged.index, whole.index)
    assert torch.equal(merged.position, whole.position)
    assert {t.device.type for t in whole.tensors().values()} == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_results_equal_the_cpu_ones():
    model, x = build("vit"), _x(12, seed=8)
    cpu_tp = top_patches(model, x, "blocks.1", k=2, channels=[0, 1], pattern="gradient", batch_size=4)
    cpu_st = statistics(model, x, "blocks.1", bins=5, batch_size=4)
    model.cuda()
    try:
        tp = top_patches(model, x, "blocks.1", k=2, channels=[0, 1], pattern="gradient", batch_size=4)
        st = statistics(model, x, "blocks.1", bins=5, batch_size=4)
        assert maps(model, x.cuda(), "blocks.1")["blocks.1"].is_cuda
    finally:
        model.cpu()
    assert torch.equal(tp.index, cpu_tp.index) and torch.allclose(tp.patterns.cpu(), cpu_tp.patterns, atol=1e-5)
    assert torch.allclose(st.mean, cpu_st.mean, atol=1e-5) and torch.equal(st.histogram, cpu_st.histogram)


@pytest.mark.slow
def test_torchvision_vit_and_swin_when_torchvision_imports():
    """The real architectures (random weights): ViT-B/16 tokens with a class token, Swin-T NHWC stages."""
    tv = pytest.importorskip("torchvision.models")
    x = _x(2, seed=9)
    x = torch.nn.functional.interpolate(x, size=224, mode="bilinear", align_corners=False).clamp(0, 1)
    vit = tv.vit_b_16(weights=None).eval()
    layer = "encoder.layers.encoder_layer_11"
    assert maps(vit, x, layer)[layer].shape == (2, 768, 14, 14)
    tp = top_patches(vit, x, layer, k=1, channels=[0, 1], pattern=None, batch_size=2)
    assert tp.info["layout"] == "tokens on a 14x14 grid after 1 prefix token" and tp.patches.shape[-2:] == (16, 16)
    swin = tv.swin_t(weights=None).eval()
    assert maps(swin, x, "features.1")["features.1"].shape == (2, 96, 56, 56)
    st = statistics(swin, x, "features.3", bins=4, batch_size=2)
    assert st.mean.shape == (192,) and st.n == 2


# ----------------------------------------------------------------------------- command line


def main(argv: list[str]) -> int:
    return _main([*argv, "--device", DEVICE])


def test_dissect_statistics_and_activations_commands_on_a_tiny_vit(tmp_path, capsys):
    spec = "tests.test_tokens_activations:tiny_vit"
    out = tmp_path / "d"
    assert main(["dissect", "--model", spec, "--data", "shapes:24", "--layer", "blocks.1", "--channels", "0:3",
                 "--k", "2", "--tokens", "1", "--grid", "4x4", "--shard-size", "10", "--batch-size", "8",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "patch cells" in text and "no ReLU" in text
    model = underhood.load_model(spec, device=DEVICE)
    data = from_spec("shapes:24", size=(32, 32))
    direct = top_patches(model, data, "blocks.1", k=2, channels=range(3), batch_size=8, tokens=1, grid=(4, 4))
    saved = load(out)
    same(saved.index, direct.index)
    same(saved.position, direct.position)
    same(saved.box, direct.box)
    same(saved.patches, direct.patches)
    same(saved.patterns, direct.patterns, atol=1e-6, rtol=1e-5)
    assert saved.info == direct.info and saved.rule == "gradient" and saved.field is None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layout"] == "tokens on a 4x4 grid after 1 prefix token"

    out = tmp_path / "s"
    assert main(["statistics", "--model", "tests.test_tokens_activations:tiny_swin", "--data", "shapes:20",
                 "--layer", "stage2", "--layout", "nhwc", "--shard-size", "8", "--batch-size", "8", "--out", str(out),
                 "--no-progress"]) == 0
    swin = underhood.load_model("tests.test_tokens_activations:tiny_swin", device=DEVICE)
    direct = statistics(swin, from_spec("shapes:20", size=(32, 32)), "stage2", batch_size=8)
    saved = load(out)
    assert saved.mean.shape == (32,)
    same(saved.histogram, direct.histogram)
    same(saved.mean, direct.mean, atol=1e-6, rtol=1e-5)

    image = tmp_path / "img.png"
    image.write_bytes(to_png(data.images[0]))
    out = tmp_path / "a"
    assert main(["activations", str(image), "--model", spec, "--layers", "blocks.0,blocks.1", "--k", "4",
                 "--out", str(out)]) == 0
    acts = load_file(str(out / "maps.safetensors"))
    assert acts["blocks.1"].shape == (1, 32, 4, 4) and (out / "maps.png").stat().st_size > 1000


def test_layout_options_are_parsed_and_a_wrong_reading_is_one_line(tmp_path, capsys):
    spec = "tests.test_tokens_activations:tiny_vit"
    for bad in ("--grid=4x0", "--grid=axb", "--grid=4x4x4", "--tokens=-1", "--layout=nhcw"):
        argv = ["dissect", "--model", spec, "--layer", "blocks.1", bad, "--out", str(tmp_path / "x")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and bad.split("=")[0] in err, err
    assert main(["statistics", "--model", spec, "--data", "shapes:8", "--layer", "blocks.1", "--tokens", "2",
                 "--batch-size", "4", "--out", str(tmp_path / "y"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tokens:" in err and "17 tokens" in err, err
    from underhood.cli.options import Grid

    assert Grid()("14x7") == (14, 7) and Grid()("6") == (6, 6)


@pytest.mark.parametrize("name, layer", [("vit", "blocks.0"), ("swin", "stage1.0")])
def test_ablation_zeroes_channels_of_token_and_channels_last_layers(name, layer):
    """Oracle: a hand-written hook zeroing the channel on the last axis; selectivity over the patch positions."""
    from underhood.activations import ablate
    from underhood.activations.ablate import class_selectivity
    from underhood.data import ImageSet

    model = build(name)
    g = torch.Generator().manual_seed(6)
    images, labels = torch.rand(24, 3, 32, 32, generator=g), torch.arange(24) % 4
    data = ImageSet(images, labels, classes=["a", "b", "c", "d"])
    result = ablate(model, data, layer, orders=("random",), units=[0, 3], batch_size=8)
    module = dict(model.named_modules())[layer]
    for i, c in enumerate([0, 3]):
        def zero(mod, inp, out, c=c):
            out = out.clone()
            out[..., c] = 0
            return out
        handle = module.register_forward_hook(zero)
        with torch.no_grad():
            want = (model(images).argmax(1) == labels).float().mean()
        handle.remove()
        assert abs(float(result.single[i]) - float(want)) < 1e-6
    # selectivity reads channels on the last axis (C = 32 / 16), not the tokens or rows
    channels = {"vit": 32, "swin": 16}[name]
    assert class_selectivity(model, data, layer, batch_size=8).shape == (channels,)


@pytest.mark.parametrize("name, layer, channels", [("vit", "blocks.0", 32), ("swin", "stage1.0", 16)])
def test_synthesis_objectives_read_channels_of_token_and_channels_last_layers(name, layer, channels):
    """The objective sees [N, C, h, w]: channel c is the mean of the last axis over the patch positions."""
    from underhood.synthesis import objectives as O
    from underhood.synthesis.render import probe

    model = build(name)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    raw = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: raw.setdefault("a", o))
    with probe(model, [layer], need_logits=False) as run:
        acts, _ = run(x)
    handle.remove()
    a = raw["a"][:, 1:] if name == "vit" else raw["a"].flatten(1, 2)   # [N, positions, C], class token left out
    assert acts[layer].shape[1] == channels
    torch.testing.assert_close(O.channel(layer, 5)(acts), a[..., 5].mean(1))
    torch.testing.assert_close(O.unit(layer, 3, 1, 2)(acts), acts[layer][:, 3, 1, 2])
