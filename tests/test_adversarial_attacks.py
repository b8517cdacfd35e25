"""adversarial: closed forms of FGSM/PGD on linear models, budgets and box, the shapes-model targets,
seeds, cost, controls (random sphere, noise, linear demo), robustness curves, lifecycle and errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import underhood
import underhood.adversarial as adv
from underhood.core.errors import InputError

from .adversarial_models import Flaky, Quantized, one_thread  # noqa: F401  (an autouse fixture)
from .conftest import model_problems


def linear_model(classes: int = 2, dims: int = 16, seed: int = 0) -> nn.Module:
    """``logits = W x + b`` on ``[N, 1, 4, 4]`` images."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(dims, classes))


def interior(n: int = 6, dims: int = 16, seed: int = 1) -> torch.Tensor:
    """Inputs away from the box's faces, so budgets up to 0.2 never clip."""
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, 1, 4, 4, generator=g)


@pytest.fixture(scope="module")
def shapes32():
    """The first 32 held-out shapes images (``shapes(n, seed)`` is a prefix of the 2,000 of ``test_set``)."""
    from underhood.models.training import SHAPES_TEST_SEED

    data = underhood.datasets.shapes(32, seed=SHAPES_TEST_SEED)
    return data.images, data.labels


# ---------------------------------------------------------------------------- oracles on linear models


def test_fgsm_on_a_linear_model_is_the_closed_form():
    model, x = linear_model(2), interior()
    w = model[1].weight.detach()
    y = model(x).argmax(1)
    r = adv.fgsm(model, x, eps=0.1)
    # d CE / dx = (p - e_y)^T W = p_other (w_other - w_y): its sign is sign(w_other - w_y)
    expected = x + 0.1 * (w[1 - y] - w[y]).sign().view_as(x)
    assert torch.allclose(r.adversarial, expected, atol=1e-6)
    assert torch.equal(r.labels, y) and r.success.all() == (model(expected).argmax(1) != y).all()


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_on_a_multiclass_linear_model_steps_along_the_sign_of_the_softmax_gradient(targeted):
    model, x = linear_model(5), interior()
    w = model[1].weight.detach()
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    t = (y + 1) % 5
    cls = t if targeted else y
    grad = (logits.softmax(1) - F.one_hot(cls, 5)) @ w  # d CE(cls) / dx
    expected = x + 0.05 * (-grad if targeted else grad).sign().view_as(x)
    r = adv.fgsm(model, x, y, eps=0.05, target=t if targeted else None)
    assert torch.allclose(r.adversarial, expected, atol=1e-6)
    assert r.targeted == targeted and (r.target is None) != targeted


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_linf_on_a_linear_model_reaches_the_corner_of_the_cube(random_start):
    model, x = linear_model(2), interior()
    w = model[1].weight.detach()
    y = model(x).argmax(1)
    r = adv.pgd(model, x, eps=0.1, steps=10, random_start=random_start, seed=3)
    assert torch.allclose(r.adversarial, x + 0.1 * (w[1 - y] - w[y]).sign().view_as(x), atol=1e-6)


def test_pgd_l2_on_a_linear_model_reaches_the_point_of_the_ball_along_the_weights():
    model, x = linear_model(2), interior()
    w = model[1].weight.detach()
    y = model(x).argmax(1)
    u = w[1 - y] - w[y]
    r = adv.pgd(model, x, eps=0.3, norm="l2", steps=5, random_start=False)
    assert torch.allclose(r.adversarial, x + 0.3 * (u / u.norm(dim=1, keepdim=True)).view_as(x), atol=1e-5)
    assert torch.allclose(r.norms["l2"], torch.full((len(x),), 0.3), atol=1e-5)


def test_gradient_ascent_is_the_lectures_sgd_loop_with_a_box():
    model, x = linear_model(3), interior(4)
    r = adv.gradient_ascent(model, x, steps=6, lr=0.5)
    # the lecture's code: optimizer = SGD([input], lr); loss = -cross_entropy(output, target); one image at a time
    ref = x.clone().requires_grad_(True)
    target = model(x).argmax(1)
    opt = torch.optim.SGD([ref], lr=0.5)
    table = [target]
    for _ in range(6):
        loss = -F.cross_entropy(model(ref), target, reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            ref.clamp_(0, 1)
        table.append(model(ref).argmax(1))
    assert torch.allclose(r.adversarial, ref.detach(), atol=1e-6)
    assert r.history.shape == (7, 4) and torch.equal(r.history, torch.stack(table))
    assert torch.equal(r.history[-1], r.predicted)
    assert adv.gradient_ascent(model, x, steps=3, optimizer="adam", lr=0.05).history.shape == (4, 4)


# ---------------------------------------------------------------------------- properties


@pytest.mark.parametrize("attack", [
    lambda m, x: adv.fgsm(m, x, eps=0.0),
    lambda m, x: adv.fgsm(m, x, eps=0.0, random_start=True),
    lambda m, x: adv.pgd(m, x, eps=0.0, steps=3),
    lambda m, x: adv.pgd(m, x, eps=0.0, norm="l2", steps=3, restarts=2),
    lambda m, x: adv.noise(m, x, eps=0.0),
])
def test_eps_zero_changes_nothing(attack):
    model, x = linear_model(3), interior()
    r = attack(model, x)
    assert torch.equal(r.adversarial, x) and not r.success.any() and (r.norms["l2"] == 0).all()


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.3)])
def test_every_perturbation_respects_its_budget_and_the_box(shapes_model, shapes32, norm, eps):
    x, y = shapes32[0][:6], shapes32[1][:6]
    results = [adv.pgd(shapes_model, x, y, eps=eps, norm=norm, steps=4, restarts=2),
               adv.noise(shapes_model, x, y, eps=eps, norm=norm)]
    if norm == "linf":
        results += [adv.fgsm(shapes_model, x, y, eps=eps), adv.fgsm(shapes_model, x, y, eps=eps, random_start=True)]
    for r in results:
        assert r.adversarial.min() >= 0 and r.adversarial.max() <= 1
        assert (r.norms[norm] <= eps * (1 + 1e-5)).all(), r.info["method"]
        assert torch.allclose(r.perturbation, r.adversarial - x)
        assert r.confidence.shape == r.predicted.shape == r.success.shape == (6,)


def test_the_issue_targets_on_the_shapes_model(shapes_model, shapes32):
    x, y = shapes32
    clean = (shapes_model(x).argmax(1) == y).float().mean().item()
    assert adv.pgd(shapes_model, x, y, eps=8 / 255, steps=20).accuracy <= 0.05
    assert adv.fgsm(shapes_model, x, y, eps=8 / 255).accuracy < clean
    assert abs(adv.noise(shapes_model, x, y, eps=8 / 255).accuracy - clean) <= 0.03


def test_targeted_success_rises_with_eps(shapes_model, shapes32):
    x, y = shapes32[0][:6], shapes32[1][:6]
    t = (y + 3) % 8
    results = [adv.pgd(shapes_model, x, y, eps=e / 255, steps=5, target=t) for e in (0, 2, 6, 12)]
    rates = [r.success_rate for r in results]
    assert rates == sorted(rates) and rates[0] == 0 and rates[-1] > 0.5, rates
    assert torch.equal(results[-1].success, results[-1].predicted == t)


def test_seeded_attacks_are_deterministic_and_restarts_only_add_successes(shapes_model, shapes32):
    x, y = shapes32[0][:6], shapes32[1][:6]
    a = adv.pgd(shapes_model, x, y, eps=3 / 255, steps=3, restarts=2, seed=5)
    b = adv.pgd(shapes_model, x, y, eps=3 / 255, steps=3, restarts=2, seed=5)
    assert torch.equal(a.adversarial, b.adversarial) and a.info["seed"] == 5
    assert not torch.equal(a.adversarial, adv.pgd(shapes_model, x, y, eps=3 / 255, steps=3, restarts=2,
                                                  seed=6).adversarial)
    one = adv.pgd(shapes_model, x, y, eps=3 / 255, steps=3, seed=5)
    assert not (one.success & ~a.success).any()
    f1, f2 = (adv.fgsm(shapes_model, x, y, eps=3 / 255, random_start=True, seed=1) for _ in range(2))
    assert torch.equal(f1.adversarial, f2.adversarial)


class Counting(nn.Module):
    """Counts forward calls and the rows they carry."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls, self.rows = net, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls, self.rows = self.calls + 1, self.rows + len(x)
        return self.net(x)


def test_pgd_costs_one_pass_per_step():
    model, x = Counting(linear_model(3)), interior(5)
    y = torch.tensor([0, 1, 2, 0, 1])
    adv.pgd(model, x, y, eps=0.05, steps=7)
    # 7 passes with gradients, the final iterate, and one sample to learn the number of classes
    assert model.calls == 9 and model.rows == 8 * 5 + 1


# ---------------------------------------------------------------------------- controls


def test_random_control_matches_the_sphere_law_on_a_linear_model():
    from scipy.stats import beta

    model, x = linear_model(2, seed=4), interior(3, seed=2)
    w, b = model[1].weight.detach(), model[1].bias.detach()
    u, b = w[1] - w[0], float(b[1] - b[0])
    x = x - ((x.flatten(1) @ u + b - 0.05 * u.norm()) / u.norm() ** 2)[:, None].mul(u).view_as(x)
    dist = (x.flatten(1) @ u + b).abs() / u.norm()  # every input at distance 0.05 from the boundary
    assert torch.allclose(dist, torch.full((3,), 0.05)) and 0.1 < x.min() and x.max() < 0.9
    step = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    step = step / step.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    k = torch.tensor([0.5, 1.0, 2.0])
    fake = x + (k * dist).view(-1, 1, 1, 1) * step  # "adversarial" points at k times the distance
    c = adv.random_control(model, x, fake, n=4000, seed=0, batch_size=500)
    assert torch.allclose(c.radius, 2 * k * dist, rtol=1e-4) and torch.allclose(c.clipped, c.radius, rtol=1e-4)
    # for a uniform direction in 16-d, (t + 1) / 2 ~ Beta(7.5, 7.5); the label flips when t > d / R = 1 / (2k)
    expected = torch.tensor([beta.sf((1 / (2 * float(kk)) + 1) / 2, 7.5, 7.5) for kk in k]).float()
    assert torch.allclose(c.changed, expected, atol=4 * math.sqrt(0.25 / 4000)), (c.changed, expected)
    assert c.share == pytest.approx(float(c.changed.mean()))
    again = adv.random_control(model, x, fake, n=4000, seed=0, batch_size=77)
    assert torch.equal(again.changed, c.changed)
    assert adv.random_control(model, x, x, n=10).share == 0.0


def test_the_lectures_random_control_on_the_shapes_model(shapes_model, shapes32):
    x, y = shapes32[0][:6], shapes32[1][:6]
    r = adv.deepfool(shapes_model, x, y)
    assert r.success.all()
    c = adv.random_control(shapes_model, x, r, n=64, batch_size=128)
    assert c.share <= 0.05 and (c.clipped <= c.radius + 1e-5).all() and torch.equal(c.labels, y)


def test_the_lectures_linear_example():
    d = adv.lecture_example()
    assert d.score == -3 and d.score_adv == 2
    assert round(d.prob, 4) == 0.0474 and round(d.prob_adv, 2) == 0.88
    assert d.x_adv.tolist() == [1.5, -1.5, 3.5, -2.5, 2.5, 1.5, 1.5, -3.5, 4.5, 1.5]


def test_a_small_step_along_sign_w_flips_a_confident_logistic_regression():
    d = adv.linear_demo()
    assert d.prob <= 0.01 and d.prob_adv > 0.5 and d.eps <= 20 / 255 and d.info["test_accuracy"] >= 0.95
    assert d.eps_needed <= d.eps and d.dims == 32 * 32 and d.image_shape == (1, 32, 32)
    # FGSM on the same model (logits [0, w.x + b]) takes exactly the demonstration's step
    r = adv.fgsm(d.model, d.x.float().view(1, 1, 32, 32), eps=d.eps)
    assert torch.allclose(r.adversarial.flatten().double(), d.x_adv, atol=1e-6) and r.success.all()


# ---------------------------------------------------------------------------- robustness curves


def test_robustness_curve_of_a_budgeted_attack(shapes_model, shapes32):
    x, y = shapes32[0][:8], shapes32[1][:8]
    curve = adv.robustness_curve(shapes_model, (x, y), "pgd", [0, "2/255", 8 / 255], steps=5, batch_size=5)
    assert curve.eps.tolist() == pytest.approx([0, 2 / 255, 8 / 255])
    assert curve.accuracy[0] == curve.clean_accuracy == 1.0 and curve.accuracy[-1] < 0.5
    chunks = [adv.pgd(shapes_model, x[s], y[s], eps=8 / 255, steps=5) for s in (slice(0, 5), slice(5, 8))]
    assert curve.accuracy[-1] == pytest.approx(sum(r.accuracy * len(r) for r in chunks) / 8)
    with pytest.raises(InputError, match="^eps_list: pgd needs the budgets"):
        adv.robustness_curve(shapes_model, (x, y), "pgd")
    with pytest.raises(InputError, match="^attack: unknown attack 'pgdd'; did you mean pgd"):
        adv.robustness_curve(shapes_model, (x, y), "pgdd", [0.1])


def test_robustness_curve_of_a_minimal_attack_is_the_sorted_norms(shapes_model, shapes32):
    x, y = shapes32[0][:6], shapes32[1][:6]
    y = y.clone()
    y[0] = (y[0] + 1) % 8  # a sample the model gets wrong has minimal norm 0
    curve = adv.robustness_curve(shapes_model, (x, y), "deepfool", batch_size=6)
    direct = adv.deepfool(shapes_model, x[1:], y[1:])
    assert torch.allclose(curve.norms[1:], direct.norms["l2"].sort().values) and curve.norms[0] == 0
    assert curve.clean_accuracy == pytest.approx(5 / 6) and curve.accuracy[0] == pytest.approx(5 / 6)
    assert (curve.accuracy.diff() <= 0).all() and curve.accuracy[-1] == 0 and curve.norm == "l2"
    at = adv.robustness_curve(shapes_model, (x, y), "deepfool", [0.0, 10.0], batch_size=6)
    assert at.accuracy.tolist() == pytest.approx([5 / 6, 0.0])


def test_robustness_curve_norms_and_attacks_without_a_budget(shapes_model, shapes32):
    x, y = shapes32[0][:2], shapes32[1][:2]
    curve = adv.robustness_curve(shapes_model, (x, y), "noise", [0.5], norm="l2", batch_size=2)
    assert curve.norm == "l2" and curve.info["options"] == {"norm": "l2"} and curve.accuracy[0] == 1.0
    with pytest.raises(InputError, match="^norm: fgsm works in the linf norm only, got 'l2'"):
        adv.robustness_curve(shapes_model, (x, y), "fgsm", [0.1], norm="l2", batch_size=2)
    with pytest.raises(InputError, match="^attack: gradient_ascent has no budget to sweep"):
        adv.robustness_curve(shapes_model, (x, y), "gradient_ascent", [0.1], batch_size=2)
    with pytest.raises(InputError, match="^attack: one_pixel has no budget to sweep"):
        adv.robustness_curve(shapes_model, (x, y), "one_pixel", [0.1], batch_size=2)
    with pytest.raises(InputError, match="^attack: one_pixel has no budget to sweep"):
        adv.transfer_matrix([shapes_model], (x, y), "one_pixel")


def test_transfer_matrix_diagonal_is_white_box_and_a_copy_is_fooled_alike():
    import copy

    a, b = linear_model(3, seed=0), linear_model(3, seed=1)
    twin = copy.deepcopy(a)
    x = interior(8)
    y = a(x).argmax(1)
    m = adv.transfer_matrix({"a": a, "twin": twin, "b": b}, (x, y), "pgd", eps=0.1, steps=5, batch_size=3)
    assert m.names == ["a", "twin", "b"] and m.accuracy.shape == (3, 3) and m.clean[0] == 1.0
    direct = [adv.pgd(a, x[s], y[s], eps=0.1, steps=5) for s in (slice(0, 3), slice(3, 6), slice(6, 8))]
    assert m.accuracy[0, 0] == pytest.approx(sum(r.accuracy * len(r) for r in direct) / 8)
    assert m.accuracy[0, 1] == m.accuracy[0, 0] and m.accuracy[1, 0] == m.accuracy[1, 1] and m.eps == 0.1
    assert ((0 <= m.accuracy) & (m.accuracy <= 1)).all()


# ---------------------------------------------------------------------------- lifecycle and errors


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "gradient_ascent", "noise"])
@pytest.mark.parametrize("fail_at", [0, 2])
def test_the_model_is_left_as_found_also_when_the_attack_raises(attack, fail_at):
    model = Flaky(fail_at)
    model.train()
    model.net[0].weight.requires_grad_(False)
    x = interior(2)
    seen = []
    model.net[3].register_forward_pre_hook(lambda m, i: seen.append(m.training))
    kwargs = {} if attack in ("gradient_ascent",) else {"eps": 0.1}
    if fail_at:
        with pytest.raises(RuntimeError, match="boom"):
            adv.get(attack)(model, x, **kwargs)
    else:
        r = adv.get(attack)(model, x, **kwargs)
        assert r.adversarial.shape == x.shape
    assert seen and not any(seen)  # eval mode (dropout off) during the attack
    model.net[3]._forward_pre_hooks.clear()
    assert model.training and model.net[1].training and not model.net[0].weight.requires_grad
    assert model.net[0].bias.requires_grad and model.net[5].weight.grad is None
    assert model_problems([model, *model.modules()]) == []


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "gradient_ascent"])
def test_zero_gradients_raise_a_gradient_masking_warning(attack):
    with pytest.warns(adv.GradientMaskingWarning, match=f"^{attack}: the input gradient was zero or not finite "
                                                        "for 4 of 4 samples"):
        r = adv.get(attack)(Quantized(), interior(4), steps=2) if attack != "fgsm" else \
            adv.fgsm(Quantized(), interior(4))
    assert r.info["masked"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert adv.fgsm(linear_model(3), interior(4)).info["masked"] == 0.0


@pytest.mark.parametrize("call,message", [
    (lambda m, x: adv.pgd(m, x, eps=2.0), "^eps: expected a budget in \\[0, 1\\] for the linf norm, got 2.0"),
    (lambda m, x: adv.fgsm(m, x, eps=-0.1), "^eps: expected a budget in \\[0, 1\\]"),
    (lambda m, x: adv.pgd(m, x, eps=5.0, norm="l2"), "^eps: expected a budget in \\[0, 4\\] for the l2 norm"),
    (lambda m, x: adv.pgd(m, x, eps="eight"), "^eps: cannot read 'eight' as a number"),
    (lambda m, x: adv.pgd(m, x * 3 - 1), "^inputs: pixel values must lie in \\[0, 1\\], got values up to 1\\.\\d"),
    (lambda m, x: adv.fgsm(m, x, [0, 1, 2, 0], target=[1, 1, 0, 0]),
     "^target: class 1 equals the label of sample 1; a targeted attack needs another class"),
    (lambda m, x: adv.pgd(m, x, norm="l1"), "^norm: unknown norm 'l1'; choose 'linf' or 'l2'"),
    (lambda m, x: adv.pgd(m, x, [0, 1], eps=0.1), "^labels: 2 classes for a batch of 4"),
    (lambda m, x: adv.pgd(m, x, target=7), "^target: class 7 is out of range for a model with 3 outputs"),
    (lambda m, x: adv.pgd(m, x, steps=0), "^steps: expected a positive int, got 0"),
    (lambda m, x: adv.fgsm(m, x, loss="hinge"), "^loss: unknown value 'hinge'; choose one of ce, margin"),
    (lambda m, x: adv.gradient_ascent(m, x, optimizer="lbfgs"), "^optimizer: unknown value 'lbfgs'"),
    (lambda m, x: adv.random_control(m, x, x[:2]), "^adversarial: shape \\(2, 1, 4, 4\\) differs"),
    (lambda m, x: adv.get("fsgm"), "^attack: unknown attack 'fsgm'; did you mean fgsm"),
])
def test_bad_arguments_fail_with_one_line_naming_the_argument(call, message):
    model = linear_model(3)
    with pytest.raises(InputError, match=message) as err:
        call(model, interior(4))
    assert "\n" not in str(err.value) and isinstance(err.value, underhood.UnderhoodError)


def test_results_summarise_and_parse_budgets():
    r = adv.pgd(linear_model(3), interior(4), eps="4/255", steps=2)
    assert r.info["eps"] == pytest.approx(4 / 255) and adv.parse_eps("0.5") == 0.5
    s = r.scalars()
    assert s["method"] == "pgd" and s["n"] == 4 and 0 <= s["success_rate"] <= 1 and s["eps"] == r.info["eps"]
    assert isinstance(r.summary(), str) and r.summary().splitlines()[1].split() == ["method", "pgd"]
    assert len(r) == 4 and r.accuracy == pytest.approx(1 - r.success_rate)
