"""The perturbation family: occlusion and LIME.

Both explain a prediction by changing the input and watching the score: occlusion slides a
``baseline`` patch over the image (Zeiler & Fergus 2014); LIME switches superpixels on and off
at random and fits a weighted linear surrogate (Ribeiro, Singh & Guestrin 2016). Every
perturbed copy is built lazily, one batch at a time, by
:func:`underhood.attribution.base.score_copies`, so memory is bounded by the batch size however
many copies there are. Both return ``[N, 1, H, W]`` maps, signed, without normalisation;
:func:`lime_fit` also returns LIME's fitted surrogates (a :class:`LimeFit`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.checks import number, positive_int
from ..core.errors import InputError
from ..core.hooks import frozen
from ..core.results import Result
from ..core.seeding import generator
from ..core.targets import Target
from .base import check_amp, deprecated, finite, fixed_target, prepare, score_copies


def _rows(t: torch.Tensor, index: torch.Tensor, part: slice, per: int) -> torch.Tensor:
    """``t[index]`` for the copies ``part`` (``per`` copies per sample); ``[1, ...]`` when they all
    come from one sample, which broadcasts in ``torch.where`` and saves a gather per batch."""
    first, last = part.start // per, (part.stop - 1) // per
    return t[first:first + 1] if first == last else t[index]


# ----------------------------------------------------------------------------- occlusion


def _pair(name: str, value: object) -> tuple[int, int]:
    """``value`` as ``(h, w)`` positive ints (an int means a square)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise InputError(f"{name}: expected a positive int or a pair (h, w) of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def _cover(size: int, window: int, stride: int, device: torch.device) -> torch.Tensor:
    """``[size, n_windows]`` 0/1 matrix: pixel ``p`` lies in window ``a`` (which starts at ``a * stride``)."""
    starts = torch.arange(0, size - window + 1, stride, device=device)
    pixels = torch.arange(size, device=device)[:, None]
    return ((pixels >= starts) & (pixels < starts + window)).float()


def _occlusion_fill(baseline: float | torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(values that fill an occluded window, whether they differ per sample)``."""
    n, c, h, w = x.shape
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return x.new_tensor(float(baseline)), False
    if isinstance(baseline, torch.Tensor) and baseline.ndim <= 4:
        shape = (n, c, h, w) if baseline.ndim == 4 else (c, h, w)
        try:
            return torch.broadcast_to(baseline.detach().to(x), shape), baseline.ndim == 4
        except RuntimeError:
            pass
    got = f"a tensor of shape {tuple(baseline.shape)}" if isinstance(baseline, torch.Tensor) else repr(baseline)
    raise InputError(f"baseline: expected a float or a tensor broadcastable to [C, H, W] = {[c, h, w]} "
                     f"or to [N, C, H, W] = {[n, c, h, w]}, got {got}")


def occlusion(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
              window: int | tuple[int, int] = 8, stride: int | tuple[int, int] = 4,
              baseline: float | torch.Tensor = 0.0, batch_size: int | str | None = None,
              progress: bool = False, amp: bool | str = False) -> torch.Tensor:
    """Occlusion sensitivity (Zeiler & Fergus 2014): how much the score drops when a patch is hidden.

    Windows of size ``window`` start at 0 and step by ``stride`` while fully inside the image;
    each is filled with ``baseline`` on all channels at once. Pixel ``p`` gets
    ``mean_{windows W covering p} [score(x) - score(x with W occluded)]``, and 0 where no
    window covers it (when the stride does not divide the image evenly). The target is fixed
    on the clean inputs; scores are logits (raw values for a Unit or callable target).

    Occluded copies are built one batch at a time, so stride 1 on a large image never holds
    more than ``batch_size`` copies.

    Args:
        model: any module taking ``[0, 1]`` pixels.
        inputs: ``[N, C, H, W]``.
        target: see :mod:`underhood.core.targets` (default: each sample's predicted class).
        window: ``(h, w)`` or an int for a square.
        stride: an int, or ``(h, w)``.
        baseline: a float, or a tensor broadcastable to one image ``[C, H, W]`` or to
            ``inputs`` ``[N, C, H, W]``, whose values fill the window.
        batch_size: copies per forward pass; ``None`` measures the fastest.
        progress: show a progress bar.
        amp: forward passes in float16 autocast (``"bf16"``: bfloat16), the clean one included;
            the map is float32 (see :mod:`underhood.attribution.base`).

    Returns:
        ``[N, 1, H, W]``, signed: positive where hiding the pixel lowers the score.

    Example:
        >>> heat = occlusion(model, x, target=3, window=8, stride=2)   # doctest: +SKIP
    """
    x, amp = prepare(model, inputs), check_amp(amp)
    n, c, h, w = x.shape
    (wh, ww), (sh, sw) = _pair("window", window), _pair("stride", stride)
    if wh > h or ww > w:
        raise InputError(f"window: {(wh, ww)} is larger than the {h}x{w} image; use at most ({h}, {w})")
    fill, per_sample = _occlusion_fill(baseline, x)
    rows, cols = _cover(h, wh, sh, x.device), _cover(w, ww, sw, x.device)
    row_in, col_in, nx = rows.T.bool(), cols.T.bool(), cols.shape[1]
    per = rows.shape[1] * nx

    def make(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.arange(part.start, part.stop, device=x.device)
        index, p = k // per, k % per
        # A window's mask is the outer product of its row and column indicators.
        inside = (row_in[p // nx][:, :, None] & col_in[p % nx][:, None, :])[:, None]
        return torch.where(inside, _rows(fill, index, part, per) if per_sample else fill,
                           _rows(x, index, part, per)), index

    with frozen(model):
        fixed, clean = fixed_target(model, x, target, amp=amp)
        s = score_copies(model, make, n * per, fixed, batch_size=batch_size, shape=(c, h, w),
                         progress=progress, desc="occlusion", amp=amp)
    drop = clean.to(x.device)[:, None] - s.to(x.device).view(n, per)
    # The sum over covering windows is separable: rows @ drop @ cols^T (what F.fold computes,
    # without materialising a [N, h * w, windows] tensor).
    total = rows @ drop.view(n, -1, nx) @ cols.T
    count = rows.sum(1)[:, None] * cols.sum(1)[None, :]
    return finite((total / count.clamp(min=1)).unsqueeze(1), amp)


# ----------------------------------------------------------------------------- LIME


@dataclass(repr=False)
class LimeFit(Result):
    """The local surrogates LIME fitted, one per sample, and the maps they paint (see :func:`lime_fit`).

    Attributes:
        maps: ``[N, 1, H, W]``, each superpixel's coefficient painted onto its pixels (what :func:`lime` returns).
        segments: ``[N, H, W]`` long, superpixel labels ``0..K_i - 1`` of each sample.
        coefficients: ``N`` tensors ``[K_i]``, the weight of each superpixel.
        intercept: ``[N]``, the surrogate's value with every superpixel replaced.
        score: ``[N]``, the model's score of the original image (probability for class targets).
        r2: ``[N]``, the surrogate's weighted R^2 on the perturbed samples.
    """

    maps: torch.Tensor
    segments: torch.Tensor
    coefficients: list[torch.Tensor]
    intercept: torch.Tensor
    score: torch.Tensor
    r2: torch.Tensor

    def scalars(self) -> dict[str, float | int]:
        """Images, mean superpixels per image, and the surrogates' fit: mean and lowest R^2."""
        return {"images": len(self.r2), "superpixels": float(np.mean([len(c) for c in self.coefficients])),
                "r2_mean": float(self.r2.mean()), "r2_min": float(self.r2.min())}

    def figure(self, *, max_images: int = 8):
        """Each image's superpixels (colours) beside the surrogate's weights (red: supports the score)."""
        from matplotlib import colormaps

        from ..viz.attribution import attribution_figure

        seg = self.segments[:max_images].cpu()
        colours = torch.from_numpy(colormaps["tab20"](np.arange(20))[:, :3]).float()
        tiles = colours[seg % 20].permute(0, 3, 1, 2)  # [N, 3, H, W]: a colour per superpixel
        titles = [f"{len(c)} superpixels, R² {float(r):.2f}" for c, r in zip(self.coefficients, self.r2)]
        return attribution_figure(tiles, {"lime": self.maps[:max_images].cpu()}, row_titles=titles[:max_images])


def superpixels(inputs: torch.Tensor, n_segments: int = 50, compactness: float = 10.0) -> torch.Tensor:
    """SLIC superpixels (Achanta et al. 2012) of each image, via ``skimage.segmentation.slic``.

    RGB images are segmented in Lab colour. Other channel counts (grey included) are compared
    on their ``[0, 1]``-rescaled values, so ``compactness`` is divided by 100 for them (Lab's
    lightness spans 0..100): the same ``compactness`` gives similarly regular superpixels.

    Args:
        inputs: ``[N, C, H, W]`` float pixels in ``[0, 1]``.
        n_segments: approximate number of superpixels (SLIC may return fewer or more).
        compactness: trade-off of colour adherence (small) against square shapes (large).

    Returns:
        ``[N, H, W]`` long labels from 0, on ``inputs.device``.

    Example:
        >>> seg = superpixels(x, n_segments=50)   # doctest: +SKIP
    """
    from skimage.segmentation import slic

    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
        got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise InputError(f"inputs: expected a float tensor [N, C, H, W], got {got}; add a batch axis with x[None]")
    positive_int("n_segments", n_segments)
    number("compactness", compactness, strict=True)
    images = inputs.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    lab = images.shape[-1] == 3
    out = []
    for img in images:
        grey = img.shape[-1] == 1
        seg = slic(img[..., 0] if grey else img, n_segments=n_segments, start_label=0,
                   compactness=compactness if lab else compactness / 100, channel_axis=None if grey else -1)
        out.append(torch.from_numpy(np.ascontiguousarray(seg, dtype=np.int64)))
    return torch.stack(out).to(inputs.device)


def _user_segments(segments: object, x: torch.Tensor) -> torch.Tensor:
    """User segmentations as ``[N, H, W]`` long on ``x.device``."""
    n, _, h, w = x.shape
    try:
        seg = torch.as_tensor(segments)
    except (TypeError, ValueError, RuntimeError):
        seg = None
    if seg is None or seg.dtype.is_floating_point or seg.dtype in (torch.bool, torch.complex64, torch.complex128) \
            or tuple(seg.shape) not in ((h, w), (n, h, w)):
        got = f"{seg.dtype} of shape {tuple(seg.shape)}" if seg is not None else type(segments).__name__
        raise InputError(f"segments: expected integer labels [N, H, W] = {[n, h, w]} or [H, W] = {[h, w]}, "
                         f"got {got}; compute them with superpixels(inputs)")
    return seg.to(x.device, torch.long).expand(n, h, w)


def _relabel(seg: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Labels made contiguous ``0..K_i - 1`` per sample, and each ``K_i``."""
    pairs = [torch.unique(s, return_inverse=True) for s in seg]
    return torch.stack([inverse for _, inverse in pairs]), [len(labels) for labels, _ in pairs]


def _segment_means(x: torch.Tensor, seg: torch.Tensor, kmax: int) -> torch.Tensor:
    """``x`` with every pixel replaced by its superpixel's mean colour, ``[N, C, H, W]``."""
    n, c, h, w = x.shape
    flat = (seg + kmax * torch.arange(n, device=x.device)[:, None, None]).flatten()  # labels unique across samples
    sums = x.new_zeros(n * kmax, c).index_add_(0, flat, x.permute(0, 2, 3, 1).reshape(-1, c))
    means = sums / torch.bincount(flat, minlength=n * kmax).clamp(min=1)[:, None].to(x)
    return means[flat].view(n, h, w, c).permute(0, 3, 1, 2)


def _sample_z(k: int, n_samples: int, seed: int, device: torch.device) -> torch.Tensor:
    """``[n_samples, k]`` bool: row 0 all ones (the original), then as in the paper the number of
    active superpixels uniform in ``1..k`` and which ones uniform among all such subsets.

    The empty vector is excluded: its cosine distance to the original is undefined.
    """
    g = generator(seed)
    active = torch.randint(1, k + 1, (n_samples - 1, 1), generator=g)
    ranks = torch.rand(n_samples - 1, k, generator=g).argsort(1).argsort(1)  # a uniform random order per row
    return torch.cat([torch.ones(1, k, dtype=torch.bool), ranks < active]).to(device)


def _kernel(z: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """``pi = exp(-d^2 / kernel_width^2)``, ``d`` the cosine distance of each row of ``z`` to all ones."""
    d = 1 - z.sum(1) / (z.norm(dim=1) * z.shape[1] ** 0.5)
    return torch.exp(-d**2 / kernel_width**2)


def _ridge(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted ridge regression with an unpenalised intercept, in closed form: ``(coef [K], intercept)``.

    Minimises ``sum_s pi_s (y_s - b - z_s . w)^2 + alpha |w|^2`` (sklearn's ``Ridge`` with
    ``sample_weight``): centre ``z`` and ``y`` on their pi-weighted means, then
    ``w = (Zc^T P Zc + alpha I)^-1 Zc^T P yc`` and ``b = mean(y) - mean(z) . w``.
    """
    z, y, p = z.double(), y.double(), weights.double()
    z_mean, y_mean = p @ z / p.sum(), p @ y / p.sum()
    zc, yc = z - z_mean, y - y_mean
    a = zc.T @ (p[:, None] * zc) + alpha * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    rhs = zc.T @ (p * yc)
    coef = torch.linalg.solve(a, rhs) if alpha > 0 else torch.linalg.pinv(a) @ rhs  # alpha=0 may be singular
    return coef, y_mean - z_mean @ coef


def _r2(z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, coef: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Weighted R^2 of the surrogate (as sklearn's ``r2_score``: 1 for a perfect fit of constant ``y``)."""
    y, p = y.double(), weights.double()
    residual = (p * (y - z.double() @ coef - b) ** 2).sum()
    spread = (p * (y - p @ y / p.sum()) ** 2).sum()
    if spread == 0:
        return torch.ones((), dtype=y.dtype, device=y.device) if residual == 0 else torch.zeros_like(residual)
    return 1 - residual / spread


def _check_lime(n_samples: object, baseline: object, kernel_width: object, alpha: object, n_segments: object) -> None:
    if positive_int("n_samples", n_samples) < 2:
        raise InputError(f"n_samples: expected an int >= 2 (the original and a perturbed copy), got {n_samples!r}")
    positive_int("n_segments", n_segments)
    number("kernel_width", kernel_width, strict=True)
    number("alpha", alpha)
    if not (isinstance(baseline, str) and baseline == "mean") and (
            isinstance(baseline, bool) or not isinstance(baseline, (int, float))):
        raise InputError(f"baseline: expected 'mean' (each superpixel's mean colour) or a float, got {baseline!r}")


def _fit(z: torch.Tensor, y: torch.Tensor, ks: list[int], seg: torch.Tensor, kernel_width: float,
         alpha: float) -> LimeFit:
    """One surrogate per sample, with maps ``[N, 1, H, W]`` that paint each coefficient on its superpixel."""
    n, _, kmax = z.shape
    painted, coefs, intercepts, r2s = y.new_zeros(n, kmax), [], [], []
    for i, k in enumerate(ks):
        zi, pi = z[i, :, :k].double(), _kernel(z[i, :, :k].double(), kernel_width)
        coef, b = _ridge(zi, y[i], pi, alpha)
        painted[i, :k] = coef.to(painted.dtype)
        coefs.append(coef.float())
        intercepts.append(b.float())
        r2s.append(_r2(zi, y[i], pi, coef, b).float())
    maps = painted.gather(1, seg.flatten(1)).view(n, 1, *seg.shape[1:])
    return LimeFit(maps, seg, coefs, torch.stack(intercepts), y[:, 0].clone(), torch.stack(r2s))


def lime_fit(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, n_samples: int = 1000,
             n_segments: int = 50, seed: int = 0, compactness: float = 10.0, baseline: str | float = "mean",
             kernel_width: float = 0.25, alpha: float = 1.0, segments: torch.Tensor | np.ndarray | None = None,
             batch_size: int | str | None = None, progress: bool = False, amp: bool | str = False) -> LimeFit:
    """LIME (Ribeiro, Singh & Guestrin 2016, "Why should I trust you?"): a weighted linear
    surrogate over superpixels, its coefficients painted back onto the pixels.

    Each image is cut into ``K`` superpixels (:func:`superpixels`, or ``segments``). Binary
    vectors ``z`` over them are drawn as in the paper: the number of active superpixels
    uniform in ``1..K``, then which ones uniformly; the first ``z`` is all ones (the original).
    (The ``lime`` package instead draws each bit Bernoulli(0.5).) A perturbed image keeps the
    superpixels with ``z = 1`` and fills the others with ``baseline``: ``"mean"`` (each
    superpixel's mean colour, the ``lime`` package's default) or a float. The model scores
    each: the softmax probability of the target class, as in the paper (raw values for a
    Unit or callable target). Then ``min_{w, b} sum_z pi(z) (f(z) - b - w . z)^2 + alpha |w|^2``
    in closed form, with ``pi(z) = exp(-d(z, 1)^2 / kernel_width^2)`` and ``d`` the cosine
    distance: the paper's kernel. (The ``lime`` package uses its square root, which equals
    ours with ``kernel_width * sqrt(2)``.) The ridge covers all superpixels, as the ``lime``
    package does by default (no K-LASSO selection).

    Every sample draws its ``z`` from a generator seeded with ``seed`` itself, so a batch gives
    the same maps as one sample at a time.

    Args:
        model: any module taking ``[0, 1]`` pixels.
        inputs: ``[N, C, H, W]``.
        target: see :mod:`underhood.core.targets` (default: each sample's predicted class).
        n_samples: perturbed images per sample, the original included (>= 2).
        n_segments, compactness: passed to :func:`superpixels` (unused with ``segments``).
        seed: seeds the draws of ``z``.
        baseline: ``"mean"`` or a float, the value of a switched-off superpixel.
        kernel_width: width of the proximity kernel on cosine distances in ``[0, 1]``.
        alpha: ridge penalty (the intercept is not penalised).
        segments: precomputed integer labels ``[N, H, W]`` or ``[H, W]`` (one for all).
        batch_size: copies per forward pass; ``None`` measures the fastest.
        progress: show a progress bar.
        amp: forward passes in float16 autocast (``"bf16"``: bfloat16); scores, fit and maps are
            float32 (see :mod:`underhood.attribution.base`).

    Returns:
        A :class:`LimeFit`: ``maps`` ``[N, 1, H, W]`` (signed superpixel weights, what :func:`lime`
        returns), the segments, each surrogate's coefficients, intercept and weighted R^2.

    Example:
        >>> fit = lime_fit(model, x, n_samples=1000)   # doctest: +SKIP
        >>> fit.maps.shape, fit.r2                     # doctest: +SKIP
    """
    x, amp = prepare(model, inputs), check_amp(amp)
    _check_lime(n_samples, baseline, kernel_width, alpha, n_segments)
    n, c, h, w = x.shape
    seg, ks = _relabel(_user_segments(segments, x) if segments is not None
                       else superpixels(x, n_segments, compactness))
    single = [i for i, k in enumerate(ks) if k < 2]
    if single:  # one superpixel: the surrogate has nothing to compare, the map is all zero
        fix = ("give segments with several labels" if segments is not None else
               f"raise n_segments (now {n_segments}) or compactness (now {compactness:g})")
        warnings.warn(f"lime: image {single[0]} segments into a single superpixel, so its map is all zero; {fix}",
                      UserWarning, stacklevel=2)
    z = torch.zeros(n, n_samples, max(ks), dtype=torch.bool, device=x.device)
    for i, k in enumerate(ks):
        z[i, :, :k] = _sample_z(k, n_samples, seed, x.device)
    per_sample = isinstance(baseline, str)
    fill = _segment_means(x, seg, max(ks)) if per_sample else x.new_tensor(float(baseline))
    flat = seg.flatten(1)

    def make(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        j = torch.arange(part.start, part.stop, device=x.device)
        index = j // n_samples
        keep = z[index, j % n_samples].gather(1, flat[index]).view(-1, 1, h, w)
        return torch.where(keep, _rows(x, index, part, n_samples),
                           _rows(fill, index, part, n_samples) if per_sample else fill), index

    with frozen(model):
        fixed, _ = fixed_target(model, x, target, amp=amp)
        y = score_copies(model, make, n * n_samples, fixed, batch_size=batch_size, shape=(c, h, w),
                         kind="probability", progress=progress, desc="lime", amp=amp).to(x.device).view(n, n_samples)
    return _fit(z, finite(y, amp), ks, seg, kernel_width, alpha)


def lime(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, n_samples: int = 1000,
         n_segments: int = 50, seed: int = 0, compactness: float = 10.0, baseline: str | float = "mean",
         kernel_width: float = 0.25, alpha: float = 1.0, segments: torch.Tensor | np.ndarray | None = None,
         batch_size: int | str | None = None, progress: bool = False,
         return_weights: bool = False, amp: bool | str = False) -> torch.Tensor:
    """LIME's maps: ``lime_fit(...).maps``, ``[N, 1, H, W]`` signed superpixel weights.

    See :func:`lime_fit` for the method and its options, and for the fitted surrogates
    (``return_weights=True``, which returned ``(maps, LimeFit)``, is deprecated).

    Example:
        >>> heat = lime(model, x, n_samples=1000, n_segments=50, seed=0)   # doctest: +SKIP
    """
    fit = lime_fit(model, inputs, target, n_samples=n_samples, n_segments=n_segments, seed=seed,
                   compactness=compactness, baseline=baseline, kernel_width=kernel_width, alpha=alpha,
                   segments=segments, batch_size=batch_size, progress=progress, amp=amp)
    if return_weights:
        deprecated("lime(..., return_weights=True)",
                   "underhood.attribution.lime_fit(...), which returns a LimeFit with .maps")
        return fit.maps, fit
    return fit.maps
