"""Budgeted gradient attacks: the lecture's gradient ascent, FGSM and PGD.

Each step costs one batched forward and backward pass; success is read from the logits
that pass already computed, so PGD with ``k`` steps costs ``k`` passes plus one forward of
the final iterates (and one of the clean inputs when their predictions serve as labels).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.checks import choice, number, positive_int, with_preset
from ..core.seeding import generator
from .base import (
    LOSSES,
    AttackResult,
    GradientCheck,
    Labels,
    attacking,
    check_eps,
    check_norm,
    col,
    finish,
    is_adversarial,
    objective,
    setup,
)

OPTIMIZERS = ("sgd", "adam")


def direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit ``norm``: ``sign(g)`` (L-inf) or ``g / ||g||_2`` (L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / col(grad.flatten(1).norm(dim=1).clamp_min(1e-12))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``delta`` projected onto the ``norm`` ball of radius ``eps`` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return delta * col(scale)


def ball_noise(shape: torch.Size, eps: float, norm: str, g: torch.Generator) -> torch.Tensor:
    """Uniform noise in the ``norm`` ball of radius ``eps``, drawn on the CPU (device-independent).

    L-inf: uniform in the cube (Madry et al.); L2: uniform in the ball (a Gaussian direction and
    radius ``eps * u^(1/d)``).
    """
    if norm == "linf":
        return (torch.rand(shape, generator=g) * 2 - 1) * eps
    d = torch.randn(shape, generator=g)
    d = d / col(d.flatten(1).norm(dim=1).clamp_min(1e-12))
    radius = torch.rand(shape[0], generator=g).pow(1.0 / math.prod(shape[1:]))
    return d * col(eps * radius)


GRADIENT_ASCENT_DEFAULTS: dict[str, object] = {"steps": 15, "lr": 0.1, "optimizer": "sgd"}
""":func:`gradient_ascent`'s options when neither the call nor a preset sets them."""

GRADIENT_ASCENT_PRESETS: dict[str, dict[str, object]] = {
    "lecture": {"steps": 15, "lr": 0.1, "optimizer": "sgd"},  # EE-559, "Under the hood", slide 79/89
}
"""Named settings of :func:`gradient_ascent`: ``preset="lecture"`` is the EE-559 lecture's code (``optim.SGD``,
``lr = 1e-1``, ``for k in range(15)``), fixed even if our defaults change."""


def gradient_ascent_options(preset: str | None = None, **options: object) -> dict[str, object]:
    """The options :func:`gradient_ascent` runs with: those given (not None), then the preset's
    (:data:`GRADIENT_ASCENT_PRESETS`), then :data:`GRADIENT_ASCENT_DEFAULTS`."""
    return with_preset("gradient ascent", preset, GRADIENT_ASCENT_DEFAULTS, GRADIENT_ASCENT_PRESETS, options)


def gradient_ascent(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, steps: int | None = None,
                    lr: float | None = None, optimizer: str | None = None, target: Labels = None, seed: int = 0,
                    preset: str | None = None) -> AttackResult:
    """Gradient ascent on the loss of the true class, as in the EE-559 lecture (Fleuret, "Under the hood").

    ``x_{k+1} = clip_[0,1](x_k + lr * grad_x CE(f(x_k), y))``: an optimiser (``"sgd"`` as in the
    lecture's code, or ``"adam"``) minimises the *negative* cross-entropy of ``labels`` (targeted:
    the cross-entropy of ``target``) for ``steps`` iterations, without a budget; the image is
    clamped to the box after every step. The loss is summed over the batch, so each image takes
    the step it would take alone (the lecture's ``CrossEntropyLoss`` averages; for one image they
    agree). The defaults are the lecture's (SGD, ``lr = 0.1``, 15 steps). On a confident model the
    cross-entropy's gradient, ``(1 - p_y)`` times the logit gradients, starts tiny, so SGD idles and
    then leaps (on the built-in shapes model: 60% of images flipped, median L-inf 70/255); Adam,
    scale-free, gives small perturbations (``optimizer="adam", lr=0.003``: 97% flipped at a median
    L-inf of 12/255). Nothing is random: ``seed`` is only recorded. ``preset="lecture"``
    (:data:`GRADIENT_ASCENT_PRESETS`) names the lecture's settings explicitly; options given in the
    call win over the preset's.

    Returns:
        :class:`AttackResult` whose ``history`` ``[steps + 1, N]`` holds the predicted class at
        every iteration (row 0: the clean input): the lecture's "predicted classes" table.

    Example:
        >>> r = gradient_ascent(model, x, steps=15)      # doctest: +SKIP
        >>> r.history[:, 0]                               # doctest: +SKIP
    """
    opts = gradient_ascent_options(preset, steps=steps, lr=lr, optimizer=optimizer)
    steps = positive_int("steps", opts["steps"])
    lr = number("lr", opts["lr"], strict=True)
    optimizer = choice("optimizer", opts["optimizer"], OPTIMIZERS)
    with attacking(model):
        p = setup(model, inputs, labels, target)
        x = p.x.clone().requires_grad_(True)
        opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)([x], lr=lr)
        history = torch.empty(steps + 1, len(x), dtype=torch.long, device=x.device)
        check = GradientCheck(len(x), x.device)
        for k in range(steps):
            logits = model(x)
            history[k] = logits.detach().argmax(1)
            opt.zero_grad(set_to_none=True)
            (-objective(logits, p.labels, p.target, "ce").sum()).backward()
            check.update(x.grad)
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        info = {"method": "gradient_ascent", "steps": steps, "lr": lr, "optimizer": optimizer, "seed": seed,
                "masked": check.warn("gradient_ascent"), **({"preset": preset} if preset is not None else {})}
        result = finish(model, p, x.detach(), info, history=history)
    history[steps] = result.predicted
    return result


def fgsm(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, eps: float | str = 8 / 255,
         target: Labels = None, loss: str = "ce", random_start: bool = False, step_size: float | None = None,
         seed: int = 0) -> AttackResult:
    """Fast gradient sign method (Goodfellow, Shlens & Szegedy 2015).

    Untargeted: ``x' = clip_[0,1](x + eps * sign(grad_x L(x, y)))``; targeted (Kurakin et al.
    2017): ``x' = clip_[0,1](x - eps * sign(grad_x L(x, t)))``. ``L`` is the cross-entropy
    (``loss="ce"``) or the logit margin (``"margin"``). With ``random_start`` the gradient is
    taken at ``x + U(-eps, eps)`` and the step (``step_size``, default ``1.25 * eps`` as in
    Wong, Rice & Kolter 2020's fast adversarial training) is projected back into the
    ``eps`` cube; the noise is seeded with ``seed``.

    Returns:
        :class:`AttackResult`; ``|perturbation|_inf <= eps``.

    Example:
        >>> r = fgsm(model, x, eps=8/255)       # doctest: +SKIP
        >>> r.accuracy                           # doctest: +SKIP
    """
    loss = choice("loss", loss, LOSSES)
    with attacking(model):
        p = setup(model, inputs, labels, target)
        eps = check_eps(eps, "linf", tuple(p.x.shape[1:]))
        if step_size is None:
            step_size = 1.25 * eps if random_start else eps
        step_size = number("step_size", step_size)
        start = p.x.clone()
        if random_start:
            start = (start + ball_noise(p.x.shape, eps, "linf", generator(seed)).to(start)).clamp(0, 1)
        start.requires_grad_(True)
        value = objective(model(start), p.labels, p.target, loss)
        (grad,) = torch.autograd.grad(value.sum(), start)
        check = GradientCheck(len(start), start.device)
        check.update(grad)
        delta = (start.detach() + step_size * grad.sign() - p.x).clamp(-eps, eps)
        info = {"method": "fgsm", "eps": eps, "norm": "linf", "loss": loss, "random_start": bool(random_start),
                "step_size": step_size, "seed": seed, "masked": check.warn("fgsm")}
        return finish(model, p, (p.x + delta).clamp(0, 1), info)


def _pgd_run(model: nn.Module, x0: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None,
             x: torch.Tensor, *, eps: float, norm: str, step_size: float, steps: int, loss: str,
             check: GradientCheck, rows: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """One PGD run from ``x``: ``(candidates, their logits, success [N], final objective [N])``.

    The candidate of a sample is its last iterate if that fools the model, else the first
    iterate that did (read from the logits of the step's own forward pass), else the last.
    """
    hit = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
    first, first_logits = x0, None
    for _ in range(steps):
        x.requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(objective(logits, labels, target, loss).sum(), x)
        x, logits = x.detach(), logits.detach()
        ok = is_adversarial(logits, labels, target)
        new = ok & ~hit
        first = torch.where(col(new), x, first)
        first_logits = logits if first_logits is None else torch.where(new[:, None], logits, first_logits)
        hit |= ok
        check.update(grad, rows)
        x = (x0 + project(x + step_size * direction(grad, norm) - x0, eps, norm)).clamp(0, 1)
    with torch.no_grad():
        logits = model(x)
    ok = is_adversarial(logits, labels, target)
    last = ok | ~hit
    return (torch.where(col(last), x, first), torch.where(last[:, None], logits, first_logits), ok | hit,
            objective(logits, labels, target, loss))


def pgd(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, eps: float | str = 8 / 255,
        norm: str = "linf", steps: int = 20, step_size: float | None = None, restarts: int = 1,
        random_start: bool = True, target: Labels = None, loss: str = "ce", seed: int = 0) -> AttackResult:
    """Projected gradient descent (Madry et al. 2018) in the L-inf or L2 ball of radius ``eps``.

    ``x_{k+1} = clip_[0,1](x + P_eps(x_k + a * d(grad L) - x))`` where ``d`` is ``sign`` (L-inf)
    or the L2-normalised gradient, ``P_eps`` the projection onto the ball, ``L`` the loss of
    :func:`fgsm` (targeted: minus the target's loss), and ``a = step_size`` (default
    ``2.5 * eps / steps``, Madry et al.'s choice). Each run starts from a uniform point of the
    ball (``random_start``, seeded with ``seed``); ``restarts`` further runs attack only the
    samples no earlier run fooled. Per sample the result is the last iterate if it fools the
    model, else the first iterate that did, else the iterate with the highest loss over runs.

    Cost: ``steps`` batched forward+backward passes per run, one forward pass of the last
    iterates, and one of the clean inputs when ``labels`` is None; no per-step device sync.

    Returns:
        :class:`AttackResult`; ``||perturbation||_norm <= eps`` and every pixel in ``[0, 1]``.

    Example:
        >>> r = pgd(model, x, y, eps=8/255, steps=20)             # doctest: +SKIP
        >>> r = pgd(model, x, y, eps=0.5, norm="l2", target=3)    # doctest: +SKIP
    """
    norm = check_norm(norm)
    steps = positive_int("steps", steps)
    restarts = positive_int("restarts", restarts)
    loss = choice("loss", loss, LOSSES)
    with attacking(model):
        p = setup(model, inputs, labels, target)
        eps = check_eps(eps, norm, tuple(p.x.shape[1:]))
        step_size = number("step_size", 2.5 * eps / steps if step_size is None else step_size)
        n, device = len(p.x), p.x.device
        g = generator(seed)
        adv, found = p.x.clone(), torch.zeros(n, dtype=torch.bool, device=device)
        adv_logits = torch.zeros(n, p.classes, device=device)
        best = torch.full((n,), -torch.inf, device=device)
        check = GradientCheck(n, device)
        for run in range(restarts):
            # noise is drawn for every sample in every run, so a sample's start does not depend on the others
            noise = ball_noise(p.x.shape, eps, norm, g).to(device) if random_start else None
            rows = (~found).nonzero().squeeze(1) if run else torch.arange(n, device=device)
            if len(rows) == 0:
                break
            x0 = p.x[rows]
            start = x0.clone() if noise is None else (x0 + noise[rows]).clamp(0, 1)
            target_rows = None if p.target is None else p.target[rows]
            cand, cand_logits, ok, value = _pgd_run(model, x0, p.labels[rows], target_rows, start, eps=eps, norm=norm,
                                                    step_size=step_size, steps=steps, loss=loss, check=check,
                                                    rows=rows if run else None)
            take = ok | (value > best[rows]) | best[rows].isneginf()  # the first run sets every sample
            adv[rows] = torch.where(col(take), cand, adv[rows])
            adv_logits[rows] = torch.where(take[:, None], cand_logits.float(), adv_logits[rows])
            best[rows] = torch.where(take, value, best[rows])
            found[rows] = ok
        info = {"method": "pgd", "eps": eps, "norm": norm, "steps": steps, "step_size": step_size,
                "restarts": restarts, "random_start": bool(random_start), "loss": loss, "seed": seed,
                "masked": check.warn("pgd")}
        return finish(model, p, adv, info, logits=adv_logits)
