"""Image priors of the synthesis family: oracle, property and contract tests.

Each penalty is checked against a slow explicit-loop reference of its paper's formula; the
Yosinski operations against their definition (exact counts of clipped pixels); and the
direction of each prior by optimising it alone from noise.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from underhood.core.errors import InputError
from underhood.synthesis.priors import (
    PENALTIES,
    Priors,
    _downscale,
    alpha_norm,
    clip_small_contribution,
    clip_small_pixels,
    edge_energy,
    gaussian_blur,
    gaussian_kernel,
    l2,
    total_variation,
)


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _checkerboard(n: int) -> torch.Tensor:
    i = torch.arange(n)
    return ((i[:, None] + i[None, :]) % 2).float().expand(1, 3, n, n).clone()


def _ramp(n: int) -> torch.Tensor:
    return (torch.arange(n) / (n - 1)).float().view(1, 1, 1, n).expand(1, 3, n, n).clone()


def _bands(x: torch.Tensor) -> tuple[float, float]:
    """(low, high) spectral energy of ``x - mean``: radial frequency in (0, 0.15] and >= 0.35 cycles/pixel."""
    h, w = x.shape[-2:]
    spec = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs().square().sum(dim=(0, 1))
    f = torch.sqrt(torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2)
    return spec[(f > 0) & (f <= 0.15)].sum().item(), spec[f >= 0.35].sum().item()


# ----------------------------------------------------------------------------- slow references


def _ref_l2(x: np.ndarray, center: float) -> list[float]:
    return [sum((v - center) ** 2 for v in img.flat) for img in x]


def _ref_alpha(x: np.ndarray, alpha: float, center: float) -> list[float]:
    return [sum(abs(v - center) ** alpha for v in img.flat) for img in x]


def _ref_tv(x: np.ndarray, beta: float) -> list[float]:
    out = []
    for img in x:
        total = 0.0
        for ch in img:
            h, w = ch.shape
            for i in range(h):
                for j in range(w):
                    dx = ch[i, j + 1] - ch[i, j] if j + 1 < w else 0.0
                    dy = ch[i + 1, j] - ch[i, j] if i + 1 < h else 0.0
                    total += (dx * dx + dy * dy) ** (beta / 2)
        out.append(total)
    return out


def _reflect(i: int, n: int) -> int:
    return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)


def _ref_blur(ch: np.ndarray, sigma: float) -> np.ndarray:
    r = max(1, math.ceil(3 * sigma))
    g = [math.exp(-k * k / (2 * sigma * sigma)) for k in range(-r, r + 1)]
    g = [v / sum(g) for v in g]
    h, w = ch.shape
    out = np.zeros_like(ch)
    for i in range(h):
        for j in range(w):
            out[i, j] = sum(g[a + r] * g[b + r] * ch[_reflect(i + a, h), _reflect(j + b, w)]
                            for a in range(-r, r + 1) for b in range(-r, r + 1))
    return out


def _ref_pool(ch: np.ndarray) -> np.ndarray:
    h, w = ch.shape[0] // 2, ch.shape[1] // 2
    return np.array([[ch[2 * i:2 * i + 2, 2 * j:2 * j + 2].mean() for j in range(w)] for i in range(h)])


def _ref_edges(x: np.ndarray, scales: int, sigma: float) -> list[float]:
    out = []
    for img in x:
        total = 0.0
        for ch in img:
            level = ch
            for s in range(scales):
                if s > 0:
                    level = _ref_pool(level)
                total += float(((level - _ref_blur(level, sigma)) ** 2).sum())
        out.append(total)
    return out


# ----------------------------------------------------------------------------- oracle


def test_penalties_equal_slow_references() -> None:
    x = _rand(2, 2, 7, 6, dtype=torch.float64)
    a = x.numpy()
    for center in (0.5, 0.0):
        assert torch.allclose(l2(x, center=center), torch.tensor(_ref_l2(a, center), dtype=torch.float64))
        assert torch.allclose(alpha_norm(x, 3.5, center=center),
                              torch.tensor(_ref_alpha(a, 3.5, center), dtype=torch.float64))
    for beta in (2.0, 1.0, 1.5):
        assert torch.allclose(total_variation(x, beta), torch.tensor(_ref_tv(a, beta), dtype=torch.float64))


def test_edge_energy_equals_slow_reference() -> None:
    x = _rand(2, 2, 17, 13, seed=1, dtype=torch.float64)  # odd sizes: 17x13 -> 8x6 -> 4x3
    for scales, sigma in ((3, 0.5), (1, 1.0), (2, 0.8)):
        ref = torch.tensor(_ref_edges(x.numpy(), scales, sigma), dtype=torch.float64)
        assert torch.allclose(edge_energy(x, scales, sigma), ref), (scales, sigma)
    # the built-in downscale is avg_pool2d(2), odd sizes included
    assert torch.allclose(_downscale(x), torch.nn.functional.avg_pool2d(x, 2))


def test_gaussian_blur_equals_slow_reference() -> None:
    x = _rand(1, 2, 9, 8, seed=2, dtype=torch.float64)
    ref = np.stack([_ref_blur(ch, 1.2) for ch in x[0].numpy()])[None]
    assert torch.allclose(gaussian_blur(x, 1.2), torch.from_numpy(ref))
    assert gaussian_kernel(1.0).shape == (7,) and abs(gaussian_kernel(1.0).sum().item() - 1) < 1e-6


def test_penalty_closed_forms() -> None:
    one = torch.tensor([[[[0.0, 1.0]]]])
    assert total_variation(one).item() == 1.0
    assert alpha_norm(torch.ones(1, 1, 2, 2), 2.0, center=0.0).item() == 4.0
    const = torch.full((2, 3, 32, 32), 0.3)
    for name, fn in PENALTIES.items():
        if name in ("tv", "edges"):
            assert torch.all(fn(const).abs() < 1e-10), name
    assert torch.all(l2(torch.full((2, 3, 4, 4), 0.5)) == 0)
    # edges: a checkerboard is all high frequency, a smooth ramp almost none
    board, ramp = edge_energy(_checkerboard(32)).item(), edge_energy(_ramp(32)).item()
    assert board > 100 * ramp and board > 500


def test_penalties_are_per_image() -> None:
    x = _rand(3, 3, 16, 16, seed=3)
    for name, fn in PENALTIES.items():
        batch = fn(x)
        assert batch.shape == (3,) and torch.all(batch >= 0), name
        one = torch.cat([fn(x[i:i + 1]) for i in range(3)])
        assert torch.allclose(batch, one, rtol=1e-5), name


def test_gradcheck() -> None:
    x = _rand(1, 2, 8, 8, seed=4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: total_variation(t, 2.0), (x,))
    assert torch.autograd.gradcheck(lambda t: total_variation(t, 1.0), (x,))
    assert torch.autograd.gradcheck(lambda t: alpha_norm(t, 6.0), (x,))
    assert torch.autograd.gradcheck(lambda t: edge_energy(t, 2, 0.5), (x,))


def test_gradient_is_finite_on_flat_images() -> None:
    x = torch.full((1, 1, 6, 6), 0.5, requires_grad=True)
    (total_variation(x, 1.0) + alpha_norm(x, 0.5)).sum().backward()
    assert torch.all(torch.isfinite(x.grad)) and torch.all(x.grad == 0)


# ----------------------------------------------------------------------------- Yosinski operations


def test_blur_keeps_constant_and_removes_high_frequencies() -> None:
    const = torch.full((2, 3, 16, 16), 0.7)
    assert torch.allclose(gaussian_blur(const, 1.5), const)
    x = _rand(1, 3, 32, 32, seed=5)
    low, high = _bands(x)
    low_b, high_b = _bands(gaussian_blur(x, 1.0))
    assert high_b < 0.05 * high and low_b > 0.3 * low
    assert torch.equal(gaussian_blur(x, 0.0), x)


def test_clip_small_pixels_hits_exact_fraction() -> None:
    x = _rand(2, 3, 10, 10, seed=6)
    y = clip_small_pixels(x, 30.0)
    norms = (x - 0.5).norm(dim=1).flatten(1)
    for i in range(2):
        clipped = (y[i] == 0.5).all(0).flatten()
        assert clipped.sum().item() == 30
        assert torch.equal(clipped, norms[i] < norms[i].sort().values[30])  # the 30 smallest norms
        assert torch.equal(y[i][:, ~clipped.view(10, 10)], x[i][:, ~clipped.view(10, 10)])
    assert torch.equal(clip_small_pixels(x, 0.0), x)
    assert (clip_small_pixels(x, 100.0) == 0.5).all()


def test_clip_small_contribution_hits_exact_fraction() -> None:
    x, grad = _rand(2, 3, 10, 10, seed=7), _rand(2, 3, 10, 10, seed=8) - 0.5
    y = clip_small_contribution(x, grad, 25.0, center=0.0)
    score = (x * grad).sum(1).abs().flatten(1)
    for i in range(2):
        clipped = (y[i] == 0.0).all(0).flatten()
        assert clipped.sum().item() == 25
        assert torch.equal(clipped, score[i] < score[i].sort().values[25])


def test_operations_do_not_modify_input() -> None:
    x = _rand(1, 3, 8, 8, seed=9)
    before = x.clone()
    gaussian_blur(x, 1.0), clip_small_pixels(x, 50), clip_small_contribution(x, x, 50)
    Priors(blur_sigma=1.0, clip_pixels=20, clip_contribution=20).apply(x, grad=x)
    assert torch.equal(x, before)


# ----------------------------------------------------------------------------- direction


@functools.cache
def _minimise(name: str, steps: int = 50, lr: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(uniform noise, the result of ``steps`` Adam steps on the penalty ``name`` alone from it)."""
    fn = PENALTIES[name]
    x0 = _rand(1, 3, 32, 32, seed=10)
    x = x0.clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        fn(x).sum().backward()
        opt.step()
    return x0, x.detach()


@pytest.mark.parametrize("name", ["tv", "edges", "l2", "alpha"])
def test_minimising_a_penalty_lowers_it(name: str) -> None:
    fn = PENALTIES[name]
    x0, x = _minimise(name)
    assert fn(x).item() < 0.7 * fn(x0).item()


def test_minimising_edges_removes_high_frequencies_first() -> None:
    x0, x = _minimise("edges")
    low0, high0 = _bands(x0)
    low, high = _bands(x)
    assert high / high0 < 0.5 * (low / low0)


# ----------------------------------------------------------------------------- Priors


def test_priors_default_is_off() -> None:
    p, x = Priors(), _rand(2, 3, 8, 8)
    assert torch.equal(p.penalty(x), torch.zeros(2)) and torch.equal(p.apply(x), x)
    assert not p.has_operations and str(p) == "none" and Priors.parse("none") == p == Priors.parse("")


def test_priors_penalty_is_weighted_sum() -> None:
    p = Priors.parse("tv=1e-2, alpha=1e-4,edges=0.1,l2=2")
    x = _rand(2, 3, 16, 16, seed=11, dtype=torch.float64)
    expected = 1e-2 * total_variation(x) + 1e-4 * alpha_norm(x) + 0.1 * edge_energy(x) + 2 * l2(x)
    assert torch.allclose(p.penalty(x), expected)
    assert Priors.parse(str(p)) == p


def test_priors_apply_schedule() -> None:
    p = Priors.parse("blur=1,blur_every=3,clip_pixels=10")
    assert p.blur_sigma == 1.0 and p.blur_every == 3 and p.has_operations
    x = _rand(1, 3, 16, 16, seed=12)
    assert torch.equal(p.apply(x, step=3), clip_small_pixels(gaussian_blur(x, 1.0), 10))
    assert torch.equal(p.apply(x, step=4), clip_small_pixels(x, 10))
    grad = _rand(1, 3, 16, 16, seed=13)
    q = Priors(clip_contribution=20)
    assert torch.equal(q.apply(x, grad), clip_small_contribution(x, grad, 20))
    with pytest.raises(InputError, match="grad"):
        q.apply(x)


@pytest.mark.parametrize("text, match", [
    ("tvv=1", "unknown prior 'tvv'; did you mean 'tv'"),
    ("tv=abc", "tv='abc' is not a number"),
    ("tv", "not name=value"),
    ("tv=1,tv=2", "given twice"),
    ("tv=-1", "tv: expected a finite number >= 0, got -1"),
    ("clip_pixels=120", "clip_pixels: expected a finite number >= 0 and <= 100"),
    ("blur_every=0", "blur_every: expected a positive int, got 0"),
    ("blur_every=1.5", "not a whole number"),
    ("edges=nan", "expected a finite number"),
])
def test_priors_parse_errors(text: str, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        Priors.parse(text)
    assert str(info.value).startswith("priors: ") and "\n" not in str(info.value)


def test_input_errors() -> None:
    with pytest.raises(InputError, match=r"x: expected a non-empty \[N, C, H, W\]"):
        total_variation(torch.rand(3, 8, 8))
    with pytest.raises(InputError, match="x: expected float"):
        l2(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(InputError, match="too small for edge_energy"):
        edge_energy(torch.rand(1, 1, 8, 8), scales=3, sigma=1.0)
    with pytest.raises(InputError, match="scales: expected a positive int, got 0"):
        edge_energy(torch.rand(1, 1, 8, 8), scales=0)
    with pytest.raises(InputError, match="beta"):
        total_variation(torch.rand(1, 1, 4, 4), beta=0)
    with pytest.raises(InputError, match="percentile"):
        clip_small_pixels(torch.rand(1, 1, 4, 4), 101)
    with pytest.raises(InputError, match="grad: expected the shape"):
        clip_small_contribution(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5), 10)
    with pytest.raises(InputError, match="sigma"):
        gaussian_blur(torch.rand(1, 1, 4, 4), 2.0)
