"""How far to trust an attribution map: localisation, faithfulness and sanity checks.

Every metric reads a map through :func:`heatmap`, one non-negative importance per pixel:
``[N, 1, H, W]`` maps (CAM family, occlusion, LIME) keep their positive evidence,
``clamp(min=0)``; ``[N, C, H, W]`` pixel attributions (saliency family) become
``sum_c |value|``.

- localisation against ground-truth masks: :func:`pointing_game`, :func:`energy_in_mask`,
  :func:`mask_shares` (object vs spurious marker);
- faithfulness: :func:`deletion_curve`, :func:`insertion_curve` (Petsiuk et al. 2018, RISE) and
  their areas :func:`deletion_auc`, :func:`insertion_auc`; :func:`completeness`, the gap of
  integrated gradients' completeness axiom;
- sanity checks (Adebayo et al. 2018): :func:`model_randomization`,
  :func:`data_randomization`, with the similarities :func:`spearman` and :func:`ssim`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import choice, number, positive_int
from ..core.errors import InputError
from ..core.hooks import frozen, trace
from ..core.layers import named_layers, resolve
from ..core.randomize import randomize, randomized_copy  # noqa: F401  (randomized_copy: public here too)
from ..core.results import Result, Summary
from ..core.stats import spearman as rank_correlation
from ..core.targets import Target
from .base import deprecated, fixed_target, prepare, score_copies

Method = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------- maps and masks

def heatmap(maps: torch.Tensor) -> torch.Tensor:
    """The non-negative importance ``[N, H, W]`` that every metric here reads.

    ``[N, 1, H, W]`` maps -> ``clamp(min=0)``: the positive evidence (CAM maps are already
    >= 0; an occlusion map's positive part is the score drop). ``[N, C, H, W]`` pixel
    attributions with ``C > 1`` -> ``sum_c |maps|``, the magnitude convention of saliency maps.

    Example:
        >>> heatmap(torch.tensor([[[[-1.0, 2.0]]]]))
        tensor([[[0., 2.]]])
    """
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise InputError(f"maps: expected an attribution tensor [N, C, H, W] or [N, 1, H, W], got {shape}; "
                         "add the channel axis with maps[:, None]")
    maps = maps.detach().float()
    return maps[:, 0].clamp(min=0) if maps.shape[1] == 1 else maps.abs().sum(1)


def _masks(masks: torch.Tensor, heat: torch.Tensor, name: str = "masks") -> torch.Tensor:
    """``masks`` ([N, 1, H, W] or [N, H, W]) as a bool ``[N, H, W]`` on the heatmap's device."""
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"{name}: expected a bool tensor [N, 1, H, W], got {type(masks).__name__}")
    m = masks[:, 0] if masks.ndim == 4 and masks.shape[1] == 1 else masks
    if m.shape != heat.shape:
        raise InputError(f"{name}: expected shape [{heat.shape[0]}, 1, {heat.shape[1]}, {heat.shape[2]}] to match "
                         f"the maps, got {tuple(masks.shape)}; give one mask per map at the maps' resolution")
    return m.to(heat.device) != 0


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, *, tolerance: int = 0) -> torch.Tensor:
    """Whether each map's maximum falls on the object (Zhang et al. 2016, excitation backprop).

    A hit when some maximal pixel of :func:`heatmap` lies within ``tolerance`` pixels
    (Euclidean: the mask is dilated by a disk of that radius) of the mask; the paper used
    15 px on 224-px images. Ties: any maximal pixel inside counts. An all-zero map is a miss.

    Args:
        maps: ``[N, C, H, W]`` or ``[N, 1, H, W]`` attributions.
        masks: ``[N, 1, H, W]`` bool ground truth (e.g. ``ImageSet.masks``).
        tolerance: dilation radius in pixels, >= 0.

    Returns:
        ``[N]`` bool, on the maps' device.

    Example:
        >>> hits = pointing_game(gradcam(model, x), data.masks, tolerance=4)  # doctest: +SKIP
        >>> hits.float().mean()                                                # doctest: +SKIP
    """
    heat = heatmap(maps)
    inside = _masks(masks, heat)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise InputError(f"tolerance: expected a non-negative int of pixels, got {tolerance!r}")
    if tolerance > 0:
        r = torch.arange(-tolerance, tolerance + 1, device=heat.device, dtype=torch.float32)
        disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= tolerance**2).float()[None, None]
        inside = F.conv2d(inside[:, None].float(), disk, padding=tolerance)[:, 0] > 0
    top = heat.flatten(1).amax(1)[:, None, None]
    return ((heat == top) & (top > 0) & inside).flatten(1).any(1)


def energy_in_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of the heatmap's mass inside the mask (Wang et al. 2020, Score-CAM's energy pointing game).

    ``E = sum_{p in mask} h_p / sum_p h_p`` with ``h = heatmap(maps)``; 0 for an all-zero map.

    Args:
        maps: ``[N, C, H, W]`` or ``[N, 1, H, W]`` attributions.
        masks: ``[N, 1, H, W]`` bool.

    Returns:
        ``[N]`` float in ``[0, 1]``.

    Example:
        >>> energy_in_mask(gradcam(model, x), data.masks).mean()  # doctest: +SKIP
    """
    heat = heatmap(maps)
    inside = _masks(masks, heat)
    total = heat.flatten(1).sum(1)
    part = (heat * inside).flatten(1).sum(1)
    return torch.where(total > 0, part / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def mask_shares(maps: torch.Tensor, masks: torch.Tensor,
                marker_masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(energy on the object [N], energy on the marker [N])``, for the "shortcut" (Clever Hans) test.

    A model that reads the spurious marker of ``shapes(..., spurious=...)`` puts its evidence on
    ``marker_masks`` rather than on the object's ``masks``. See :func:`energy_in_mask`.

    Example:
        >>> data = underhood.datasets.shapes(16, spurious=1.0)                      # doctest: +SKIP
        >>> obj, marker = mask_shares(gradcam(model, data.images), data.masks, data.marker_masks)  # doctest: +SKIP
    """
    if marker_masks is None:
        raise InputError("marker_masks: got None; generate the data with shapes(..., spurious=1.0)")
    return energy_in_mask(maps, masks), energy_in_mask(maps, marker_masks)


# ---------------------------------------------------------------------------- deletion / insertion

def _band(n: int, k: torch.Tensor) -> torch.Tensor:
    """``[n, n - len(k) + 1]`` matrix ``B`` such that ``x @ B`` filters the rows of ``x`` with ``k`` (valid part).

    Separable filtering as two small matmuls is much faster on CPU than a depthwise conv2d.
    """
    out = n - len(k) + 1
    band = k.new_zeros(n, out)
    cols = torch.arange(out, device=k.device).expand(len(k), out)
    band[cols + torch.arange(len(k), device=k.device)[:, None], cols] = k[:, None]
    return band


def _smooth(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Valid separable filtering of the last two axes of ``x`` with the 1-D kernel ``k`` (both axes)."""
    return _band(x.shape[-2], k).T @ x @ _band(x.shape[-1], k)


def _gaussian_kernel(sigma: float, radius: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, device=like.device, dtype=like.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(inputs: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur per channel: kernel radius ``int(3 sigma + 0.5)``, reflect padding (scipy's "mirror")."""
    number("blur_sigma", sigma, strict=True)  # pixels
    r = max(0, min(int(3 * sigma + 0.5), inputs.shape[2] - 1, inputs.shape[3] - 1))
    padded = F.pad(inputs, (r, r, r, r), mode="reflect") if r else inputs
    return _smooth(padded, _gaussian_kernel(float(sigma), r, inputs))


def _baseline(inputs: torch.Tensor, baseline: str | float | torch.Tensor, sigma: float) -> torch.Tensor:
    """The baseline image(s), broadcast to ``inputs``' shape."""
    if isinstance(baseline, str) and baseline in ("zeros", "blur"):
        return torch.zeros_like(inputs) if baseline == "zeros" else _blur(inputs, sigma)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    if isinstance(baseline, torch.Tensor):
        try:
            ok = torch.broadcast_shapes(baseline.shape, inputs.shape) == inputs.shape
        except RuntimeError:
            ok = False
        if ok:
            return baseline.detach().to(inputs.device, inputs.dtype).expand_as(inputs)
        raise InputError(f"baseline: a tensor baseline must broadcast to the inputs {tuple(inputs.shape)}, "
                         f"got {tuple(baseline.shape)}")
    raise InputError(f"baseline: expected 'zeros', 'blur', a number or a tensor like the inputs, got {baseline!r}")


def _curves(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target, *, steps: int,
            baseline: str | float | torch.Tensor, blur_sigma: float, batch_size: int | str | None,
            progress: bool, insert: bool) -> torch.Tensor:
    """Probability curves ``[N, steps + 1]``: top-k pixels from the baseline (deletion) or the image (insertion)."""
    positive_int("steps", steps)  # the number of curve intervals
    x = prepare(model, inputs)
    heat = heatmap(maps).to(x.device)
    n, hw = x.shape[0], x.shape[2] * x.shape[3]
    if heat.shape != (n, *x.shape[2:]):
        raise InputError(f"maps: expected [{n}, C, {x.shape[2]}, {x.shape[3]}] to match the inputs, "
                         f"got {tuple(maps.shape)}; compute the maps on these inputs")
    base = _baseline(x, baseline, blur_sigma)
    top, rest = (x, base) if insert else (base, x)
    order = heat.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(hw, device=x.device).expand(n, hw))
    i = torch.arange(steps + 1, device=x.device)
    k = torch.div(2 * i * hw + steps, 2 * steps, rounding_mode="floor")  # round(i HW / steps), halves up

    def make(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        j = torch.arange(part.start, part.stop, device=x.device)
        sample, step = j // (steps + 1), j % (steps + 1)
        chosen = (rank[sample] < k[step][:, None]).view(-1, 1, *x.shape[2:])
        return torch.where(chosen, top[sample], rest[sample]), sample

    with frozen(model):
        fixed, _ = fixed_target(model, x, target)
        s = score_copies(model, make, n * (steps + 1), fixed, batch_size=batch_size, shape=tuple(x.shape[1:]),
                         kind="probability", progress=progress, desc="insertion" if insert else "deletion")
    return s.view(n, steps + 1).cpu()


def curves_for_methods(model: nn.Module, inputs: torch.Tensor, maps: Sequence[torch.Tensor], target: Target = None,
                       *, steps: int = 50, blur_sigma: float = 5.0, batch_size: int | str | None = None,
                       progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves ``([M, N, steps + 1], [M, N, steps + 1])`` of ``M`` maps of the same inputs.

    The same numbers as :func:`deletion_curve` (zeros baseline) and :func:`insertion_curve` (blurred
    baseline) called once per map, at a fraction of their passes: the copies of every map go through
    the model together, and the two ends of each curve (the image, the black image, the blurred image)
    do not depend on the map, so they are scored once per image instead of four times per map.
    """
    positive_int("steps", steps)  # the number of curve intervals
    x = prepare(model, inputs)
    n, hw = x.shape[0], x.shape[2] * x.shape[3]
    heats = [heatmap(m).to(x.device) for m in maps]
    for m, h in zip(maps, heats):
        if h.shape != (n, *x.shape[2:]):
            raise InputError(f"maps: expected [{n}, C, {x.shape[2]}, {x.shape[3]}] to match the inputs, "
                             f"got {tuple(m.shape)}; compute the maps on these inputs")
    blurred, k_all = _blur(x, blur_sigma), len(heats) * n
    order = torch.cat(heats).flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(hw, device=x.device).expand(k_all, hw))
    i = torch.arange(1, steps, device=x.device)  # the inner steps; 0 and steps are the ends
    k = torch.div(2 * i * hw + steps, 2 * steps, rounding_mode="floor")  # round(i HW / steps), halves up
    with frozen(model):
        fixed, _ = fixed_target(model, x, target)
        shape, out = tuple(x.shape[1:]), []
        ends = score_copies(model, lambda part: (torch.cat([x, torch.zeros_like(x), blurred])[part],
                                                 torch.arange(3 * n, device=x.device)[part] % n),
                            3 * n, fixed, batch_size=batch_size, shape=shape, kind="probability").view(3, n)
        for insert, (top, rest) in ((False, (torch.zeros_like(x), x)), (True, (x, blurred))):
            def make(part: slice, top=top, rest=rest) -> tuple[torch.Tensor, torch.Tensor]:
                j = torch.arange(part.start, part.stop, device=x.device)
                row, step = j // len(i), j % len(i)
                chosen = (rank[row] < k[step][:, None]).view(-1, 1, *x.shape[2:])
                return torch.where(chosen, top[row % n], rest[row % n]), row % n

            inner = score_copies(model, make, k_all * len(i), fixed, batch_size=batch_size, shape=shape,
                                 kind="probability", progress=progress,
                                 desc="insertion" if insert else "deletion").view(len(heats), n, len(i))
            first, last = (ends[2], ends[0]) if insert else (ends[0], ends[1])
            out.append(torch.cat([first.expand(len(heats), n)[..., None], inner, last.expand(len(heats), n)[..., None]],
                                 dim=2).cpu())
    return out[0], out[1]


@dataclass(repr=False)
class CurveResult(Result):
    """A deletion or insertion curve per image, and the area under it (see :func:`deletion_curve`).

    Attributes:
        kind: ``"deletion"`` or ``"insertion"``.
        auc: ``[N]``, the area under each curve (deletion: lower = a more faithful map;
            insertion: higher).
        curves: ``[N, steps + 1]``, the target's probability at each step.
        fractions: ``[steps + 1]``, the curves' x axis ``i / steps``: the share of pixels removed
            (deletion) or restored (insertion), ``round(i HW / steps)`` pixels exactly.
    """

    kind: str
    auc: torch.Tensor
    curves: torch.Tensor
    fractions: torch.Tensor

    def scalars(self) -> dict[str, float | int | str]:
        return {"kind": self.kind, "auc": float(self.auc.mean()), "images": len(self.auc),
                "steps": len(self.fractions) - 1}

    def figure(self, *, max_images: int = 8):
        """Each image's curve (up to ``max_images``) and their mean, against the fraction of pixels."""
        from ..viz.attribution import curves_figure

        lines = {f"image {i}": {self.kind: c.tolist()} for i, c in enumerate(self.curves[:max_images])}
        lines["mean"] = {self.kind: self.curves.mean(0).tolist()}
        return curves_figure(lines, kinds=(self.kind,))


def _curve_result(curves: torch.Tensor, kind: str) -> CurveResult:
    steps = curves.shape[1] - 1
    auc = torch.trapezoid(curves, dx=1.0 / steps, dim=1)
    return CurveResult(kind, auc, curves, torch.arange(steps + 1, dtype=curves.dtype) / steps)


def deletion_curve(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                   steps: int = 50, baseline: str | float | torch.Tensor = "zeros", blur_sigma: float = 5.0,
                   batch_size: int | str | None = None, progress: bool = False) -> CurveResult:
    """The deletion curve (Petsiuk et al. 2018, RISE) and the area under it: lower = a more faithful map.

    Pixels are ranked by decreasing :func:`heatmap` (ties by raster index). Step ``i`` of
    ``0..steps`` replaces the top ``k_i = round(i HW / steps)`` pixels (all channels) by the
    baseline and scores the target's softmax probability ``p_i`` (class fixed on the clean
    input; a Unit or callable target is scored raw). ``AUC = sum_i (p_i + p_{i+1}) / (2 steps)``,
    the trapezoid over ``x = i / steps`` in ``[0, 1]``. The ``N (steps + 1)`` copies are built
    lazily, one batch at a time.

    Args:
        model: classifier taking ``[0, 1]`` pixels.
        inputs: ``[N, C, H, W]``.
        maps: ``[N, C', H, W]`` attributions of ``inputs``.
        target: as everywhere (``None`` = predicted class).
        steps: number of curve intervals.
        baseline: ``"zeros"``, ``"blur"`` (Gaussian blur of the image, ``blur_sigma`` px,
            kernel radius ``int(3 sigma + 0.5)``, reflect padding), a number, or a tensor
            broadcastable to ``inputs``.
        batch_size: copies per forward pass; ``None`` measures the fastest.
        progress: show a progress bar.

    Returns:
        A :class:`CurveResult` on CPU: ``auc [N]``, ``curves [N, steps + 1]``, ``fractions [steps + 1]``.

    Example:
        >>> res = deletion_curve(model, x, saliency(model, x), steps=50)   # doctest: +SKIP
        >>> res.auc.mean(), res.curves.shape                               # doctest: +SKIP
    """
    curves = _curves(model, inputs, maps, target, steps=steps, baseline=baseline, blur_sigma=blur_sigma,
                     batch_size=batch_size, progress=progress, insert=False)
    return _curve_result(curves, "deletion")


def insertion_curve(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                    steps: int = 50, baseline: str | float | torch.Tensor = "blur", blur_sigma: float = 5.0,
                    batch_size: int | str | None = None, progress: bool = False) -> CurveResult:
    """The insertion curve (Petsiuk et al. 2018, RISE) and the area under it: higher = a more faithful map.

    As :func:`deletion_curve`, but step ``i`` starts from the baseline (default: the blurred
    image) and puts the top ``k_i`` original pixels back, so ``p_0`` is the baseline's
    probability and ``p_steps`` the clean one. Arguments and result as :func:`deletion_curve`.

    Example:
        >>> res = insertion_curve(model, x, gradcam(model, x))   # doctest: +SKIP
    """
    curves = _curves(model, inputs, maps, target, steps=steps, baseline=baseline, blur_sigma=blur_sigma,
                     batch_size=batch_size, progress=progress, insert=True)
    return _curve_result(curves, "insertion")


def _area(res: CurveResult, return_curves: bool, name: str) -> torch.Tensor:
    if not return_curves:
        return res.auc
    deprecated(f"{name}_auc(..., return_curves=True)",
               f"underhood.attribution.metrics.{name}_curve(...), which returns .auc and .curves", depth=2)
    return res.auc, res.curves


def deletion_auc(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                 steps: int = 50, baseline: str | float | torch.Tensor = "zeros", blur_sigma: float = 5.0,
                 batch_size: int | str | None = None, progress: bool = False,
                 return_curves: bool = False) -> torch.Tensor:
    """Area under the deletion curve ``[N]`` on CPU: lower = a more faithful map.

    ``deletion_curve(...).auc``; see :func:`deletion_curve` for the definition and arguments, and
    for the curves themselves (``return_curves=True``, which returned ``(auc, curves)``, is deprecated).

    Example:
        >>> deletion_auc(model, x, saliency(model, x), steps=50).mean()  # doctest: +SKIP
    """
    res = deletion_curve(model, inputs, maps, target, steps=steps, baseline=baseline, blur_sigma=blur_sigma,
                         batch_size=batch_size, progress=progress)
    return _area(res, return_curves, "deletion")


def insertion_auc(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                  steps: int = 50, baseline: str | float | torch.Tensor = "blur", blur_sigma: float = 5.0,
                  batch_size: int | str | None = None, progress: bool = False,
                  return_curves: bool = False) -> torch.Tensor:
    """Area under the insertion curve ``[N]`` on CPU: higher = a more faithful map.

    ``insertion_curve(...).auc``; see :func:`insertion_curve` (``return_curves=True`` is deprecated).

    Example:
        >>> insertion_auc(model, x, gradcam(model, x)).mean()  # doctest: +SKIP
    """
    res = insertion_curve(model, inputs, maps, target, steps=steps, baseline=baseline, blur_sigma=blur_sigma,
                          batch_size=batch_size, progress=progress)
    return _area(res, return_curves, "insertion")


def completeness(model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor, target: Target = None, *,
                 baseline: float | torch.Tensor = 0.0) -> torch.Tensor:
    """The completeness gap of a map (Sundararajan et al. 2017): ``sum(maps) - (f(x) - f(x'))`` per sample.

    Integrated gradients satisfy ``sum IG = score(x) - score(x')`` as their Riemann sum converges,
    so the gap measures its error (it shrinks as ``steps`` grows); for other maps it says how far
    they are from distributing the score. ``score`` is the target's logit (the class fixed on the
    clean inputs; a Unit or callable target is scored raw), ``x'`` the ``baseline`` the map was
    computed from (a number or a tensor broadcastable to ``inputs``).

    Returns:
        ``[N]``, in the score's units, on the inputs' device.

    Example:
        >>> ig = integrated_gradients(model, x, steps=64)                 # doctest: +SKIP
        >>> completeness(model, x, ig).abs().max()                        # doctest: +SKIP
    """
    x = prepare(model, inputs)
    if not isinstance(maps, torch.Tensor) or maps.shape[0] != x.shape[0]:
        raise InputError(f"maps: expected one map per input ({x.shape[0]}), got "
                         f"{tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__}")
    if isinstance(baseline, str):
        raise InputError(f"baseline: expected a number or a tensor like the inputs, got {baseline!r}")
    base = _baseline(x, baseline, 1.0)
    with frozen(model):
        fixed, clean = fixed_target(model, x, target)
        _, at_baseline = fixed_target(model, base, fixed)
    return maps.detach().to(x.device).flatten(1).sum(1) - (clean - at_baseline)


# ---------------------------------------------------------------------------- similarities

def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per sample: Pearson correlation of the ranks (ties averaged).

    ``rho = cov(R(a), R(b)) / (std R(a) std R(b))`` over all entries of each sample. A constant
    sample gives NaN (as scipy.stats.spearmanr).

    Args:
        a, b: ``[N, ...]`` with equal shapes.

    Returns:
        ``[N]`` float in ``[-1, 1]``.

    Example:
        >>> spearman(torch.tensor([[1.0, 2, 3]]), torch.tensor([[1.0, 5, 9]]))
        tensor([1.])
    """
    return rank_correlation(a, b).float()


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Mean structural similarity per sample (Wang et al. 2004), on maps as they are given.

    ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))`` with
    local statistics under an 11x11 Gaussian window (sigma 1.5, population covariances),
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = data_range``, averaged over the positions
    where the window fits (as ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``). Maps smaller than 11 px get the largest odd
    window that fits.

    Args:
        a, b: ``[N, H, W]`` or ``[N, 1, H, W]`` maps, equal shapes.
        data_range: ``L``, the value range (1 for maps min-max normalised to ``[0, 1]``).

    Returns:
        ``[N]`` float, 1 for identical maps.

    Example:
        >>> float(ssim(torch.rand(1, 16, 16).expand(2, -1, -1), torch.rand(2, 16, 16))[0]) < 1  # doctest: +SKIP
    """
    if a.shape != b.shape or a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[1] != 1):
        raise InputError(f"b: expected two equal [N, H, W] maps, got {tuple(a.shape)} and {tuple(b.shape)}")
    x = a.detach().reshape(a.shape[0], 1, *a.shape[-2:]).double()
    y = b.detach().to(a.device).reshape_as(x).double()
    r = min(5, (min(x.shape[-2:]) - 1) // 2)
    stack = torch.cat([x, y, x * x, y * y, x * y], 1)  # [N, 5, H, W]: local moments in one pass
    mu = _smooth(stack, _gaussian_kernel(1.5, r, stack))
    mx, my = mu[:, 0], mu[:, 1]
    vx, vy, cxy = mu[:, 2] - mx * mx, mu[:, 3] - my * my, mu[:, 4] - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


def _minmax(h: torch.Tensor) -> torch.Tensor:
    """Each sample of ``[N, H, W]`` scaled to ``[0, 1]``; a constant sample becomes all zeros."""
    lo = h.flatten(1).amin(1)[:, None, None]
    span = h.flatten(1).amax(1)[:, None, None] - lo
    return torch.where(span > 0, (h - lo) / span.clamp(min=1e-30), torch.zeros_like(h))


# ---------------------------------------------------------------------------- sanity checks

class _StageTable(Summary):
    """The table of :meth:`RandomizationResult.summary`; indexing it by a stage (the old dict) warns."""

    def _old(self) -> dict:
        warnings.warn("RandomizationResult.summary() is a text table now; use means() for the per-stage "
                      "numbers", DeprecationWarning, stacklevel=3)
        return self._values


@dataclass(repr=False)
class RandomizationResult(Result):
    """Maps of one method across model stages, and their similarity to the original maps.

    Attributes:
        stages: ``"original"``, then each stage's name (the layer randomised last, cumulatively).
        maps: one ``[N, C, H, W]`` tensor per stage, on CPU.
        spearman: ``[S, N]`` rank correlation with the original maps (1 at stage 0).
        ssim: ``[S, N]`` SSIM of min-max normalised heatmaps with the original ones (1 at stage 0).
        method: the attribution method's name (``""`` when unknown).
    """

    stages: list[str]
    maps: list[torch.Tensor]
    spearman: torch.Tensor
    ssim: torch.Tensor
    method: str = ""

    def means(self) -> dict[str, dict[str, float]]:
        """Stage -> ``{"spearman": mean, "ssim": mean}`` over samples (NaNs from constant maps ignored)."""
        return {stage: {"spearman": float(self.spearman[i].nanmean()), "ssim": float(self.ssim[i].nanmean())}
                for i, stage in enumerate(self.stages)}

    def scalars(self) -> dict[str, float | int | str]:
        """The method, and the similarities left at the last stage."""
        last = self.means()[self.stages[-1]]
        return {"method": self.method, "last_stage": self.stages[-1], "last_spearman": last["spearman"],
                "last_ssim": last["ssim"]}

    def table(self) -> str:
        """Mean similarities as aligned text, one stage per line."""
        width = max(len(s) for s in self.stages)
        rows = [f"{'stage':<{width}}  spearman    ssim"]
        rows += [f"{s:<{width}}  {v['spearman']:8.3f}  {v['ssim']:6.3f}" for s, v in self.means().items()]
        return "\n".join(rows)

    def summary(self) -> Summary:
        """:meth:`table` (indexing it by a stage, the old dict form of :meth:`means`, warns)."""
        return _StageTable(self.table(), self.means())

    def figure(self, index: int = 0):
        """Sample ``index``'s map at every stage, left to right (the sanity-check strip)."""
        from ..viz.attribution import strips_figure

        name = self.method or "maps"
        return strips_figure(None, {name: [m[index] for m in self.maps]}, self.stages)


def _resolve_method(method: str | Method) -> Method:
    if isinstance(method, str):
        from .registry import get  # imported late so that metrics loads without every method

        return get(method)
    if not callable(method):
        raise InputError(f"method: expected an attribution function or its name (e.g. 'saliency'), "
                         f"got {type(method).__name__}")
    return method


def _run(method: Method, model: nn.Module, x: torch.Tensor, target: Target, options: dict) -> torch.Tensor:
    """The method's maps, checked and detached to CPU."""
    out = method(model, x, target, **options)
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != x.shape[0] \
            or out.shape[2:] != x.shape[2:]:
        raise InputError(f"method: expected maps [N, C, H, W] at the inputs' resolution, got "
                         f"{getattr(out, 'shape', type(out).__name__)}; pass a pixel or map attribution method")
    return out.detach().float().cpu()


def similarities(ref: torch.Tensor, maps: torch.Tensor,
                 similarity_on: str = "abs") -> tuple[torch.Tensor, torch.Tensor]:
    """``(spearman [N], ssim [N])`` of ``maps`` against ``ref``, as the sanity checks compare them.

    Spearman of ``sum_c |maps|`` (``"abs"``) or ``sum_c maps`` (``"signed"``); SSIM of the
    min-max normalised :func:`heatmap`.
    """
    reduce = (lambda m: m.abs().sum(1)) if similarity_on == "abs" else (lambda m: m.sum(1))
    return (spearman(reduce(ref), reduce(maps)),
            ssim(_minmax(heatmap(ref)), _minmax(heatmap(maps))))


def _name(method: str | Method) -> str:
    return method if isinstance(method, str) else getattr(method, "__name__", "")


def _result(stages: list[str], maps: list[torch.Tensor], similarity_on: str, method: str) -> RandomizationResult:
    sims = [similarities(maps[0], m, similarity_on) for m in maps]
    return RandomizationResult(stages, maps, torch.stack([s[0] for s in sims]), torch.stack([s[1] for s in sims]),
                               method)


def _forward_order(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Layer name -> index of its first call in one forward pass (layers never called are absent)."""
    order: dict[str, int] = {}
    for name in trace(model, x[:1]).entered:
        order.setdefault(name, len(order))
    return order


def _stages(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None) -> list[str]:
    """Layers to randomise, from the output side down (reverse order of their first forward call)."""
    order = _forward_order(model, x)
    owned = {n: m for n, m in named_layers(model).items() if any(True for _ in m.parameters(recurse=False))}
    if layers is None:
        names = [n for n in owned if n in order]
    else:
        names = list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
        for n in names:
            if not any(True for _ in resolve(model, n).parameters()):
                raise InputError(f"layers: layer {n!r} has no parameters to randomise; pick a Conv2d, Linear, "
                                 "BatchNorm or a block containing some")
            if n not in order:
                raise InputError(f"layers: layer {n!r} does not run in forward, so randomising it changes nothing")
    return sorted(names, key=lambda n: -order[n])


def _fix_target(model: nn.Module, x: torch.Tensor, target: Target) -> Target:
    with frozen(model):
        fixed, _ = fixed_target(model, x, target)
    return fixed


def model_randomization(model: nn.Module, inputs: torch.Tensor, method: str | Method, target: Target = None, *,
                        seed: int = 0, layers: Sequence[str] | None = None, similarity_on: str = "abs",
                        by: str = "layer", **options) -> RandomizationResult:
    """Cascading model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

    On a deep copy of ``model`` (the model itself is untouched), layers are re-initialised one
    after another from the output side down, cumulatively, and ``method`` recomputes its maps
    after each, on the same inputs and for the classes the ORIGINAL model predicts (or
    ``target`` as fixed on it). A map that stays similar to the original while the weights it
    should explain are destroyed does not explain the model.

    Default stages: every sub-module that directly owns parameters and runs in forward,
    BatchNorm included. Adebayo et al. re-initialised every variable of each block, so a fully
    randomised model keeps no learned quantity; a BatchNorm is re-initialised as a freshly built
    one is (identity affine, running statistics reset), since its learned per-channel scale
    and shift are weights too. Pass ``layers`` (names, blocks allowed) to randomise fewer,
    coarser stages, e.g. only convolutions, or ``by="block"``: one stage per weight layer (a
    convolution or linear layer) together with the layers without a weight matrix that follow it in
    forward order up to the next one (its BatchNorm), named after the weight layer; the last stage
    is the same fully randomised model. Each layer's randomisation is seeded from
    ``(seed, name)`` under a forked RNG: deterministic, and the global RNG is not disturbed.

    Similarities of each stage's maps to the original ones, per sample: :func:`spearman`
    of ``sum_c |maps|`` (``similarity_on="abs"``) or of ``sum_c maps`` (``"signed"``), both
    reported by Adebayo et al.; and :func:`ssim` of the min-max normalised :func:`heatmap`.

    Args:
        model: the trained model.
        inputs: ``[N, C, H, W]``.
        method: an attribution function ``method(model, inputs, target, **options)`` or its name.
        target: as everywhere; fixed on the original model.
        seed: randomisation seed.
        layers: layer names to randomise (default: see above), in any order.
        similarity_on: ``"abs"`` or ``"signed"``, for the rank correlation.
        by: ``"layer"`` (one stage per layer) or ``"block"`` (see above).
        **options: passed to ``method``.

    Returns:
        A :class:`RandomizationResult` with ``len(stages) = 1 + number of layers``.

    Example:
        >>> res = model_randomization(model, x, "gradcam")  # doctest: +SKIP
        >>> print(res.summary())                             # doctest: +SKIP
    """
    choice("similarity_on", similarity_on, ("abs", "signed"))
    choice("by", by, ("layer", "block"))
    label, method = _name(method), _resolve_method(method)
    x = prepare(model, inputs)
    fixed = _fix_target(model, x, target)
    maps = [_run(method, model, x, fixed, options)]
    try:
        twin = copy.deepcopy(model)
    except Exception as exc:  # any failure to copy means the same to the user
        raise InputError(f"model: cannot deep-copy {type(model).__name__} ({exc}); the test needs a copy to "
                         "randomise") from exc
    layer_of = named_layers(twin)
    names = _stages(twin, x, layers)
    groups = _blocks(names, layer_of) if by == "block" else [[n] for n in names]
    for group in groups:
        for name in group:
            randomize(layer_of[name], name, seed)
        maps.append(_run(method, twin, x, fixed, options))
    return _result(["original", *(g[0] for g in groups)], maps, similarity_on, label)


def _blocks(names: Sequence[str], layer_of: dict[str, nn.Module]) -> list[list[str]]:
    """``names`` (output side first) grouped into blocks: a layer owning a weight matrix (ndim >= 2), then the
    layers after it in forward order that own none; the groups output side first, each led by its weight layer."""
    groups: list[list[str]] = []
    for name in reversed(names):  # forward order
        if not groups or any(p.ndim >= 2 for p in layer_of[name].parameters(recurse=False)):
            groups.append([name])
        else:
            groups[-1].append(name)
    return groups[::-1]


def data_randomization(model: nn.Module, random_model: nn.Module, inputs: torch.Tensor, method: str | Method,
                       target: Target = None, *, similarity_on: str = "abs", **options) -> RandomizationResult:
    """Data randomisation test (Adebayo et al. 2018): maps of a model trained on permuted labels.

    ``random_model`` has the architecture of ``model`` but was trained on randomly permuted
    labels (e.g. the built-in ``"shapes-random-labels"``), so it has memorised, not learned.
    Its maps are computed for the classes the ORIGINAL model predicts (or ``target`` as fixed
    on it) and compared with the original maps as in :func:`model_randomization`.

    Returns:
        A :class:`RandomizationResult` with stages ``["original", "random labels"]``.

    Example:
        >>> res = data_randomization(model, load_model("shapes-random-labels"), x, "saliency")  # doctest: +SKIP
    """
    choice("similarity_on", similarity_on, ("abs", "signed"))
    label, method = _name(method), _resolve_method(method)
    x = prepare(model, inputs)
    fixed = _fix_target(model, x, target)
    y = prepare(random_model, inputs)
    maps = [_run(method, model, x, fixed, options), _run(method, random_model, y, fixed, options)]
    return _result(["original", "random labels"], maps, similarity_on, label)
