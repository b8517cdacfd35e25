"""Activation maximisation, Deep Dream, inversion and caricatures: images optimised through the model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.checks import positive_int
from ..core.device import home_device, model_device
from ..core.errors import InputError, LayerError
from ..core.hooks import differentiable, frozen
from ..core.inputs import PROBE_BELOW, check_inputs, check_size, expected_channels, minimum_size
from ..core.layout import infer, to_nchw
from ..core.results import Result
from .objectives import Objective, batch
from .param import SMALL_TRANSFORMS, TRANSFORMS, Image, standard_transforms, transform


@dataclass(repr=False)
class RenderResult(Result):
    """``images [N, C, H, W]`` in ``[0, 1]``; ``trace [steps, N]`` the objective at every step
    (on the transformed image the step optimised); ``start``/``final`` its value on the untransformed
    image at the random start and at the end."""

    images: torch.Tensor
    trace: torch.Tensor
    start: torch.Tensor
    final: torch.Tensor
    info: dict = field(default_factory=dict)

    def scalars(self) -> dict:
        """Images, steps, the objective's name and its mean value at the start and at the end."""
        out = {"n": len(self.images), "steps": len(self.trace)}
        if "objective" in self.info:
            out["objective"] = str(self.info["objective"])
        out.update(start=float(self.start.float().mean()), final=float(self.final.float().mean()))
        return out

    def figure(self, titles: Sequence[str] | None = None, **kwargs):
        """The images in a gallery (:func:`underhood.viz.synthesis.gallery_figure`), each titled with its final
        objective unless ``titles`` are given; ``kwargs`` go to the gallery."""
        from ..viz.synthesis import gallery_figure

        if titles is None:
            titles = [f"{float(v):.3g}" for v in self.final.flatten()] if self.final.numel() == len(self.images) \
                else None
        return gallery_figure(self.images, titles, **kwargs)


@contextlib.contextmanager
def probe(model: nn.Module, layers: Sequence[str], need_logits: bool = True) -> Iterator[Callable]:
    """Eval mode, frozen parameters and differentiable hooks on ``layers`` for the block (see
    :func:`underhood.core.hooks.differentiable`; the forward pass stops after the deepest layer unless
    the logits are needed); all restored on exit. Yields ``run(x) -> (activations, logits)``.

    Token sequences ``[N, L, C]`` and channels-last maps ``[N, h, w, C]`` reach the objectives as
    ``[N, C, h, w]`` views (:mod:`underhood.core.layout`; prefix tokens such as a class token left
    out), so ``channel``, ``unit`` and ``layer`` objectives read channels on a transformer as on a CNN.
    An output with no spatial reading is passed as it is."""
    with frozen(model), differentiable(model, layers, stop=not need_logits) as run:
        def spatial_run(x: torch.Tensor):
            acts, logits = run(x)
            return {k: _nchw(v, x.shape[-2:]) for k, v in acts.items()}, logits
        yield spatial_run


def _nchw(a: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if not isinstance(a, torch.Tensor) or a.ndim not in (3, 4):
        return a
    try:
        lay = infer(a.shape, size)
    except LayerError:  # a 3-D output that is no patch grid: left to the objective as it is
        return a
    return a if lay is None else to_nchw(a, lay)


def _input_shape(model: nn.Module, size: int | Sequence[int] | None, channels: int | None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images to make: ``size`` (a side, ``(H, W)`` or ``(C, H, W)``), else the model's
    ``input_size``; the channels from ``size``, else ``channels``, else the model's (see
    :func:`~underhood.core.inputs.expected_channels`), else 3."""
    if size is None:
        size = getattr(model, "input_size", None)
        if not size:
            raise InputError("size: the model has no input_size; pass size=(H, W) or (C, H, W) (CLI: --size)")
    dims = [size] if isinstance(size, int) else list(size) if isinstance(size, (tuple, list, torch.Size)) else []
    if len(dims) not in (1, 2, 3) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in dims):
        raise InputError(f"size: expected a positive int, (H, W) or (C, H, W), got {size!r}")
    h, w = (dims[0], dims[0]) if len(dims) == 1 else dims[-2:]
    expected = expected_channels(model)
    c = dims[0] if len(dims) == 3 else channels or expected or 3
    if expected is not None and c != expected:
        raise InputError(f"size: the model takes {expected}-channel images, got {c} channels in size={size!r}")
    return c, h, w


PRESETS = ("standard", "lucid", "small", "none")


def _transforms(spec: str | dict | None, size: tuple[int, int]) -> dict:
    if spec is None or spec == "none":
        return {}
    if spec == "standard":
        return standard_transforms(size)
    if spec == "lucid":
        return dict(TRANSFORMS)
    if spec == "small":
        return dict(SMALL_TRANSFORMS)
    if isinstance(spec, dict):
        bad = set(spec) - set(TRANSFORMS)
        if bad:
            raise InputError(f"transforms: unknown {sorted(bad)}; use {', '.join(TRANSFORMS)}")
        return spec
    raise InputError(f"transforms: expected one of {', '.join(PRESETS)} or a dict, got {spec!r}")


def render(model: nn.Module, objective: Objective | Sequence[Objective], *, n: int | None = None,
           param: str = "fourier", size: int | Sequence[int] | None = None, steps: int = 256, lr: float = 0.1,
           transforms: str | dict | None = "standard", priors=None, seed: int = 0, progress: bool = False,
           decorrelate: bool = True, sd: float = 0.1, init: str | torch.Tensor | None = None,
           optimizer: str = "adam", mask: torch.Tensor | None = None) -> RenderResult:
    """Optimise images so that they maximise ``objective`` (Erhan et al. 2009; Olah et al. 2017).

    Args:
        objective: one objective for ``n`` images (default 1), or a list: image ``i`` maximises
            ``objective[i]`` (every channel of a layer in one batch).
        param: ``"fourier"`` (decorrelated, 1/f-scaled spectrum; Olah et al.), ``"pixels"`` (a sigmoid of free
            values) or ``"raw"`` (the pixels themselves, unsquashed: the returned images may leave ``[0, 1]``).
        size: ``(H, W)``, ``(C, H, W)`` or one side (default: the model's ``input_size``; a model without one
            needs it: a one-line error says so). Any size the model accepts (at least its minimum).
        steps, lr: Adam on the parameters.
        transforms: ``"standard"`` (pad, jitter, scale, rotate, jitter, as in Lucid: Lucid's sizes
            from 128 pixels up, milder ones below, see :func:`~underhood.synthesis.param.standard_transforms`),
            ``"lucid"`` or ``"small"`` (either set whatever the size), ``"none"``, or a dict of
            :data:`underhood.synthesis.param.TRANSFORMS` keys.
        priors: an :class:`underhood.synthesis.priors.Priors` (penalties on the image, and Yosinski
            et al.'s blur and clipping between steps), or ``None``.
        seed: seeds the start and the transforms (the global RNG is not touched).
        init: the start: ``None`` (small noise of standard deviation ``sd`` in the parameters), ``"uniform"``
            (pixels drawn from U[0, 1] with ``seed``, as MAP583's ``x_0 ~ U[0,1]^{CxHxW}``) or images
            ``[N or 1, C, H, W]`` in ``[0, 1]``; a start image needs ``param="pixels"`` or ``"raw"``.
        optimizer: ``"adam"`` (default) or ``"sgd"``: plain gradient ascent on the parameters,
            ``theta <- theta + lr * grad`` (with ``param="raw"`` and no transforms: ``x <- x + lr * grad_x f``).
        mask: ``[H, W]`` or ``[N, 1, H, W]``, 1 where the pixels may change and 0 where they stay as they are
            (the gradient and Yosinski's operations are masked); ``param="pixels"`` or ``"raw"`` only.

    Returns:
        A :class:`RenderResult` with images in ``[0, 1]`` (the raw values with ``param="raw"``) and the
        objective's trace.

    Example:
        >>> from underhood.synthesis import objectives as O                           # doctest: +SKIP
        >>> r = render(model, [O.channel("features.10", c) for c in range(16)])        # doctest: +SKIP
        >>> # MAP583's maximum response samples: ||h_{l,d}(x)||_2 from U[0,1] noise by plain gradient ascent
        >>> r = render(model, O.channel("features.10", 3, reduce="l2"), param="raw", init="uniform",  # doctest: +SKIP
        ...            optimizer="sgd", transforms="none", lr=0.05)                                 # doctest: +SKIP
    """
    objs = list(objective) if isinstance(objective, (list, tuple)) else None
    obj = batch(objs) if objs is not None else objective
    if not isinstance(obj, Objective):
        raise InputError(f"objective: expected an Objective or a list of them, got {type(objective).__name__}")
    count = len(objs) if objs is not None else (n or 1)
    positive_int("steps", steps)
    operations = priors is not None and priors.has_operations
    if operations and param not in ("pixels", "raw"):
        raise InputError("priors: blur and clipping act on pixels; use param='pixels' with them, or drop them")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    device = home_device(model)  # a meta or split model: one line before any pass
    c, h, w = _input_shape(model, size, None)
    check_size(model, (h, w), "size", channels=c, hint="pass a larger size")
    tf = _transforms(transforms, (h, w))
    start_image = _start(init, param, (count, c, h, w), seed)
    keep = _mask(mask, param, (count, c, h, w))
    image = Image((count, c, h, w), param, seed=seed, decorrelate=decorrelate, sd=sd, init=start_image).to(device)
    if keep is not None:
        keep = keep.to(device)
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(image.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    trace = []
    from tqdm.auto import trange

    with probe(model, obj.hooked, obj.needs_logits) as pr, torch.enable_grad():
        with torch.no_grad():
            start = obj(*pr(image()))
        for step in trange(steps, desc="render", disable=not progress, leave=False):
            x = image()
            if operations:
                x.retain_grad()
            value = obj(*pr(transform(x, g, **tf) if tf else x))
            loss = -value.sum()
            if priors is not None:
                loss = loss + priors.penalty(x).sum()
            opt.zero_grad()
            loss.backward()
            if keep is not None:  # pixels outside the mask get no gradient, so no update (Adam and SGD alike)
                image.raw.grad.mul_(keep)
            opt.step()
            if operations:  # Yosinski et al.'s blur and clipping, on the pixels between steps
                with torch.no_grad():
                    new = priors.apply(image(), grad=-x.grad, step=step)
                    new = new if param == "raw" else torch.logit(new.clamp(1e-4, 1 - 1e-4))
                    image.raw.copy_(new if keep is None else torch.where(keep > 0, new, image.raw))
            trace.append(value.detach())  # kept on the device: no host-device sync per step
        with torch.no_grad():
            final_image = image()
            final = obj(*pr(final_image))
    return RenderResult(final_image.detach().cpu(), torch.stack(trace).cpu(), start.cpu(), final.cpu(),
                        {"param": param, "steps": steps, "lr": lr, "seed": seed, "objective": obj.name,
                         "optimizer": optimizer, "init": init if isinstance(init, str) or init is None else "image"})


OPTIMIZERS = ("adam", "sgd")


def _start(init: str | torch.Tensor | None, param: str, shape: tuple[int, int, int, int],
           seed: int) -> torch.Tensor | None:
    """The start image ``[N, C, H, W]`` that ``init`` asks for (``None``: the parametrisation's own noise)."""
    if init is None:
        return None
    if param == "fourier":
        raise InputError("init: a start image needs param='pixels' or param='raw'; the Fourier parametrisation "
                         "starts from its own noise")
    if isinstance(init, str):
        if init != "uniform":
            raise InputError(f"init: expected None, 'uniform' or images [N, C, H, W], got {init!r}")
        # seed + 2: the parametrisation's noise uses seed and the transforms seed + 1
        return torch.rand(shape, generator=torch.Generator().manual_seed(seed + 2))
    if not isinstance(init, torch.Tensor) or init.ndim not in (3, 4):
        raise InputError(f"init: expected None, 'uniform' or images [N, C, H, W], got {type(init).__name__}")
    x = init.detach().float().cpu()
    x = x[None] if x.ndim == 3 else x
    if x.shape[1:] != shape[1:] or len(x) not in (1, shape[0]):
        raise InputError(f"init: expected images of shape [{shape[0]} or 1, {shape[1]}, {shape[2]}, {shape[3]}], "
                         f"got {tuple(init.shape)}; resize the start images or pass size=")
    return x.expand(shape).clone()


def _mask(mask: torch.Tensor | None, param: str, shape: tuple[int, int, int, int]) -> torch.Tensor | None:
    """``mask`` as a float ``[N or 1, 1, H, W]`` tensor of 0 and 1 (``None`` stays ``None``)."""
    if mask is None:
        return None
    if param == "fourier":
        raise InputError("mask: a pixel mask needs param='pixels' or param='raw'")
    m = torch.as_tensor(mask).detach().float().cpu()
    m = m[None, None] if m.ndim == 2 else m
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[-2:] != shape[-2:] or len(m) not in (1, shape[0]):
        raise InputError(f"mask: expected [H, W] or [N, 1, H, W] with H, W = {shape[2]}, {shape[3]}, "
                         f"got {tuple(torch.as_tensor(mask).shape)}")
    return (m > 0).float()


def _features(pr: Callable, x: torch.Tensor, layer: str) -> torch.Tensor:
    return pr(x)[0][layer]


def deep_dream(model: nn.Module, image: torch.Tensor, layer: str, *, octaves: int = 3, octave_scale: float = 1.4,
               steps: int = 20, lr: float = 0.02, jitter: int = 4, seed: int = 0, priors=None,
               progress: bool = False) -> torch.Tensor:
    """Deep Dream (Mordvintsev et al. 2015): gradient ascent on the mean squared activation of ``layer``
    starting from ``image`` ``[N, C, H, W]``, over ``octaves`` scales (smallest first, each
    ``octave_scale`` times larger); each step moves by ``lr`` times the gradient divided by its mean
    absolute value, under a random jitter. ``priors`` (a :class:`~underhood.synthesis.priors.Priors`):
    its penalties are subtracted from the objective and its blur / clipping applied after each step.
    Returns the dreamed images in ``[0, 1]``, the input's size."""
    from tqdm.auto import tqdm

    image = check_inputs(model, image, "image", unbatched=True)
    positive_int("octaves", octaves)
    positive_int("steps", steps)
    device = model_device(model)
    h, w = image.shape[-2:]
    sizes = [(max(8, round(h / octave_scale ** k)), max(8, round(w / octave_scale ** k)))
             for k in range(octaves - 1, -1, -1)]
    declared = getattr(model, "input_size", None)
    if min(sizes[0]) < min(declared[1:] if declared else (PROBE_BELOW,)):  # no octave below the model's minimum
        low = minimum_size(model)
        sizes = [(min(h, max(sh, low[0])), min(w, max(sw, low[1]))) for sh, sw in sizes]
    g = torch.Generator().manual_seed(seed)
    x = image.to(device).float()
    detail = torch.zeros_like(x)
    with probe(model, [layer], need_logits=False) as pr, torch.enable_grad():
        for size in tqdm(sizes, desc="octaves", disable=not progress, leave=False):
            base = nn.functional.interpolate(image.to(device).float(), size=size, mode="bilinear", align_corners=False)
            d = nn.functional.interpolate(detail, size=size, mode="bilinear", align_corners=False)
            x = (base + d).clamp(0, 1)
            for step in range(steps):
                dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
                shifted = torch.roll(x, (dy, dx), (2, 3)).detach().requires_grad_(True)
                value = _features(pr, shifted, layer).pow(2).reshape(len(x), -1).mean(1).sum()
                if priors is not None:
                    value = value - priors.penalty(shifted).sum()
                (grad,) = torch.autograd.grad(value, shifted)
                grad = torch.roll(grad, (-dy, -dx), (2, 3))
                grad = grad / grad.abs().reshape(len(x), -1).mean(1).clamp(min=1e-12).view(-1, 1, 1, 1)
                x = (x + lr * grad).clamp(0, 1).detach()
                if priors is not None and priors.has_operations:
                    x = priors.apply(x, grad=grad, step=step).clamp(0, 1)
            detail = x - base
    return nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1).cpu()


@dataclass(repr=False)
class Inversion(Result):
    """Pre-images of ``layer``'s representation: ``images [S, N, C, H, W]`` from ``S`` random starts;
    ``distance_start``/``distance_end`` ``[S, N]`` the relative feature distance
    ``||phi(x) - phi(x0)||^2 / ||phi(x0)||^2`` before and after; ``psnr [S, N]`` to the original (dB);
    ``original [N, C, H, W]`` the inverted images (``None`` when not kept)."""

    layer: str
    images: torch.Tensor
    distance_start: torch.Tensor
    distance_end: torch.Tensor
    psnr: torch.Tensor
    original: torch.Tensor | None = None

    def scalars(self) -> dict:
        """Layer, starts, images, mean relative feature distance before and after, mean PSNR (dB)."""
        seeds, n = self.distance_end.shape
        return {"layer": self.layer, "seeds": seeds, "n": n, "distance_start": float(self.distance_start.mean()),
                "distance_end": float(self.distance_end.mean()), "psnr": float(self.psnr.mean())}

    def figure(self, index: int = 0, **kwargs):
        """The inversion strip of image ``index`` (:func:`underhood.viz.synthesis.inversion_figure`; ``kwargs`` go
        to it; the PSNR-per-layer panel is off for one layer)."""
        from ..viz.synthesis import inversion_figure

        kwargs.setdefault("psnr_curve", False)
        if self.original is None:
            raise InputError("original: this inversion does not hold the original images; draw it with "
                             "underhood.viz.synthesis.inversion_figure(original, [inversion])")
        return inversion_figure(self.original, [self], index=index, **kwargs)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB) per image of images in ``[0, 1]``."""
    mse = (a - b).pow(2).reshape(len(a), -1).mean(1).clamp(min=1e-12)
    return 10 * torch.log10(1.0 / mse)


def invert(model: nn.Module, image: torch.Tensor, layer: str, *, seeds: Sequence[int] = (0, 1, 2), steps: int = 300,
           lr: float = 0.05, tv: float = 0.1, alpha: float = 0.0, param: str = "fourier", priors=None,
           progress: bool = False) -> Inversion:
    """Invert a representation (Mahendran & Vedaldi 2015): from random starts, minimise
    ``||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 + tv * TV(x) + alpha * alpha-norm(x)`` over images ``x``
    (``phi``: ``layer``'s output, ``x0``: ``image``). Each seed gives one reconstruction of every image:
    what the representation keeps, they share; what it discards, they differ in.

    ``tv`` and ``alpha`` weigh :func:`~underhood.synthesis.priors.total_variation` (beta 2) and the
    alpha-norm (alpha 6) per pixel; ``priors`` replaces both when given.

    The objective is the paper's; the image is parametrised as in :func:`render`. The default,
    ``param="fourier"`` (Olah et al.'s decorrelated spectrum), gives recognisable pre-images of deep
    layers where optimising the pixels directly (``param="pixels"``, as in the paper) leaves the noise
    that the layer ignores: on the shapes model, 150 steps from noise give 19/12/13 dB at the first,
    middle and last stage with Fourier and 15/12/12 dB with pixels.
    """
    from tqdm.auto import trange

    from . import priors as P

    image = check_inputs(model, image, "image", unbatched=True)
    positive_int("steps", steps)
    if not seeds:
        raise InputError("seeds: no seed given; give at least one")
    device = model_device(model)
    x0 = image.to(device).float()
    n, c, h, w = x0.shape
    rule = priors or P.Priors(tv=tv / (h * w), alpha=alpha / (h * w))
    seeds = list(seeds)
    s_count = len(seeds)
    with probe(model, [layer], need_logits=False) as pr, torch.enable_grad():
        with torch.no_grad():
            target = _features(pr, x0, layer).detach()
        target = target.repeat(s_count, *([1] * (target.ndim - 1)))
        norm = target.pow(2).reshape(len(target), -1).sum(1).clamp(min=1e-12)

        def distance(x: torch.Tensor) -> torch.Tensor:
            return (_features(pr, x, layer) - target).pow(2).reshape(len(x), -1).sum(1) / norm

        # every seed's start in one batch: Adam is elementwise, so each reconstruction is the one a
        # separate run from its seed would give, at the cost of one batched pass per step
        starts = nn.ModuleList(Image((n, c, h, w), param, seed=s, sd=1.0 if param == "pixels" else 0.01)
                               for s in seeds).to(device)
        opt = torch.optim.Adam(starts.parameters(), lr=lr)

        def current() -> torch.Tensor:
            return torch.cat([im() for im in starts])

        with torch.no_grad():
            d0 = distance(current()).cpu()
        for _ in trange(steps, desc=f"invert {layer}", disable=not progress, leave=False):
            x = current()
            loss = (distance(x) + rule.penalty(x)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            x = current()
            d1 = distance(x).cpu()
    images = x.cpu().reshape(s_count, n, c, h, w)
    d0, d1 = d0.reshape(s_count, n), d1.reshape(s_count, n)
    original = image.detach().cpu().float()
    return Inversion(layer, images, d0, d1, torch.stack([psnr(r, original) for r in images]), original)


def caricature(model: nn.Module, image: torch.Tensor, layer: str, *, steps: int = 200, lr: float = 0.05,
               power: float = 2.0, seed: int = 0, transforms: str | dict | None = "standard",
               param: str = "fourier", priors=None, progress: bool = False, init: str = "random") -> torch.Tensor:
    """A caricature (Olah et al.'s Lucid recipe): from a random start, maximise
    ``<phi(x), phi(x0)> * cos(phi(x), phi(x0))^power`` at ``layer``: an image that shows, exaggerated,
    what the representation of ``image`` already detects. ``param``, ``transforms`` and ``priors`` as
    in :func:`render`. ``init="image"`` starts from ``image`` itself instead (Mahendran & Vedaldi's
    caricatures, as CMP784 shows them; with ``param="pixels"`` or ``"raw"``; ``power=0`` and priors
    ``tv``/``alpha`` give their objective ``<phi(x0), phi(x)> - R_TV(x) - R_alpha(x)`` up to the constant
    ``1 / ||phi(x0)||``). Returns ``[N, C, H, W]`` in ``[0, 1]``."""
    if init not in ("random", "image"):
        raise InputError(f"init: expected 'random' or 'image', got {init!r}")
    image = check_inputs(model, image, "image", unbatched=True)
    device = model_device(model)
    x0 = image.to(device).float()
    with probe(model, [layer], need_logits=False) as pr, torch.no_grad():
        target = _features(pr, x0, layer).reshape(len(x0), -1)

    def fn(acts, logits):
        a = acts[layer].reshape(len(target), -1)
        dot = (a * target).sum(1) / target.norm(dim=1).clamp(min=1e-12)
        cos = torch.nn.functional.cosine_similarity(a, target, dim=1).clamp(min=1e-6)
        return dot * cos ** power

    result = render(model, Objective(fn, frozenset({layer}), f"caricature({layer})"), n=len(x0), steps=steps, lr=lr,
                    size=tuple(x0.shape[-3:]), seed=seed, transforms=transforms, param=param, priors=priors,
                    progress=progress, init=x0.cpu() if init == "image" else None)
    return result.images
