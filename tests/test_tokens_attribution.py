"""The CAM family, Unit targets and layers() on token / channels-last layers (tiny ViT, Swin, ConvNeXt).

Oracles: Grad-CAM and CAM rebuilt by hand (tokens reshaped by hand, weighted, relu, upsampled);
Unit scores compared with a truncated model that indexes the unit by hand; receptive fields
compared with the support of an input gradient.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underhood import Unit
from underhood.attribution import (
    cam,
    deconvnet,
    gradcam,
    gradcam_pp,
    guided_backprop,
    guided_gradcam,
    integrated_gradients,
    occlusion,
    saliency,
    scorecam,
)
from underhood.core.errors import LayerError, ModelError
from underhood.core.layers import default_layer, format_table, layers
from underhood.core.targets import scores

from .transformer_models import build


@pytest.fixture(scope="module")
def vit():
    return build("vit")


@pytest.fixture(scope="module")
def swin():
    return build("swin")


def _x(n: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _vit_tokens(model, x):
    """The tokens entering the blocks, computed as TinyViT.forward does."""
    t = model.patch(x).flatten(2).transpose(1, 2)
    return torch.cat([model.cls.expand(x.shape[0], -1, -1), t], 1) + model.pos


def _grid(tokens, prefix):
    """Patch tokens [N, prefix + 16, C] -> [N, C, 4, 4], by hand."""
    n, _, c = tokens.shape
    return tokens[:, prefix:].reshape(n, 4, 4, c).permute(0, 3, 1, 2)


def test_gradcam_on_a_vit_block_equals_the_reference(vit):
    x, target = _x(), torch.tensor([1, 3])
    with torch.no_grad():
        a = vit.blocks[0](_vit_tokens(vit, x))
    a.requires_grad_(True)
    logits = vit.head(vit.norm(vit.blocks[1](a))[:, 0])
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    A, G = _grid(a.detach(), 1), _grid(g, 1)
    ref = F.interpolate((G.mean((2, 3))[:, :, None, None] * A).sum(1, keepdim=True).clamp(min=0), size=(32, 32),
                        mode="bilinear", align_corners=False)
    heat = gradcam(vit, x, target, layer="blocks.0")
    assert heat.shape == (2, 1, 32, 32) and ref.amax() > 0
    torch.testing.assert_close(heat, ref, atol=1e-5, rtol=1e-4)
    # explicit options that agree with the inference change nothing
    torch.testing.assert_close(gradcam(vit, x, target, layer="blocks.0", tokens=1, grid=(4, 4), layout="tokens"), heat)


def test_register_tokens_are_inferred_and_tokens_option_wins():
    model, x = build("vit-reg"), _x(1)
    heat = gradcam(model, x, 0, layer="blocks.1")
    torch.testing.assert_close(gradcam(model, x, 0, layer="blocks.1", tokens=5), heat)
    with pytest.raises(LayerError, match="^tokens: 'blocks.1' outputs \\(21, 32\\)"):
        gradcam(model, x, 0, layer="blocks.1", tokens=1)
    with pytest.raises(LayerError, match="^grid:"):
        scorecam(model, x, 0, layer="blocks.1", grid=(5, 5), batch_size=8)


def test_gradcam_pp_and_scorecam_on_tokens_and_nhwc(vit, swin):
    x = _x(1)
    for model, layer in ((vit, "blocks.1"), (swin, "stage1.1"), (swin, "norm")):
        for method in (gradcam_pp, scorecam):
            heat = method(model, x, 0, layer=layer, **({"batch_size": 64} if method is scorecam else {}))
            assert heat.shape == (1, 1, 32, 32) and (heat >= 0).all() and torch.isfinite(heat).all()


def test_scorecam_on_a_swin_stage_equals_a_brute_force_loop(swin):
    x = _x(1, 32, 48)   # a non-square input: the stage is an 4x6 NHWC grid
    with torch.no_grad():
        a = swin.stage2(swin.merge(swin.stage1(swin.patch(x).permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        c = swin(x).argmax(1)
        weights = torch.zeros(a.shape[1])
        for k in range(a.shape[1]):
            h = F.interpolate(a[:, k:k + 1], size=(32, 48), mode="bilinear", align_corners=False)
            if h.max() > h.min():
                h = (h - h.min()) / (h.max() - h.min())
                weights[k] = swin(x * h).softmax(1)[0, c[0]]
    ref = F.interpolate((weights[None, :, None, None] * a).sum(1, keepdim=True).clamp(min=0), size=(32, 48),
                        mode="bilinear", align_corners=False)
    torch.testing.assert_close(scorecam(swin, x, layer="stage2.0", batch_size=16), ref, atol=1e-5, rtol=1e-4)


def test_cam_on_an_nhwc_head_equals_the_weighted_map(swin):
    x, target = _x(2, 32, 48), torch.tensor([0, 2])
    with torch.no_grad():
        a = swin.norm(swin.stage2(swin.merge(swin.stage1(swin.patch(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
    m = torch.einsum("nk,nkhw->nhw", swin.head.weight[target], a)[:, None]
    ref = F.interpolate(m, size=(32, 48), mode="bilinear", align_corners=False)
    heat = cam(swin, x, target)   # finds `norm`: the NHWC map the head averages
    torch.testing.assert_close(heat, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cam(swin, x, target, layer="norm", layout="nhwc"), heat)
    # Grad-CAM at the same layer is relu(CAM) / (h w)
    torch.testing.assert_close(gradcam(swin, x, target, layer="norm"), heat.clamp(min=0) / 24, atol=1e-6, rtol=1e-4)


def test_cam_on_a_class_token_head_is_a_clear_error(vit):
    with pytest.raises(LayerError, match="averaged into the final nn.Linear.*use gradcam") as info:
        cam(vit, _x(1))
    assert "\n" not in str(info.value)
    with pytest.raises(LayerError, match="'blocks.1' is not"):
        cam(vit, _x(1), layer="blocks.1")


class AuxHead(nn.Module):
    """GAP + linear logits, then an auxiliary linear head that runs after them (its output discarded)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 5)
        self.aux = nn.Linear(8, 2)

    def forward(self, x):
        p = self.relu(self.conv(x)).mean((2, 3))
        logits = self.fc(p)
        self.aux(p)   # e.g. a deep-supervision head evaluated on the way out
        return logits


def test_cam_uses_the_linear_layer_that_gives_the_logits():
    model, x = AuxHead().eval(), _x(2, 8, 8)
    with torch.no_grad():
        a = F.relu(model.conv(x))
    heat = cam(model, x, 4)   # class 4 does not exist in the auxiliary head
    torch.testing.assert_close(heat, torch.einsum("k,nkhw->nhw", model.fc.weight[4], a)[:, None])


def test_default_layer_is_the_last_block_before_the_final_norm(vit, swin):
    x = _x(1)
    # the head reads the class token only, so the last block's patch tokens get no gradient (Grad-CAM there is
    # blank): the block before it is the default
    assert (gradcam(vit, x, 0, layer="blocks.1") == 0).all()
    assert default_layer(vit, x) == "blocks.0" and default_layer(build("vit-reg"), x) == "blocks.0"
    assert default_layer(swin, x) == "stage2.0" and default_layer(build("convnext"), x) == "stages.1"
    torch.testing.assert_close(gradcam(vit, x, 0), gradcam(vit, x, 0, layer="blocks.0"))
    assert gradcam(vit, x, 0).amax() > 0
    torch.testing.assert_close(scorecam(swin, x, 0, batch_size=64), scorecam(swin, x, 0, layer="stage2.0",
                                                                              batch_size=64))


class _InPlaceBlock(nn.Module):
    """torchvision's CNBlock pattern: ``r = drop(block(x)); r += x`` (``drop`` is the identity in eval)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GroupNorm(1, dim))
        self.drop = nn.Identity()

    def forward(self, x):
        r = self.drop(self.block(x))
        r += x
        return r


def test_default_layer_keeps_the_last_block_of_a_vit_that_pools_its_patch_tokens():
    class Pooled(nn.Module):  # the head averages the patch tokens: the last block's patches matter
        def __init__(self):
            super().__init__()
            self.vit = build("vit")

        def forward(self, x):
            v = self.vit
            t = v.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([v.cls.expand(len(x), -1, -1), t], 1) + v.pos
            return v.head(v.norm(v.blocks(t))[:, 1:].mean(1))

    assert default_layer(Pooled().eval(), _x(1)) == "vit.blocks.1"


def test_default_layer_names_the_block_not_what_it_adds_to_in_place():
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Sequential(_InPlaceBlock(8), _InPlaceBlock(8)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 3)).eval()
    assert default_layer(model, _x(1)) == "1.1"   # not "1.1.drop" (same tensor), nor the Sequential "1"


class _Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        raise RuntimeError("forward must not run")


def test_default_layer_of_a_cnn_is_its_last_conv_without_a_forward():
    assert default_layer(_Raises(), _x(1)) == "b"
    with pytest.raises(LayerError, match="no Conv2d layer and no layer with a spatial output"):
        default_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)).eval(), _x(1))


def test_unit_at_a_vit_patch_token_matches_a_hand_indexed_gradient(vit):
    x = _x(2).requires_grad_(True)
    unit = Unit("blocks.0", 7, y=2, x=3)
    with torch.no_grad():
        s, _ = scores(vit, x, unit)
        total, _ = scores(vit, x, Unit("blocks.0", 7))
    a = vit.blocks[0](_vit_tokens(vit, x))
    torch.testing.assert_close(s, a[:, 1 + 2 * 4 + 3, 7])          # token 1 + y w + x: after the class token
    torch.testing.assert_close(total, a[:, 1:, 7].sum(1))           # summed over patches, class token left out
    (ref,) = torch.autograd.grad(a[:, 1 + 2 * 4 + 3, 7].sum(), x)
    torch.testing.assert_close(saliency(vit, x.detach(), unit), ref, atol=1e-6, rtol=1e-5)
    ig = integrated_gradients(vit, x.detach(), unit, steps=8, batch_size=16)
    assert ig.shape == x.shape and torch.isfinite(ig).all()
    with pytest.raises(LayerError, match="^tokens:"):
        scores(vit, x, Unit("blocks.0", 7, tokens=2))
    assert repr(Unit("blocks.0", 7, tokens=2)) == "Unit(layer='blocks.0', channel=7, y=None, x=None, tokens=2)"
    with pytest.raises(ValueError, match="Unit.x=4 is outside"):
        scores(vit, x, Unit("blocks.0", 7, y=0, x=4))


class _SwinUnit(nn.Module):
    """TinySwin truncated at stage1, returning the unit [:, y, x, c] of the NHWC map as a 1-logit output."""

    def __init__(self, swin, c, y, x):
        super().__init__()
        self.swin, self.where = swin, (y, x, c)

    def forward(self, inputs):
        y, x, c = self.where
        return self.swin.stage1(self.swin.patch(inputs).permute(0, 2, 3, 1))[:, y, x, c][:, None]


def test_unit_at_a_swin_nhwc_stage_matches_a_truncated_model(swin):
    x, unit = _x(2, 32, 48), Unit("stage1", 5, y=3, x=9)
    ref_model = _SwinUnit(swin, 5, 3, 9).eval()
    opts = dict(window=8, stride=4, batch_size=64)
    torch.testing.assert_close(occlusion(swin, x, unit, **opts), occlusion(ref_model, x, 0, **opts))
    torch.testing.assert_close(saliency(swin, x, unit), saliency(ref_model, x, 0))


def test_guided_backprop_on_gelu_models_is_a_one_line_error(vit):
    for method in (guided_backprop, deconvnet, guided_gradcam):
        with pytest.raises(ModelError, match="found no ReLU.*uses GELU: no on/off gate") as info:
            method(vit, _x(1), 0)
        assert "\n" not in str(info.value)


def test_layers_show_token_and_nhwc_layouts(vit, swin):
    rows = {r.name: r for r in layers(vit)}
    assert rows["patch"].layout == "nchw" and rows["patch"].rf == (8.0, 8.0)
    block = rows["blocks.0"]
    assert (block.output_shape, block.layout, block.grid, block.prefix, block.rf) == ((17, 32), "tokens", (4, 4), 1,
                                                                                        None)
    assert rows["head"].layout is None and rows["head"].output == "4"
    table = format_table(list(rows.values()))
    assert "17x32 (tokens 4x4+1)" in table and "global" in table
    srows = {r.name: r for r in layers(swin)}
    assert srows["stage1.0"].layout == "nhwc" and srows["stage1.0"].output == "8x8x16 (nhwc 8x8)"
    # patch conv k4 s4: field 4, jump 4; each block's 3x3 depthwise mix adds 2 jumps; merge reshapes: global
    assert srows["stage1.0"].rf == (12.0, 12.0) and srows["stage1"].rf == (20.0, 20.0)
    assert srows["stage1.0"].jump == (4.0, 4.0) and srows["merge"].rf is None and srows["stage2.0"].rf is None
    crows = {r.name: r for r in layers(build("convnext"))}
    assert crows["stages.0.mlp"].rf == (28.0, 28.0) and crows["stages.1"].rf == (52.0, 52.0)


def test_nhwc_receptive_field_is_the_gradient_support(swin):
    row = {r.name: r for r in layers(swin)}["stage1"]
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    a = swin.stage1(swin.patch(x).permute(0, 2, 3, 1))
    (g,) = torch.autograd.grad(a[0, 4, 3].sum(), x)
    rows, cols = g.abs().sum((0, 1)).nonzero().unbind(1)
    cy, cx = row.start[0] + 4 * row.jump[0], row.start[1] + 3 * row.jump[1]
    half = (row.rf[0] - 1) / 2
    assert (rows.min().item(), rows.max().item()) == (cy - half, cy + half)
    assert (cols.min().item(), cols.max().item()) == (cx - half, cx + half)


# Real architectures (random weights), when torchvision / timm import (they do not on the CPU dev machines).

def _real(model, layer, x):
    """Grad-CAM at ``layer`` (and Score-CAM on a GPU: one forward per channel, 768 of them, is for a GPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, x = model.eval().to(device), x.to(device)
    assert default_layer(model, x) == layer
    methods = (gradcam, scorecam) if device == "cuda" else (gradcam,)
    for method in methods:
        heat = method(model, x, 0, layer=layer, **({"batch_size": 64} if method is scorecam else {}))
        assert heat.shape == (x.shape[0], 1, *x.shape[-2:]) and heat.device == x.device
        assert torch.isfinite(heat).all() and (heat >= 0).all() and heat.amax() > 0


@pytest.mark.parametrize("name, layer", [("vit_b_16", "encoder.layers.encoder_layer_10"),
                                         ("swin_t", "features.7.1"), ("convnext_tiny", "features.7.2")])
def test_torchvision_transformers(name, layer):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    _real(getattr(tv.models, name)(weights=None), layer, _x(1, 224, 224))


def test_timm_vit_tiny():
    timm = pytest.importorskip("timm")
    _real(timm.create_model("vit_tiny_patch16_224", pretrained=False), "blocks.10", _x(1, 224, 224))


def test_explain_forwards_the_layer_reading_to_the_cam_family():
    from underhood.attribution import explain, gradcam

    from .transformer_models import build

    model, x = build("vit-reg"), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    # 21 tokens = 5 prefix + 4x4; tokens=5 is what inference finds, so both must agree with gradcam
    out = explain(model, x, methods=("gradcam", "gradcam_pp"), layer="blocks.1", tokens=5)
    torch.testing.assert_close(out["gradcam"], gradcam(model, x, layer="blocks.1", tokens=5))
    # a reading that contradicts the shape reaches layer_gradients and fails there (it is not ignored)
    with pytest.raises(Exception, match="grid"):
        explain(model, x, methods=("gradcam",), layer="blocks.1", grid=(5, 5))


def test_gradcam_amp_agrees_with_float32_on_a_vit_block():
    from underhood.attribution import gradcam

    from .transformer_models import build

    model, x = build("vit"), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ref = gradcam(model, x, layer="blocks.0")
    low = gradcam(model, x, layer="blocks.0", amp=True)
    assert low.dtype == torch.float32
    r = torch.corrcoef(torch.stack([ref.flatten(), low.flatten()]))[0, 1]
    assert r > 0.99


def test_explain_command_reads_a_vit_block_with_tokens_and_matches_the_library(tmp_path):
    from safetensors.torch import load_file

    from underhood.cli import main
    from underhood.data.images import load_image
    from underhood.viz.render import to_png

    from .conftest import DEVICE, same
    from .transformer_models import build

    image = tmp_path / "x.png"
    image.write_bytes(to_png(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))))
    out = tmp_path / "out"
    assert main(["explain", str(image), "--model", "tests.test_tokens_activations:tiny_vit", "--methods", "gradcam",
                 "--layer", "blocks.1", "--tokens", "1", "--out", str(out), "--device", DEVICE]) == 0
    got = load_file(out / "maps.safetensors")["gradcam"]
    model = build("vit").to(DEVICE)
    want = gradcam(model, load_image(image).to(DEVICE), layer="blocks.1", tokens=1)
    same(got, want)
    # a prefix count that leaves no grid is one clear line, exit code 2
    assert main(["explain", str(image), "--model", "tests.test_tokens_activations:tiny_vit", "--methods", "gradcam",
                 "--layer", "blocks.1", "--tokens", "2", "--out", str(tmp_path / "bad"), "--device", DEVICE]) != 0
