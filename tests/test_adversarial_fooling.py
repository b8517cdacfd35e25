"""adversarial, fooling images: both methods raise the class probability from noise to high confidence on
small models, evolution queries without gradients, results are seeded and shaped class-major, the model is
left as found; errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import underhood
from underhood.adversarial.fooling import fooling_images
from underhood.core.errors import InputError

from .adversarial_models import Flaky, one_thread  # noqa: F401  (an autouse fixture)
from .conftest import model_problems


class Quadrants(nn.Module):
    """A linear model on ``[N, 1, 4, 4]`` whose class ``k`` likes quadrant ``k`` bright and the rest dark.

    At its quadrant's indicator image, class ``k`` leads every other logit by ``4 * scale``: ``p > 0.9999``
    with the default scale; with ``scale=1.6``, ``p = 0.994``, and only images near the indicator pass 0.99.
    """

    input_size = (1, 4, 4)

    def __init__(self, classes: int = 3, scale: float = 4.0) -> None:
        super().__init__()
        self.linear = nn.Linear(16, classes)
        masks = torch.zeros(classes, 4, 4)
        for k in range(classes):
            masks[k, 2 * (k // 2) % 4:2 * (k // 2) % 4 + 2, 2 * (k % 2):2 * (k % 2) + 2] = 1
        with torch.no_grad():
            self.linear.weight.copy_(scale * (masks.flatten(1) - 0.5))
            self.linear.bias.zero_()
        self.calls: list[tuple[bool, bool, int]] = []  # (grad enabled, input requires grad, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((torch.is_grad_enabled(), x.requires_grad, len(x)))
        return self.linear(x.flatten(1))


def start_probability(model: nn.Module, r) -> torch.Tensor:
    """``[N]`` probability of the target on the starting noise of each image."""
    with torch.no_grad():
        return model(r.adversarial - r.perturbation).softmax(1).gather(1, r.target[:, None]).squeeze(1)


# ---------------------------------------------------------------------------- both methods


@pytest.mark.parametrize("method", ["gradient", "evolution"])
def test_every_class_reaches_high_confidence_from_noise(method):
    model = Quadrants(3, scale=1.6)
    r = fooling_images(model, method=method, confidence=0.99)
    assert r.success.all() and (r.confidence >= 0.99).all() and r.predicted.tolist() == [0, 1, 2]
    assert torch.equal(r.target, torch.arange(3)) and (r.confidence > start_probability(model, r)).all()
    assert r.adversarial.shape == (3, 1, 4, 4) and r.adversarial.min() >= 0 and r.adversarial.max() <= 1
    assert r.info["method"] == method and r.info["queries"] > 0 and r.info["iterations"] <= r.info["steps"]


@pytest.mark.parametrize("method", ["gradient", "evolution"])
def test_shapes_are_class_major_and_results_are_seeded(method):
    model = Quadrants(4)
    r = fooling_images(model, [2, 0], n=3, method=method, steps=3, seed=1)
    assert r.target.tolist() == [2, 2, 2, 0, 0, 0] and len(r) == 6 and r.labels.shape == (6,)
    assert r.norms["l2"].shape == (6,) and torch.allclose(r.perturbation, r.adversarial - (r.adversarial
                                                                                        - r.perturbation))
    again = fooling_images(model, [2, 0], n=3, method=method, steps=3, seed=1)
    assert torch.equal(r.adversarial, again.adversarial) and r.info["seed"] == 1
    other = fooling_images(model, [2, 0], n=3, method=method, steps=3, seed=2)
    assert not torch.equal(r.adversarial, other.adversarial)
    assert len({tuple(im.flatten().tolist()) for im in r.adversarial}) == 6  # the n copies differ


def test_success_needs_the_confidence_not_only_the_class():
    model = Quadrants(3)
    r = fooling_images(model, method="gradient", steps=1, step_size=0.5, confidence=0.999)
    assert torch.equal(r.success, (r.predicted == r.target) & (r.confidence >= 0.999))
    assert not r.success.all()
    stronger = fooling_images(model, method="gradient", steps=50, step_size=0.5, confidence=0.999)
    assert stronger.success.all() and (stronger.confidence >= r.confidence).all()


# ---------------------------------------------------------------------------- each method


def test_evolution_is_black_box_and_counts_its_queries():
    model = Quadrants(3)
    r = fooling_images(model, method="evolution", steps=4, population=5, confidence=0.999999, batch_size=6)
    calls = model.calls[1:]  # the first call learns the number of classes
    assert not any(grad or req for grad, req, _ in model.calls)
    evaluated = sum(rows for *_, rows in calls[:-2])  # the last two: starting noise and final images
    assert r.info["queries"] == evaluated == 3 * 5 + r.info["iterations"] * 3 * 5
    assert max(rows for *_, rows in calls[:-2]) <= 6


def test_gradient_ascent_stops_each_image_at_the_confidence():
    model = Quadrants(3)
    r = fooling_images(model, method="gradient", steps=200, step_size=0.05, confidence=0.9)
    assert r.success.all() and (r.confidence < 0.97).all()  # stopped soon after crossing 0.9
    assert r.info["queries"] < 3 * r.info["iterations"]  # images leave as they reach it


def test_gradient_reaches_every_class_of_the_shapes_model(shapes_model):
    r = fooling_images(shapes_model, [0, 3], method="gradient")
    assert r.success.all() and (r.confidence >= 0.99).all() and r.adversarial.shape == (2, 3, 64, 64)


@pytest.mark.slow
@pytest.mark.parametrize("method,least", [("gradient", 0.99), ("evolution", 0.9)])
def test_both_methods_on_every_class_of_the_shapes_model(shapes_model, method, least):
    r = fooling_images(shapes_model, method=method)
    assert (r.predicted == r.target).all() and (r.confidence >= least).all(), r.confidence
    assert (r.confidence > start_probability(shapes_model, r)).all()


# ---------------------------------------------------------------------------- lifecycle and errors


@pytest.mark.parametrize("method", ["gradient", "evolution"])
@pytest.mark.parametrize("fail_at", [0, 3])
def test_the_model_is_left_as_found_also_when_it_raises(method, fail_at):
    model = Flaky(fail_at)
    model.train()
    model.net[0].weight.requires_grad_(False)
    seen = []
    model.net[3].register_forward_pre_hook(lambda m, i: seen.append(m.training))
    kwargs = {"method": method, "size": 4, "steps": 3, "population": 4, "batch_size": 4}
    if fail_at:
        with pytest.raises(RuntimeError, match="boom"):
            fooling_images(model, **kwargs)
    else:
        r = fooling_images(model, **kwargs)
        assert r.adversarial.shape == (3, 1, 4, 4)  # channels from the first convolution
    assert seen and not any(seen)
    model.net[3]._forward_pre_hooks.clear()
    assert model.training and model.net[1].training and not model.net[0].weight.requires_grad
    assert model.net[0].bias.requires_grad and model.net[5].weight.grad is None
    assert model_problems([model, *model.modules()]) == []


@pytest.mark.parametrize("call,message", [
    (lambda m: fooling_images(m, method="cppn"), "^method: unknown value 'cppn'; choose one of evolution, gradient"),
    (lambda m: fooling_images(m, 3), "^classes: class 3 is out of range for a model with 3 outputs \\(0..2\\)"),
    (lambda m: fooling_images(m, [0, -1]), "^classes: class -1 is out of range"),
    (lambda m: fooling_images(m, [1, 1]), "^classes: class 1 is repeated; give each class once and n"),
    (lambda m: fooling_images(m, []), "^classes: expected a class index or a non-empty list"),
    (lambda m: fooling_images(m, "cat"), "^classes: expected a class index or a"),
    (lambda m: fooling_images(m, confidence=1.0), "^confidence: expected a probability in \\(0, 1\\), got 1.0"),
    (lambda m: fooling_images(m, confidence=0), "^confidence: expected a probability in \\(0, 1\\), got 0"),
    (lambda m: fooling_images(m, n=0), "^n: expected a positive int, got 0"),
    (lambda m: fooling_images(m, steps=-1), "^steps: expected a positive int, got -1"),
    (lambda m: fooling_images(m, population=0), "^population: expected a positive int"),
    (lambda m: fooling_images(m, size=(4, 0)), "^size: expected a positive int, got 0"),
    (lambda m: fooling_images(Flaky()), "^size: the model has no input_size; pass size=\\(H, W\\)"),
])
def test_bad_arguments_fail_with_one_line_naming_the_argument(call, message):
    with pytest.raises(InputError, match=message) as err:
        call(Quadrants(3))
    assert "\n" not in str(err.value) and isinstance(err.value, underhood.UnderhoodError)
