"""The gradient family: saliency, input x gradient, SmoothGrad and integrated gradients.

Every map is signed and unreduced, with the shape of ``inputs``; the picture (max over
channels of ``|gradient|`` for saliency) is drawn by :mod:`underhood.viz`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.checks import choice, number, positive_int
from ..core.errors import InputError
from ..core.hooks import frozen
from ..core.seeding import generator
from ..core.targets import Target
from .base import accumulate_gradients, check_amp, deprecated, finite, fixed_target, input_gradient, prepare


def saliency(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, amp: bool | str = False) -> torch.Tensor:
    """Vanilla gradient ``d score / d inputs`` (Simonyan, Vedaldi & Zisserman 2013).

    Args:
        model: any module taking ``[0, 1]`` pixels.
        inputs: ``[N, C, H, W]``.
        target: see :mod:`underhood.core.targets` (default: each sample's predicted class).
        amp: run the passes in float16 autocast (``"bf16"``: bfloat16); the map is float32
            (see :mod:`underhood.attribution.base`). Every method of the gradient and
            perturbation families takes it.

    Returns:
        ``[N, C, H, W]``, signed. Simonyan et al. draw ``max_c |grad|``.

    Example:
        >>> grad = saliency(model, x, target=3)   # doctest: +SKIP
    """
    x, amp = prepare(model, inputs), check_amp(amp)
    with frozen(model):
        grad, _ = input_gradient(model, x, target, amp=amp)
    return finite(grad, amp)


def input_x_gradient(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                     amp: bool | str = False) -> torch.Tensor:
    """``inputs * d score / d inputs`` (Shrikumar et al. 2016): each pixel's first-order share of the score.

    Returns ``[N, C, H, W]``, signed.
    """
    x, amp = prepare(model, inputs), check_amp(amp)
    with frozen(model):
        grad, _ = input_gradient(model, x, target, amp=amp)
    return finite(x * grad, amp)


def smoothgrad(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, n_samples: int = 50,
               noise_std: float = 0.15, square: bool = False, seed: int = 0, batch_size: int | str | None = None,
               progress: bool = False, amp: bool | str = False) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over noisy copies of each input.

    ``mean_s grad(x + eps_s)`` with ``eps_s ~ N(0, sigma^2)``, ``sigma = noise_std * (max(x) - min(x))``
    per input; ``square=True`` averages ``grad^2`` (SmoothGrad-squared). The class is fixed on
    the clean input. Every sample sees the same seeded noise draws (scaled to its own range),
    so a batch gives the same maps as one sample at a time. The noise is drawn on the model's
    device (a GPU draws it in place, with no copy from the host), so the same seed gives the
    same maps on the same kind of device.

    Returns ``[N, C, H, W]``; signed, or non-negative with ``square=True``.

    Example:
        >>> sg = smoothgrad(model, x, n_samples=50, noise_std=0.15, seed=0)   # doctest: +SKIP
    """
    x, amp = prepare(model, inputs), check_amp(amp)
    n_samples = positive_int("n_samples", n_samples)
    noise_std = number("noise_std", noise_std)  # a fraction of each input's value range
    noise = torch.randn((n_samples, *x.shape[1:]), generator=generator(seed, x.device), device=x.device)
    sigma = noise_std * (x.flatten(1).amax(1) - x.flatten(1).amin(1))

    def make(part: slice):
        k = torch.arange(part.start, part.stop, device=x.device)
        index, s = k // n_samples, k % n_samples
        copies = x[index] + sigma[index].view(-1, 1, 1, 1) * noise[s]
        return copies, index, torch.full((len(k),), 1.0 / n_samples, device=x.device)

    with frozen(model):
        fixed, _ = fixed_target(model, x, target, amp=amp)
        maps = accumulate_gradients(model, make, len(x) * n_samples, len(x), fixed, shape=tuple(x.shape[1:]),
                                    batch_size=batch_size, transform=torch.square if square else None,
                                    progress=progress, desc="smoothgrad", amp=amp)
    return finite(maps, amp)


RULES = ("right", "left", "middle", "trapezoid")


def _path(steps: int, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``alpha`` in [0, 1] and weights of a Riemann rule for the path integral."""
    k = torch.arange(steps + (rule == "trapezoid"), dtype=torch.float64)
    if rule == "right":
        return (k + 1) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "left":
        return k / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if rule == "middle":
        return (k + 0.5) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    w = torch.full((steps + 1,), 1.0 / steps, dtype=torch.float64)
    w[0] = w[-1] = 0.5 / steps
    return k / steps, w


def _baseline(baseline: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(x.device, x.dtype), x.shape)
        except RuntimeError:
            pass
    raise InputError(f"baseline: expected a float or a tensor broadcastable to the inputs {tuple(x.shape)}, "
                     f"got {getattr(baseline, 'shape', baseline)!r}")


def integrated_gradients(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                         baseline: float | torch.Tensor = 0.0, steps: int = 50, rule: str = "right",
                         batch_size: int | str | None = None, progress: bool = False,
                         return_error: bool = False, amp: bool | str = False) -> torch.Tensor:
    """Integrated gradients (Sundararajan, Taly & Yan 2017).

    ``IG(x) = (x - x') * integral_0^1 d score(x' + a (x - x')) / dx da``, the integral taken by a
    Riemann sum over ``steps`` points (``rule="right"`` as in the paper: ``a = k / steps``,
    ``k = 1..steps``; also "left", "middle", "trapezoid"). ``baseline`` ``x'`` is a float or a
    tensor broadcastable to ``inputs`` (a black image, a blurred copy, ...). Completeness says
    ``sum IG = score(x) - score(x')``; :func:`underhood.attribution.metrics.completeness` measures
    the gap per sample, which shrinks as ``steps`` grows. (``return_error=True``, which returned
    ``(maps, gap)``, is deprecated.)

    Returns:
        ``[N, C, H, W]``, signed.

    Example:
        >>> ig = integrated_gradients(model, x, baseline=0.0, steps=64)         # doctest: +SKIP
        >>> gap = metrics.completeness(model, x, ig, baseline=0.0)             # doctest: +SKIP
    """
    x, amp = prepare(model, inputs), check_amp(amp)
    steps = positive_int("steps", steps)
    choice("rule", rule, RULES)
    base = _baseline(baseline, x)
    alphas, weights = (t.to(x.device, x.dtype, non_blocking=True) for t in _path(steps, rule))
    m = len(alphas)

    def make(part: slice):
        k = torch.arange(part.start, part.stop, device=x.device)
        index, s = k // m, k % m
        a = alphas[s].view(-1, 1, 1, 1)
        return base[index] + a * (x[index] - base[index]), index, weights[s]

    with frozen(model):
        fixed, clean = fixed_target(model, x, target, amp=amp)
        path_grad = accumulate_gradients(model, make, len(x) * m, len(x), fixed, shape=tuple(x.shape[1:]),
                                         batch_size=batch_size, progress=progress, desc="integrated gradients",
                                         amp=amp)
        attributions = finite((x - base) * path_grad, amp)
        if not return_error:
            return attributions
        deprecated("integrated_gradients(..., return_error=True)",
                   "underhood.attribution.metrics.completeness(model, inputs, maps, target, baseline=...)")
        _, at_baseline = fixed_target(model, base, fixed, amp=amp)
    return attributions, attributions.flatten(1).sum(1) - (clean - at_baseline)
