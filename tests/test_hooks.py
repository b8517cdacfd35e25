"""Lifecycle of scoped capture: outputs, gradients, in-place ReLU, reused modules, cleanup on errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import underhood
from underhood.core.errors import LayerError
from underhood.core.hooks import capture, preserved
from underhood.models.architectures import LeNet, ShapesResNet, ShapesVGG

from .conftest import model_problems


def test_capture_activations_match_manual_forward():
    torch.manual_seed(0)
    net = ShapesVGG().eval()
    x = torch.rand(2, 3, 64, 64)
    with capture(net, ["features.0", "features.2"]) as cap:
        net(x)
    conv = net.features[0](x)
    # the conv output is recorded before the in-place ReLU two modules later overwrites it
    assert torch.allclose(cap.activations["features.0"], conv, atol=1e-6)
    assert (cap.activations["features.0"] < 0).any()
    assert torch.allclose(cap.activations["features.2"], torch.relu(net.features[1](conv)), atol=1e-6)


def test_capture_gradients_with_inplace_relu():
    torch.manual_seed(0)
    net = ShapesVGG().eval()
    x = torch.rand(1, 3, 64, 64)
    with capture(net, ["features.1"], grads=True) as cap:
        out = net(x)
        out[0, 3].backward()
    # reference: split the network at features.1 and differentiate by hand
    a = net.features[:2](x).detach().requires_grad_(True)
    rest = nn.Sequential(*list(net.features)[2:])
    net.classifier(torch.flatten(net.pool(rest(a.clone())), 1))[0, 3].backward()
    assert torch.allclose(cap.gradients["features.1"], a.grad, atol=1e-6)


def test_reused_module_records_every_call():
    torch.manual_seed(0)
    net = ShapesResNet().eval()
    with capture(net, "layer1.0.relu", grads=True) as cap:
        net(torch.rand(2, 3, 64, 64)).sum().backward()
    assert len(cap.calls["layer1.0.relu"]) == 2
    assert len(cap.grad_calls["layer1.0.relu"]) == 2
    assert torch.equal(cap.activations["layer1.0.relu"], cap.calls["layer1.0.relu"][-1])
    assert (cap.activations["layer1.0.relu"] >= 0).all()


def test_functional_relu_model_capture():
    net = LeNet().eval()
    with capture(net, ["conv1", "fc1"]) as cap:
        net(torch.rand(3, 1, 32, 32))
    assert cap.activations["conv1"].shape == (3, 6, 28, 28) and cap.activations["fc1"].shape == (3, 120)


def test_capture_removes_hooks_and_restores_flags_on_exception():
    net = ShapesVGG()
    net.train()
    net.features[0].weight.requires_grad_(False)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(net, ["features.0", "classifier"], eval=True) as cap:
            assert not net.training
            for p in net.parameters():
                p.requires_grad_(True)  # the test itself changes flags inside the block
            net(torch.rand(1, 3, 64, 64))
            raise RuntimeError("boom")
    assert net.training and all(m.training for m in net.modules())
    assert not net.features[0].weight.requires_grad
    assert "features.0" in cap.activations
    assert not any(m._forward_hooks for m in net.modules())


def test_capture_of_unknown_layer_leaves_nothing():
    net = ShapesVGG()
    with pytest.raises(LayerError, match="did you mean"):
        with capture(net, ["features.0", "feature.3"]):
            pass
    assert not any(m._forward_hooks for m in net.modules())


def test_preserved_restores_modes():
    net = ShapesResNet().eval()
    with preserved(net):
        net.train()
        net.layer1.eval()
    assert not any(m.training for m in net.modules())


def test_guard_detects_leftover_hook_and_mode_change():
    net = nn.Sequential(nn.Linear(2, 2))
    assert model_problems([net]) == []
    handle = net.register_forward_hook(lambda *a: None)
    assert any("_forward_hooks" in p for p in model_problems([net]))
    handle.remove()
    net.training = False  # as a library call that forgets to restore the mode would leave it
    assert any("training" in p for p in model_problems([net]))
    net.train()
    assert model_problems([net]) == []


def test_capture_on_loaded_model_is_clean(shapes_model):
    with underhood.capture(shapes_model, "features.3") as cap:
        shapes_model(torch.rand(1, 3, 64, 64))
    assert cap.activations["features.3"].shape == (1, 16, 32, 32)


def test_differentiable_keeps_graph_copies_and_stops_after_the_layer():
    from underhood.core.hooks import differentiable

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3)).eval()
    calls = []
    handle = net[2].register_forward_hook(lambda m, i, o: calls.append(1))
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    with differentiable(net, ["0"]) as run:
        first, out1 = run(x)
        acts, out2 = run(x)
    handle.remove()
    assert out1 is not None and out2 is None and len(calls) == 1  # the second pass stopped after "0"
    expected = net[0](x)
    assert torch.allclose(acts["0"], expected)  # the copy precedes the in-place ReLU
    (g,) = torch.autograd.grad(acts["0"].sum(), x)
    (ref,) = torch.autograd.grad(expected.sum(), x)
    assert torch.allclose(g, ref)
    with differentiable(net, ["0"], stop=False) as run:
        assert run(x)[1] is not None
    assert model_problems(net.modules()) == []
