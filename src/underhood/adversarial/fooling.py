"""Fooling images: inputs made from scratch that the model classifies with high confidence.

:func:`fooling_images` follows Nguyen, Yosinski & Clune 2015 ("Deep neural networks are
easily fooled"): images unrecognisable to people -- evolved noise, or noise climbed by
gradient ascent -- that a network labels as some class with 99% confidence or more.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import logits, resolve_batch_size
from ..core.checks import choice, number, positive_int
from ..core.device import home_device
from ..core.errors import InputError
from ..core.inputs import expected_channels
from ..core.seeding import generator
from .base import AttackResult, Problem, attacking, col, finish

METHODS = ("evolution", "gradient")
STEPS = {"evolution": 100, "gradient": 50}
SCALES = (1, 4, 16)  # widths in pixels of the blocks an offspring's mutation moves together


def _check_classes(classes: int | Sequence[int] | None, k: int) -> list[int]:
    """The requested classes as a list of distinct ints in ``0..k-1`` (``None``: all ``k``)."""
    if classes is None:
        return list(range(k))
    values = [classes] if isinstance(classes, int) and not isinstance(classes, bool) else classes
    try:
        values = [int(c) if not isinstance(c, bool) and float(c) == int(c) else None for c in
                  (values.tolist() if isinstance(values, torch.Tensor) else values)]
    except (TypeError, ValueError):
        raise InputError(f"classes: expected a class index or a list of them, got {classes!r}") from None
    if not values or None in values:
        raise InputError(f"classes: expected a class index or a non-empty list of them, got {classes!r}")
    for c in values:
        if not 0 <= c < k:
            raise InputError(f"classes: class {c} is out of range for a model with {k} outputs (0..{k - 1})")
    repeated = [c for i, c in enumerate(values) if c in values[:i]]
    if repeated:
        raise InputError(f"classes: class {repeated[0]} is repeated; give each class once and n for several "
                         "images per class")
    return values


def _image_shape(model: nn.Module, size: int | tuple[int, int] | None, channels: int | None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images to make: ``size`` and ``channels``, else the model's ``input_size``."""
    known = getattr(model, "input_size", None)
    c = channels if channels is not None else (known[0] if known else expected_channels(model) or 3)
    c = positive_int("channels", c)
    if size is None:
        if not known:
            raise InputError("size: the model has no input_size; pass size=(H, W)")
        return c, int(known[1]), int(known[2])
    h, w = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
    return c, positive_int("size", h), positive_int("size", w)


def _mutate(images: torch.Tensor, rate: float, sigma: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian mutation of a share ``rate`` of the pixels of each image, clipped to ``[0, 1]``.

    Each offspring draws one block width from :data:`SCALES`: its mutated units are single
    pixels, or square blocks of that width moved together (one Gaussian step per block and
    channel). Drawn on the CPU; ``images`` are on the CPU too.
    """
    n, c, h, w = images.shape
    which = torch.randint(0, len(SCALES), (n,), generator=g)
    step = torch.zeros_like(images)
    for j, s in enumerate(SCALES):
        rows, cols = -(-h // s), -(-w // s)
        mask = torch.rand(n, 1, rows, cols, generator=g) < rate
        noise = sigma * torch.randn(n, c, rows, cols, generator=g) * mask
        noise = F.interpolate(noise, size=(h, w), mode="nearest")
        step = torch.where(col(which == j), noise, step)
    return (images + step).clamp(0, 1)


@torch.no_grad()
def _evolve(model: nn.Module, start: torch.Tensor, cls: torch.Tensor, n: int, *, steps: int, population: int,
            rate: float, sigma: float, confidence: float, size: int,
            g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """MAP-Elites over the classes ``cls``, ``n`` independent maps; ``start`` holds ``population`` random
    images per (map, class), map-major. Returns the elites and the random images they started from,
    both ``[k * n, C, H, W]`` class-major, and the counts."""
    k = len(cls)
    logp = logits(model, start, size).cpu().log_softmax(1)[:, cls]  # [n * k * population, k]
    # the initial elite of (map, class): the map's random image that scores highest for the class
    logp = logp.view(n, k * population, k)
    best = logp.argmax(1)  # [n, k]
    fit = logp.gather(1, best[:, None]).squeeze(1)  # [n, k]
    elites = start.view(n, k * population, *start.shape[1:])[torch.arange(n)[:, None], best]  # [n, k, C, H, W]
    first = elites.transpose(0, 1).flatten(0, 1)
    threshold = torch.tensor(confidence).log()
    queries, generations = len(start), 0
    for _ in range(steps):
        slots = (fit < threshold).flatten().nonzero().squeeze(1)  # elites still below the confidence breed
        if len(slots) == 0:
            break
        parents = elites.flatten(0, 1)[slots].repeat_interleave(population, 0)
        offspring = _mutate(parents, rate, sigma, g)
        logp = logits(model, offspring, size).cpu().log_softmax(1)[:, cls]  # [B, k]
        queries, generations = queries + len(offspring), generations + 1
        # an offspring may replace the elite of any class of its map that it beats (MAP-Elites)
        owner = (slots // k).repeat_interleave(population)
        scores = torch.where(owner[None, :, None] == torch.arange(n)[:, None, None], logp[None], -torch.inf)
        value, index = scores.max(1)  # [n, k]
        better = value >= fit
        elites = torch.where(better.view(n, k, 1, 1, 1), offspring[index], elites)
        fit = torch.where(better, value, fit)
    return elites.transpose(0, 1).flatten(0, 1), first, {"queries": queries, "iterations": generations}


def _ascend(model: nn.Module, start: torch.Tensor, target: torch.Tensor, *, steps: int, step_size: float,
            confidence: float) -> tuple[torch.Tensor, dict]:
    """Gradient ascent on ``log p_target`` from ``start`` with L2-normalised steps, clipped to the box;
    an image stops once its confidence reaches ``confidence``."""
    x = start.clone()
    active = torch.arange(len(x), device=x.device)
    queries, iterations = 0, 0
    for _ in range(steps):
        xa = x[active].requires_grad_(True)
        logp = model(xa).float().log_softmax(1)
        value = logp.gather(1, target[active, None]).squeeze(1)
        (grad,) = torch.autograd.grad(value.sum(), xa)
        queries, iterations = queries + len(active), iterations + 1
        keep = value.detach() < torch.tensor(confidence).log()  # reached: this image stops here
        step = step_size * grad / col(grad.flatten(1).norm(dim=1).clamp_min(1e-12))
        x[active] = torch.where(col(keep), (xa.detach() + step).clamp(0, 1), xa.detach())
        active = active[keep]
        if len(active) == 0:
            break
    return x, {"queries": queries, "iterations": iterations}


def fooling_images(model: nn.Module, classes: int | Sequence[int] | None = None, *, method: str = "evolution",
                   n: int = 1, steps: int | None = None, population: int = 16, confidence: float = 0.99,
                   size: int | tuple[int, int] | None = None, channels: int | None = None, rate: float = 0.1,
                   sigma: float = 0.3, step_size: float = 2.0, seed: int = 0,
                   batch_size: int | str | None = None) -> AttackResult:
    """Images that the model classifies as each requested class with high confidence (Nguyen, Yosinski & Clune 2015).

    ``method="evolution"`` -- the paper's directly encoded evolutionary algorithm, black-box
    (softmax outputs only, under ``torch.no_grad``): the genome is the image's pixels, and
    MAP-Elites keeps one elite per requested class, the image with the highest ``p_class`` seen
    so far. The first elites are, for each class, the best of ``population * len(classes)``
    uniform-noise images (``population`` drawn per class, shared by all classes). Every
    generation, each elite still below ``confidence`` has ``population`` offspring; an offspring
    changes a share ``rate`` of its parent's pixels (the paper's 10%) by ``N(0, sigma)`` per
    channel, clipped to ``[0, 1]``, and may replace the elite of *any* class of its map whose
    ``log p`` it matches or beats (MAP-Elites). All offspring of a generation are classified in one
    batched pass. Our addition: each offspring moves single pixels, or 4x4 or 16x16 blocks
    (:data:`SCALES`, one drawn per offspring) -- with single pixels only, direct encoding stalls
    on 64x64 images, as the paper's did on ImageNet. The paper's polynomial mutation is replaced
    by a Gaussian step. With ``n > 1``, ``n`` independent maps run side by side.

    ``method="gradient"`` -- the paper's fooling images by gradient ascent (after Simonyan et al.'s
    class visualisation, but from uniform noise and without a prior):
    ``x <- clip_[0,1](x + step_size * g / ||g||_2)`` with ``g = grad_x log p_class(x)``, batched
    over classes and copies. The paper follows the gradient of the softmax probability itself;
    ``grad log p = grad p / p`` points the same way, so the normalised step is the same.

    In both, an image stops improving once ``p_class >= confidence`` (it costs no more queries)
    or after ``steps`` generations / steps (:data:`STEPS`: 100 / 50). On the built-in shapes model
    (8 classes, 64x64): gradient ascent takes 16 steps (81 image gradients) to pass 0.99 for every
    class; evolution, about 6,000 queries, reaches 0.99 for 5 classes and at least 0.92 for all.
    Randomness (the noise, the mutations) is drawn on the CPU from ``seed``.

    Args:
        model: a classifier returning logits ``[N, K]`` on ``[N, C, H, W]`` pixels in ``[0, 1]``.
        classes: the classes to fool (an int or a list of distinct ints); ``None``: all ``K``.
        method: ``"evolution"`` (black-box) or ``"gradient"`` (white-box).
        n: images per class.
        steps: the most generations (evolution) or gradient steps; ``None``: :data:`STEPS`.
        population: random images per class to start from, and offspring per elite per
            generation (evolution).
        confidence: the probability an image must reach, in ``(0, 1)``.
        size: ``H`` or ``(H, W)`` of the images; ``None``: the model's ``input_size``.
        channels: ``C``; ``None``: the model's ``input_size``, else its first convolution's.
        rate: share of pixels (or blocks) a mutation changes (evolution).
        sigma: standard deviation of a mutation, in pixel units (evolution).
        step_size: L2 length of a gradient step, in pixel units (gradient).
        seed: seed of the starting noise and of the mutations.
        batch_size: images per forward pass (evolution), or ``None``/``"auto"``.

    Returns:
        :class:`AttackResult` of ``len(classes) * n`` images, class-major (``target`` is
        ``classes`` each repeated ``n`` times): ``adversarial`` the images, ``perturbation`` the
        images minus their starting noise, ``labels`` the model's classes of that noise,
        ``predicted`` / ``confidence`` on the images, ``success`` where the prediction is the target
        with probability ``>= confidence``. ``info``: ``method``, ``steps``, ``iterations`` (run),
        ``queries`` (images evaluated; forward and backward passes for the gradient method),
        ``seed``, ``confidence``, the method's options and ``from_scratch`` (``True``: its
        :meth:`~AttackResult.figure` is a grid of the images).

    Example:
        >>> r = fooling_images(model, method="gradient")              # doctest: +SKIP
        >>> r.confidence, r.success.all()                              # doctest: +SKIP
        >>> r = fooling_images(model, [0, 3], n=2, method="evolution")   # doctest: +SKIP
    """
    method = choice("method", method, METHODS)
    n = positive_int("n", n)
    steps = positive_int("steps", STEPS[method] if steps is None else steps)
    population = positive_int("population", population)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise InputError(f"confidence: expected a probability in (0, 1), got {confidence!r}")
    rate = number("rate", rate, strict=True)
    sigma = number("sigma", sigma, strict=True)
    step_size = number("step_size", step_size, strict=True)
    device = home_device(model)  # a meta or split model: one line before any pass
    shape = _image_shape(model, size, channels)
    g = generator(seed)
    with attacking(model):
        with torch.no_grad():
            probe = model(torch.full((1, *shape), 0.5, device=device))
        if probe.ndim != 2:
            raise InputError(f"model: fooling images need [N, classes] logits, the model gives {tuple(probe.shape)}")
        k = probe.shape[1]
        cls = torch.tensor(_check_classes(classes, k), dtype=torch.long)
        target = cls.repeat_interleave(n).to(device)
        options = {"method": method, "steps": steps, "seed": seed, "confidence": float(confidence),
                   "from_scratch": True}
        if method == "evolution":
            size_ = resolve_batch_size(batch_size, model, shape)
            start = torch.rand(n * len(cls) * population, *shape, generator=g)
            images, start, counts = _evolve(model, start, cls, n, steps=steps, population=population, rate=rate,
                                            sigma=sigma, confidence=confidence, size=size_, g=g)
            options |= {"population": population, "rate": rate, "sigma": sigma}
        else:
            start = torch.rand(len(target), *shape, generator=g)
            images, counts = _ascend(model, start.to(device), target, steps=steps, step_size=step_size,
                                     confidence=confidence)
            options |= {"step_size": step_size}
        start, images = start.to(device), images.to(device)
        with torch.no_grad():
            labels = model(start).argmax(1)
        result = finish(model, Problem(start, labels, target, k), images, options | counts)
    result.success &= result.confidence >= confidence
    return result
