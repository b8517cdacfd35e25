"""adversarial, the black-box substitute attack (Papernot et al. 2017): exact query counts, a target that is
never differentiated, the Jacobian augmentation's closed form on a linear substitute, agreement and transfer
against a noise control, seeds, lifecycle and errors; the paper's MNIST setting on the digits model (slow)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import underhood
import underhood.adversarial as adv
from underhood.adversarial.substitute import SubstituteResult, jacobian_augmentation, substitute, substitute_net
from underhood.core.errors import InputError

from .adversarial_models import Flaky, one_thread  # noqa: F401  (an autouse fixture)
from .conftest import model_problems


def linear_target(classes: int = 3, seed: int = 0) -> nn.Module:
    """``logits = W (x - 0.5)`` on ``[N, 1, 4, 4]`` images: balanced classes on uniform pixels."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, classes))
    with torch.no_grad():
        model[1].bias.copy_(-0.5 * model[1].weight.sum(1))
    return model


def linear_factory(shape: tuple[int, ...], classes: int) -> nn.Module:
    """A linear substitute: its Jacobian row for class ``y`` is the weight row ``W_y``."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), classes))


def images(n: int, seed: int = 1, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 1, 4, 4, generator=g)


FAST = {"substitute": linear_factory, "epochs": 10, "lr": 0.1, "batch_size": 32}


class Counting(nn.Module):
    """Counts the rows of every forward call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.net(x)


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the target was differentiated")


class Undifferentiable(nn.Module):
    """A linear model whose backward pass raises or, with ``one_hot``, whose logits are ``10 * one_hot(argmax)``:
    a zero input gradient, as a model that rounds or thresholds inside has."""

    def __init__(self, one_hot: bool = False) -> None:
        super().__init__()
        self.inner, self.one_hot = linear_target(), one_hot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if self.one_hot:
            return 10 * nn.functional.one_hot(logits.argmax(1), 3).float() + 0 * logits
        return _NoBackward.apply(logits)


# ---------------------------------------------------------------------------- contract: queries and results


@pytest.mark.parametrize("rounds,max_queries,sizes", [(3, None, [10, 20, 40]), (1, None, [10]),
                                                      (4, 25, [10, 20, 25]), (3, 10, [10])])
def test_every_query_is_counted_and_each_image_is_queried_once(rounds, max_queries, sizes):
    model = Counting(linear_target())
    x, test = images(10), images(7, seed=2)
    r = substitute(model, x, test_inputs=test, rounds=rounds, max_queries=max_queries, **{**FAST, "batch_size": 8})
    # |S_0| * 2^(rounds - 1) labels to train (capped by max_queries), then the clean and adversarial test images
    assert [h["size"] for h in r.history] == sizes and r.info["training_queries"] == sizes[-1]
    assert model.rows == r.queries == sizes[-1] + 2 * 7 and r.info["test_queries"] == 14
    assert r.inputs.shape == (sizes[-1], 1, 4, 4) and torch.equal(r.inputs[:10], x)
    with torch.no_grad():
        assert torch.equal(r.labels, model.net(r.inputs).argmax(1))
    assert [h["lam"] for h in r.history] == [0.1] * (len(sizes) - 1) + [None]


def test_the_result_is_scored_on_the_target():
    model, x, test = linear_target(), images(12), images(9, seed=2)
    y = torch.tensor([0, 1, 2] * 3)
    r = substitute(model, x, test_inputs=test, test_labels=y, rounds=2, eps=0.2, **FAST)
    assert isinstance(r, SubstituteResult) and isinstance(r.result, adv.AttackResult)
    with torch.no_grad():
        pred, clean = model(r.result.adversarial).argmax(1), model(test).argmax(1)
        agree = float((r.substitute(test).argmax(1) == clean).float().mean())
    assert torch.equal(r.result.predicted, pred) and torch.equal(r.result.labels, y)
    assert torch.equal(r.result.success, pred != y) and r.agreement == agree == r.history[-1]["agreement"]
    correct = clean == y
    assert r.transfer_rate == pytest.approx(float((pred != y)[correct].float().mean()))
    assert (r.result.norms["linf"] <= 0.2 + 1e-6).all() and 0 <= r.result.adversarial.min() <= 1
    assert r.result.info["method"] == "substitute" and r.info["attack"] == "fgsm" and not r.substitute.training


def test_default_substitute_fits_any_image_size():
    for shape in [(3, 64, 64), (1, 8, 8), (1, 28, 28)]:
        net = substitute_net(shape, 5)
        assert net(torch.rand(2, *shape)).shape == (2, 5)
    r = substitute(Flaky(), images(8), rounds=2, epochs=1)  # the default substitute on 4x4 images
    assert r.substitute(images(2)).shape == (2, 3) and r.queries == 16 + 16


# ---------------------------------------------------------------------------- oracles and properties


def test_augmented_points_are_a_step_of_lam_along_the_sign_of_the_weight_row():
    net, x = linear_factory((1, 4, 4), 3), images(6, low=0.3, high=0.7)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    w = net[1].weight.detach()
    new = jacobian_augmentation(net, x, y, 0.1, batch_size=4)
    assert torch.allclose(new, x + 0.1 * w[y].sign().view_as(x), atol=1e-7)
    assert torch.allclose(jacobian_augmentation(net, x, y, -0.1), x - 0.1 * w[y].sign().view_as(x), atol=1e-7)
    # next to the box's faces the step is clipped
    assert torch.equal(jacobian_augmentation(net, torch.ones(1, 1, 4, 4), y[:1], 0.5),
                       (1 + 0.5 * w[0].sign()).clamp(0, 1).view(1, 1, 4, 4))


@pytest.mark.parametrize("lam,tau,steps", [(0.1, None, [0.1, 0.1, 0.1]), (-0.05, None, [-0.05, -0.05, -0.05]),
                                            (0.1, 1, [0.1, -0.1, 0.1]), (0.1, 2, [0.1, 0.1, -0.1])])
def test_each_augmentation_moves_every_pixel_of_its_parent_by_lam(lam, tau, steps):
    x = images(5, low=0.35, high=0.65)  # away from the faces: three steps of 0.1 never clip
    r = substitute(linear_target(), x, rounds=4, lam=lam, tau=tau, **FAST)
    assert [h["lam"] for h in r.history] == [*steps, None]
    for size in (5, 10, 20):  # point i + |S_r| is point i moved by lam_r * sign(W_y) of that round
        assert torch.allclose((r.inputs[size:2 * size] - r.inputs[:size]).abs(), torch.full((size, 1, 4, 4), abs(lam)),
                              atol=1e-6)


@pytest.mark.parametrize("lam", [0.1, -0.1])
def test_on_a_linear_target_the_substitute_agrees_and_transfers_far_better_than_noise(lam):
    model, x, test = linear_target(), images(100), images(300, seed=3)
    r = substitute(model, x, test_inputs=test, rounds=3, lam=lam, eps=0.1, **FAST)
    control = adv.noise(model, test, r.result.labels, eps=0.1)
    assert r.agreement >= 0.75 and r.agreement > r.history[0]["agreement"] + 0.05, r.history
    assert r.transfer_rate >= control.success_rate + 0.5, (r.transfer_rate, control.success_rate)
    pgd = substitute(model, x, test_inputs=test, rounds=3, lam=lam, eps=0.1, attack="pgd", **FAST)
    assert pgd.info["attack"] == "pgd" and pgd.transfer_rate >= control.success_rate + 0.5
    assert (pgd.result.norms["linf"] <= 0.1 + 1e-6).all()


@pytest.mark.parametrize("one_hot", [False, True])
def test_the_target_is_never_differentiated_so_gradient_masking_does_not_stop_the_attack(one_hot):
    model, test = Undifferentiable(one_hot), images(300, seed=3)
    if one_hot:  # the white-box attack sees no gradient
        with pytest.warns(adv.GradientMaskingWarning):
            assert adv.fgsm(model, test, eps=0.1).success_rate == 0
    else:
        with pytest.raises(RuntimeError, match="the target was differentiated"):
            adv.fgsm(model, test, eps=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = substitute(model, images(100), test_inputs=test, rounds=3, eps=0.1, **FAST)
    assert r.agreement >= 0.75 and r.transfer_rate >= 0.6, (r.agreement, r.transfer_rate)
    assert all(p.grad is None for p in model.parameters())


def dropout_factory(shape: tuple[int, ...], classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(math.prod(shape), classes))


@pytest.mark.parametrize("factory", [None, dropout_factory])
def test_seeded_runs_are_deterministic_and_leave_the_global_generator_alone(factory):
    model, x, test = linear_target(), images(10), images(8, seed=2)
    kw = {"test_inputs": test, "rounds": 3, "attack": "pgd", "eps": 0.1, "epochs": 2, "substitute": factory}
    state = torch.get_rng_state()
    a, b, c = substitute(model, x, seed=4, **kw), substitute(model, x, seed=4, **kw), substitute(model, x, seed=5, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.result.adversarial, b.result.adversarial)
    assert all(torch.equal(p, q) for p, q in zip(a.substitute.parameters(), b.substitute.parameters()))
    assert a.history == b.history and a.info["seed"] == 4
    assert not torch.equal(next(a.substitute.parameters()), next(c.substitute.parameters()))


# ---------------------------------------------------------------------------- lifecycle and errors


@pytest.mark.parametrize("fail_at", [0, 1, 3, 7, 11])
def test_the_target_is_left_as_found_also_when_the_attack_raises(fail_at):
    model = Flaky(fail_at)
    model.train()
    model.net[0].weight.requires_grad_(False)
    seen = []
    model.net[3].register_forward_pre_hook(lambda m, i: seen.append(m.training))
    kwargs = {"test_inputs": images(5, seed=2), "rounds": 3, **FAST, "batch_size": 4}
    if fail_at:
        with pytest.raises(RuntimeError, match="boom"):
            substitute(model, images(6), **kwargs)
    else:
        r = substitute(model, images(6), **kwargs)
        # in batches of 4: 5 test images, 6 initial ones, 6 and 12 new ones, 5 adversarial ones
        assert model.calls == 2 + 2 + 2 + 3 + 2 and r.queries == 24 + 10
    assert (seen or fail_at == 1) and not any(seen)  # eval mode (dropout off) for every query
    model.net[3]._forward_pre_hooks.clear()
    assert model.training and model.net[1].training and not model.net[0].weight.requires_grad
    assert model.net[0].bias.requires_grad and all(p.grad is None for p in model.parameters())
    assert model_problems([model, *model.modules()]) == []


def test_a_given_substitute_module_is_copied_not_trained():
    given = linear_factory((1, 4, 4), 3)
    before = copy.deepcopy(given.state_dict())
    r = substitute(linear_target(), images(8), substitute=given, rounds=2, epochs=2)
    assert r.substitute is not given and given.training
    assert all(torch.equal(before[k], v) for k, v in given.state_dict().items())


@pytest.mark.parametrize("kwargs,message", [
    ({"rounds": 0}, "^rounds: expected a positive int, got 0"),
    ({"rounds": 2.5}, "^rounds: expected a positive int, got 2.5"),
    ({"lam": 0}, "^lam: expected a finite non-zero step such as 0.1 \\(negative: towards the boundary\\), got 0$"),
    ({"lam": float("nan")}, "^lam: expected a finite non-zero step such as 0.1 .*, got nan"),
    ({"lam": "0.1"}, "^lam: expected a finite non-zero step such as 0.1 .*, got '0.1'"),
    ({"tau": 0}, "^tau: expected a positive int, got 0"),
    ({"attack": "cw"}, "^attack: unknown value 'cw'; choose one of fgsm, pgd"),
    ({"eps": 2.0}, "^eps: expected a budget in \\[0, 1\\] for the linf norm, got 2.0"),
    ({"max_queries": 3}, "^max_queries: 3 cannot label the 4 initial inputs; give at least 4 or None"),
    ({"substitute": "small"}, "^substitute: expected an nn.Module or a factory \\(shape, classes\\) -> nn.Module, "
                              "got str"),
    ({"substitute": lambda shape, k: None}, "^substitute: the factory returned NoneType, expected an nn.Module"),
    ({"test_inputs": torch.rand(2, 1, 5, 5)}, "^test_inputs: images of shape \\(1, 5, 5\\), the inputs' are "
                                              "\\(1, 4, 4\\)"),
    ({"test_labels": [0, 1]}, "^test_labels: 2 classes for a batch of 4"),
    ({"test_labels": 5}, "^test_labels: class 5 is out of range for a model with 3 outputs"),
    ({"epochs": 0}, "^epochs: expected a positive int, got 0"),
    ({"lr": 0.0}, "^lr: expected a finite number > 0, got 0.0"),
])
def test_bad_arguments_fail_with_one_line_naming_the_argument(kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        substitute(linear_target(), images(4), **kwargs)
    assert "\n" not in str(err.value) and isinstance(err.value, underhood.UnderhoodError)


def test_bad_inputs_fail_before_any_query():
    model = Counting(linear_target())
    with pytest.raises(InputError, match="^inputs: pixel values must lie in \\[0, 1\\]"):
        substitute(model, images(4) * 3 - 1)
    with pytest.raises(InputError, match="^test_inputs: expected \\[N, C, H, W\\]"):
        substitute(model, images(4), test_inputs=torch.rand(1, 4, 4))
    assert model.rows == 0


# ---------------------------------------------------------------------------- the paper's MNIST setting (slow)


@pytest.mark.slow
def test_the_papers_mnist_setting_on_the_digits_model():
    """150 seed images, 6 rounds of 10 epochs, lam = 0.1, FGSM at eps = 0.3: the substitute learns the
    target from its labels, and its adversarial examples transfer where noise and an untrained copy fail."""
    from underhood.models.training import test_set

    model, data = underhood.load_model("digits", device="cpu"), test_set("digits")
    x, test, y = data.images[:150], data.images[150:], data.labels[150:]
    r = substitute(model, x, test_inputs=test, test_labels=y, eps=0.3)
    assert r.queries == 150 * 2 ** 5 + 2 * len(test) and len(r.history) == 6
    assert r.history[0]["agreement"] < 0.5 and r.agreement >= 0.85, r.history  # the augmentation teaches it
    torch.manual_seed(0)
    untrained = adv.fgsm(substitute_net((1, 32, 32), 10).eval(), test, y, eps=0.3).adversarial
    with torch.no_grad():
        correct, copied = model(test).argmax(1) == y, model(untrained).argmax(1) != y
    control = adv.noise(model, test, y, eps=0.3)
    assert r.transfer_rate >= 0.8, r.transfer_rate
    assert float(control.success[correct].float().mean()) <= 0.1 and float(copied[correct].float().mean()) <= 0.4
