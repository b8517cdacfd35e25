"""The lectures' attribution: SmoothGrad's lecture preset and the abs-sum reduction, Smilkov et al.'s gradient along
a line, CAM of the top-k classes, and the course experiments built on them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underhood.attribution import (
    SMOOTHGRAD_PRESETS,
    cam,
    gradient_along_line,
    smoothgrad,
    smoothgrad_options,
    top_cams,
)
from underhood.core.errors import InputError
from underhood.core.seeding import generator
from underhood.viz import gradient_line_figure, reduce_channels, render_map, top_cams_figure

from .attribution_models import Linear, Quadratic


def tiny(seed: int = 0, classes: int = 6) -> nn.Module:
    """A small ReLU CNN with a GAP + linear head (CAM applies)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)).eval()


def images(n: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    return 0.25 + 0.5 * torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def grad_of(model: nn.Module, x: torch.Tensor, c: int) -> torch.Tensor:
    """Slow reference: d logit_c / d x of one batch with autograd."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[:, c].sum(), x)
    return g


# ----------------------------------------------------------------------------- SmoothGrad's lecture preset


def test_the_lecture_preset_is_n100_sigma_a_quarter_of_the_range_and_equals_the_explicit_options() -> None:
    assert SMOOTHGRAD_PRESETS["lecture"] == {"n_samples": 100, "noise_std": 0.25, "square": False}
    model, x = tiny(), images()
    preset = smoothgrad(model, x, 1, preset="lecture", seed=3)
    explicit = smoothgrad(model, x, 1, n_samples=100, noise_std=0.25, square=False, seed=3)
    assert torch.equal(preset, explicit)
    # an option given in the call wins over the preset's
    assert torch.equal(smoothgrad(model, x, 1, preset="lecture", n_samples=7, seed=3),
                       smoothgrad(model, x, 1, n_samples=7, noise_std=0.25, seed=3))


def test_the_default_smoothgrad_is_unchanged() -> None:
    model, x = tiny(), images()
    assert smoothgrad_options() == {"n_samples": 50, "noise_std": 0.15, "square": False}
    assert torch.equal(smoothgrad(model, x, 2), smoothgrad(model, x, 2, n_samples=50, noise_std=0.15, square=False))
    with pytest.raises(InputError, match="preset"):
        smoothgrad(model, x, preset="ee559")


def test_the_lecture_code_is_the_preset_then_abs_sum() -> None:
    """EE-559's loop (slide 99): acc_grad += grad(x + N(0, std)), std = 0.25 * (max - min); acc.abs().sum(1)."""
    model, x = tiny(), images(1)
    std = 0.25 * (x.max() - x.min())
    noise = torch.randn((100, *x.shape[1:]), generator=generator(0, x.device))  # smoothgrad's seeded draws
    acc = torch.zeros_like(x)
    for q in range(100):
        acc += grad_of(model, x + std * noise[q], 4)
    ours = reduce_channels(smoothgrad(model, x, 4, preset="lecture", seed=0), "abs-sum")
    assert torch.allclose(ours, (acc / 100).abs().sum(1, keepdim=True), atol=1e-6)


def test_channel_reductions_oracle() -> None:
    m = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]], [[0.0, 4.0]]]])  # [1, 3, 1, 2]
    assert reduce_channels(m, "abs-sum").tolist() == [[[[4.0, 6.5]]]]
    assert reduce_channels(m, "abs-max").tolist() == [[[[3.0, 4.0]]]]
    assert reduce_channels(m, "sum").tolist() == [[[[-2.0, 2.5]]]]
    assert reduce_channels(m[0], "abs-sum").shape == (1, 1, 2)
    with pytest.raises(ValueError, match="how"):
        reduce_channels(m, "l2")
    # the "magnitude-sum" picture is the abs-sum map over its 99th percentile, clipped, white on black
    a = torch.randn(3, 9, 9, generator=torch.Generator().manual_seed(0))
    s = a.abs().sum(0)
    expected = (s / torch.quantile(s.flatten(), 0.99)).clamp(0, 1)
    picture = render_map(a, "magnitude-sum")
    assert picture.shape == (9, 9, 3)
    assert torch.allclose(torch.from_numpy(picture[..., 0]).float(), expected, atol=1e-6)
    assert not torch.allclose(torch.from_numpy(render_map(a, "magnitude")[..., 0]).float(), expected)


# ----------------------------------------------------------------------------- Smilkov et al.'s line


def test_line_on_a_quadratic_is_the_closed_form() -> None:
    """S = sum x^2: d S / d x_i = 2 x_i(t) on the line, and SmoothGrad = 2 (x_i(t) + sigma(t) mean_s n_s,i)."""
    x, d = images(2, 6), torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(1))
    eps, steps, n = 0.05, 7, 5
    line = gradient_along_line(Quadratic(), x, 0, pixels=[(1, 2), (5, 0)], eps=eps, steps=steps, direction=d,
                               n_samples=n, noise_std=0.1, seed=4)
    t = torch.linspace(0, 1, steps)
    end = (x + eps * d).clamp(0, 1)
    points = x[:, None] + t.view(1, -1, 1, 1, 1) * (end - x)[:, None]  # [N, T, C, H, W]
    assert torch.allclose(line.t, t)
    assert torch.equal(line.end, end) and torch.equal(line.start, x)
    for p, (y, xx) in enumerate([(1, 2), (5, 0)]):
        assert torch.allclose(line.raw[:, :, p], 2 * points[..., y, xx], atol=1e-6)
        noise = torch.randn((n, 3, 6, 6), generator=generator(5, x.device))  # seed + 1
        flat = points.flatten(2)
        sigma = 0.1 * (flat.amax(2) - flat.amin(2))  # [N, T]
        expected = 2 * (points[..., y, xx] + sigma[..., None] * noise.mean(0)[:, y, xx])
        assert torch.allclose(line.smoothed[:, :, p], expected, atol=1e-5)
    assert torch.allclose(line.raw_max, 2 * points.flatten(2).abs().amax(2), atol=1e-6)
    assert line.pixels.shape == (2, 2, 2)


def test_line_on_a_linear_model_is_flat() -> None:
    model, x = Linear().eval(), images(1, 6)
    line = gradient_along_line(model, x, 2, pixels=[(3, 4)], steps=5, n_samples=3)
    assert torch.allclose(line.raw[0, :, 0], model.row(2)[:, 3, 4].expand(5, 3), atol=1e-6)
    assert torch.allclose(line.smoothed[0, :, 0], model.row(2)[:, 3, 4].expand(5, 3), atol=1e-5)
    raw, smooth = line.variation()
    assert float(raw.max()) < 1e-5 and float(smooth.max()) < 1e-4


def test_line_equals_a_slow_per_point_loop_and_a_batch_equals_each_sample() -> None:
    model, x = tiny(), images(2)
    d = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(2))
    steps, eps = 6, 0.3
    line = gradient_along_line(model, x, None, eps=eps, steps=steps, direction=d, n_samples=4, noise_std=0.2,
                               seed=7, batch_size=5)
    pred = model(x).argmax(1)
    for i in range(2):
        end = (x[i:i + 1] + eps * d).clamp(0, 1)
        full = grad_of(model, x[i:i + 1], int(pred[i]))
        flat = int(full.abs().sum(1).flatten().argmax())
        assert line.pixels[i, 0].tolist() == [flat // 8, flat % 8]  # default: the largest gradient at x
        y, xx = line.pixels[i, 0].tolist()
        for k, t in enumerate(torch.linspace(0, 1, steps)):
            point = x[i:i + 1] + t * (end - x[i:i + 1])
            assert torch.allclose(line.raw[i, k, 0], grad_of(model, point, int(pred[i]))[0, :, y, xx], atol=1e-6)
            sg = smoothgrad(model, point, int(pred[i]), n_samples=4, noise_std=0.2, seed=8)
            assert torch.allclose(line.smoothed[i, k, 0], sg[0, :, y, xx], atol=1e-6)
        alone = gradient_along_line(model, x[i:i + 1], None, eps=eps, steps=steps, direction=d, n_samples=4,
                                    noise_std=0.2, seed=7)
        assert torch.allclose(alone.raw[0], line.raw[i], atol=1e-6)
    raw, smooth = line.variation()
    assert raw.shape == (2, 1, 3)
    assert line.scalars()["points"] == steps


def test_line_defaults_and_errors() -> None:
    model, x = tiny(), images(1)
    a = gradient_along_line(model, x, 0, steps=3, n_samples=2, seed=1)
    b = gradient_along_line(model, x, 0, steps=3, n_samples=2, seed=1)
    assert torch.equal(a.raw, b.raw) and torch.equal(a.smoothed, b.smoothed)
    assert a.eps == 0.01 and float((a.end - a.start).abs().max()) <= 0.01 * 6  # N(0, 0.01^2) noise
    assert gradient_along_line(model, x, 0, steps=2, preset="lecture").n_samples == 100
    with pytest.raises(InputError, match="steps"):
        gradient_along_line(model, x, 0, steps=1)
    with pytest.raises(InputError, match="pixels"):
        gradient_along_line(model, x, 0, pixels=[(8, 0)], steps=2, n_samples=1)
    with pytest.raises(InputError, match="direction"):
        gradient_along_line(model, x, 0, direction=torch.zeros(2, 5, 5), steps=2, n_samples=1)
    fig = gradient_line_figure(a.t, a.raw[0], a.smoothed[0], image=a.start[0], end=a.end[0], pixels=a.pixels[0])
    assert len(fig.axes) == 4


# ----------------------------------------------------------------------------- CAM of the top-k classes


def test_top_cams_are_the_cams_of_the_k_most_probable_classes_in_order() -> None:
    model, x = tiny(classes=7), images(3)
    top = top_cams(model, x, k=5)
    with torch.no_grad():
        p = model(x).softmax(1)
    assert top.maps.shape == (3, 5, 8, 8)
    assert (top.probs[:, :-1] >= top.probs[:, 1:]).all()
    assert torch.equal(top.classes[:, 0], p.argmax(1))
    for i in range(3):
        order = p[i].argsort(descending=True)[:5]
        assert torch.allclose(top.probs[i], p[i, order])
        for j in range(5):
            c = int(top.classes[i, j])
            assert torch.allclose(top.maps[i, j], cam(model, x[i:i + 1], c)[0, 0], atol=1e-6)
    assert top.titles(0)[0].startswith(str(int(top.classes[0, 0])) + " ")
    assert len(top_cams_figure(x[0], top.maps[0], top.titles(0)).axes) == 1
    with pytest.raises(InputError, match="k"):
        top_cams(model, x, k=8)


# ----------------------------------------------------------------------------- the course experiments


def test_the_new_experiments_run_quickly_and_state_their_settings(tmp_path) -> None:
    from underhood.report.course.base import run_experiments

    out = run_experiments(["ee559-smilkov-line", "cmp784-top5-cam", "ee559-smoothgrad"], tmp_path, quick=True)
    assert "eps = 0.01" in out["ee559-smilkov-line"] and "Same vertical scale" in out["ee559-smilkov-line"]
    assert "Top-5 probabilities" in out["cmp784-top5-cam"]
    assert "sigma = 0.25" in out["ee559-smoothgrad"]
    assert (tmp_path / "figures" / "ee559-smilkov-line.png").is_file()


@pytest.mark.slow
def test_every_attribution_experiment_runs_in_full_mode(tmp_path) -> None:
    from underhood.report.course import attribution
    from underhood.report.course.base import EXPERIMENTS, run_experiments

    ids = [i for i, e in EXPERIMENTS.items() if e.fn.__module__ == attribution.__name__]
    assert len(ids) >= 10
    out = run_experiments(ids, tmp_path, quick=False)
    assert all(out[i] and "<figure>" in out[i] for i in ids)
