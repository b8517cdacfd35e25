"""The gradient family: saliency, input x gradient, SmoothGrad and integrated gradients.

Every map is signed and unreduced, with the shape of ``inputs``; the picture (max over
channels of ``|gradient|`` for saliency) is drawn by :mod:`underhood.viz`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.checks import choice, number, positive_int, with_preset
from ..core.errors import InputError
from ..core.hooks import frozen
from ..core.results import Result
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


SMOOTHGRAD_DEFAULTS: dict[str, object] = {"n_samples": 50, "noise_std": 0.15, "square": False}
"""SmoothGrad's options when neither the call nor a preset sets them (Smilkov et al.'s 10-20 % noise)."""

SMOOTHGRAD_PRESETS: dict[str, dict[str, object]] = {
    # EE-559 (Fleuret, slides 98-102) and CSC413: nb_smooth = 100, std = smooth_std * (img.max() - img.min())
    # with sigma = Delta / 4, shown as acc_grad.abs().sum(1); draw it with the viz reduction "abs-sum"
    # (style "magnitude-sum" of underhood.viz.render_map)
    "lecture": {"n_samples": 100, "noise_std": 0.25, "square": False},
}
"""Named SmoothGrad settings: ``smoothgrad(..., preset=name)`` uses them for every option the call leaves out."""


def smoothgrad_options(preset: str | None = None, **options: object) -> dict[str, object]:
    """The ``n_samples`` / ``noise_std`` / ``square`` a SmoothGrad call uses: ``options`` that are not None,
    then the preset's (:data:`SMOOTHGRAD_PRESETS`), then :data:`SMOOTHGRAD_DEFAULTS`.

    Example:
        >>> smoothgrad_options("lecture")
        {'n_samples': 100, 'noise_std': 0.25, 'square': False}
        >>> smoothgrad_options("lecture", n_samples=20)["n_samples"]
        20
    """
    return with_preset("SmoothGrad", preset, SMOOTHGRAD_DEFAULTS, SMOOTHGRAD_PRESETS, options)


def smoothgrad(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, n_samples: int | None = None,
               noise_std: float | None = None, square: bool | None = None, seed: int = 0,
               batch_size: int | str | None = None, progress: bool = False, amp: bool | str = False,
               preset: str | None = None) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over noisy copies of each input.

    ``mean_s grad(x + eps_s)`` with ``eps_s ~ N(0, sigma^2)``, ``sigma = noise_std * (max(x) - min(x))``
    per input; ``square=True`` averages ``grad^2`` (SmoothGrad-squared). The class is fixed on
    the clean input. Every sample sees the same seeded noise draws (scaled to its own range),
    so a batch gives the same maps as one sample at a time. The noise is drawn on the model's
    device (a GPU draws it in place, with no copy from the host), so the same seed gives the
    same maps on the same kind of device.

    Options left out (None) are ``n_samples=50, noise_std=0.15, square=False``, or those of
    ``preset`` (:data:`SMOOTHGRAD_PRESETS`): ``preset="lecture"`` is EE-559's and CSC413's
    ``N = 100``, ``sigma = (max - min) / 4``; the lecture then draws ``sum_c |map|``, which is the
    explicit viz step ``underhood.viz.reduce_channels(maps, "abs-sum")``. Options given in the call
    win over the preset's.

    Returns ``[N, C, H, W]``; signed, or non-negative with ``square=True``.

    Example:
        >>> sg = smoothgrad(model, x, n_samples=50, noise_std=0.15, seed=0)   # doctest: +SKIP
        >>> sg = smoothgrad(model, x, preset="lecture")                       # doctest: +SKIP
        >>> shown = underhood.viz.reduce_channels(sg, "abs-sum")             # doctest: +SKIP
    """
    x, amp = prepare(model, inputs), check_amp(amp)
    opts = smoothgrad_options(preset, n_samples=n_samples, noise_std=noise_std, square=square)
    n_samples, noise_std, square = opts["n_samples"], opts["noise_std"], bool(opts["square"])
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


@dataclass(repr=False)
class LineResult(Result):
    """The gradient along a straight line from ``x`` to ``x + eps d`` (see :func:`gradient_along_line`).

    Attributes:
        t: ``[T]``, the points' positions on the segment, ``0`` (the image) to ``1`` (``x + eps d``).
        raw: ``[N, T, P, C]``, ``d score / d x[c, y, x]`` at each point, for each of the ``P`` pixels.
        smoothed: ``[N, T, P, C]``, the same partial derivatives of SmoothGrad at each point.
        pixels: ``[N, P, 2]`` long, the ``(y, x)`` of each pixel followed.
        raw_max: ``[N, T]``, ``max_i |d score / d x_i|`` over the whole image at each point (Smilkov et al.
            plot each derivative as a fraction of it).
        smoothed_max: ``[N, T]``, the same for SmoothGrad.
        start: ``[N, C, H, W]``, the images; ``end``: ``[N, C, H, W]``, ``clip(x + eps d, 0, 1)``.
        eps, n_samples, noise_std: the settings used.
    """

    t: torch.Tensor
    raw: torch.Tensor
    smoothed: torch.Tensor
    pixels: torch.Tensor
    raw_max: torch.Tensor
    smoothed_max: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    eps: float
    n_samples: int
    noise_std: float

    def variation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw, smoothed)``, each ``[N, P, C]``: how far each partial derivative travels along the line, its
        total variation ``sum_t |v(t+1) - v(t)|`` (in the score's units per pixel unit; 0 for a constant)."""
        return self.raw.diff(dim=1).abs().sum(1), self.smoothed.diff(dim=1).abs().sum(1)

    def scalars(self) -> dict[str, float | int]:
        """Points, pixels, settings, and the mean total variation of the raw and smoothed derivatives."""
        raw, smooth = self.variation()
        return {"images": int(self.raw.shape[0]), "points": int(self.t.numel()), "pixels": int(self.raw.shape[2]),
                "eps": self.eps, "n_samples": self.n_samples, "noise_std": self.noise_std,
                "raw_variation": float(raw.mean()), "smoothed_variation": float(smooth.mean())}

    def figure(self, index: int = 0, **options):
        """Sample ``index``: the image, the raw and the smoothed derivatives along the line, ``x + eps d``
        (see :func:`underhood.viz.gradient_line_figure`)."""
        from ..viz.attribution import gradient_line_figure

        return gradient_line_figure(self.t, self.raw[index], self.smoothed[index], image=self.start[index],
                                    end=self.end[index], pixels=self.pixels[index], **options)


def _pixels(pixels: Sequence[Sequence[int]] | torch.Tensor | None, grad: torch.Tensor) -> torch.Tensor:
    """``[N, P, 2]`` long ``(y, x)``: given for every sample, or (None) each sample's pixel of largest
    ``sum_c |grad|``."""
    n, _, h, w = grad.shape
    if pixels is None:
        flat = grad.abs().sum(1).flatten(1).argmax(1)
        return torch.stack([flat // w, flat % w], 1)[:, None].cpu()
    p = torch.as_tensor(pixels, dtype=torch.long)
    p = p[None] if p.ndim == 1 else p
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise InputError(f"pixels: expected (y, x) pairs such as [(12, 30), (40, 8)], got {pixels!r}")
    if bool((p[:, 0] < 0).any() | (p[:, 0] >= h).any() | (p[:, 1] < 0).any() | (p[:, 1] >= w).any()):
        raise InputError(f"pixels: every (y, x) must lie inside the {h}x{w} image, got {p.tolist()!r}")
    return p[None].expand(n, -1, -1).clone()


def gradient_along_line(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                        pixels: Sequence[Sequence[int]] | torch.Tensor | None = None, eps: float = 0.01,
                        steps: int = 101, direction: torch.Tensor | None = None, n_samples: int | None = None,
                        noise_std: float | None = None, preset: str | None = None, seed: int = 0,
                        batch_size: int | str | None = None, progress: bool = False) -> LineResult:
    """The partial derivatives of the class score along a straight line, raw and smoothed (Smilkov et al. 2017, Fig. 2).

    The points are ``x(t) = x + t (e - x)``, ``e = clip(x + eps d, 0, 1)`` (clipped so that every point is an
    image in ``[0, 1]``), for ``T = steps`` values of ``t`` evenly spaced in ``[0, 1]``; at
    each, ``d S_c / d x_i(t)`` for the pixels ``i`` followed (all channels), and the same partial derivatives
    of SmoothGrad (:func:`smoothgrad` at ``x(t)``, options ``n_samples`` / ``noise_std`` / ``preset``).
    Smilkov et al. draw ``d`` from ``N(0, 1)`` with ``eps = 0.01`` (the end image is indistinguishable from
    ``x``) and show the raw derivative jumping around while the smoothed one moves slowly: the gradient of a
    ReLU network is piecewise constant and changes at every activation pattern crossed. EE-559 (slide 97)
    shows the figure to motivate SmoothGrad.

    Args:
        model: any module taking ``[0, 1]`` pixels; ``inputs``: ``[N, C, H, W]``.
        target: the class (default: the prediction at ``x``), fixed at ``x`` for the whole line.
        pixels: ``(y, x)`` pairs followed in every sample; None: each sample's pixel of largest
            ``sum_c |grad|`` at ``x``.
        eps: the line's length scale, in pixel units; ``direction``: ``d``, a tensor broadcastable to ``inputs``
            (default: one seeded ``N(0, 1)`` draw shared by every sample, so ``x + eps d`` is ``x`` plus
            ``N(0, eps^2)`` noise).
        steps: the number of points ``T`` (both ends included, at least 2).
        seed: draws ``d`` (with ``seed``) and SmoothGrad's noise (with ``seed + 1``).
        batch_size, progress: of the shared batching helper; every point and noisy copy goes through it.

    Returns:
        A :class:`LineResult`: ``t [T]``, ``raw`` and ``smoothed`` ``[N, T, P, C]``, ``pixels [N, P, 2]``, ...

    Example:
        >>> line = gradient_along_line(model, x, eps=0.01, steps=101, preset="lecture")   # doctest: +SKIP
        >>> line.figure()                                                                 # doctest: +SKIP
    """
    x = prepare(model, inputs)
    eps = number("eps", eps)
    steps = positive_int("steps", steps)
    if steps < 2:
        raise InputError(f"steps: expected at least 2 points (both ends of the line), got {steps}")
    opts = smoothgrad_options(preset, n_samples=n_samples, noise_std=noise_std)
    n = len(x)
    if direction is None:
        d = torch.randn(x.shape[1:], generator=generator(seed, x.device), device=x.device).expand_as(x)
    else:
        if not isinstance(direction, torch.Tensor):
            raise InputError(f"direction: expected a tensor broadcastable to the inputs {tuple(x.shape)}, "
                             f"got {type(direction).__name__}")
        try:
            d = torch.broadcast_to(direction.to(x.device, x.dtype), x.shape)
        except RuntimeError:
            raise InputError(f"direction: expected a tensor broadcastable to the inputs {tuple(x.shape)}, "
                             f"got {tuple(direction.shape)}") from None
    end = (x + eps * d).clamp(0, 1)  # [0, 1] is convex: every point of the segment is an image
    t = torch.linspace(0, 1, steps, device=x.device, dtype=x.dtype)
    points = (x[:, None] + t.view(1, -1, 1, 1, 1) * (end - x)[:, None]).flatten(0, 1)  # [N * T, C, H, W]

    with frozen(model):
        fixed, _ = fixed_target(model, x, target)
    along = fixed.repeat_interleave(steps) if isinstance(fixed, torch.Tensor) else fixed

    def make(part: slice):
        k = torch.arange(part.start, part.stop, device=x.device)
        return points[k], k, torch.ones(len(k), device=x.device)

    with frozen(model):
        raw = accumulate_gradients(model, make, len(points), len(points), along, shape=tuple(x.shape[1:]),
                                   batch_size=batch_size, progress=progress, desc="gradient along a line")
    smooth = smoothgrad(model, points, along, seed=seed + 1, batch_size=batch_size, progress=progress, **opts)
    raw, smooth = raw.view(n, steps, *x.shape[1:]), smooth.view(n, steps, *x.shape[1:])
    where = _pixels(pixels, raw[:, 0])
    i = torch.arange(n)[:, None]
    ys, xs = where[..., 0].to(x.device), where[..., 1].to(x.device)

    def at(maps: torch.Tensor) -> torch.Tensor:  # [N, T, C, H, W] -> [N, T, P, C]
        return maps.permute(0, 3, 4, 1, 2)[i.to(x.device), ys, xs].permute(0, 2, 1, 3)

    return LineResult(t=t.cpu(), raw=at(raw).cpu(), smoothed=at(smooth).cpu(), pixels=where,
                      raw_max=raw.flatten(2).abs().amax(2).cpu(), smoothed_max=smooth.flatten(2).abs().amax(2).cpu(),
                      start=x.detach().cpu(), end=end.detach().cpu(), eps=eps,
                      n_samples=int(opts["n_samples"]), noise_std=float(opts["noise_std"]))
