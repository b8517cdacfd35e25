"""ReLU rules: fast deconvnet / guided backprop equal slow layer-by-layer references."""

from __future__ import annotations

import pytest
import torch

import underhood
from underhood.attribution import deconvnet, guided_backprop, saliency
from underhood.core.errors import ModelError
from underhood.core.rules import relu_rule

from .attribution_models import Broken, Linear, ReluZoo, Residual
from .conftest import model_problems

RULES = {
    "gradient": lambda g, x: g * (x > 0),
    "deconvnet": lambda g, x: g.clamp(min=0),                 # Zeiler & Fergus: relu(grad_out)
    "guided": lambda g, x: g.clamp(min=0) * (x > 0),          # Springenberg: relu(grad_out) [x > 0]
}


def _vjp(f, x, g):
    x = x.detach().requires_grad_(True)
    (out,) = torch.autograd.grad(f(x), x, g)
    return out


def reference_zoo(model: ReluZoo, x: torch.Tensor, c: int, rule: str) -> torch.Tensor:
    """Walk the forward op by op, then backward op by op, applying the rule's formula at each ReLU."""
    inputs, t = [], x
    with torch.no_grad():
        for kind, f in model.ops():
            inputs.append(t)
            t = t.clamp(min=0) if kind == "relu" else f(t)
    g = torch.zeros_like(t)
    g[:, c] = 1
    for (kind, f), inp in zip(reversed(model.ops()), reversed(inputs)):
        g = RULES[rule](g, inp) if kind == "relu" else _vjp(f, inp, g)
    return g


def reference_residual(model: Residual, x: torch.Tensor, c: int, rule: str) -> torch.Tensor:
    m, r = model, RULES[rule]
    with torch.no_grad():
        s = m.stem(x)
        a = s.clamp(min=0)
        c1 = m.conv1(a)
        o = m.conv2(c1.clamp(min=0)) + a
    g_o = r(_vjp(lambda t: m.fc(t.mean((2, 3)))[:, c].sum(), o.clamp(min=0), torch.tensor(1.0)), o)
    g_c1 = r(_vjp(m.conv2, c1.clamp(min=0), g_o), c1)
    g_a = _vjp(m.conv1, a, g_c1) + g_o          # the skip connection adds its gradient
    return _vjp(m.stem, x, r(g_a, s))


@pytest.mark.parametrize("rule, method", [("deconvnet", deconvnet), ("guided", guided_backprop)])
def test_rules_equal_the_layer_by_layer_reference(rule, method):
    x = torch.rand(3, 3, 12, 12)
    zoo, res = ReluZoo().eval(), Residual().eval()
    for i, c in enumerate([1, 3, 2]):
        assert torch.allclose(method(zoo, x, c)[i], reference_zoo(zoo, x[i:i + 1], c, rule)[0], atol=1e-5)
        assert torch.allclose(method(res, x, c)[i], reference_residual(res, x[i:i + 1], c, rule)[0], atol=1e-5)


def test_the_gradient_rule_reproduces_autograd():
    for model in (ReluZoo().eval(), Residual().eval()):
        x = torch.rand(2, 3, 12, 12)
        ref = torch.cat([reference_zoo(model, x[i:i + 1], 1, "gradient") for i in range(2)]) \
            if isinstance(model, ReluZoo) else torch.cat([reference_residual(model, x[i:i + 1], 1, "gradient")
                                                          for i in range(2)])
        assert torch.allclose(saliency(model, x, 1), ref, atol=1e-5)
        probe = x.clone().requires_grad_(True)
        with relu_rule("gradient"):
            (got,) = torch.autograd.grad(model(probe)[:, 1].sum(), probe)
        assert torch.allclose(got, ref, atol=1e-5)


def test_rules_differ_from_the_gradient_and_reach_every_relu():
    model = ReluZoo().eval()
    x = torch.rand(2, 3, 12, 12)
    probe = x.clone().requires_grad_(True)
    with relu_rule("guided") as mode:
        model(probe)
    assert mode.count == 5   # in-place module twice (reused), F.relu, torch.relu, Tensor.relu_
    assert not torch.allclose(guided_backprop(model, x, 0), saliency(model, x, 0))
    assert not torch.allclose(deconvnet(model, x, 0), guided_backprop(model, x, 0))


def test_builtin_resnet_and_batching(shapes_small):
    model = underhood.load_model("shapes-resnet", device="cpu")
    x = shapes_small.images[:3]
    batch = guided_backprop(model, x)
    one = torch.cat([guided_backprop(model, x[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, one, atol=1e-5)
    assert batch.abs().sum() > 0 and not torch.allclose(batch, saliency(model, x))
    assert model_problems(model.modules()) == []
    assert all(not m._backward_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_models_without_relu_or_in_torchscript_are_refused():
    with pytest.raises(ModelError, match="no ReLU"):
        guided_backprop(Linear().eval(), torch.rand(1, 3, 6, 6))
    scripted = torch.jit.script(ReluZoo().eval())
    with pytest.raises(ModelError, match="TorchScript"):
        deconvnet(scripted, torch.rand(1, 3, 12, 12))


def test_the_rule_ends_with_the_call_also_when_forward_raises():
    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        guided_backprop(model, torch.rand(1, 3, 8, 8), 0)
    assert model.training and model_problems(model.modules()) == []
    x = torch.rand(1, 3, 12, 12)
    zoo = ReluZoo().eval()
    probe = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(zoo(probe)[:, 0].sum(), probe)
    assert torch.allclose(plain, saliency(zoo, x, 0))
