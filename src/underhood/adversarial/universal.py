"""Dataset-level attacks: one perturbation, or one patch, that fools a model on most images.

* :func:`universal` -- a universal adversarial perturbation (Moosavi-Dezfooli, Fawzi, Fawzi &
  Frossard 2017): a single small ``v`` with ``k(x + v) != k(x)`` for most ``x``.
* :func:`patch` -- an adversarial patch (Brown, Mane, Roy, Abadi & Gilmer 2017): a single
  visible, unbounded square pasted anywhere, at any scale and rotation, that makes the model
  say ``target``; :func:`apply_patch` pastes one, differentiably.

Both are fitted on ``inputs`` and measured on ``held_out`` images when given (a perturbation
that only fools the images it was built on is no evidence of a universal weakness). Pixels
stay in ``[0, 1]``; the model runs in eval mode and is left as it was found, as for every attack
in :mod:`underhood.adversarial`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import batches, logits
from ..core.checks import choice, number, pixels, positive_int
from ..core.errors import InputError
from ..core.inputs import check_inputs
from ..core.results import Result
from ..core.seeding import generator
from .base import (
    AttackResult,
    GradientCheck,
    Labels,
    Problem,
    _classes,
    attacking,
    check_eps,
    check_norm,
    finish,
)
from .gradient import direction, project
from .minimal import deepfool_run

SHAPES = ("square", "circle")


def _split(value: Any, model: nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``held_out`` as ``(images, labels or None)``: images, an ``(images, labels)`` pair or an ImageSet."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        images, labels = value
    else:
        images, labels = getattr(value, "images", value), getattr(value, "labels", None)
    if not isinstance(images, torch.Tensor):
        raise InputError(f"held_out: expected images [N, C, H, W], an (images, labels) pair or an ImageSet, "
                         f"got {type(value).__name__}")
    x = check_inputs(model, images, "held_out")
    if tuple(x.shape[1:]) != shape:
        raise InputError(f"held_out: images of shape {tuple(x.shape[1:])} differ from the inputs' {shape}; "
                         "give images of the same size")
    return x, labels


def _perturbed(model: nn.Module, x: torch.Tensor, size: int, v: torch.Tensor) -> torch.Tensor:
    """Logits of ``clip(x + v)``, ``size`` images per forward pass (:func:`underhood.core.batching.logits`)."""
    return logits(model, x, size, transform=lambda b: (b + v).clamp(0, 1))


def _problem(model: nn.Module, x: torch.Tensor, labels: Labels, size: int) -> Problem:
    """:func:`setup`'s problem for checked images ``x``, their clean logits computed ``size`` images at a time
    (a dataset need not fit in one forward pass)."""
    out = logits(model, x, size)
    if out.ndim != 2:
        raise InputError(f"model: attacks need [N, classes] logits, the model gives {tuple(out.shape)}")
    k = out.shape[1]
    y = out.argmax(1) if labels is None else _classes(labels, len(x), k, x.device, "labels",
                                                      "None for the model's predictions")
    return Problem(x, y, None, k, out)


# ---------------------------------------------------------------------------- universal perturbations


@dataclass(repr=False)
class UniversalResult(Result):
    """What :func:`universal` returns.

    Attributes:
        perturbation: ``[C, H, W]`` the universal perturbation ``v``, ``||v||_norm <= eps``.
        fooling_rate: share of ``inputs`` whose class under ``clip(x + v)`` differs from their
            label (the clean prediction by default): the paper's fooling rate.
        held_out_fooling_rate: the same on the ``held_out`` images, or ``None`` without them.
        result: :class:`AttackResult` of ``clip(x + v)`` on the held-out images when given, else
            on ``inputs``; ``success`` is "the class changed".
        history: fooling rate on ``inputs`` after each pass.
        eps, norm: the budget and its norm.
        info: ``seed``, ``passes`` (run), ``queries`` (images forwarded), ``gradients`` (per-image
            backward passes), ``updates`` (DeepFool steps added to ``v``) and the options.
    """

    perturbation: torch.Tensor
    fooling_rate: float
    held_out_fooling_rate: float | None
    result: AttackResult
    history: list[float]
    eps: float
    norm: str
    info: dict[str, Any] = field(default_factory=dict)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """``clip_[0,1](images + v)`` for ``[N, C, H, W]`` (or ``[C, H, W]``) images of ``v``'s size."""
        if not isinstance(images, torch.Tensor) or tuple(images.shape[-3:]) != tuple(self.perturbation.shape):
            raise InputError(f"images: expected [N, {', '.join(map(str, self.perturbation.shape))}] images, got "
                             f"{tuple(getattr(images, 'shape', ())) or type(images).__name__}")
        return (images + self.perturbation.to(images)).clamp(0, 1)

    def scalars(self) -> dict[str, Any]:
        """The fooling rates, the budget, the passes run and the seed."""
        return {"fooling_rate": self.fooling_rate, "held_out_fooling_rate": self.held_out_fooling_rate,
                "eps": self.eps, "norm": self.norm, "variant": self.info.get("variant"),
                "passes": self.info.get("passes"), "n": len(self.result), "seed": self.info.get("seed")}

    def figure(self, n: int = 6, **kwargs: Any):
        """The perturbation and the first ``n`` images of :attr:`result` before and after
        (:func:`underhood.viz.adversarial.universal_figure`; ``kwargs`` go to it)."""
        from ..viz.adversarial import universal_figure

        r = self.result
        return universal_figure(self.perturbation, r.inputs[:n], r.labels[:n].tolist(), r.predicted[:n].tolist(),
                                **kwargs)


def _sgd_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, *, eps: float, norm: str,
              step_size: float, check: GradientCheck, rows: torch.Tensor) -> torch.Tensor:
    """One step of the gradient variant: ascend the mini-batch's mean cross-entropy in ``v``, then project."""
    v = v.detach().requires_grad_(True)
    out = model((x + v).clamp(0, 1))
    (grad,) = torch.autograd.grad(F.cross_entropy(out.float(), y), v)
    check.update(grad.expand_as(x), rows)
    return project((v.detach() + step_size * direction(grad[None], norm)[0])[None], eps, norm)[0]


def universal(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, eps: float | str = 10 / 255,
              norm: str = "linf", passes: int = 5, fooling: float = 0.8, overshoot: float = 0.02,
              deepfool_steps: int = 10, candidates: int = 2, held_out: Any = None, seed: int = 0,
              batch_size: int = 32, method: str = "deepfool", step_size: float | None = None,
              progress: bool = False) -> UniversalResult:
    """A universal adversarial perturbation (Moosavi-Dezfooli, Fawzi, Fawzi & Frossard 2017, Algorithm 1).

    One ``v`` with ``||v||_p <= eps`` such that ``k(clip(x + v)) != k(x)`` for most ``x`` in
    ``inputs``, where ``k(x)`` is ``labels`` (default: the model's prediction on the clean ``x``,
    the paper's definition). Starting from ``v = 0``, each pass visits the inputs in an order
    shuffled with ``seed``; for each ``x_i`` still classified as ``k(x_i)`` under ``v``, DeepFool
    (L2, as in the paper's ``argmin ||r||_2``; the authors' ``overshoot``, ``deepfool_steps`` and
    candidate classes) finds the minimal ``dv_i`` sending ``clip(x_i + v)`` across the boundary,
    and ``v <- P_{p,eps}(v + dv_i)``, the projection onto the ``eps`` ball (clipping in L-inf,
    rescaling in L2). As in the authors' code, a ``dv_i`` is added only where DeepFool succeeded
    within its steps, and ``dv_i`` is measured from ``clip(x_i + v)`` and kept in the box. After
    each pass the fooling rate on ``inputs`` is measured; the passes stop once it reaches
    ``fooling`` (the paper's ``1 - delta``) or after ``passes`` passes.

    Batching (ours, for speed): the points are taken ``batch_size`` at a time in the shuffled
    order; one forward pass finds those not yet fooled by the current ``v``, their DeepFool runs
    together from that same ``v``, and their ``dv_i`` are then added in order, with the projection
    after each. With ``batch_size=1`` this is exactly Algorithm 1; larger batches use slightly
    stale ``dv_i`` and run faster. ``batch_size`` is therefore part of the result (no automatic
    measurement), like ``seed``.

    DeepFool's candidate classes are ``y`` and the ``candidates - 1`` best other classes at
    ``clip(x_i + v)``; our default of 2 (the runner-up only) costs one backward pass per iteration
    (the authors used 10 of ImageNet's 1000 classes; raise it for models with many classes).

    Cost per pass: one forward pass of ``inputs``, plus, for each point not yet fooled, one forward
    and ``candidates - 1`` backward passes per DeepFool iteration (3-4 on the built-in shapes model),
    DeepFool's loop being :func:`underhood.adversarial.minimal.deepfool_run`. A model that no
    perturbation of size ``eps`` fools runs every pass: the shapes model at ``eps = 10/255``
    (L-inf), whose fooling rate stays below 1% (as for random noise of that size); at ``24/255``
    it reaches 48% on 256 images and 38% on held-out images.

    ``method="sgd"`` offers the gradient variant instead (Shafahi et al. 2020, "Universal
    adversarial training"): each mini-batch of ``batch_size`` shuffled points takes one step
    ``v <- P(v + step_size * d)``, ``d`` the sign (L-inf) or the L2-normalised gradient of the
    batch's mean cross-entropy w.r.t. ``v``; ``step_size`` defaults to ``eps / 4``. It costs one
    forward+backward pass of each point per pass and, on models where DeepFool's per-point
    minimal steps cancel out (the shapes model), fools far more: built on 64 shapes images at
    24/255 (L-inf, mini-batches of 16), it passes 80% after 6 passes and fools 88% of 64
    held-out images, where Algorithm 1 fools 5% of them.

    Args:
        inputs: ``[N, C, H, W]`` pixels in ``[0, 1]``: the images ``v`` is built on.
        labels: the reference classes (default: clean predictions). True labels make the fooling
            rate the error rate under ``v`` (misclassified clean images count as fooled).
        eps: the budget, in pixel units (a number or a string such as ``"10/255"``).
        norm: ``"linf"`` or ``"l2"``, the norm of the budget.
        passes: the most passes over ``inputs``.
        fooling: stop once the fooling rate on ``inputs`` reaches this share, in ``[0, 1]``.
        overshoot, deepfool_steps, candidates: DeepFool's options (see :func:`deepfool`).
        held_out: images to measure ``v`` on, an ``(images, labels)`` pair, or an ImageSet (its
            labels are used; give ``.images`` for the paper's fooling rate).
        seed: seeds the order of the points in every pass.
        batch_size: points whose DeepFool runs together (1: exactly Algorithm 1), the mini-batch of
            ``method="sgd"``, and images per forward pass when measuring.
        method: ``"deepfool"`` (the paper's Algorithm 1) or ``"sgd"`` (the gradient variant).
        step_size: the step of ``method="sgd"`` (default ``eps / 4``).
        progress: show a progress bar over the passes.

    Returns:
        :class:`UniversalResult`.

    Example:
        >>> u = universal(model, train.images, eps=10/255, held_out=test.images)   # doctest: +SKIP
        >>> u.held_out_fooling_rate, u.apply(test.images).shape                   # doctest: +SKIP
    """
    norm = check_norm(norm)
    passes = positive_int("passes", passes)
    fooling = number("fooling", fooling)
    if fooling > 1:
        raise InputError(f"fooling: expected a share in [0, 1], got {fooling!r}")
    overshoot = number("overshoot", overshoot)
    deepfool_steps = positive_int("deepfool_steps", deepfool_steps)
    candidates = positive_int("candidates", candidates)
    batch_size = positive_int("batch_size", batch_size)
    method = choice("method", method, ("deepfool", "sgd"))
    from tqdm.auto import tqdm

    with attacking(model):
        p = _problem(model, check_inputs(model, inputs), labels, batch_size)
        x, y, n = p.x, p.labels, len(p.x)
        shape = tuple(x.shape[1:])
        eps = check_eps(eps, norm, shape)
        step_size = number("step_size", eps / 4 if step_size is None else step_size)
        q = None if held_out is None else _problem(model, *_split(held_out, model, shape), batch_size)
        g = generator(seed)
        v = torch.zeros(shape, device=x.device)
        scores = p.logits  # of clip(x + v), [N, K]
        rate = float((scores.argmax(1) != y).float().mean())
        history: list[float] = []
        check = GradientCheck(n, x.device)
        attempted = torch.zeros(n, dtype=torch.bool, device=x.device)
        queries, gradients, updates = n, 0, 0
        bar = tqdm(total=passes, desc="universal", disable=not progress, leave=False)
        while rate < fooling and len(history) < passes:
            order = torch.randperm(n, generator=g).to(x.device)
            for s in batches(n, batch_size):
                rows = order[s]
                if method == "sgd":
                    v = _sgd_step(model, x[rows], y[rows], v, eps=eps, norm=norm, step_size=step_size, check=check,
                                  rows=rows)
                    attempted[rows] = True
                    queries, gradients, updates = queries + len(rows), gradients + len(rows), updates + 1
                    continue
                xv = (x[rows] + v).clamp(0, 1)
                with torch.no_grad():
                    out = model(xv).float()
                queries += len(rows)
                keep = out.argmax(1) == y[rows]
                if not keep.any():
                    continue
                rows, xv, out = rows[keep], xv[keep], out[keep]
                attempted[rows] = True
                run = deepfool_run(model, xv, y[rows], out, steps=deepfool_steps, overshoot=overshoot,
                                   candidates=candidates, norm="l2", check=check, rows=rows)
                queries, gradients = queries + run.forwards, gradients + run.backwards
                for dv in (run.adversarial - xv)[run.success]:  # Algorithm 1's update, projected after each step
                    v = project((v + dv)[None], eps, norm)[0]
                    updates += 1
            scores = _perturbed(model, x, batch_size, v)
            queries += n
            rate = float((scores.argmax(1) != y).float().mean())
            history.append(rate)
            bar.update(1)
            bar.set_postfix(fooling=f"{rate:.2f}")
        bar.close()
        check.usable |= ~attempted  # only the points DeepFool ran on needed a gradient
        info = {"method": "universal", "variant": method, "eps": eps, "norm": norm, "seed": seed,
                "passes": len(history), **({"step_size": step_size} if method == "sgd" else {}),
                "max_passes": passes, "fooling": fooling, "overshoot": overshoot, "deepfool_steps": deepfool_steps,
                "candidates": candidates, "batch_size": batch_size, "queries": queries, "gradients": gradients,
                "updates": updates, "masked": check.warn("universal")}
        if q is None:
            result, held_rate = finish(model, p, x + v, info, logits=scores), None
        else:
            result = finish(model, q, q.x + v, info, logits=_perturbed(model, q.x, batch_size, v))
            held_rate = result.success_rate
    return UniversalResult(perturbation=v, fooling_rate=rate, held_out_fooling_rate=held_rate, result=result,
                           history=history, eps=eps, norm=norm, info=info)


# ---------------------------------------------------------------------------- adversarial patches


def _mask(shape: str, h: int, w: int, device: torch.device) -> torch.Tensor:
    """``[1, h, w]`` the patch's opacity: ones (square) or the inscribed disk (circle)."""
    if shape == "square":
        return torch.ones(1, h, w, device=device)
    yy = (torch.arange(h, device=device) + 0.5 - h / 2) / (h / 2)
    xx = (torch.arange(w, device=device) + 0.5 - w / 2) / (w / 2)
    return ((yy[:, None] ** 2 + xx[None, :] ** 2) <= 1).float()[None]


def _paste(x: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor, position: torch.Tensor, scale: torch.Tensor,
           angle: torch.Tensor) -> torch.Tensor:
    """Paste ``patch * mask`` onto every image of ``x``, differentiably in ``patch``.

    Per image: ``position [N, 2]`` (row, col) in ``[0, 1]`` places the centre so that the
    rotated, scaled patch's bounding box stays inside the image (0: top/left edge, 1:
    bottom/right edge); ``scale [N]`` multiplies the patch's side in pixels; ``angle [N]``
    (radians) turns it counter-clockwise on screen. Each output pixel centre is mapped back into
    the patch frame and sampled bilinearly (``grid_sample``, zero outside), for the patch
    premultiplied by its mask and for the mask; the composite is
    ``x * (1 - m) + sample(patch * mask)``: alpha compositing, exact outside the footprint.
    """
    n, _, H, W = x.shape
    h, w = patch.shape[1:]
    cos, sin = torch.cos(angle), torch.sin(angle)
    extent_y = scale * (h * cos.abs() + w * sin.abs())  # the rotated patch's bounding box
    extent_x = scale * (w * cos.abs() + h * sin.abs())
    cy = H / 2 + (position[:, 0] - 0.5) * (H - extent_y).clamp_min(0)
    cx = W / 2 + (position[:, 1] - 0.5) * (W - extent_x).clamp_min(0)
    ys = torch.arange(H, device=x.device, dtype=x.dtype) + 0.5
    xs = torch.arange(W, device=x.device, dtype=x.dtype) + 0.5
    dy = ys[None, :, None] - cy[:, None, None]  # [N, H, 1]
    dx = xs[None, None, :] - cx[:, None, None]  # [N, 1, W]
    c, s, k = cos[:, None, None], sin[:, None, None], scale[:, None, None]
    u = (c * dx - s * dy) / k  # patch frame (pixels from its centre): the inverse of the rotation and scale
    v = (s * dx + c * dy) / k
    grid = torch.stack([2 * u / w, 2 * v / h], -1)  # grid_sample's [-1, 1] with align_corners=False
    stack = torch.cat([patch * mask, mask])[None].expand(n, -1, -1, -1)
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    placed, m = out[:, :-1], out[:, -1:]
    return (x * (1 - m) + placed).clamp(0, 1)


def _draws(n: int, g: torch.Generator, scale: tuple[float, float], rotate: float,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` random placements (position, scale, angle in radians), drawn on the CPU (device-independent)."""
    position = torch.rand(n, 2, generator=g)
    factor = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=g)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(rotate)
    return position.to(device), factor.to(device), angle.to(device)


def _per_image(name: str, value: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).to(device).flatten()
    if t.numel() not in (1, n) or not torch.isfinite(t).all():
        raise InputError(f"{name}: expected a finite number or one per image ({n}), got {t.numel()} values")
    return t.expand(n)


def _check_patch(patch: torch.Tensor, channels: int) -> torch.Tensor:
    if not isinstance(patch, torch.Tensor) or patch.ndim != 3 or patch.shape[0] != channels \
            or not patch.is_floating_point():
        raise InputError(f"patch: expected a float [{channels}, h, w] tensor, got "
                         f"{tuple(patch.shape) if isinstance(patch, torch.Tensor) else type(patch).__name__}")
    pixels(patch.detach(), "patch")
    return patch.float()


def apply_patch(images: torch.Tensor, patch: torch.Tensor, *,
                position: tuple[float, float] | torch.Tensor | None = None, scale: float | torch.Tensor = 1.0,
                angle: float | torch.Tensor = 0.0, shape: str = "square", seed: int = 0) -> torch.Tensor:
    """Paste ``patch`` onto every image (Brown et al. 2017's ``A(p, x, l, t)``), bilinearly.

    ``position`` ``(row, col)`` in ``[0, 1]`` places the patch so that its rotated, scaled
    bounding box stays inside the image: ``(0, 0)`` is the top-left corner, ``(1, 1)`` the
    bottom-right, so with ``scale=1, angle=0`` the patch's top-left pixel lands at
    ``(row * (H - h), col * (W - w))``, and at an integer pixel the patch is pasted exactly.
    ``None``: a uniform random position per image, seeded with ``seed``. ``scale`` multiplies the
    patch's side; ``angle`` (degrees) turns it counter-clockwise; both may be given per image
    ``[N]`` (``position`` as ``[N, 2]``). ``shape="circle"`` keeps only the disk inscribed in the
    patch. Pixels outside the patch's footprint are returned unchanged; on its border the patch
    is blended by its coverage. The result is differentiable in ``patch`` (and ``images``).

    Args:
        images: ``[N, C, H, W]`` pixels in ``[0, 1]``.
        patch: ``[C, h, w]`` pixels in ``[0, 1]``.

    Returns:
        ``[N, C, H, W]`` patched images in ``[0, 1]``.

    Example:
        >>> x = torch.zeros(1, 3, 8, 8)
        >>> out = apply_patch(x, torch.ones(3, 2, 2), position=(0.5, 0.5))
        >>> out[0, 0, 3:5, 3:5].tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0 \
            or not images.is_floating_point():
        raise InputError(f"images: expected a non-empty float [N, C, H, W] tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    pixels(images.detach(), "images")
    x = images.float()
    patch = _check_patch(patch, x.shape[1]).to(x)
    shape = choice("shape", shape, SHAPES)
    n = len(x)
    if position is None:
        pos = torch.rand(n, 2, generator=generator(seed)).to(x.device)
    else:
        pos = torch.as_tensor(position, dtype=torch.float32).to(x.device)
        pos = pos.expand(n, 2) if pos.shape == (2,) else pos
        if pos.shape != (n, 2) or not ((pos >= 0) & (pos <= 1)).all():
            raise InputError(f"position: expected (row, col) fractions in [0, 1], or one pair per image, got "
                             f"{position!r}")
    factor = _per_image("scale", scale, n, x.device)
    if not (factor > 0).all():
        raise InputError(f"scale: expected a positive factor, got {scale!r}")
    turn = _per_image("angle", angle, n, x.device) * (math.pi / 180)
    return _paste(x, patch, _mask(shape, *patch.shape[1:], x.device), pos, factor, turn)


@dataclass(repr=False)
class PatchResult(Result):
    """What :func:`patch` returns.

    Attributes:
        patch: ``[C, h, w]`` the learnt patch, pixels in ``[0, 1]``.
        target: the class it pushes to.
        success_rate: share of the evaluated images classified as ``target`` once patched (see
            :func:`patch`); ``result.success_rate``.
        result: :class:`AttackResult` of the patched evaluation images (``target`` set).
        history: mean ``log p(target)`` over each step's batch of placements, during training.
        info: ``seed``, ``steps``, ``placements`` (training placements), ``evaluated``,
            ``excluded`` (images already of the target class) and the options.
    """

    patch: torch.Tensor
    target: int
    success_rate: float
    result: AttackResult
    history: list[float]
    info: dict[str, Any] = field(default_factory=dict)

    def apply(self, images: torch.Tensor, **options: Any) -> torch.Tensor:
        """:func:`apply_patch` with this patch (and its ``shape``); ``options`` as there."""
        options.setdefault("shape", self.info.get("shape", "square"))
        return apply_patch(images, self.patch, **options)

    def scalars(self) -> dict[str, Any]:
        """The target, the success rate on the evaluated images, the patch's side and the training run."""
        return {"target": self.target, "success_rate": self.success_rate, "evaluated": self.info.get("evaluated"),
                "side": self.info.get("side"), "shape": self.info.get("shape"), "steps": self.info.get("steps"),
                "seed": self.info.get("seed")}

    def figure(self, **kwargs: Any):
        """The patched evaluation images in the lectures' three panels (:meth:`AttackResult.figure` of
        :attr:`result`; ``kwargs`` go to :func:`underhood.viz.adversarial.attack_figure`)."""
        return self.result.figure(**kwargs)


def _check_target(target: object, classes: int) -> int:
    if isinstance(target, bool) or not isinstance(target, int):
        raise InputError(f"target: expected one class index (an int), got {target!r}")
    if not 0 <= target < classes:
        raise InputError(f"target: class {target} is out of range for a model with {classes} outputs "
                         f"(0..{classes - 1})")
    return target


def _check_scale(scale: object) -> tuple[float, float]:
    ok = isinstance(scale, Sequence) and not isinstance(scale, str) and len(scale) == 2 and all(
        isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scale)
    if not ok or not 0 < scale[0] <= scale[1]:
        raise InputError(f"scale: expected a (low, high) pair of relative scales with 0 < low <= high, got {scale!r}")
    return float(scale[0]), float(scale[1])


def patch(model: nn.Module, inputs: torch.Tensor, target: int, *, size: float = 0.3,
          scale: tuple[float, float] = (0.8, 1.2), rotate: bool | float = True, shape: str = "square",
          steps: int = 100, lr: float = 0.05, batch_size: int = 16, held_out: Any = None, seed: int = 0,
          progress: bool = False) -> PatchResult:
    """A universal, targeted adversarial patch (Brown, Mane, Roy, Abadi & Gilmer 2017, "Adversarial Patch").

    Learns ``p`` maximising ``E_{x, l, t}[log Pr(target | A(p, x, l, t))]``, the expectation over
    images ``x`` of ``inputs``, locations ``l`` and transformations ``t`` (scale, rotation) of the
    patch pasted onto the image by :func:`apply_patch`. Each of ``steps`` Adam steps (``lr``)
    draws ``batch_size`` images with replacement, each with a uniform random position (the
    whole patch inside the image), a scale uniform in ``scale`` and an angle uniform in
    ``[-rotate, rotate]`` degrees (``True``: 180, any angle; ``False``: 0), and ascends the mean log
    probability. Placement is bilinear resampling (``grid_sample``) of the patch and its mask,
    so the gradient reaches every patch pixel through rotation and scale. The patch starts
    uniform at random and is clipped to ``[0, 1]`` after every step. All draws come from ``seed``.

    Conventions: ``size`` is the patch's side as a fraction of the image's shorter side (Brown
    et al. quote the *area*: ``size = 0.3`` covers 9% of a square image, ``sqrt(0.1) = 0.316``
    their 10%); ``scale`` is relative to that side. The patch is square (``shape="circle"``:
    the inscribed disk, as in the paper's printed sticker).

    Evaluation: the patch is pasted once onto every ``held_out`` image (default: ``inputs``) at a
    fresh random placement drawn from the same distribution with seed ``seed + 1``. Images whose
    label (given with ``held_out``, else the clean prediction) is already ``target`` are left
    out: they would count as successes without any patch. ``success_rate`` is the share of the
    others classified as ``target``.

    Cost: ``steps`` forward and backward passes of ``batch_size`` images, one forward pass of the
    evaluation images (and of the clean ones when their labels are not given). On the built-in
    shapes model, with the defaults and 256 training images, the patch (9% of the image) turns
    100% of held-out images into a "cross", 86% into a "tee", 41% into a "circle" and 3% into a
    "triangle".

    Args:
        inputs: ``[N, C, H, W]`` pixels in ``[0, 1]``: the images the patch is trained on.
        target: the class to reach, one int.
        size: the patch's side, a fraction in ``(0, 1]`` of the image's shorter side.
        scale: ``(low, high)`` range of the random relative scale, ``0 < low <= high``.
        rotate: the largest random rotation in degrees, ``True`` for any angle, ``False`` for none.
        shape: ``"square"`` or ``"circle"``.
        held_out: evaluation images, an ``(images, labels)`` pair, or an ImageSet.
        batch_size: images per training step, and per forward pass when evaluating.
        progress: show a progress bar over the steps.

    Returns:
        :class:`PatchResult`.

    Example:
        >>> r = patch(model, train.images, target=0, held_out=test)      # doctest: +SKIP
        >>> r.success_rate, r.apply(test.images[:4], position=(0, 0))     # doctest: +SKIP
    """
    size = number("size", size, strict=True)
    if size > 1:
        raise InputError(f"size: expected the patch's side as a fraction in (0, 1] of the image side, got {size!r}")
    scale = _check_scale(scale)
    rotate = (180.0 if rotate else 0.0) if isinstance(rotate, bool) else number("rotate", rotate)
    shape = choice("shape", shape, SHAPES)
    steps = positive_int("steps", steps)
    lr = number("lr", lr, strict=True)
    batch_size = positive_int("batch_size", batch_size)
    from tqdm.auto import tqdm

    with attacking(model):
        x = check_inputs(model, inputs)
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        target = _check_target(target, classes)
        xe, labels = _split(held_out, model, tuple(x.shape[1:])) if held_out is not None else (x, None)
        labels = logits(model, xe, batch_size).argmax(1) if labels is None else \
            _classes(labels, len(xe), classes, xe.device, "labels", "None for the model's predictions")
        keep = labels != target
        if not keep.any():
            raise InputError(f"held_out: every image is already of class {target}; evaluate on images of other "
                             "classes")
        side = max(1, round(size * min(x.shape[2:])))
        g = generator(seed)
        p = torch.rand(x.shape[1], side, side, generator=g).to(x.device).requires_grad_(True)
        mask = _mask(shape, side, side, x.device)
        opt = torch.optim.Adam([p], lr=lr)
        goal = torch.full((batch_size,), target, device=x.device)
        history = []
        check = GradientCheck(1, x.device)
        for _ in tqdm(range(steps), desc="patch", disable=not progress, leave=False):
            rows = torch.randint(len(x), (batch_size,), generator=g).to(x.device)
            placed = _paste(x[rows], p, mask, *_draws(batch_size, g, scale, rotate, x.device))
            log_prob = -F.cross_entropy(model(placed), goal)
            opt.zero_grad(set_to_none=True)
            (-log_prob).backward()
            check.update(p.grad[None])
            opt.step()
            with torch.no_grad():
                p.clamp_(0, 1)
            history.append(log_prob.detach())
        p, history = p.detach(), torch.stack(history).tolist()
        info = {"method": "patch", "seed": seed, "steps": steps, "placements": steps * batch_size, "size": size,
                "side": side, "scale": scale, "rotate": rotate, "shape": shape, "lr": lr, "batch_size": batch_size,
                "masked": check.warn("patch")}
        # the placements are drawn for every image, so an image's placement does not depend on the others' labels
        draws = _draws(len(xe), generator(seed + 1), scale, rotate, xe.device)
        with torch.no_grad():
            patched = _paste(xe, p, mask, *draws)
        q = Problem(xe[keep], labels[keep], torch.full_like(labels[keep], target), classes)
        info.update(evaluated=int(keep.sum()), excluded=int((~keep).sum()))
        result = finish(model, q, patched[keep], info, logits=logits(model, patched[keep], batch_size))
    return PatchResult(patch=p, target=target, success_rate=result.success_rate, result=result, history=history,
                       info=info)
