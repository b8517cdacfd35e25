"""adversarial, dataset-level: universal perturbations (closed form on affine binary classifiers, Algorithm 1
against a slow reference, budget and box, seeds) and adversarial patches (exact pasting, footprint, a learnt
patch against random ones), lifecycle and errors; the shapes-model numbers in the slow lane."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

import underhood
import underhood.adversarial as adv
from underhood.adversarial.universal import PatchResult, UniversalResult, apply_patch, patch, universal
from underhood.core.errors import InputError

from .adversarial_models import Flaky, one_thread  # noqa: F401  (an autouse fixture)
from .conftest import model_problems


def small(seed: int = 0) -> nn.Module:
    """A random 3-class conv net on ``[N, 3, 8, 8]`` images."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 3))


def colours(gain: float = 10.0) -> nn.Module:
    """Three colour detectors: logit ``k`` is ``gain`` times the largest 3x3 mean of ``x_k`` minus the other
    two channels. Uniform noise scores about 0 everywhere; a patch of pure colour ``k`` scores ``gain``."""
    conv, head = nn.Conv2d(3, 3, 3, bias=False), nn.Linear(3, 3)
    with torch.no_grad():
        conv.weight.copy_((2 * torch.eye(3) - 1)[:, :, None, None].expand(3, 3, 3, 3) / 9)
        head.weight.copy_(gain * torch.eye(3))
        head.bias.zero_()
    return nn.Sequential(conv, nn.AdaptiveMaxPool2d(1), nn.Flatten(), head)


def noise_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def one_side(distances: list[float], *, signs: bool = False, side: int = 0, seed: int = 1):
    """A binary affine model on ``[N, 1, 4, 4]`` and inputs of class ``side`` at the given L2 distances from its
    boundary (which passes through the box's centre), away from the box's faces; and ``u = w1 - w0``.

    With ``signs``, ``u`` is ``4 * s`` for random signs ``s``: every coordinate of ``u / ||u||`` is ``+-1/4``.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        if signs:
            model[1].weight[0].zero_()
            model[1].weight[1].copy_(4 * torch.randint(0, 2, (16,)).float() * 2 - 4)
        u = model[1].weight[1] - model[1].weight[0]
        c = -0.5 * float(u.sum())
        model[1].bias.copy_(torch.tensor([0.0, c]))
    g = torch.Generator().manual_seed(seed)
    x = 0.45 + 0.1 * torch.rand(len(distances), 16, generator=g)
    want = (1 if side else -1) * torch.tensor(distances) * u.norm()
    x = x - ((x @ u + c - want) / u.norm() ** 2)[:, None] * u
    assert 0.2 < x.min() and x.max() < 0.8
    return model, x.view(-1, 1, 4, 4), u.detach()


@pytest.fixture(scope="module")
def shapes_split():
    data = underhood.datasets.shapes(512, seed=1)
    return data.images[:256], data.images[256:]


# ---------------------------------------------------------------------------- universal: oracles


@pytest.mark.parametrize("side", [0, 1])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_universal_l2_on_an_affine_binary_classifier_is_the_optimal_perturbation(side, batch_size):
    # all inputs on one side: the best universal perturbation of L2 norm eps is eps * u / ||u|| towards the other
    # side, and it fools exactly the inputs closer than eps. Every DeepFool step is along u, and the farthest input
    # (0.3 > eps) pushes v to the sphere.
    d = [0.05, 0.1, 0.15, 0.25, 0.3]
    model, x, u = one_side(d, side=side)
    r = universal(model, x, eps=0.2, norm="l2", passes=3, fooling=1.0, batch_size=batch_size)
    expected = (1 if side == 0 else -1) * 0.2 * u / u.norm()
    assert torch.allclose(r.perturbation.flatten(), expected, atol=1e-6)
    assert r.fooling_rate == pytest.approx(3 / 5) and r.history == pytest.approx([3 / 5] * 3)
    assert torch.equal(r.result.success, torch.tensor(d) < 0.2) and r.info["passes"] == 3


def test_universal_linf_on_an_affine_binary_classifier_is_the_corner_along_sign_w():
    # with |u_j| equal, one push from an input farther than 4 eps moves every coordinate past eps: v = eps sign(u),
    # which raises the score by eps ||u||_1 = 4 eps ||u||_2, so exactly the inputs closer than 4 eps are fooled
    d = [0.05, 0.1, 0.15, 0.2]
    model, x, u = one_side(d, signs=True)
    r = universal(model, x, eps=0.03, norm="linf", passes=2, fooling=1.0, batch_size=2, seed=4)
    assert torch.allclose(r.perturbation.flatten(), 0.03 * u.sign(), atol=1e-7)
    assert r.fooling_rate == pytest.approx(0.5) and torch.equal(r.result.success, torch.tensor(d) < 0.12)


def test_universal_sgd_variant_on_an_affine_binary_classifier_reaches_the_corner():
    # every input of class 0: the mean cross-entropy's gradient in v is a positive multiple of u = w1 - w0, so each
    # sign step adds eps/4 * sign(u) and four steps reach the corner eps * sign(u), which fools the inputs closer
    # than 4 eps (its score gain is eps ||u||_1 = 4 eps ||u||_2)
    d = [0.05, 0.1, 0.15, 0.2]
    model, x, u = one_side(d, signs=True)
    r = universal(model, x, eps=0.03, norm="linf", passes=2, fooling=1.0, batch_size=2, method="sgd")
    assert torch.allclose(r.perturbation.flatten(), 0.03 * u.sign(), atol=1e-7)
    assert torch.equal(r.result.success, torch.tensor(d) < 0.12) and r.info["variant"] == "sgd"
    # the L2 variant: steps along u / ||u||, projected onto the sphere: the paper's optimum eps * u / ||u||
    r = universal(model, x, eps=0.2, norm="l2", passes=3, fooling=1.0, batch_size=4, method="sgd", step_size=0.1)
    assert torch.allclose(r.perturbation.flatten(), 0.2 * u / u.norm(), atol=1e-6)


def reference_universal(model, x, *, eps, norm, passes, fooling, overshoot, steps, candidates, seed):
    """Algorithm 1 of Moosavi-Dezfooli et al. (2017), one point at a time, with the public DeepFool."""
    with torch.no_grad():
        y = model(x).argmax(1)
    v, g, history = torch.zeros_like(x[0]), torch.Generator().manual_seed(seed), []
    while len(history) < passes and (history[-1] if history else 0.0) < fooling:
        for i in torch.randperm(len(x), generator=g).tolist():
            xv = (x[i:i + 1] + v).clamp(0, 1)
            with torch.no_grad():
                fooled = model(xv).argmax(1) != y[i]
            if not fooled:
                r = adv.deepfool(model, xv, y[i:i + 1], steps=steps, overshoot=overshoot, candidates=candidates)
                if r.success:
                    v = v + r.perturbation[0]
                    v = v.clamp(-eps, eps) if norm == "linf" else v * min(1.0, eps / float(v.norm()))
        with torch.no_grad():
            history.append(float((model((x + v).clamp(0, 1)).argmax(1) != y).float().mean()))
    return v, history


@pytest.mark.parametrize("norm,eps,candidates", [("linf", 16 / 255, 2), ("l2", 0.6, 3)])
def test_universal_with_batch_size_one_is_algorithm_1(norm, eps, candidates):
    model, x = small(), noise_images(12)
    r = universal(model, x, eps=eps, norm=norm, passes=3, fooling=0.9, candidates=candidates, batch_size=1, seed=2)
    v, history = reference_universal(model, x, eps=eps, norm=norm, passes=3, fooling=0.9, overshoot=0.02,
                                     steps=10, candidates=candidates, seed=2)
    assert v.abs().max() > 0 and r.info["updates"] > 0
    assert torch.allclose(r.perturbation, v, atol=1e-6) and r.history == pytest.approx(history)


# ---------------------------------------------------------------------------- universal: properties


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_universal_respects_its_budget_and_the_box_and_measures_held_out_images(norm, eps):
    model, x, held = small(), noise_images(16), noise_images(10, seed=5)
    r = universal(model, x, eps=eps, norm=norm, passes=2, held_out=held, batch_size=4)
    v = r.perturbation
    assert isinstance(r, UniversalResult) and v.shape == (3, 8, 8) and r.eps == eps and r.norm == norm
    assert (v.abs().max() if norm == "linf" else v.norm()) <= eps * (1 + 1e-5)
    res = r.result
    assert len(res) == 10 and 0 <= res.adversarial.min() and res.adversarial.max() <= 1
    assert torch.equal(res.adversarial, r.apply(held)) and torch.equal(res.adversarial, (held + v).clamp(0, 1))
    with torch.no_grad():
        changed = model(res.adversarial).argmax(1) != model(held).argmax(1)
        on_inputs = (model(r.apply(x)).argmax(1) != model(x).argmax(1)).float().mean()
    assert torch.equal(res.success, changed) and r.held_out_fooling_rate == res.success_rate
    assert r.fooling_rate == pytest.approx(float(on_inputs)) == r.history[-1]
    assert res.info["method"] == "universal" and res.info["masked"] == 0.0


def test_universal_eps_zero_fools_nothing_and_the_fooling_rate_rises_with_eps():
    model, x = small(), noise_images(24)
    results = [universal(model, x, eps=e, passes=3, fooling=1.0, batch_size=8) for e in (0, 2 / 255, 8 / 255,
                                                                                           32 / 255)]
    assert torch.equal(results[0].perturbation, torch.zeros(3, 8, 8)) and results[0].fooling_rate == 0
    assert results[0].result.success.sum() == 0 and results[0].history == [0.0] * 3
    rates = [r.fooling_rate for r in results]
    assert rates == sorted(rates) and rates[-1] >= 0.5, rates


def test_universal_stops_at_the_fooling_rate_and_counts_its_queries():
    model, x = small(), noise_images(24)
    r = universal(model, x, eps=32 / 255, passes=10, fooling=0.5, batch_size=8)
    assert r.history[-1] >= 0.5 and all(h < 0.5 for h in r.history[:-1]) and r.info["passes"] == len(r.history) < 10
    assert r.info["queries"] > 24 * (len(r.history) + 1) and r.info["gradients"] > 0
    # labels given: misclassified clean inputs count as fooled from the start, so no pass is needed
    assert universal(model, x, (model(x).argmax(1) + 1) % 3, fooling=0.9).history == []


def test_universal_is_deterministic_given_the_seed():
    model, x = small(), noise_images(16)
    a, b = (universal(model, x, eps=16 / 255, passes=2, fooling=1.0, batch_size=4, seed=3) for _ in range(2))
    assert torch.equal(a.perturbation, b.perturbation) and a.history == b.history and a.info["seed"] == 3
    c = universal(model, x, eps=16 / 255, passes=2, fooling=1.0, batch_size=4, seed=4)
    assert not torch.equal(a.perturbation, c.perturbation)


# ---------------------------------------------------------------------------- apply_patch


def test_apply_patch_at_an_integer_position_pastes_the_patch_exactly():
    x = noise_images(2, 10)
    p = noise_images(1, 4, seed=3)[0]
    out = apply_patch(x, p, position=(2 / 6, 3 / 6))  # the top-left pixel lands at row 2 * (10 - 4) / 6, col 3
    assert torch.allclose(out[:, :, 2:6, 3:7], p.expand(2, -1, -1, -1), atol=1e-6)
    outside = torch.ones(10, 10, dtype=torch.bool)
    outside[2:6, 3:7] = False
    assert torch.equal(out[:, :, outside], x[:, :, outside])
    # a quarter turn counter-clockwise around the same centre is torch.rot90
    turned = apply_patch(x, p, position=(2 / 6, 3 / 6), angle=90)
    assert torch.allclose(turned[:, :, 2:6, 3:7], torch.rot90(p, 1, dims=(1, 2)).expand(2, -1, -1, -1), atol=1e-6)
    corners = apply_patch(x, p, position=torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.allclose(corners[0, :, :4, :4], p, atol=1e-6) and torch.allclose(corners[1, :, 6:, 6:], p, atol=1e-6)


@pytest.mark.parametrize("shape", ["square", "circle"])
def test_apply_patch_changes_only_the_pixels_under_the_placed_patch(shape):
    # a white patch on black images: the output is the patch's coverage, 1 well inside the turned, scaled square
    # (or disk), 0 farther than one pixel outside it
    n, size, side = 6, 24, 6
    g = torch.Generator().manual_seed(0)
    pos, scale = torch.rand(n, 2, generator=g), 0.8 + 0.6 * torch.rand(n, generator=g)
    angle = 360 * torch.rand(n, generator=g)
    out = apply_patch(torch.zeros(n, 3, size, size), torch.ones(3, side, side), position=pos, scale=scale,
                      angle=angle, shape=shape)
    assert 0 <= out.min() and out.max() <= 1 and torch.equal(out[:, 0], out[:, 2])
    # pixel centres in the patch frame (the inverse of apply_patch's placement), in units of the patch's half-side
    t = angle * math.pi / 180
    extent = scale * side * (t.cos().abs() + t.sin().abs())
    centre = size / 2 + (pos - 0.5) * (size - extent)[:, None]
    grid = torch.arange(size) + 0.5
    dy, dx = grid[None, :, None] - centre[:, 0, None, None], grid[None, None, :] - centre[:, 1, None, None]
    u = (t.cos()[:, None, None] * dx - t.sin()[:, None, None] * dy) / scale[:, None, None]
    v = (t.sin()[:, None, None] * dx + t.cos()[:, None, None] * dy) / scale[:, None, None]
    reach = torch.maximum(u.abs(), v.abs()) if shape == "square" else (u**2 + v**2).sqrt()
    margin = 1.5  # bilinear sampling reaches one patch pixel past the last pixel centre (sqrt(2) diagonally)
    assert (out[:, 0][reach > side / 2 + margin] == 0).all()
    assert torch.allclose(out[:, 0][reach < side / 2 - margin], torch.tensor(1.0), atol=1e-5)
    assert (reach < side / 2 - margin).sum() > n * 4


def test_apply_patch_is_seeded_and_differentiable_through_rotation_and_scale():
    x, p = noise_images(3, 12), noise_images(1, 4, seed=1)[0]
    assert torch.equal(apply_patch(x, p, seed=1), apply_patch(x, p, seed=1))
    assert not torch.equal(apply_patch(x, p, seed=1), apply_patch(x, p, seed=2))
    q = p.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(apply_patch(x, q, position=(0.5, 0.5), scale=1.3, angle=23).sum(), q)
    assert (grad > 0).all()  # every patch pixel reaches some output pixel


# ---------------------------------------------------------------------------- patch


def random_patch_rate(model, x, target, side, n=5, seed=0):
    """Targeted success of uniform random patches of the same size, at random placements (the control)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        keep = model(x).argmax(1) != target
        rates = [(model(apply_patch(x, torch.rand(3, side, side, generator=g), seed=k)).argmax(1) == target)[keep]
                 .float().mean() for k in range(n)]
    return float(torch.stack(rates).mean())


def test_a_learnt_patch_beats_random_patches_of_its_size():
    model, x, held = colours(), noise_images(32, 16), noise_images(32, 16, seed=1)
    r = patch(model, x, 1, held_out=held, size=0.25, steps=20, lr=0.1, batch_size=8)
    assert isinstance(r, PatchResult) and r.patch.shape == (3, 4, 4) and r.target == 1
    assert r.success_rate >= 0.9 and random_patch_rate(model, held, 1, 4) <= 0.2
    assert r.patch[1].mean() > 0.9 and r.patch[[0, 2]].mean() < 0.1  # pure green: the detector of class 1
    assert sum(r.history[-5:]) > sum(r.history[:5]) and r.info["placements"] == 160


def test_patch_evaluation_leaves_out_images_of_the_target_class():
    model, x, held = colours(), noise_images(16, 16), noise_images(20, 16, seed=1)
    with torch.no_grad():
        clean = model(held).argmax(1)
    r = patch(model, x, 0, held_out=held, size=0.25, steps=5, lr=0.1, batch_size=4)
    res = r.result
    other = clean != 0
    assert r.info["evaluated"] == len(res) == int(other.sum()) and r.info["excluded"] == int((~other).sum())
    assert torch.equal(res.target, torch.zeros(len(res), dtype=torch.long)) and torch.equal(res.labels, clean[other])
    assert torch.equal(res.success, res.predicted == 0) and r.success_rate == res.success_rate
    assert 0 <= res.adversarial.min() and res.adversarial.max() <= 1
    # the evaluation placements are drawn for every held-out image from seed + 1
    from underhood.adversarial.universal import _draws, _mask, _paste

    draws = _draws(20, torch.Generator().manual_seed(1), (0.8, 1.2), 180.0, held.device)
    assert torch.equal(res.adversarial, _paste(held, r.patch, _mask("square", 4, 4, held.device), *draws)[other])
    labels = torch.zeros(20, dtype=torch.long)
    labels[:5] = 2
    given = patch(model, x, 2, held_out=(held, labels), size=0.25, steps=5, lr=0.1, batch_size=4)
    assert given.info["evaluated"] == 15 and torch.equal(given.result.labels, labels[5:])


def test_patch_is_deterministic_given_the_seed():
    model, x = colours(), noise_images(8, 16)
    a, b = (patch(model, x, 2, size=0.25, steps=4, batch_size=4, seed=7) for _ in range(2))
    assert torch.equal(a.patch, b.patch) and a.history == b.history and a.info["seed"] == 7
    assert torch.equal(a.result.adversarial, b.result.adversarial)
    assert not torch.equal(a.patch, patch(model, x, 2, size=0.25, steps=4, batch_size=4, seed=8).patch)
    circle = patch(model, x, 2, size=0.25, steps=4, batch_size=4, shape="circle", rotate=False)
    assert circle.info["shape"] == "circle" and circle.info["rotate"] == 0.0
    assert torch.equal(circle.apply(x[:2], position=(0, 0))[:, :, 0, 0], x[:2, :, 0, 0])  # the disk misses a corner


# ---------------------------------------------------------------------------- lifecycle and errors


@pytest.mark.parametrize("method", ["universal", "patch"])
@pytest.mark.parametrize("fail_at", [0, 3])
def test_the_model_is_left_as_found_also_when_the_attack_raises(method, fail_at):
    model = Flaky(fail_at)
    model.train()
    model.net[0].weight.requires_grad_(False)
    x = noise_images(4, 4)[:, :1]
    target = int(model.eval()(x[:1]).argmax(1) + 1) % 3  # a class the first image is not
    model.train()
    model.calls = 0
    seen = []
    model.net[3].register_forward_pre_hook(lambda m, i: seen.append(m.training))

    def run():
        if method == "universal":
            return universal(model, x, eps=0.1, passes=2, batch_size=2)
        return patch(model, x, target, held_out=x[:1], size=0.5, steps=3, batch_size=2)

    if fail_at:
        with pytest.raises(RuntimeError, match="boom"):
            run()
    else:
        r = run()
        assert r.result.adversarial.shape[1:] == x.shape[1:]
    assert seen and not any(seen)
    model.net[3]._forward_pre_hooks.clear()
    assert model.training and model.net[1].training and not model.net[0].weight.requires_grad
    assert model.net[0].bias.requires_grad and model.net[5].weight.grad is None
    assert model_problems([model, *model.modules()]) == []


@pytest.mark.parametrize("call,message", [
    (lambda m, x: universal(m, x, eps=2.0), "^eps: expected a budget in \\[0, 1\\] for the linf norm, got 2.0"),
    (lambda m, x: universal(m, x, norm="l1"), "^norm: unknown norm 'l1'; choose 'linf' or 'l2'"),
    (lambda m, x: universal(m, x, passes=0), "^passes: expected a positive int, got 0"),
    (lambda m, x: universal(m, x, fooling=1.5), "^fooling: expected a share in \\[0, 1\\], got 1.5"),
    (lambda m, x: universal(m, x, batch_size=0), "^batch_size: expected a positive int, got 0"),
    (lambda m, x: universal(m, x, method="adam"), "^method: "),
    (lambda m, x: universal(m, x, method="sgd", step_size=-1.0), "^step_size: "),
    (lambda m, x: universal(m, x, [0, 1]), "^labels: 2 classes for a batch of 4"),
    (lambda m, x: universal(m, x, held_out=x[:, :, :4, :4]), "^held_out: images of shape \\(3, 4, 4\\) differ from "
                                                              "the inputs' \\(3, 8, 8\\)"),
    (lambda m, x: universal(m, x, held_out="images"), "^held_out: expected images \\[N, C, H, W\\]"),
    (lambda m, x: universal(m, x, held_out=(x, [0, 1])), "^labels: 2 classes for a batch of 4"),
    (lambda m, x: universal(m, x, eps=0.0, passes=1).apply(x[:, :1]), "^images: expected \\[N, 3, 8, 8\\] images, "
                                                                       "got \\(4, 1, 8, 8\\)"),
    (lambda m, x: universal(m, x * 3 - 1), "^inputs: pixel values must lie in \\[0, 1\\]"),
    (lambda m, x: patch(m, x, 3), "^target: class 3 is out of range for a model with 3 outputs \\(0..2\\)"),
    (lambda m, x: patch(m, x, [1, 2]), "^target: expected one class index \\(an int\\), got \\[1, 2\\]"),
    (lambda m, x: patch(m, x, 1, size=0.0), "^size: expected a finite number > 0, got 0.0"),
    (lambda m, x: patch(m, x, 1, size=1.5), "^size: expected the patch's side as a fraction in \\(0, 1\\]"),
    (lambda m, x: patch(m, x, 1, scale=(1.2, 0.8)), "^scale: expected a \\(low, high\\) pair of relative scales "
                                                    "with 0 < low <= high, got \\(1.2, 0.8\\)"),
    (lambda m, x: patch(m, x, 1, scale=1.0), "^scale: expected a \\(low, high\\) pair"),
    (lambda m, x: patch(m, x, 1, shape="star"), "^shape: unknown value 'star'; choose one of square, circle"),
    (lambda m, x: patch(m, x, 1, steps=0), "^steps: expected a positive int, got 0"),
    (lambda m, x: patch(m, x, 1, held_out=(x, [1, 1, 1, 1])), "^held_out: every image is already of class 1"),
    (lambda m, x: apply_patch(x, torch.ones(1, 2, 2)), "^patch: expected a float \\[3, h, w\\] tensor, got "
                                                       "\\(1, 2, 2\\)"),
    (lambda m, x: apply_patch(x, torch.ones(3, 2, 2) * 2), "^patch: pixel values must lie in \\[0, 1\\]"),
    (lambda m, x: apply_patch(x, torch.ones(3, 2, 2), position=(0.5, 2)), "^position: expected \\(row, col\\) "
                                                                          "fractions in \\[0, 1\\]"),
    (lambda m, x: apply_patch(x, torch.ones(3, 2, 2), scale=0), "^scale: expected a positive factor, got 0"),
    (lambda m, x: apply_patch(x, torch.ones(3, 2, 2), angle=[1, 2]), "^angle: expected a finite number or one per "
                                                                      "image \\(4\\), got 2 values"),
])
def test_bad_arguments_fail_with_one_line_naming_the_argument(call, message):
    with pytest.raises(InputError, match=message) as err:
        call(small(), noise_images(4))
    assert "\n" not in str(err.value) and isinstance(err.value, underhood.UnderhoodError)


# ---------------------------------------------------------------------------- the built-in shapes model


@pytest.mark.slow
def test_universal_perturbation_of_the_shapes_model(shapes_model, shapes_split):
    train, test = shapes_split
    start = time.perf_counter()
    r = universal(shapes_model, train, eps=10 / 255, held_out=test)
    seconds = time.perf_counter() - start
    print(f"universal: fooling {r.fooling_rate:.3f} on inputs, {r.held_out_fooling_rate:.3f} held out, "
          f"{r.info['passes']} passes, {seconds:.1f} s")
    assert r.perturbation.abs().max() <= 10 / 255 + 1e-6 and len(r.result) == 256
    # the shapes model resists 10/255: a universal perturbation twice as large fools more
    assert universal(shapes_model, train, eps=24 / 255, passes=2, held_out=test).held_out_fooling_rate >= 0.2


@pytest.mark.slow
def test_adversarial_patch_on_the_shapes_model(shapes_model, shapes_split):
    train, test = shapes_split
    start = time.perf_counter()
    r = patch(shapes_model, train, 4, held_out=test)  # "cross"
    seconds = time.perf_counter() - start
    print(f"patch: target {shapes_model.classes[4]}, success {r.success_rate:.3f} on {r.info['evaluated']} held-out "
          f"images, {seconds:.1f} s")
    assert r.success_rate >= 0.8 and random_patch_rate(shapes_model, test, 4, r.info["side"]) <= 0.2
