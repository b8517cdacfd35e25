"""Perturbation family: occlusion against a brute-force loop, LIME against sklearn and a known
linear model; batching, seeding, memory bound, errors and model lifecycle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from underhood import Unit
from underhood.attribution.perturbation import (
    LimeFit,
    _kernel,
    _ridge,
    _sample_z,
    lime,
    lime_fit,
    occlusion,
    superpixels,
)
from underhood.core.errors import InputError
from underhood.core.hooks import hooked


def tiny(channels: int = 3, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, classes))


class Regions(nn.Module):
    """Output ``[N, 1]``: ``sum_j w_j * mean of block j`` of a 4x4 grid of 4x4 blocks (channel mean)."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = nn.Parameter(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4).flatten(1)   # [N, 16], row-major blocks
        return (means * self.weights).sum(1, keepdim=True)


GRID = torch.arange(16).view(4, 4).repeat_interleave(4, 0).repeat_interleave(4, 1)   # block labels, row-major


# ----------------------------------------------------------------------------- occlusion


def occlusion_reference(score, x, window, stride, baseline):
    """Plain loop over windows: occlude, score, accumulate sum and count per pixel."""
    n, _, h, w = x.shape
    fill = torch.broadcast_to(torch.as_tensor(baseline, dtype=torch.float32), x.shape)
    total, count = torch.zeros(n, h, w), torch.zeros(n, h, w)
    with torch.no_grad():
        for i in range(n):
            clean = score(x[i:i + 1], i)
            for y0 in range(0, h - window[0] + 1, stride[0]):
                for x0 in range(0, w - window[1] + 1, stride[1]):
                    occluded = x[i:i + 1].clone()
                    ys, xs = slice(y0, y0 + window[0]), slice(x0, x0 + window[1])
                    occluded[:, :, ys, xs] = fill[i:i + 1, :, ys, xs]
                    total[i, ys, xs] += clean - score(occluded, i)
                    count[i, ys, xs] += 1
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros(())).unsqueeze(1)


def class_score(model, classes):
    return lambda batch, i: model(batch)[0, classes[i]].item()


@pytest.mark.parametrize(("size", "window", "stride", "baseline"), [
    ((9, 9), 3, 2, 0.0),
    ((10, 11), (2, 4), (3, 2), 0.5),
    ((8, 8), 4, 4, "per-channel"),
    ((6, 7), (3, 2), 1, "per-sample"),
    ((6, 6), 6, 3, 0.25),                 # one window, the whole image
])
def test_occlusion_matches_brute_force(size, window, stride, baseline):
    model = tiny().eval()
    torch.manual_seed(1)
    x = torch.rand(3, 3, *size)
    if baseline == "per-channel":
        baseline = torch.tensor([0.2, 0.5, 0.9])[:, None, None]
    elif baseline == "per-sample":
        baseline = torch.rand(3, 3, *size)
    classes = [0, 2, 1]
    got = occlusion(model, x, classes, window=window, stride=stride, baseline=baseline, batch_size=16)
    pair = (lambda v: (v, v) if isinstance(v, int) else v)
    want = occlusion_reference(class_score(model, classes), x, pair(window), pair(stride), baseline)
    assert got.shape == (3, 1, *size) and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)


def test_occlusion_default_target_is_predicted_class_and_uncovered_pixels_are_zero():
    model = tiny().eval()
    x = torch.rand(2, 3, 10, 10)
    got = occlusion(model, x, window=4, stride=4, batch_size=5)     # windows at 0 and 4: rows/cols 8, 9 uncovered
    predicted = model(x).argmax(1).tolist()
    want = occlusion_reference(class_score(model, predicted), x, (4, 4), (4, 4), 0.0)
    assert torch.allclose(got, want, atol=1e-5)
    assert (got[:, :, 8:] == 0).all() and (got[:, :, :, 8:] == 0).all()
    assert (got[:, :, :8, :8] != 0).any()


def test_occlusion_unit_and_callable_targets():
    model = tiny().eval()
    x = torch.rand(2, 3, 8, 8)
    got = occlusion(model, x, Unit("0", 1), window=3, stride=2, batch_size=8)
    want = occlusion_reference(lambda b, i: model[0](b)[0, 1].sum().item(), x, (3, 3), (2, 2), 0.0)
    assert torch.allclose(got, want, atol=1e-4)
    got = occlusion(model, x, lambda out: out.logsumexp(1), window=3, stride=2, batch_size=8)
    want = occlusion_reference(lambda b, i: model(b).logsumexp(1).item(), x, (3, 3), (2, 2), 0.0)
    assert torch.allclose(got, want, atol=1e-5)


def test_occlusion_batch_equals_one_by_one_and_batch_size_does_not_matter():
    model = tiny().eval()
    x = torch.rand(4, 3, 9, 9)
    classes = [3, 0, 1, 1]
    together = occlusion(model, x, classes, window=3, stride=2, batch_size=7)
    alone = torch.cat([occlusion(model, x[i:i + 1], classes[i], window=3, stride=2, batch_size=7) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together, occlusion(model, x, classes, window=3, stride=2, batch_size=1), atol=1e-5)


def test_occlusion_memory_bound_no_batch_exceeds_batch_size():
    model = tiny().eval()
    seen = []
    with hooked(model, pre={model: lambda m, args: seen.append(args[0].shape[0])}):
        occlusion(model, torch.rand(2, 3, 12, 12), 0, window=3, stride=1, batch_size=16)
    assert seen[0] == 2                       # the clean pass that fixes the target
    assert max(seen[1:]) <= 16 and sum(seen[1:]) == 2 * 10 * 10


def test_occlusion_on_shapes_model(shapes_model, shapes_small):
    x = shapes_small.images[:1]
    got = occlusion(shapes_model, x, window=32, stride=(16, 32), batch_size=16)
    predicted = shapes_model(x).argmax(1).tolist()
    want = occlusion_reference(class_score(shapes_model, predicted), x, (32, 32), (16, 32), 0.0)
    assert got.shape == (1, 1, 64, 64) and torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize(("options", "message"), [
    ({"window": 9}, "window: .* larger than the 8x8"),
    ({"window": (2, 9)}, "window: .* larger"),
    ({"window": 0}, "window: expected a positive int"),
    ({"stride": 0}, "stride: expected a positive int"),
    ({"stride": -2}, "stride: expected a positive int"),
    ({"stride": 1.5}, "stride: expected"),
    ({"baseline": torch.zeros(2, 8, 8)}, r"baseline: .*broadcastable to \[C, H, W\] = \[3, 8, 8\].*shape \(2, 8, 8\)"),
    ({"baseline": torch.zeros(5, 3, 8, 8)}, r"baseline: .*\[N, C, H, W\] = \[2, 3, 8, 8\]"),
    ({"baseline": "grey"}, "baseline: expected a float"),
])
def test_occlusion_errors(options, message):
    with pytest.raises(InputError, match=message):
        occlusion(tiny().eval(), torch.rand(2, 3, 8, 8), **options)


# ----------------------------------------------------------------------------- LIME


@pytest.mark.parametrize("alpha", [1.0, 0.05])
def test_ridge_closed_form_equals_sklearn(alpha):
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(0)
    z = (torch.rand(200, 12, generator=g) < 0.5).double()
    y = z @ torch.randn(12, generator=g, dtype=torch.float64) + 0.1 * torch.randn(200, generator=g, dtype=torch.float64)
    weights = torch.rand(200, generator=g, dtype=torch.float64) + 0.01
    coef, intercept = _ridge(z, y, weights, alpha)
    oracle = Ridge(alpha=alpha, fit_intercept=True).fit(z.numpy(), y.numpy(), sample_weight=weights.numpy())
    assert np.allclose(coef.numpy(), oracle.coef_, atol=1e-8) and abs(intercept.item() - oracle.intercept_) < 1e-8


def test_lime_equals_sklearn_on_the_same_design():
    """End to end: rebuild the perturbed images and weights plainly, fit sklearn's Ridge, compare."""
    from sklearn.linear_model import Ridge

    model = tiny(seed=2).eval()
    torch.manual_seed(3)
    x = torch.rand(1, 3, 16, 16)
    fit = lime_fit(model, x, 1, n_samples=40, segments=GRID, seed=5, baseline=0.3, batch_size=9)
    maps = fit.maps
    z = _sample_z(16, 40, 5, torch.device("cpu"))
    with torch.no_grad():
        images = torch.stack([torch.where(row[GRID], x[0], torch.tensor(0.3)) for row in z])
        y = model(images).softmax(1)[:, 1].double()
    d = 1 - z.double().sum(1) / (z.double().norm(dim=1) * 4.0)              # cosine distance to all ones
    pi = torch.exp(-d**2 / 0.25**2)
    oracle = Ridge(alpha=1.0).fit(z.double().numpy(), y.numpy(), sample_weight=pi.numpy())
    assert np.allclose(fit.coefficients[0].numpy(), oracle.coef_, atol=1e-5)
    assert abs(fit.intercept[0].item() - oracle.intercept_) < 1e-5
    assert abs(fit.r2[0].item() - oracle.score(z.double().numpy(), y.numpy(), sample_weight=pi.numpy())) < 1e-4
    assert torch.allclose(maps[0, 0], fit.coefficients[0][GRID])           # painted onto its superpixel
    assert torch.allclose(_kernel(z.double(), 0.25), pi)


def test_lime_recovers_a_linear_model_of_superpixel_means():
    w = torch.linspace(-1, 1, 16)[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    model = Regions(w).eval()
    x = torch.ones(1, 3, 16, 16)
    raw = lambda out: out[:, 0]                                              # noqa: E731
    # With baseline 0 the score is exactly sum_j w_j z_j: an (almost) unpenalised fit recovers w.
    fit = lime_fit(model, x, raw, n_samples=300, segments=GRID, baseline=0.0, alpha=1e-9, batch_size=64)
    assert torch.allclose(fit.coefficients[0], w, atol=1e-4) and fit.r2[0] > 0.9999
    # The default penalty shrinks, but keeps signs and ranking.
    fit = lime_fit(model, x, raw, n_samples=300, segments=GRID, baseline=0.0, batch_size=64)
    assert (fit.coefficients[0].sign() == w.sign()).all()
    assert (fit.coefficients[0].argsort() == w.argsort()).all()


def test_lime_class_probability_keeps_signs():
    w = torch.tensor([2.0, -2.0, 0.5, -0.5] * 4)
    regions = Regions(w)
    model = nn.Sequential(regions, nn.Linear(1, 2)).eval()                    # logits [f, -f]: p(0) = sigmoid(2f)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[1].bias.zero_()
    x = torch.full((1, 3, 16, 16), 0.5)
    fit = lime_fit(model, x, 0, n_samples=300, segments=GRID, baseline=0.0, batch_size=64)
    assert (fit.coefficients[0].sign() == w.sign()).all()
    assert abs(fit.score[0].item() - model(x).softmax(1)[0, 0].item()) < 1e-6


def test_lime_seeded_and_batch_equals_one_by_one():
    model = tiny().eval()
    torch.manual_seed(4)
    # Blocky images, so SLIC finds a different number of superpixels in each (not one for noise).
    x = 0.95 * nn.functional.interpolate(torch.rand(3, 3, 4, 4), size=24) + 0.05 * torch.rand(3, 3, 24, 24)
    assert len({len(s.unique()) for s in superpixels(x, n_segments=12)}) > 1
    a = lime(model, x, n_samples=32, n_segments=12, batch_size=32)
    assert torch.equal(a, lime(model, x, n_samples=32, n_segments=12, batch_size=32))
    assert not torch.allclose(a, lime(model, x, n_samples=32, n_segments=12, seed=1, batch_size=32))
    alone = torch.cat([lime(model, x[i:i + 1], n_samples=32, n_segments=12, batch_size=5) for i in range(3)])
    assert a.shape == (3, 1, 24, 24) and torch.allclose(a, alone, atol=1e-5)


def test_lime_first_sample_is_the_original():
    model = tiny().eval()
    x = torch.rand(2, 3, 16, 16)
    batches = []
    with hooked(model, pre={model: lambda m, args: batches.append(args[0].clone())}):
        fit = lime_fit(model, x, n_samples=10, segments=GRID, batch_size=10)
    assert torch.equal(batches[1][0], x[0]) and torch.equal(batches[2][0], x[1])   # batches[0]: the clean pass
    assert not torch.equal(batches[1][1], x[0])
    probs = model(x).softmax(1)
    assert torch.allclose(fit.score, probs.max(1).values, atol=1e-6)
    z = _sample_z(16, 10, 0, torch.device("cpu"))
    counts = z[1:].sum(1)
    assert z[0].all() and (counts >= 1).all() and (counts <= 16).all()


def test_lime_mean_baseline_fills_superpixel_mean_colour():
    model = tiny().eval()
    x = torch.rand(1, 3, 16, 16)
    batches = []
    with hooked(model, pre={model: lambda m, args: batches.append(args[0].clone())}):
        lime(model, x, n_samples=8, segments=GRID.numpy(), batch_size=8)           # numpy labels work too
    z = _sample_z(16, 8, 0, torch.device("cpu"))
    means = torch.stack([x[0][:, GRID == j].mean(1) for j in range(16)])        # [16, C]
    want = torch.where(z[3][GRID], x[0], means[GRID].permute(2, 0, 1))
    assert torch.allclose(batches[1][3], want, atol=1e-6)


def test_lime_unit_target_scores_raw_values_and_grey_images():
    model = tiny(channels=1).eval()
    x = torch.rand(2, 1, 20, 20)
    fit = lime_fit(model, x, Unit("0", 2), n_samples=30, n_segments=10, batch_size=30)
    maps = fit.maps
    assert maps.shape == (2, 1, 20, 20) and isinstance(fit, LimeFit)
    assert torch.allclose(fit.score, model[0](x)[:, 2].sum((1, 2)), atol=1e-4)
    assert fit.segments.shape == (2, 20, 20) and len(fit.coefficients) == 2


def test_superpixels_rgb_grey_and_other_channels():
    torch.manual_seed(0)
    for channels in (3, 1, 4):
        blocky = nn.functional.interpolate(torch.rand(2, channels, 4, 4), size=32)   # SLIC merges pure noise
        seg = superpixels(blocky, n_segments=16)
        assert seg.shape == (2, 32, 32) and seg.dtype == torch.long and seg.min() == 0
        assert 4 <= len(seg[0].unique()) <= 32
    halves = torch.zeros(1, 3, 32, 32)
    halves[..., 16:] = 1.0
    seg = superpixels(halves, n_segments=4)
    assert (seg[0, :, :16, None] != seg[0, :, None, 16:]).all()            # no superpixel crosses the edge
    with pytest.raises(InputError, match="inputs: expected a float tensor"):
        superpixels(torch.rand(3, 8, 8))
    with pytest.raises(InputError, match="n_segments"):
        superpixels(torch.rand(1, 3, 8, 8), n_segments=0)


@pytest.mark.parametrize(("options", "message"), [
    ({"n_samples": 1}, r"n_samples: expected an int >= 2 .*got 1"),
    ({"n_samples": 10.0}, "n_samples"),
    ({"n_segments": 0}, "n_segments: expected a positive int, got 0"),
    ({"baseline": "zero"}, "baseline: expected 'mean'"),
    ({"baseline": torch.zeros(3)}, "baseline: expected 'mean'"),
    ({"kernel_width": 0}, "kernel_width: expected a finite number > 0"),
    ({"alpha": -1.0}, "alpha: expected a finite number >= 0"),
    ({"segments": torch.zeros(16, 16)}, "segments: expected integer labels"),
    ({"segments": torch.zeros(3, 16, 16, dtype=torch.long)}, r"segments: .*\[N, H, W\] = \[2, 16, 16\]"),
    ({"batch_size": 0}, "batch_size"),
])
def test_lime_errors(options, message):
    with pytest.raises(InputError, match=message):
        lime(tiny().eval(), torch.rand(2, 3, 16, 16), **{"n_samples": 10, "segments": GRID, **options})


# ----------------------------------------------------------------------------- lifecycle


class Flaky(nn.Module):
    """Raises on forward call number ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.net = tiny()
        self.drop = nn.Dropout(0.5)
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.drop(self.net(x))


@pytest.mark.parametrize("method", [occlusion, lime])
@pytest.mark.parametrize("target", [0, Unit("net.0", 1)])
def test_model_state_restored_also_when_forward_raises(method, target):
    options = {"segments": GRID, "n_samples": 10} if method is lime else {"window": 4, "stride": 4}
    x = torch.rand(2, 3, 16, 16)
    for fail_at in (1, 2):                                            # the clean pass, then a batch of copies
        model = Flaky(fail_at).train()
        model.net[0].weight.requires_grad_(False)
        with pytest.raises(RuntimeError, match="boom"):
            method(model, x, target, batch_size=4, **options)
        assert model.training and model.drop.training and model.net[4].training
        assert not model.net[0].weight.requires_grad and model.net[0].bias.requires_grad
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    model = Flaky(0).train()                                          # never fails: eval inside (dropout off)
    assert torch.equal(method(model, x, target, batch_size=4, **options),
                       method(model, x, target, batch_size=4, **options))
    assert model.training and all(p.requires_grad for p in model.parameters())
