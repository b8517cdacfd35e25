"""adversarial, minimal perturbations: DeepFool's closed form on affine classifiers, CW and L-BFGS near the
true distance, the batched L-BFGS solver, the shapes model, lifecycle and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import underhood
import underhood.adversarial as adv
from underhood.adversarial.minimal import minimize_lbfgs
from underhood.core.errors import InputError

from .adversarial_models import Flaky, Quantized, one_thread  # noqa: F401  (an autouse fixture)
from .conftest import model_problems


def affine(classes: int = 2, seed: int = 0, scale: float = 4.0) -> nn.Module:
    """``logits = W x + b`` on ``[N, 1, 4, 4]`` images."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))
    with torch.no_grad():
        model[1].weight.mul_(scale)
    return model


def near_boundary(model: nn.Module, distances: list[float], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs inside the box at the given L2 distances from a binary affine model's boundary, and ``w1 - w0``.

    The model's bias is reset so that its boundary passes through the centre of the box.
    """
    w = model[1].weight.detach()
    u = w[1] - w[0]
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.0, -0.5 * float(u.sum())]))
    c = -0.5 * float(u.sum())
    g = torch.Generator().manual_seed(seed)
    x = 0.4 + 0.2 * torch.rand(len(distances), 16, generator=g)
    side = torch.where(torch.arange(len(distances)) % 2 == 0, 1.0, -1.0)  # both classes
    want = side * torch.tensor(distances) * u.norm()
    x = x - ((x @ u + c - want) / u.norm() ** 2)[:, None] * u
    assert 0.05 < x.min() and x.max() < 0.95
    return x.view(-1, 1, 4, 4), u


@pytest.fixture(scope="module")
def shapes8():
    from underhood.models.training import SHAPES_TEST_SEED

    data = underhood.datasets.shapes(8, seed=SHAPES_TEST_SEED)
    return data.images, data.labels


# ---------------------------------------------------------------------------- DeepFool


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_on_an_affine_binary_classifier_is_the_closed_form(norm):
    model = affine(2)
    x, u = near_boundary(model, [0.05, 0.1, 0.2, 0.15])
    f = x.flatten(1) @ u + float(model[1].bias[1].detach() - model[1].bias[0].detach())  # f > 0: class 1
    r = adv.deepfool(model, x, norm=norm)
    # one step to the hyperplane, r = -f w / ||w||^2 (L2) or -f sign(w) / ||w||_1 (L-inf), times 1 + overshoot;
    # the authors' code adds 1e-4 to |f| so that the step always crosses
    size = f.abs() + 1e-4
    step = (size / u.norm() ** 2)[:, None] * u if norm == "l2" else (size / u.abs().sum())[:, None] * u.sign()
    expected = -1.02 * f.sign()[:, None] * step
    assert torch.allclose(r.perturbation.flatten(1), expected, atol=1e-6)
    assert r.success.all() and r.info["iterations"].tolist() == [1, 1, 1, 1]


def test_deepfool_on_a_multiclass_affine_model_steps_to_the_nearest_hyperplane():
    model = affine(4, seed=2, scale=1.0)
    x = 0.45 + 0.1 * torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    w = model[1].weight.detach()
    logits = model(x).detach()
    y = logits.argmax(1)
    r = adv.deepfool(model, x, steps=1, overshoot=0.0)  # one step, no overshoot: onto the nearest hyperplane
    for i in range(5):
        k = [c for c in range(4) if c != y[i]]
        wk, fk = w[k] - w[y[i]], logits[i, k] - logits[i, y[i]]
        j = int((fk.abs() / wk.norm(dim=1)).argmin())
        expected = (fk[j].abs() + 1e-4) / wk[j].norm() ** 2 * wk[j]
        assert torch.allclose(r.perturbation[i].flatten(), expected, atol=1e-6)


# ---------------------------------------------------------------------------- CW and L-BFGS


@pytest.mark.parametrize("attack,excess", [(lambda m, x: adv.cw(m, x, steps=100), 0.005),
                                           (lambda m, x: adv.lbfgs(m, x), 0.025),
                                           (lambda m, x: adv.lbfgs(m, x, search_steps=10), 0.005)])
def test_cw_and_lbfgs_find_the_distance_to_an_affine_boundary(attack, excess):
    # L-BFGS's cross-entropy asks for a small positive margin m at its best c, so |r| = d + m / ||w||;
    # a finer search on c shrinks m. CW stops where Adam's steps cross the boundary.
    model = affine(2)
    dist = torch.tensor([0.05, 0.1, 0.2, 0.15])
    x, _ = near_boundary(model, dist.tolist())
    r = attack(model, x)
    assert r.success.all()
    assert (r.norms["l2"] >= dist * (1 - 1e-4)).all() and (r.norms["l2"] <= dist + excess).all(), r.norms["l2"] - dist


@pytest.mark.parametrize("attack", [adv.cw, adv.lbfgs])
def test_targeted_minimal_attacks_reach_the_target(attack):
    model = affine(3, seed=5, scale=2.0)
    x = 0.4 + 0.2 * torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    t = (y + 1) % 3
    r = attack(model, x, target=t, steps=50)
    assert r.success.all() and torch.equal(r.predicted, t) and r.targeted


def test_batched_lbfgs_solves_box_constrained_problems_independently():
    a = torch.tensor([[0.3, 1.4, -0.2], [0.5, 0.5, 2.0], [-1.0, 0.2, 0.9]])
    scale = torch.tensor([1.0, 100.0, 0.01])  # badly scaled problems do not slow each other down

    def fun(z, rows):
        z = z.detach().requires_grad_(True)
        value = (scale[rows, None] * (z - a[rows]) ** 2).sum(1) + (z[:, 0] * z[:, 1]) * 0.1
        (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad

    start = torch.full((3, 3), 0.5)
    z = minimize_lbfgs(fun, start, steps=100)
    assert z.min() >= 0 and z.max() <= 1
    one_by_one = torch.cat([minimize_lbfgs(lambda zz, rows, i=i: fun(zz, rows * 0 + i), start[i:i + 1], steps=100)
                            for i in range(3)])
    assert torch.allclose(z, one_by_one, atol=1e-5)
    # the quadratic's minimiser clipped to the box (the coupling term is small and tested by the reference above)
    assert torch.allclose(z[:, 2], a[:, 2].clamp(0, 1), atol=0.05)


# ---------------------------------------------------------------------------- the shapes model


def test_minimal_attacks_on_the_shapes_model(shapes_model, shapes8):
    x, y = shapes8[0][:4], shapes8[1][:4]
    results = [adv.deepfool(shapes_model, x, y), adv.cw(shapes_model, x, y, steps=30, search_steps=3),
               adv.lbfgs(shapes_model, x, y, steps=15, search_steps=3)]
    for r in results:
        assert r.success.all(), r.info["method"]
        assert r.adversarial.min() >= 0 and r.adversarial.max() <= 1
        assert torch.allclose(r.perturbation, r.adversarial - x) and (r.norms["l2"] < 3).all()
        assert r.info["masked"] == 0.0
    r = adv.deepfool(shapes_model, x, y, norm="linf")
    assert r.success.all() and (r.norms["linf"] < 16 / 255).all()


@pytest.mark.slow
def test_cw_and_deepfool_against_the_smallest_l2_at_which_pgd_succeeds(shapes_model):
    """Issue 6's comparison on 32 held-out images. Measured (2 cores): PGD-L2 (20 steps) first succeeds at a
    median 0.75; CW's median L2 is 0.61 and L-BFGS's 0.65; DeepFool's is 0.90: above PGD's (DeepFool's
    linearisation overshoots on this model), so only CW is held to the issue's bound."""
    from underhood.models.training import SHAPES_TEST_SEED

    data = underhood.datasets.shapes(32, seed=SHAPES_TEST_SEED)
    x, y = data.images, data.labels
    grid = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0]
    smallest = torch.full((32,), torch.inf)
    for eps in reversed(grid):
        smallest = torch.where(adv.pgd(shapes_model, x, y, eps=eps, norm="l2", steps=20).success, eps, smallest)
    cw = adv.cw(shapes_model, x, y)
    assert cw.success.all() and cw.norms["l2"].median() <= smallest.median()
    df = adv.deepfool(shapes_model, x, y)
    assert df.success.all() and df.norms["l2"].median() <= 1.5 * smallest.median()


# ---------------------------------------------------------------------------- lifecycle, hygiene, errors


@pytest.mark.parametrize("attack", [adv.deepfool, adv.cw, adv.lbfgs])
@pytest.mark.parametrize("fail_at", [0, 3])
def test_the_model_is_left_as_found_also_when_the_attack_raises(attack, fail_at):
    model = Flaky(fail_at)
    model.train()
    model.net[0].weight.requires_grad_(False)
    x = 0.5 + 0.1 * torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    if fail_at:
        with pytest.raises(RuntimeError, match="boom"):
            attack(model, x, steps=5)
    else:
        assert attack(model, x, steps=5).adversarial.shape == x.shape
    assert model.training and model.net[3].training and not model.net[0].weight.requires_grad
    assert model.net[0].bias.requires_grad and model.net[5].weight.grad is None
    assert model_problems([model, *model.modules()]) == []


@pytest.mark.parametrize("attack", [adv.deepfool, adv.cw, adv.lbfgs])
def test_zero_gradients_raise_a_gradient_masking_warning(attack):
    x = 0.3 + 0.4 * torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.warns(adv.GradientMaskingWarning, match=f"^{attack.__name__}: the input gradient was zero"):
        r = attack(Quantized(), x, steps=3, **({} if attack is adv.deepfool else {"search_steps": 1}))
    assert r.info["masked"] == 1.0 and not r.success.any() and torch.equal(r.adversarial, x)


def test_already_misclassified_samples_need_no_gradient():
    model = affine(3, seed=1)
    x = 0.4 + 0.2 * torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = (model(x).argmax(1) + 1) % 3  # every label wrong
    r = adv.deepfool(model, x, y)
    assert r.success.all() and (r.norms["l2"] == 0).all() and r.info["masked"] == 0.0


@pytest.mark.parametrize("call,message", [
    (lambda m, x: adv.deepfool(m, x, overshoot=-0.1), "^overshoot: expected a finite number >= 0, got -0.1"),
    (lambda m, x: adv.deepfool(m, x, norm="l0"), "^norm: unknown norm 'l0'"),
    (lambda m, x: adv.cw(m, x, c=0), "^c: expected a finite number > 0, got 0"),
    (lambda m, x: adv.cw(m, x, [0, 1, 2], target=[1, 1, 1]), "^target: class 1 equals the label of sample 1"),
    (lambda m, x: adv.lbfgs(m, x, search_steps=0), "^search_steps: expected a positive int, got 0"),
    (lambda m, x: adv.lbfgs(m, x - 0.5), "^inputs: pixel values must lie in \\[0, 1\\]"),
    (lambda m, x: adv.cw(m, x[0]), "^inputs: expected \\[N, C, H, W\\], got \\(1, 4, 4\\)"),
])
def test_bad_arguments_fail_with_one_line_naming_the_argument(call, message):
    x = 0.3 + 0.4 * torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match=message) as err:
        call(affine(3), x)
    assert "\n" not in str(err.value)
