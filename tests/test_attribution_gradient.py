"""Gradient family: closed forms on linear and quadratic models, slow references, batching, lifecycle."""

from __future__ import annotations

import pytest
import torch

from underhood import Unit
from underhood.attribution import input_x_gradient, integrated_gradients, saliency, smoothgrad
from underhood.attribution.metrics import completeness
from underhood.core.errors import InputError
from underhood.core.hooks import hooked
from underhood.core.seeding import generator

from .attribution_models import Broken, Linear, Quadratic
from .conftest import model_problems


def test_saliency_of_a_linear_model_is_its_weight_row():
    model = Linear().eval()
    x = torch.rand(3, 3, 6, 6)
    target = [2, 0, 3]
    grad = saliency(model, x, target)
    for i, c in enumerate(target):
        assert torch.allclose(grad[i], model.row(c), atol=1e-6)
    assert torch.allclose(input_x_gradient(model, x, target)[1], x[1] * model.row(0), atol=1e-6)


def test_default_target_is_the_predicted_class():
    model = Linear().eval()
    x = torch.rand(4, 3, 6, 6)
    pred = model(x).argmax(1)
    assert torch.allclose(saliency(model, x), saliency(model, x, pred))


def test_unit_target_is_the_gradient_of_the_unit(shapes_model):
    x = torch.rand(2, 3, 64, 64)
    grad = saliency(shapes_model, x, Unit("features.4", 3, y=5, x=6))
    probe = x.clone().requires_grad_(True)
    acts = {}
    with hooked(shapes_model, {shapes_model.net.features[4]: lambda m, i, o: acts.setdefault("a", o.clone())}):
        shapes_model(probe)
    (ref,) = torch.autograd.grad(acts["a"][:, 3, 5, 6].sum(), probe)
    assert torch.allclose(grad, ref, atol=1e-6)
    assert grad[0].abs().sum() > 0


def test_integrated_gradients_of_a_linear_model_is_exact():
    model = Linear().eval()
    x, base = torch.rand(2, 3, 6, 6), torch.rand(3, 6, 6)
    ig = integrated_gradients(model, x, 1, baseline=base, steps=3)
    gap = completeness(model, x, ig, 1, baseline=base)
    assert torch.allclose(ig, (x - base) * model.row(1), atol=1e-5)
    assert gap.abs().max() < 1e-4


@pytest.mark.parametrize("rule", ["trapezoid", "middle"])
def test_integrated_gradients_of_a_quadratic_matches_the_closed_form(rule):
    # IG_i = (x_i - b_i) * integral 2 (b + a (x - b)) da = x_i^2 - b_i^2: exact for these rules
    x, b = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    ig = integrated_gradients(Quadratic(), x, 0, baseline=b, steps=5, rule=rule)
    assert torch.allclose(ig, x.pow(2) - b.pow(2), atol=1e-5)


def test_integrated_gradients_right_riemann_sum_reference():
    x, b = torch.rand(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)
    steps = 4
    ref = sum(2 * (b + k / steps * (x - b)) for k in range(1, steps + 1)) / steps * (x - b)
    assert torch.allclose(integrated_gradients(Quadratic(), x, 0, steps=steps), ref, atol=1e-6)


def test_integrated_gradients_completeness_on_the_builtin_model(shapes_model, shapes_small):
    x = shapes_small.images[:2]
    ig = integrated_gradients(shapes_model, x, baseline=0.0, steps=128)
    gap = completeness(shapes_model, x, ig, baseline=0.0)
    with torch.no_grad():
        logits, at_zero = shapes_model(x), shapes_model(torch.zeros_like(x))
    c = logits.argmax(1)
    delta = logits.gather(1, c[:, None]) - at_zero.gather(1, c[:, None])
    assert torch.allclose(gap, ig.flatten(1).sum(1) - delta.squeeze(1), atol=1e-4)
    assert (gap.abs() < 0.02 * delta.abs().squeeze(1) + 1e-3).all()


def test_smoothgrad_equals_a_slow_reference():
    model = Quadratic()
    x = torch.rand(2, 2, 4, 4)
    n, std, seed = 7, 0.2, 5
    got = smoothgrad(model, x, 0, n_samples=n, noise_std=std, seed=seed)
    got_sq = smoothgrad(model, x, 0, n_samples=n, noise_std=std, seed=seed, square=True)
    noise = torch.randn((n, 2, 4, 4), generator=generator(seed))
    for i in range(2):
        sigma = std * (x[i].max() - x[i].min())
        grads = [2 * (x[i] + sigma * noise[s]) for s in range(n)]
        assert torch.allclose(got[i], sum(grads) / n, atol=1e-5)
        assert torch.allclose(got_sq[i], sum(g * g for g in grads) / n, atol=1e-5)


def test_smoothgrad_of_a_linear_model_is_the_weight_row():
    model = Linear().eval()
    assert torch.allclose(smoothgrad(model, torch.rand(1, 3, 6, 6), 2, n_samples=5)[0], model.row(2), atol=1e-5)


def test_seeded_and_batched_methods_are_reproducible(shapes_model, shapes_small):
    x = shapes_small.images[:3]
    a = smoothgrad(shapes_model, x, n_samples=6, seed=1, batch_size=4)
    assert torch.allclose(a, smoothgrad(shapes_model, x, n_samples=6, seed=1, batch_size=7), atol=1e-5)
    assert not torch.allclose(a, smoothgrad(shapes_model, x, n_samples=6, seed=2, batch_size=4))
    one = torch.cat([smoothgrad(shapes_model, x[i:i + 1], n_samples=6, seed=1, batch_size=4) for i in range(3)])
    assert torch.allclose(a, one, atol=1e-5)
    ig = integrated_gradients(shapes_model, x, steps=8, batch_size=5)
    one = torch.cat([integrated_gradients(shapes_model, x[i:i + 1], steps=8, batch_size=3) for i in range(3)])
    assert torch.allclose(ig, one, atol=1e-5)


def test_noise_target_is_fixed_on_the_clean_input():
    # with heavy noise the argmax of noisy copies varies; the explained class must not
    model = Linear(classes=3).eval()
    x = torch.rand(1, 3, 6, 6)
    c = int(model(x).argmax())
    assert torch.allclose(smoothgrad(model, x, n_samples=20, noise_std=3.0)[0], model.row(c), atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda m, x: smoothgrad(m, x, n_samples=0), "n_samples"),
    (lambda m, x: smoothgrad(m, x, noise_std=-1), "noise_std"),
    (lambda m, x: integrated_gradients(m, x, baseline=torch.zeros(5, 5)), "baseline"),
    (lambda m, x: integrated_gradients(m, x, rule="simpson"), "rule"),
    (lambda m, x: integrated_gradients(m, x, steps=0), "steps"),
    (lambda m, x: saliency(m, x[0]), "inputs"),
    (lambda m, x: saliency(m, x[:, :1]), "3-channel"),
    (lambda m, x: saliency(m, (x * 255).byte()), "float"),
    (lambda m, x: saliency(m, x, target=99), "out of range"),
])
def test_bad_arguments_give_clear_errors(call, message, shapes_model):
    with pytest.raises(InputError, match=message):
        call(shapes_model, torch.rand(2, 3, 64, 64))


def test_model_state_is_restored_also_when_forward_raises():
    model = Broken().train()
    model.conv.weight.requires_grad_(True)
    model.conv.bias.requires_grad_(False)
    for method in (saliency, smoothgrad, integrated_gradients):
        with pytest.raises(RuntimeError, match="boom"):
            method(model, torch.rand(1, 3, 8, 8), 0)
        assert model.training and model.conv.weight.requires_grad and not model.conv.bias.requires_grad
        assert model_problems(model.modules()) == []
