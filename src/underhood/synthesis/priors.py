"""Image priors for synthesis: differentiable penalties and Yosinski's regularisation operations.

An image that maximises a unit's response is rarely "natural": the optimiser is free to use
high-frequency patterns the network never saw. A prior fixes this in one of two ways.

* A **penalty** ``h(x)`` is subtracted from the objective, ``argmax_x f(x) - h(x)``. Each penalty
  here takes images ``[N, C, H, W]`` and returns ``[N]``, one non-negative value per image, so a
  batch of independent syntheses stays independent. Lower is more "natural".
* A **regularisation operation** (Yosinski et al. 2015) is applied to the image *between*
  gradient steps: blur it, set its weakest pixels to grey. These return new tensors and never
  modify their input.

:class:`Priors` bundles both, with weights that are all zero (off) by default, and parses the
CLI form ``"tv=1e-2,alpha=1e-4,edges=0.1,blur=0.5"``.

Pixels are in ``[0, 1]``. The papers work on mean-subtracted images, whose zero is the mean
colour; the analogue here is mid-grey, so ``l2``, ``alpha_norm`` and the clip operations
measure distances from ``center=0.5`` by default (``center=0`` gives the literal formulas on
raw pixels, which pull the image towards black).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..core.checks import number, positive_int
from ..core.errors import InputError

# ----------------------------------------------------------------------------- helpers


def _check_images(x: object, name: str = "x") -> torch.Tensor:
    """``x`` checked to be a floating ``[N, C, H, W]`` tensor."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise InputError(f"{name}: expected a non-empty [N, C, H, W] tensor, got shape {tuple(x.shape)}; "
                         "add a batch axis with x[None]")
    if not x.is_floating_point():
        raise InputError(f"{name}: expected float pixels in [0, 1], got dtype {x.dtype}; use x.float() / 255")
    return x


def _safe_pow(t: torch.Tensor, p: float) -> torch.Tensor:
    """``t ** p`` for ``t >= 0``, with gradient 0 (a subgradient) where ``t == 0`` instead of inf/nan."""
    if p >= 1.0:  # the gradient p·t^(p-1) is finite at 0
        return t.pow(p)
    positive = t > 0
    return torch.where(positive, torch.where(positive, t, torch.ones_like(t)).pow(p), torch.zeros_like(t))


def _per_image(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over everything but the batch axis: ``[N, ...] -> [N]``."""
    return t.flatten(1).sum(1)


def gaussian_kernel(sigma: float, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """The normalised 1-D Gaussian ``g[k] ∝ exp(-k² / 2σ²)``, ``k = -r..r`` with ``r = ceil(3σ)``.

    Returns ``[2r + 1]`` summing to 1. (The EE-559 lecture's 5-tap binomial ``[1, 4, 6, 4, 1] / 16``
    has variance 1, so ``sigma=1`` is its Gaussian counterpart.)
    """
    sigma = number("sigma", sigma, strict=True)
    r = max(1, math.ceil(3 * sigma))
    k = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-k * k / (2 * sigma * sigma))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _reflect_index(n: int, r: int, device: torch.device) -> torch.Tensor:
    """Indices ``-r .. n+r-1`` folded back into ``0 .. n-1`` by reflection without repeating the edge."""
    i = torch.arange(-r, n + r, device=device).abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable depthwise convolution of ``[..., H, W]`` with the 1-D kernel ``g``, reflect padding.

    Written as weighted sums of shifted copies rather than ``conv2d``: same result, as fast on one
    core for these small kernels, and free of the per-call thread synchronisation that makes tiny
    convolutions slow on a busy multi-core CPU.
    """
    h, w = x.shape[-2:]
    weights, r = g.tolist(), (len(g) - 1) // 2
    y = x[..., _reflect_index(h, r, x.device), :]
    y = sum(wk * y[..., k:k + h, :] for k, wk in enumerate(weights))  # along H
    y = y[..., _reflect_index(w, r, x.device)]
    return sum(wk * y[..., k:k + w] for k, wk in enumerate(weights))  # along W


def _downscale(x: torch.Tensor) -> torch.Tensor:
    """Factor-2 downscale by 2x2 averaging (``avg_pool2d(x, 2)``: an odd last row/column is dropped)."""
    n, c, h, w = x.shape
    return x[..., :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


# ----------------------------------------------------------------------------- penalties


def l2(x: torch.Tensor, *, center: float = 0.5) -> torch.Tensor:
    """Squared L2 norm of the image, ``h(x) = Σ_{c,i,j} (x_cij - center)²`` (Simonyan et al. 2014).

    Simonyan, Vedaldi & Zisserman penalise ``λ‖I‖²₂`` of a mean-subtracted image; with ``[0, 1]``
    pixels the default ``center=0.5`` (mid-grey) plays the role of that mean. ``center=0`` gives
    the literal sum of squares of the raw pixels.

    Args:
        x: images ``[N, C, H, W]``.
        center: the pixel value the penalty pulls towards.

    Returns:
        ``[N]``, ``>= 0``; 0 for a uniform ``center`` image.

    Example:
        >>> l2(torch.full((2, 3, 4, 4), 0.5)).tolist()
        [0.0, 0.0]
    """
    x = _check_images(x)
    return _per_image((x - center).square())


def alpha_norm(x: torch.Tensor, alpha: float = 6.0, *, center: float = 0.5) -> torch.Tensor:
    """The α-norm prior ``h(x) = ‖x - center‖_α^α = Σ_{c,i,j} |x_cij - center|^α`` (Mahendran & Vedaldi 2015).

    A large ``α`` (the paper uses 6) barely touches moderate pixels but strongly penalises the
    few extreme ones, keeping the image in range. ``center`` as in :func:`l2`.

    Args:
        x: images ``[N, C, H, W]``.
        alpha: the exponent, ``> 0``.
        center: the pixel value the penalty is measured from.

    Returns:
        ``[N]``, ``>= 0``.

    Example:
        >>> alpha_norm(torch.ones(1, 1, 2, 2), alpha=2.0, center=0.0).tolist()
        [4.0]
    """
    x = _check_images(x)
    alpha = number("alpha", alpha, strict=True)
    return _per_image(_safe_pow((x - center).abs(), alpha))


def total_variation(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Total variation ``h(x) = Σ_{c,i,j} ((x_c,i,j+1 - x_cij)² + (x_c,i+1,j - x_cij)²)^(β/2)``.

    The ``V^β`` regulariser of Mahendran & Vedaldi 2015, "Understanding deep image representations
    by inverting them", applied to each channel and summed over channels, as the paper does. ``β = 1`` is the
    classic (isotropic) total variation; ``β > 1`` (the paper uses 2) reduces spikes.

    Boundary: forward differences with the image extended by replicating its last row and
    column, so a difference that would leave the image is 0. Every pixel has a term, and for
    ``β = 2`` ``h`` is exactly the sum of all squared horizontal and vertical neighbour
    differences. Where both differences are 0 the gradient is taken as 0 (a subgradient).

    Args:
        x: images ``[N, C, H, W]``.
        beta: the exponent ``β > 0``.

    Returns:
        ``[N]``, ``>= 0``; 0 exactly for images that are constant in each channel.

    Example:
        >>> total_variation(torch.tensor([[[[0.0, 1.0]]]])).tolist()
        [1.0]
    """
    x = _check_images(x)
    beta = number("beta", beta, strict=True)
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))        # x[i, j+1] - x[i, j], 0 in the last column
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))  # x[i+1, j] - x[i, j], 0 in the last row
    return _per_image(_safe_pow(dx.square() + dy.square(), beta / 2))


BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
"""EE-559's 5-tap binomial filter ``[1, 4, 6, 4, 1] / 16`` (its 5x5 "pseudo-Gaussian" is the outer product)."""

EDGE_KERNELS = ("gaussian", "binomial")


def _zero_blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable depthwise convolution of ``[..., H, W]`` with the 1-D kernel ``g``, zero padding (``conv2d``'s)."""
    h, w = x.shape[-2:]
    weights, r = g.tolist(), (len(g) - 1) // 2
    y = F.pad(x, (r, r, r, r))
    y = sum(wk * y[..., k:k + h, :] for k, wk in enumerate(weights))  # along H
    return sum(wk * y[..., k:k + w] for k, wk in enumerate(weights))  # along W


def _lecture_downscale(x: torch.Tensor) -> torch.Tensor:
    """EE-559's downscale: the 2x2 uniform kernel with stride 2 and zero padding 1 (``H -> H // 2 + 1``)."""
    n, c, h, w = x.shape
    oh, ow = h // 2 + 1, w // 2 + 1
    y = F.pad(x, (1, 1, 1, 1))[..., :2 * oh, :2 * ow]
    return y.reshape(n, c, oh, 2, ow, 2).mean(dim=(3, 5))


def edge_energy(x: torch.Tensor, scales: int | None = 3, sigma: float = 1.0, *,
                kernel: str = "gaussian") -> torch.Tensor:
    """Multi-scale edge energy ``h(x) = Σ_{s=0}^{scales-1} ‖δ^s(x) - g ⊛ δ^s(x)‖²`` (EE-559, "under the hood").

    The penalty of Fleuret's EE-559 lecture: "a reasonable h penalizes too much energy in the
    high frequencies by integrating edge amplitude at multiple scales". ``δ`` is a factor-2
    downscale (``δ⁰`` is the identity), ``g`` a normalised low-pass kernel applied to each channel,
    and ``‖·‖²`` sums squares over channels and pixels. ``x - g ⊛ x`` is the image's high-pass part,
    so ``h`` is the energy above the blur's cut-off at ``scales`` octaves.

    Two kernels:

    * ``"gaussian"`` (default): a Gaussian of standard deviation ``sigma`` (:func:`gaussian_kernel`) with
      reflect padding, and ``δ`` the 2x2 average pooling (odd sizes rounded down): a constant image has
      no edge energy.
    * ``"binomial"``: the lecture's own module (slide 65) exactly: the 5x5 binomial kernel
      (:data:`BINOMIAL` outer itself, variance 1, so ``sigma`` is ignored) with zero padding 2, and ``δ``
      the 2x2 uniform kernel with stride 2 and zero padding 1 (``H -> H // 2 + 1``). The zero padding
      counts the image border as an edge.

    Args:
        x: images ``[N, C, H, W]``; the coarsest level must be larger than the kernel's radius (Gaussian)
            or width (binomial).
        scales: number of scales ``>= 1``, or ``None``: as many as the image allows, every level whose
            sides both exceed the kernel's width (the lecture's ``while x.size(2) > 5 and x.size(3) > 5``).
        sigma: the Gaussian's standard deviation in pixels of each level, ``> 0``.
        kernel: ``"gaussian"`` or ``"binomial"``.

    Returns:
        ``[N]``, ``>= 0``; 0 for an image constant in each channel (``"gaussian"``), large for a checkerboard.

    Example:
        >>> edge_energy(torch.full((1, 3, 32, 32), 0.7)).abs().max().item() < 1e-10
        True
        >>> edge_energy(torch.zeros(1, 3, 64, 64), None, kernel="binomial").item()   # 64, 33, 17, 9: 4 scales
        0.0
    """
    x = _check_images(x)
    if scales is not None:
        positive_int("scales", scales)
    if kernel not in EDGE_KERNELS:
        raise InputError(f"kernel: expected one of {', '.join(EDGE_KERNELS)}, got {kernel!r}")
    if kernel == "binomial":
        g, blur, down = BINOMIAL.to(device=x.device, dtype=x.dtype), _zero_blur, _lecture_downscale
    else:
        g, blur, down = gaussian_kernel(sigma, dtype=x.dtype, device=x.device), _blur, _downscale
    # the lecture stops when a side reaches the kernel's width; reflect padding needs more than the radius
    limit = len(g) if kernel == "binomial" else (len(g) - 1) // 2
    size, levels = tuple(x.shape[-2:]), []
    while (len(levels) < scales) if scales is not None else (min(size) > limit):
        levels.append(size)
        size = (size[0] // 2 + 1, size[1] // 2 + 1) if kernel == "binomial" else (size[0] // 2, size[1] // 2)
    if not levels or min(levels[-1]) <= limit:
        coarsest = f"the coarsest level is {levels[-1][0]}x{levels[-1][1]} and " if levels else ""
        raise InputError(f"x: {x.shape[-2]}x{x.shape[-1]} images are too small for edge_energy(scales={scales}, "
                         f"sigma={sigma:g}, kernel={kernel!r}): {coarsest}the blur needs more than {limit} pixels; "
                         "lower scales or sigma")
    total = x.new_zeros(x.shape[0])
    for s in range(len(levels)):
        if s > 0:
            x = down(x)
        total = total + _per_image((x - blur(x, g)).square())
    return total


PENALTIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l2": l2,
    "tv": total_variation,
    "alpha": alpha_norm,
    "edges": edge_energy,
}


# ----------------------------------------------------------------------------- Yosinski operations


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` blurred by a Gaussian of standard deviation ``sigma`` pixels (Yosinski et al. 2015).

    Separable and depthwise (each channel alone), with reflect padding, so a constant image is
    returned unchanged and the mean colour is nearly kept. ``sigma=0`` returns a copy of ``x``.

    Args:
        x: images ``[N, C, H, W]``; ``H`` and ``W`` must exceed the kernel radius ``ceil(3 sigma)``.
        sigma: standard deviation in pixels, ``>= 0``.

    Returns:
        A new ``[N, C, H, W]`` tensor.
    """
    x = _check_images(x)
    sigma = number("sigma", sigma)
    if sigma == 0:
        return x.clone()
    g = gaussian_kernel(sigma, dtype=x.dtype, device=x.device)
    r = (len(g) - 1) // 2
    if min(x.shape[-2:]) <= r:
        raise InputError(f"sigma: {sigma:g} needs images larger than {r} pixels, got "
                         f"{x.shape[-2]}x{x.shape[-1]}; lower sigma")
    return _blur(x, g)


def _clip_smallest(x: torch.Tensor, score: torch.Tensor, percentile: float, center: float) -> torch.Tensor:
    """``x`` with the ``floor(percentile/100 · H·W)`` pixels of lowest ``score [N, H, W]`` set to ``center``."""
    n, _, h, w = x.shape
    k = int(percentile / 100 * h * w)
    if k == 0:
        return x.clone()
    order = torch.sort(score.reshape(n, h * w), dim=1, stable=True).indices[:, :k]
    small = torch.zeros(n, h * w, dtype=torch.bool, device=x.device).scatter_(1, order, True)
    return torch.where(small.view(n, 1, h, w), torch.full_like(x, center), x)


def clip_small_pixels(x: torch.Tensor, percentile: float, *, center: float = 0.5) -> torch.Tensor:
    """Set to ``center`` the pixels whose norm ``‖x_ij - center‖₂`` across channels is in the lowest ``percentile`` %.

    "Clipping pixels with small norm" of Yosinski et al. 2015: the weak pixels of each image
    become neutral grey, keeping only the parts that matter. Per image, exactly
    ``floor(percentile / 100 · H · W)`` pixels are set (all their channels), ties broken by
    position.

    Args:
        x: images ``[N, C, H, W]``.
        percentile: in ``[0, 100]``.
        center: the neutral value (mid-grey by default, the paper's zero of a mean-subtracted image).

    Returns:
        A new ``[N, C, H, W]`` tensor.
    """
    x = _check_images(x)
    percentile = number("percentile", percentile, high=100.0)
    return _clip_smallest(x, (x - center).norm(dim=1), percentile, center)


def clip_small_contribution(x: torch.Tensor, grad: torch.Tensor, percentile: float, *,
                            center: float = 0.5) -> torch.Tensor:
    """Set to ``center`` the pixels of smallest contribution ``|Σ_c (x_cij - center) · grad_cij|``.

    "Clipping pixels with small contribution" of Yosinski et al. 2015: the contribution of a pixel
    is the first-order change of the objective if that pixel were set to ``center``, the
    elementwise product of image and gradient summed over channels, in absolute value (so that
    pixels that matter in either direction are kept). Per image, exactly
    ``floor(percentile / 100 · H · W)`` pixels are set, ties broken by position.

    Args:
        x: images ``[N, C, H, W]``.
        grad: the gradient of the objective with respect to ``x``, ``[N, C, H, W]``.
        percentile: in ``[0, 100]``.
        center: the neutral value.

    Returns:
        A new ``[N, C, H, W]`` tensor.
    """
    x = _check_images(x)
    grad = _check_images(grad, "grad")
    if grad.shape != x.shape:
        raise InputError(f"grad: expected the shape of x {tuple(x.shape)}, got {tuple(grad.shape)}; "
                         "pass the gradient of the objective with respect to x")
    percentile = number("percentile", percentile, high=100.0)
    return _clip_smallest(x, ((x - center) * grad).sum(1).abs(), percentile, center)


# ----------------------------------------------------------------------------- Priors


_ALIASES = {"blur": "blur_sigma"}  # CLI name -> field name


@dataclass(frozen=True)
class Priors:
    """The priors of one synthesis: weighted penalties plus Yosinski's operations, all off by default.

    Attributes:
        l2, tv, alpha, edges: weights of :func:`l2`, :func:`total_variation`, :func:`alpha_norm`
            and :func:`edge_energy` (each with its default hyperparameters), ``>= 0``.
        blur_sigma: Gaussian blur of this ``sigma`` (pixels) every ``blur_every`` steps; 0 = off.
        blur_every: blur period in steps, ``>= 1``.
        clip_pixels: percentile for :func:`clip_small_pixels` at every step; 0 = off.
        clip_contribution: percentile for :func:`clip_small_contribution` at every step; 0 = off.
        center: the neutral pixel value of ``l2``, ``alpha`` and both clips.
        edges_kernel: ``"gaussian"`` (:func:`edge_energy`'s defaults) or ``"binomial"`` (EE-559's module:
            the 5-tap binomial kernel at as many scales as the image allows, ``edge_energy(x, None,
            kernel="binomial")``).

    Example:
        >>> p = Priors.parse("tv=1e-2,edges=0.1,blur=0.5")
        >>> x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).requires_grad_()
        >>> loss = p.penalty(x).sum()          # subtract from the objective: maximise f(x) - h(x)
        >>> x2 = p.apply(x, step=0)            # between steps, on the pixels
        >>> str(p)
        'tv=0.01,edges=0.1,blur=0.5'
    """

    l2: float = 0.0
    tv: float = 0.0
    alpha: float = 0.0
    edges: float = 0.0
    blur_sigma: float = 0.0
    blur_every: int = 1
    clip_pixels: float = 0.0
    clip_contribution: float = 0.0
    center: float = 0.5
    edges_kernel: str = "gaussian"

    def __post_init__(self) -> None:
        for name in PENALTIES:
            number(name, getattr(self, name))
        number("blur_sigma", self.blur_sigma)
        positive_int("blur_every", self.blur_every)
        number("clip_pixels", self.clip_pixels, high=100.0)
        number("clip_contribution", self.clip_contribution, high=100.0)
        number("center", self.center, low=-math.inf)
        if self.edges_kernel not in EDGE_KERNELS:
            raise InputError(f"edges_kernel: expected one of {', '.join(EDGE_KERNELS)}, got {self.edges_kernel!r}")

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_k weight_k · h_k(x)`` over the active penalties: ``[N, C, H, W] -> [N]``, ``>= 0``, differentiable.

        Zeros ``[N]`` when no penalty is active.
        """
        x = _check_images(x)
        total = x.new_zeros(x.shape[0])
        if self.l2:
            total = total + self.l2 * l2(x, center=self.center)
        if self.tv:
            total = total + self.tv * total_variation(x)
        if self.alpha:
            total = total + self.alpha * alpha_norm(x, center=self.center)
        if self.edges:
            total = total + self.edges * (edge_energy(x) if self.edges_kernel == "gaussian"
                                          else edge_energy(x, None, kernel=self.edges_kernel))
        return total

    @property
    def has_operations(self) -> bool:
        """Whether :meth:`apply` can change an image (a blur or a clip is on)."""
        return bool(self.blur_sigma or self.clip_pixels or self.clip_contribution)

    def apply(self, x: torch.Tensor, grad: torch.Tensor | None = None, step: int = 0) -> torch.Tensor:
        """The Yosinski operations due at ``step``, in the paper's order: blur, clip pixels, clip contribution.

        Works on pixels, without gradient, and returns a new detached ``[N, C, H, W]`` tensor
        (``x`` itself is not modified). The blur runs when ``step % blur_every == 0``.

        Args:
            x: images ``[N, C, H, W]``.
            grad: gradient of the objective with respect to ``x``; required when
                ``clip_contribution`` is on.
            step: the index of the optimisation step, ``>= 0``.
        """
        x = _check_images(x)
        if self.clip_contribution and grad is None:
            raise InputError("grad: clip_contribution needs the gradient of the objective with respect to x; "
                             "pass grad=x.grad")
        with torch.no_grad():
            y = x.detach().clone()
            if self.blur_sigma and step % self.blur_every == 0:
                y = gaussian_blur(y, self.blur_sigma)
            if self.clip_pixels:
                y = clip_small_pixels(y, self.clip_pixels, center=self.center)
            if self.clip_contribution:
                y = clip_small_contribution(y, grad.detach(), self.clip_contribution, center=self.center)
        return y

    @classmethod
    def parse(cls, text: str | None) -> Priors:
        """Priors from a CLI string ``"name=value,..."``, e.g. ``"tv=1e-2,alpha=1e-4,edges=0.1,blur=0.5"``.

        Names: ``l2, tv, alpha, edges`` (weights), ``blur`` (= ``blur_sigma``), ``blur_every``,
        ``clip_pixels``, ``clip_contribution``, ``center``, ``edges_kernel`` (a word: ``gaussian`` or
        ``binomial``). An empty string or ``"none"`` gives
        no prior. Unknown names, repeated names and values that are not numbers are errors.
        """
        if text is None:
            return cls()
        if not isinstance(text, str):
            raise InputError(f"priors: expected a string like 'tv=1e-2,blur=0.5', got {type(text).__name__}")
        if text.strip().lower() in ("", "none"):
            return cls()
        known = [*(k for k in _ALIASES), *(f.name for f in fields(cls) if f.name not in _ALIASES.values())]
        values: dict[str, float | int] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name, sep, raw = (s.strip() for s in item.partition("="))
            if not sep or not name or not raw:
                raise InputError(f"priors: {item!r} is not name=value; write e.g. 'tv=1e-2,blur=0.5'")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise InputError(f"priors: unknown prior {name!r}; {hint}known: {', '.join(known)}")
            field = _ALIASES.get(name, name)
            if field in values:
                raise InputError(f"priors: {name!r} is given twice; give each prior once")
            if field == "edges_kernel":
                values[field] = raw
                continue
            try:
                value = float(raw)
            except ValueError:
                raise InputError(f"priors: {name}={raw!r} is not a number; write e.g. {name}=0.1") from None
            if field == "blur_every":
                if not value.is_integer():
                    raise InputError(f"priors: blur_every={raw!r} is not a whole number of steps; write e.g. "
                                     "blur_every=4")
                value = int(value)
            values[field] = value
        try:
            return cls(**values)
        except InputError as e:
            raise InputError(f"priors: {e}") from None

    def __str__(self) -> str:
        """The CLI form of the non-default settings (``parse(str(p)) == p``); ``"none"`` when all are off."""
        inverse = {v: k for k, v in _ALIASES.items()}
        def text(v: object) -> str:
            return v if isinstance(v, str) else repr(v)
        parts = [f"{inverse.get(f.name, f.name)}={text(getattr(self, f.name))}" for f in fields(self)
                 if getattr(self, f.name) != f.default]
        return ",".join(parts) or "none"
