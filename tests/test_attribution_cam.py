"""CAM family: Grad-CAM vs CAM, slow references for Grad-CAM++ and Score-CAM, layers, batching, lifecycle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import underhood
from underhood import Unit
from underhood.attribution import cam, gradcam, gradcam_pp, guided_backprop, guided_gradcam, scorecam
from underhood.core.errors import InputError, LayerError
from underhood.core.hooks import hooked

from .attribution_models import Broken, GapNet, Linear
from .conftest import model_problems


def _activation_and_grad(model, x, layer_module, c):
    """Reference: the layer's output and the gradient of logit c w.r.t. it, by a plain hook."""
    box = {}

    def hook(m, i, o):
        o.retain_grad()
        box["a"] = o

    with hooked(model, {layer_module: hook}):
        logits = model(x)
        logits[torch.arange(len(x)), c].sum().backward()
    model.zero_grad(set_to_none=True)
    return box["a"].detach(), box["a"].grad


def test_gradcam_of_a_gap_linear_head_equals_cam_up_to_a_positive_factor():
    model = GapNet().eval()
    x = torch.rand(3, 3, 10, 10)
    target = [0, 3, 4]
    c = cam(model, x, target)
    g = gradcam(model, x, target, layer="features.3")
    # the feature map is at input resolution here, so upsampling is the identity: gradcam = relu(cam) / (h w)
    assert torch.allclose(g, c.clamp(min=0) / 100, atol=1e-6)
    assert (c < 0).any() and g.max() > 0


def test_cam_is_the_weighted_feature_map_and_finds_the_layer_itself():
    model = GapNet().eval()
    x = torch.rand(2, 3, 10, 10)
    a = model.features(x)
    ref = torch.einsum("k,nkhw->nhw", model.fc.weight[2], a)[:, None]
    assert torch.allclose(cam(model, x, 2), ref.detach(), atol=1e-5)
    assert torch.allclose(cam(model, x, 2, layer="features.3"), ref.detach(), atol=1e-5)
    with pytest.raises(LayerError, match="averaged into the final nn.Linear"):
        cam(model, x, 2, layer="features.2")


def test_cam_equals_gradcam_on_the_builtin_models(shapes_small):
    x = shapes_small.images[:2]
    for spec, layer in (("shapes", "features.17"), ("shapes-resnet", "layer3")):
        model = underhood.load_model(spec, device="cpu")
        a, _ = _activation_and_grad(model, x, dict(model.net.named_modules())[layer], model(x).argmax(1))
        low = torch.einsum("nk,nkhw->nhw", model.net.fc.weight[model(x).argmax(1)] if spec != "shapes"
                           else model.net.classifier.weight[model(x).argmax(1)], a)[:, None]
        hw = a.shape[-1] * a.shape[-2]
        expected = F.interpolate(low.clamp(min=0) / hw, size=(64, 64), mode="bilinear", align_corners=False)
        assert torch.allclose(gradcam(model, x, layer=layer), expected.detach(), atol=1e-5)
        assert torch.allclose(cam(model, x), F.interpolate(low, size=(64, 64), mode="bilinear",
                                                           align_corners=False).detach(), atol=1e-4)


def test_gradcam_matches_its_definition_on_the_default_layer(shapes_model, shapes_small):
    x = shapes_small.images[:3]
    c = shapes_model(x).argmax(1)
    a, g = _activation_and_grad(shapes_model, x, shapes_model.net.features[14], c)
    ref = F.interpolate(torch.einsum("nk,nkhw->nhw", g.mean((2, 3)), a)[:, None].clamp(min=0), size=(64, 64),
                        mode="bilinear", align_corners=False)
    assert torch.allclose(gradcam(shapes_model, x), ref, atol=1e-5)   # default: last Conv2d = features.14


def test_gradcam_pp_equals_the_papers_formula_with_exponential_scores():
    model = GapNet().eval()
    x = torch.rand(2, 3, 6, 6)
    c = model(x).argmax(1)
    a, g = _activation_and_grad(model, x, model.features[3], c)
    e = model(x).gather(1, c[:, None]).squeeze(1).exp().detach()
    got = gradcam_pp(model, x, layer="features.3")
    for n in range(2):
        ref = torch.zeros(6, 6)
        for k in range(a.shape[1]):
            # Y = exp(S): dY = e g, d2Y = e g^2, d3Y = e g^3 for a network piecewise linear in A
            d2, d3 = e[n] * g[n, k] ** 2, e[n] * g[n, k] ** 3
            denom = 2 * d2 + a[n, k].sum() * d3
            alpha = torch.where(denom != 0, d2 / torch.where(denom != 0, denom, 1), 0)
            ref += (alpha * (e[n] * g[n, k]).clamp(min=0)).sum() * a[n, k]
        assert torch.allclose(got[n, 0] * e[n], ref.clamp(min=0), rtol=1e-4, atol=1e-6)


def test_scorecam_equals_a_brute_force_loop():
    model = GapNet().eval()
    x = torch.rand(2, 3, 8, 8)
    got = scorecam(model, x, [1, 4], layer="features.2", batch_size=3)
    a = model.features[:3](x).detach()
    for n, c in enumerate([1, 4]):
        ref = torch.zeros(8, 8)
        for k in range(a.shape[1]):
            h = F.interpolate(a[n:n + 1, k:k + 1], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
            if h.max() == h.min():
                continue
            h = (h - h.min()) / (h.max() - h.min())
            ref += model(x[n:n + 1] * h).softmax(1)[0, c].detach() * a[n, k]
        assert torch.allclose(got[n, 0], ref.clamp(min=0), atol=1e-5)
    assert torch.allclose(got, scorecam(model, x, [1, 4], layer="features.2", batch_size=64), atol=1e-6)


def test_guided_gradcam_is_the_product(shapes_model, shapes_small):
    x = shapes_small.images[:2]
    expected = guided_backprop(shapes_model, x) * gradcam(shapes_model, x)
    assert torch.allclose(guided_gradcam(shapes_model, x), expected, atol=1e-6)


def test_batched_equals_one_by_one_and_unit_targets(shapes_model, shapes_small):
    x = shapes_small.images[:3]
    for method in (gradcam, gradcam_pp):
        batch = method(shapes_model, x, layer="features.7")
        one = torch.cat([method(shapes_model, x[i:i + 1], layer="features.7") for i in range(3)])
        # batch-size dependent conv kernels round differently, and Grad-CAM++'s g^2 / (2 g^2 + sum(A) g^3)
        # amplifies that near a vanishing denominator: compare against the map's scale
        assert (batch - one).abs().max() <= 1e-3 * batch.abs().max()
    unit = Unit("features.14", 5)
    heat = gradcam(shapes_model, x, unit, layer="features.7")
    assert heat.shape == (3, 1, 64, 64) and heat.sum() > 0
    with pytest.raises(InputError, match="does not depend on layer"):
        gradcam(shapes_model, x, Unit("features.3", 0), layer="features.7")


class _Counting(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        _Counting.calls += 1
        return g


def test_the_backward_pass_stops_at_the_chosen_layer():
    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = GapNet()

        def forward(self, x):
            return self.net(_Counting.apply(x))

    model = Probe().eval()
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    _Counting.calls = 0
    gradcam(model, x, layer="net.features.2")
    assert _Counting.calls == 0
    model(x).sum().backward()
    assert _Counting.calls == 1


def test_layer_errors_are_clear(shapes_model):
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(LayerError, match="spatial"):
        gradcam(shapes_model, x, layer="classifier")
    with pytest.raises(LayerError, match="did you mean"):
        gradcam(shapes_model, x, layer="features.144")
    with pytest.raises(LayerError, match="linear head|nn.Linear"):
        cam(nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval(), x)
    with pytest.raises(InputError, match="class"):
        cam(shapes_model, x, Unit("features.3", 0))
    with pytest.raises(LayerError, match="Conv2d"):
        gradcam(Linear().eval(), torch.rand(1, 3, 6, 6))


def test_reused_module_uses_its_last_call(shapes_small):
    model = underhood.load_model("shapes-resnet", device="cpu")
    x = shapes_small.images[:2]
    # layer1.0.relu runs twice per block; its last call is the block's output
    assert torch.allclose(gradcam(model, x, layer="layer1.0.relu"), gradcam(model, x, layer="layer1.0"), atol=1e-6)


def test_state_is_restored_when_forward_raises():
    model = Broken().train()
    for method in (gradcam, scorecam, gradcam_pp):
        with pytest.raises(RuntimeError, match="boom"):
            method(model, torch.rand(1, 3, 8, 8), 0, layer="conv")
        assert model.training and model_problems(model.modules()) == []
