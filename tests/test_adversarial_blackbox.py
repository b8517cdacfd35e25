"""adversarial, black-box: the one-pixel attack finds the one pixel a hand-made model reads, changes at most
``pixels`` positions, queries without gradients, is seeded, and leaves the model as found; errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import underhood
from underhood.adversarial.blackbox import _pick_three, one_pixel
from underhood.core.errors import InputError

from .adversarial_models import Flaky, one_thread  # noqa: F401  (an autouse fixture)
from .conftest import model_problems


class PixelReader(nn.Module):
    """Logits ``[0, s (x[c, r, q] - 0.5) for each (r, q, c) in reads]``: class ``k`` wins where its pixel is bright.

    Elementwise only (no matrix product), so every batch size gives the same bits.
    """

    def __init__(self, reads: list[tuple[int, int, int]], scale: float = 20.0) -> None:
        super().__init__()
        self.reads, self.scale = reads, scale
        self.calls: list[tuple[bool, bool, int]] = []  # (grad enabled, input requires grad, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((torch.is_grad_enabled(), x.requires_grad, len(x)))
        scores = [self.scale * (x[:, c, r, q] - 0.5) for r, q, c in self.reads]
        return torch.stack([torch.zeros(len(x)), *scores], 1)


def dark(n: int = 3, channels: int = 1, size: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.2 * torch.rand(n, channels, size, size, generator=g)


def changed_positions(r) -> torch.Tensor:
    """``[N]`` number of spatial positions where any channel changed."""
    return (r.perturbation != 0).any(1).flatten(1).sum(1)


# ---------------------------------------------------------------------------- oracles


def test_de_finds_the_one_pixel_the_model_reads():
    model, x = PixelReader([(2, 3, 0)]), dark(3, size=5)
    r = one_pixel(model, x, population=20, iterations=30)
    assert r.success.all() and (r.predicted == 1).all() and torch.equal(r.labels, torch.zeros(3, dtype=torch.long))
    assert r.info["positions"].tolist() == [[[2, 3]]] * 3
    assert (changed_positions(r) == 1).all() and (r.adversarial[:, 0, 2, 3] > 0.5).all()
    assert r.info["method"] == "one_pixel" and r.info["pixels"] == 1


def test_targeted_de_reaches_the_target_through_its_pixel_and_colour():
    # class 1 reads the red channel at (0, 1), class 2 the blue channel at (3, 2)
    model, x = PixelReader([(0, 1, 0), (3, 2, 2)]), dark(4, channels=3)
    r = one_pixel(model, x, target=2, population=24, iterations=40)
    assert r.targeted and r.success.all() and (r.predicted == 2).all()
    assert r.info["positions"].tolist() == [[[3, 2]]] * 4 and (r.adversarial[:, 2, 3, 2] > 0.5).all()
    assert (r.adversarial[:, 0, 0, 1] == x[:, 0, 0, 1]).all()


def test_several_pixels_when_the_model_needs_them():
    # the class-1 logit is the sum of two pixels' readings: neither alone is enough
    class Two(PixelReader):
        def forward(self, x):
            a, b = x[:, 0, 0, 0], x[:, 0, 3, 3]
            return torch.stack([torch.zeros(len(x)), 20 * (a + b - 1.5)], 1)

    x = dark(2)
    one = one_pixel(Two([]), x, population=20, iterations=10)
    two = one_pixel(Two([]), x, pixels=2, population=40, iterations=60)
    assert not one.success.any() and two.success.all()
    assert (changed_positions(two) == 2).all()
    assert sorted(map(tuple, two.info["positions"][0].tolist())) == [(0, 0), (3, 3)]


# ---------------------------------------------------------------------------- properties


@pytest.mark.parametrize("pixels", [1, 3])
def test_at_most_pixels_positions_change_and_the_box_holds(pixels):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    x = torch.rand(4, 3, 6, 6)
    r = one_pixel(model, x, pixels=pixels, population=12, iterations=5, early_stop=False)
    assert (changed_positions(r) <= pixels).all() and r.adversarial.min() >= 0 and r.adversarial.max() <= 1
    assert r.info["positions"].shape == (4, pixels, 2) and (r.info["positions"] >= 0).all()
    assert (r.info["positions"] < 6).all()
    assert torch.allclose(r.perturbation, r.adversarial - x) and r.confidence.shape == (4,)
    # the returned candidate changed only the positions it records
    rows, cols = r.info["positions"][..., 0], r.info["positions"][..., 1]
    mask = torch.zeros(4, 6, 6, dtype=torch.bool)
    mask[torch.arange(4)[:, None], rows, cols] = True
    assert ((r.perturbation != 0).any(1) <= mask).all()
    assert (r.predicted == model(r.adversarial).argmax(1)).all()


def test_black_box_queries_are_counted_and_never_take_gradients():
    model, x = PixelReader([(1, 1, 0)]), dark(3)
    r = one_pixel(model, x, population=10, iterations=4, early_stop=False, batch_size=7)
    assert not any(grad or req for grad, req, _ in model.calls)
    # the clean batch, then 10 * (1 + 4) candidates per image in passes of at most 7 images
    assert model.calls[0][2] == 3 and sum(rows for *_, rows in model.calls[1:]) == 3 * 10 * 5
    assert max(rows for *_, rows in model.calls) <= 7
    assert r.info["queries"].tolist() == [50] * 3 and r.info["iterations"].tolist() == [4] * 3


def test_early_stop_spends_no_query_after_success():
    model, x = PixelReader([(1, 1, 0)]), dark(3, size=3)
    r = one_pixel(model, x, population=16, iterations=50)
    assert r.success.all() and (r.info["iterations"] < 50).all()
    assert torch.equal(r.info["queries"], 16 * (1 + r.info["iterations"]))
    # an image the clean model already misclassifies is adversarial in the initial population
    y = torch.tensor([1, 0, 0])
    r = one_pixel(model, x, y, population=16, iterations=50)
    assert r.info["iterations"][0] == 0 and r.success[0]


def test_seeded_and_independent_of_the_batch_size():
    model, x = PixelReader([(0, 2, 0), (3, 0, 0)], scale=2.0), dark(3)
    a = one_pixel(model, x, population=8, iterations=6, seed=4, batch_size=5)
    b = one_pixel(model, x, population=8, iterations=6, seed=4, batch_size=1000)
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.info["queries"], b.info["queries"])
    c = one_pixel(model, x, population=8, iterations=6, seed=5, batch_size=5)
    assert not torch.equal(a.adversarial, c.adversarial) and a.info["seed"] == 4


def test_pick_three_draws_distinct_others_uniformly():
    r = _pick_three(3000, 5, torch.Generator().manual_seed(0))
    own = torch.arange(5).expand(3000, 5)[..., None]
    assert (torch.cat([own, r], -1).sort(-1).values.diff(dim=-1) > 0).all()
    counts = torch.bincount(r[:, 2].flatten(), minlength=5)  # member 2 never picks itself; others 1/4 each
    assert counts[2] == 0 and ((counts[[0, 1, 3, 4]] - 3 * 3000 / 4).abs() < 150).all()


def test_on_the_shapes_model(shapes_model, shapes_small):
    x = shapes_small.images[:2]
    r = one_pixel(shapes_model, x, population=10, iterations=2, batch_size=32)
    assert r.adversarial.shape == x.shape and (changed_positions(r) <= 1).all()
    assert ((r.adversarial >= 0) & (r.adversarial <= 1)).all() and (r.info["queries"] <= 30).all()


# ---------------------------------------------------------------------------- lifecycle and errors


@pytest.mark.parametrize("fail_at", [0, 3])
def test_the_model_is_left_as_found_also_when_the_attack_raises(fail_at):
    model = Flaky(fail_at)
    model.train()
    model.net[0].weight.requires_grad_(False)
    seen = []
    model.net[3].register_forward_pre_hook(lambda m, i: seen.append(m.training))
    x = dark(2)
    if fail_at:
        with pytest.raises(RuntimeError, match="boom"):
            one_pixel(model, x, population=4, iterations=3, batch_size=4)
    else:
        assert one_pixel(model, x, population=4, iterations=3).adversarial.shape == x.shape
    assert seen and not any(seen)
    model.net[3]._forward_pre_hooks.clear()
    assert model.training and model.net[1].training and not model.net[0].weight.requires_grad
    assert model.net[0].bias.requires_grad and model.net[5].weight.grad is None
    assert model_problems([model, *model.modules()]) == []


@pytest.mark.parametrize("kwargs,message", [
    ({"pixels": 0}, "^pixels: expected a positive int, got 0"),
    ({"pixels": 17}, "^pixels: 17 pixels asked for but the images have 16"),
    ({"population": 3}, "^population: DE/rand/1 needs at least 4 candidates per image .*, got 3"),
    ({"population": 2.5}, "^population: expected a positive int, got 2.5"),
    ({"iterations": 0}, "^iterations: expected a positive int"),
    ({"f": 0}, "^f: expected a finite number > 0, got 0"),
    ({"target": 5}, "^target: class 5 is out of range for a model with 2 outputs"),
    ({"target": 0}, "^target: class 0 equals the label of sample 0; a targeted attack needs another class"),
    ({"batch_size": 0}, "^batch_size: expected a positive int or 'auto', got 0"),
])
def test_bad_arguments_fail_with_one_line_naming_the_argument(kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        one_pixel(PixelReader([(0, 0, 0)]), dark(2), **kwargs)
    assert "\n" not in str(err.value) and isinstance(err.value, underhood.UnderhoodError)
