"""Minimal-perturbation attacks: DeepFool, Carlini & Wagner L2, and Szegedy et al.'s box-constrained L-BFGS.

They have no budget: each looks for the smallest perturbation that changes the decision, so
their per-sample norms measure how far every input lies from the decision boundary (see
:func:`underhood.adversarial.robustness_curve`). A sample the attack cannot fool comes back
unchanged with ``success=False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import number, positive_int
from .base import (
    AttackResult,
    GradientCheck,
    Labels,
    attacking,
    check_norm,
    col,
    finish,
    is_adversarial,
    margin,
    setup,
)

# ---------------------------------------------------------------------------- DeepFool


def deepfool(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, steps: int = 50,
             overshoot: float = 0.02, norm: str = "l2", candidates: int = 10, seed: int = 0) -> AttackResult:
    """DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016), multi-class, batched.

    At ``x_i`` the classifier is linearised: for each candidate class ``k`` with
    ``f'_k = z_k - z_y`` and ``w'_k = grad f'_k``, the closest linearised boundary is
    ``l = argmin_k |f'_k| / ||w'_k||_q`` and the step to it is
    ``r_i = |f'_l| / ||w'_l||_2^2 * w'_l`` (L2) or ``|f'_l| / ||w'_l||_1 * sign(w'_l)`` (L-inf),
    with ``1e-4`` added to ``|f'_l|`` as in the authors' code (so that a step always crosses).
    Steps add up in ``r``; each iterate is ``clip_[0,1](x + (1 + overshoot) r)``, as in the
    authors' code, and a sample stops as soon as its iterate is misclassified (per-sample done
    masks; finished samples cost nothing more). ``y`` is ``labels`` (default: the clean
    prediction); candidates are ``y`` and the ``candidates - 1`` other classes that score highest
    on the clean input (the paper's practice on ImageNet; all classes for small models). On an
    affine classifier one step lands on the boundary: ``r = -f(x) w / ||w||^2``. The box clip is
    our addition (the paper ignores the box); it can cost extra iterations. Not targeted.
    Nothing is random: ``seed`` is only recorded. DeepFool is fast (2-9 iterations on the
    built-in shapes model) but greedy: its norms there are about 1.5x Carlini & Wagner's.

    Cost per iteration: one forward and ``candidates - 1`` backward passes of the unfinished samples.

    Returns:
        :class:`AttackResult`; ``info["iterations"]`` ``[N]`` counts each sample's steps.

    Example:
        >>> r = deepfool(model, x)                 # doctest: +SKIP
        >>> r.norms["l2"].median()                 # doctest: +SKIP
    """
    norm = check_norm(norm)
    steps = positive_int("steps", steps)
    overshoot = number("overshoot", overshoot)
    candidates = positive_int("candidates", candidates)
    with attacking(model):
        p = setup(model, inputs, labels, clean=True)
        check = GradientCheck(len(p.x), p.x.device)
        run = deepfool_run(model, p.x, p.labels, p.logits, steps=steps, overshoot=overshoot, candidates=candidates,
                           norm=norm, check=check)
        check.usable |= run.success & (run.iterations == 0)  # misclassified from the start: no gradient needed
        info = {"method": "deepfool", "norm": norm, "steps": steps, "overshoot": overshoot,
                "candidates": max(2, min(candidates, p.classes)), "seed": seed, "iterations": run.iterations,
                "masked": check.warn("deepfool")}
        return finish(model, p, run.adversarial, info)


class DeepFoolRun(NamedTuple):
    """What :func:`deepfool_run` returns."""

    adversarial: torch.Tensor  # [B, C, H, W] the last iterates clip_[0,1](x + (1 + overshoot) r)
    success: torch.Tensor  # [B] bool: the last iterate is not classified as y
    iterations: torch.Tensor  # [B] steps taken per sample
    forwards: int  # images forwarded
    backwards: int  # per-image backward passes


def deepfool_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, *, steps: int,
                 overshoot: float, candidates: int, norm: str, check: GradientCheck,
                 rows: torch.Tensor | None = None) -> DeepFoolRun:
    """DeepFool's iterations from ``x`` ``[B, C, H, W]`` away from ``y`` ``[B]`` (see :func:`deepfool`), in the
    model's current mode: the loop that :func:`deepfool` and :func:`~underhood.adversarial.universal` share.

    ``logits`` ``[B, K]`` are those of ``x``: the candidates are ``y`` and the ``candidates - 1`` best other
    classes there. Each input gradient is recorded in ``check``, at row ``rows[i]`` for sample ``i``
    (default: ``i``). The last pass only checks the final iterates, without a graph.
    """
    n = len(x)
    m = max(2, min(candidates, logits.shape[1]))
    others = logits.scatter(1, y[:, None], -torch.inf).argsort(1, descending=True)[:, :m - 1]
    cls = torch.cat([y[:, None], others], 1)  # [B, m]: the label first
    rows = torch.arange(n, device=x.device) if rows is None else rows
    r_tot = torch.zeros_like(x)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    forwards = backwards = 0
    for it in range(steps + 1):  # the last pass only checks the final iterates
        active = (~done).nonzero().squeeze(1)
        if len(active) == 0:
            break
        xa = (x[active] + (1 + overshoot) * r_tot[active]).clamp(0, 1).requires_grad_(it < steps)
        with torch.set_grad_enabled(it < steps):
            out = model(xa)
        forwards += len(active)
        fooled = out.detach().argmax(1) != y[active]
        done[active] |= fooled
        if it == steps:
            break
        r, w = _deepfool_step(out, xa, cls[active], norm)
        backwards += (m - 1) * len(active)
        check.update(w[~fooled], rows[active[~fooled]])
        r_tot[active] += torch.where(col(fooled), 0.0, r)
        iterations[active] += (~fooled).long()
    return DeepFoolRun((x + (1 + overshoot) * r_tot).clamp(0, 1), done, iterations, forwards, backwards)


def _deepfool_step(logits: torch.Tensor, x: torch.Tensor, cls: torch.Tensor,
                   norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepFool's step to the nearest linearised boundary: ``(r [A, C, H, W], w'_l [A, C, H, W])``.

    ``cls`` ``[A, m]`` holds the label ``y`` first, then the other candidates ``k``. One backward pass per
    candidate: ``w'_k = grad (z_k - z_y)`` directly, not as a difference of two gradients. ``||.||_q`` is the
    dual of ``norm``: L2 for L2 steps, L1 for L-inf steps.
    """
    z = logits.gather(1, cls)  # [A, m]
    f = z[:, 1:] - z[:, :1]  # [A, m-1], negative while the label wins
    m = f.shape[1]
    w = torch.stack([torch.autograd.grad(f[:, j].sum(), x, retain_graph=j < m - 1)[0] for j in range(m)], 1)
    f = f.detach()
    flat = w.flatten(2)
    size = (flat.norm(dim=2) if norm == "l2" else flat.abs().sum(2)).clamp_min(1e-12)  # dual norm
    pick = (f.abs() / size).argmin(1)
    rows = torch.arange(len(pick), device=pick.device)
    wl, fl, sl = w[rows, pick], f[rows, pick].abs() + 1e-4, size[rows, pick]
    r = col(fl / sl**2) * wl if norm == "l2" else col(fl / sl) * wl.sign()
    return r, wl


# ---------------------------------------------------------------------------- Carlini & Wagner


def _f6(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None, kappa: float) -> torch.Tensor:
    """Carlini & Wagner's f6: ``max(max_{i!=t} Z_i - Z_t, -kappa)`` (targeted) or
    ``max(Z_y - max_{i!=y} Z_i, -kappa)`` (untargeted), ``[N]``."""
    m = -margin(logits, target) if target is not None else margin(logits, labels)
    return m.clamp(min=-kappa)


def cw(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, target: Labels = None,
       kappa: float = 0.0, c: float = 0.1, search_steps: int = 6, steps: int = 200, lr: float = 0.01,
       abort_early: bool = True, seed: int = 0) -> AttackResult:
    """Carlini & Wagner's L2 attack (2017), batched, with a per-sample binary search over ``c``.

    Minimises ``||x' - x||_2^2 + c * f6(x')`` over ``w`` with ``x' = (tanh(w) + 1) / 2`` (the
    tanh change of variables keeps ``x'`` in the box), using Adam (``lr``) for ``steps``
    iterations from ``w = atanh(2x - 1)``. ``f6`` is the clipped logit margin with confidence
    ``kappa`` (see :func:`_f6`). Per sample, the smallest-L2 iterate that is adversarial with
    margin ``kappa`` is kept. The search on ``c`` follows the authors' code: start at ``c``;
    after a success, ``upper = min(upper, c)``; after a failure, ``lower = max(lower, c)``; the
    next ``c`` is ``(lower + upper) / 2`` once an upper bound exists, else ``10 c``. With
    ``abort_early`` a run stops when its loss has not fallen by 0.01% over ``steps // 10``
    iterations (the only device syncs). The paper's defaults (9 searches of 10,000 steps from
    ``c = 1e-3``) are stronger and far slower; ours start at ``c = 0.1``, which suits logits of
    image classifiers in pixel units. Nothing is random: ``seed`` is only recorded.

    Cost: at most ``search_steps * steps`` forward+backward passes of the batch.

    Returns:
        :class:`AttackResult`; failures come back unchanged. ``info["c"]`` is each sample's last
        constant.

    Example:
        >>> r = cw(model, x, y, steps=200, search_steps=6)        # doctest: +SKIP
    """
    kappa = number("kappa", kappa)
    c = number("c", c, strict=True)
    search_steps = positive_int("search_steps", search_steps)
    steps = positive_int("steps", steps)
    lr = number("lr", lr, strict=True)
    with attacking(model):
        p = setup(model, inputs, labels, target)
        x, n = p.x, len(p.x)
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        lower = torch.zeros(n, device=x.device)
        upper = torch.full((n,), torch.inf, device=x.device)
        const = torch.full((n,), c, device=x.device)
        best_d2 = torch.full((n,), torch.inf, device=x.device)
        best = x.clone()
        check = GradientCheck(n, x.device)
        every = max(1, steps // 10)
        for _ in range(search_steps):
            w = w0.clone().requires_grad_(True)  # its gradient is set by hand below
            opt = torch.optim.Adam([w], lr=lr)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            previous = math.inf
            for it in range(steps):
                with torch.no_grad():
                    xa = (torch.tanh(w) + 1) / 2
                xa.requires_grad_(True)
                logits = model(xa)
                penalty = const * _f6(logits, p.labels, p.target, kappa)
                (grad,) = torch.autograd.grad(penalty.sum(), xa)  # the model's part, checked for masking
                ok = is_adversarial(logits.detach(), p.labels, p.target, kappa)
                check.update(grad, expected_zero=ok)
                xa = xa.detach()
                d2 = (xa - x).flatten(1).pow(2).sum(1)
                loss = float((d2 + penalty.detach()).sum()) if abort_early and (it + 1) % every == 0 else 0.0
                # chain rule through x' = (tanh(w) + 1) / 2, with d ||x' - x||^2 / dx' = 2 (x' - x)
                w.grad = (grad + 2 * (xa - x)) * (1 - (2 * xa - 1) ** 2) / 2
                better = ok & (d2 < best_d2)
                best_d2 = torch.where(better, d2, best_d2)
                best = torch.where(col(better), xa, best)
                succeeded |= ok
                opt.step()
                if abort_early and (it + 1) % every == 0:
                    if loss > previous * 0.9999:
                        break
                    previous = loss
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(torch.isfinite(upper), (lower + upper) / 2, const * 10)
        info = {"method": "cw", "norm": "l2", "kappa": kappa, "c": const, "search_steps": search_steps,
                "steps": steps, "lr": lr, "seed": seed, "masked": check.warn("cw")}
        return finish(model, p, best, info)


# ---------------------------------------------------------------------------- Szegedy et al.'s L-BFGS


def _szegedy_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """``loss_f(x + r, l)``: cross-entropy of the target, or ``-log(1 - p_y)`` untargeted, ``[N]``."""
    if target is not None:
        return F.cross_entropy(logits, target, reduction="none")
    others = logits.scatter(1, labels[:, None], -torch.inf)
    return torch.logsumexp(logits, 1) - torch.logsumexp(others, 1)


def _two_loop(g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
              gamma: torch.Tensor) -> torch.Tensor:
    """``H g`` for the L-BFGS inverse-Hessian estimate, per sample (Nocedal & Wright, Alg. 7.4).

    ``pairs`` holds ``(s, y, rho)`` oldest first, flattened ``[N, D]`` with ``rho [N]``; a pair
    with ``rho = 0`` is a no-op for that sample. ``gamma [N]`` scales the initial ``H0 = gamma I``.
    """
    q, alphas = g.clone(), []
    for s, y, rho in reversed(pairs):
        a = rho * (s * q).sum(1)
        q -= a[:, None] * y
        alphas.append(a)
    r = gamma[:, None] * q
    for (s, y, rho), a in zip(pairs, reversed(alphas)):
        b = rho * (y * r).sum(1)
        r += (a - b)[:, None] * s
    return r


Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def minimize_lbfgs(fun: Objective, z: torch.Tensor, *, steps: int, memory: int = 10, first_step: float = 0.1,
                   max_backtracks: int = 10) -> torch.Tensor:
    """Minimise a sum of per-sample objectives over the box ``[0, 1]``: batched projected L-BFGS.

    Every sample has its own curvature pairs, step length and Armijo backtracking line search
    (halving from 1), so the batch behaves as ``N`` independent problems run together.
    ``fun(z, rows)`` returns ``(values [len(rows)], gradients)`` of samples ``rows`` at ``z``
    (one forward and backward pass). Coordinates on a bound whose descent direction points out
    of the box are held (the active set, as in L-BFGS-B); every trial point is clipped into the
    box. The first step has L2 length ``first_step``. A sample stops when its line search fails
    or its objective no longer falls (by more than float32 round-off). Returns the last iterates.
    """
    shape, n = z.shape, len(z)
    z = z.flatten(1).clone()
    f, g = fun(z.view(shape), torch.arange(n, device=z.device))
    g = g.flatten(1)
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    gamma = first_step / g.norm(dim=1).clamp_min(1e-12)
    done = torch.zeros(n, dtype=torch.bool, device=z.device)
    for _ in range(steps):
        d = -_two_loop(g, pairs, gamma)
        d = torch.where(((z <= 0) & (d < 0)) | ((z >= 1) & (d > 0)), 0.0, d)
        slope = (g * d).sum(1)
        steep = slope >= 0  # not a descent direction: fall back to the projected gradient
        if steep.any():
            pg = torch.where(((z <= 0) & (g > 0)) | ((z >= 1) & (g < 0)), 0.0, -g)
            d = torch.where(steep[:, None], gamma[:, None] * pg, d)
            slope = (g * d).sum(1)
        done |= slope >= 0
        t = torch.ones(n, device=z.device)
        new_z, new_f, new_g = z.clone(), f.clone(), g.clone()
        pending = ~done
        for _ in range(max_backtracks):
            rows = pending.nonzero().squeeze(1)
            if len(rows) == 0:
                break
            trial = (z[rows] + t[rows, None] * d[rows]).clamp(0, 1)
            ft, gt = fun(trial.view(len(rows), *shape[1:]), rows)
            accept = ft <= f[rows] + 1e-4 * (g[rows] * (trial - z[rows])).sum(1)
            take = rows[accept]
            new_z[take], new_f[take], new_g[take] = trial[accept], ft[accept], gt.flatten(1)[accept]
            pending[take] = False
            t[rows[~accept]] *= 0.5
        done |= pending | (f - new_f <= 1.2e-7 * f.abs().clamp_min(1.0))
        s, y = new_z - z, new_g - g
        sy = (s * y).sum(1)
        valid = sy > 1e-10
        rho = torch.where(valid, 1.0 / sy.clamp_min(1e-10), 0.0)
        gamma = torch.where(valid, sy / (y * y).sum(1).clamp_min(1e-20), gamma)
        pairs = (pairs + [(s, y, rho)])[-memory:]
        z, f, g = new_z, new_f, new_g
        if done.all():
            break
    return z.view(shape)


def lbfgs(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, target: Labels = None,
          c: float = 1.0, search_steps: int = 6, steps: int = 50, seed: int = 0) -> AttackResult:
    """Box-constrained L-BFGS (Szegedy et al. 2014, "Intriguing properties of neural networks").

    Minimises ``c * ||r||_2 + loss_f(x + r, l)`` subject to ``x + r`` in ``[0, 1]^m`` with a
    batched, projected L-BFGS (:func:`minimize_lbfgs`: per-sample curvature pairs and Armijo
    line searches, coordinates held on the bounds they push against, as in L-BFGS-B) from
    ``r = 0`` for ``steps`` iterations per ``c``. ``loss_f`` is the cross-entropy of ``target``
    (the paper's targeted attack) or, untargeted, ``-log(1 - p_y)`` (small once ``y`` loses).
    The norm is not squared, as in the paper (its subgradient at ``r = 0`` is taken as 0).
    The search on ``c``: the paper asks for the ``c`` whose minimiser is adversarial with the
    smallest ``|r|``; a larger ``c`` weighs ``|r|`` more, so we search, per sample and in log
    space, for the largest adversarial ``c``: start at ``c``, multiply by 10 after a success and
    divide by 10 after a failure until a success and a failure bracket it, then bisect (geometric
    mean). The smallest adversarial ``r`` found is kept. Nothing is random: ``seed`` is only
    recorded. (scipy's L-BFGS-B solves the same problem but, on 10^5 pixels, its own
    bookkeeping costs more than the network; it also cannot keep per-sample curvature.)

    Cost: about ``search_steps * steps`` forward+backward passes of the batch (line searches
    re-evaluate only the samples whose trial step was rejected).

    Returns:
        :class:`AttackResult`; failures come back unchanged. ``info["c"]`` is each sample's
        largest adversarial constant found (0 if none).

    Example:
        >>> r = lbfgs(model, x, y, target=3)      # doctest: +SKIP
    """
    c = number("c", c, strict=True)
    search_steps = positive_int("search_steps", search_steps)
    steps = positive_int("steps", steps)
    with attacking(model):
        p = setup(model, inputs, labels, target)
        x, n = p.x, len(p.x)
        check = GradientCheck(n, x.device)
        const = torch.full((n,), c, device=x.device)
        good = torch.zeros(n, device=x.device)
        bad = torch.full((n,), torch.inf, device=x.device)
        best_norm = torch.full((n,), torch.inf, device=x.device)
        best = x.clone()
        for _ in range(search_steps):
            def fun(z: torch.Tensor, rows: torch.Tensor, const: torch.Tensor = const) -> tuple[torch.Tensor, ...]:
                z = z.detach().requires_grad_(True)
                loss = _szegedy_loss(model(z), p.labels[rows], None if p.target is None else p.target[rows])
                (grad,) = torch.autograd.grad(loss.sum(), z)
                check.update(grad, rows)
                r = (z - x[rows]).detach()
                size = r.flatten(1).norm(dim=1)
                # d ||r|| / dr = r / ||r||, and 0 (a subgradient) at r = 0
                grad = grad + col(const[rows] / size.clamp_min(1e-12)) * r
                return const[rows] * size + loss.detach(), grad

            xa = minimize_lbfgs(fun, x, steps=steps)
            with torch.no_grad():
                ok = is_adversarial(model(xa), p.labels, p.target)
            size = (xa - x).flatten(1).norm(dim=1)
            better = ok & (size < best_norm)
            best_norm = torch.where(better, size, best_norm)
            best = torch.where(col(better), xa, best)
            good = torch.where(ok, torch.maximum(good, const), good)
            bad = torch.where(ok, bad, torch.minimum(bad, const))
            bracketed = (good > 0) & torch.isfinite(bad)
            const = torch.where(bracketed, (good * bad).sqrt(), torch.where(ok, const * 10, const / 10))
        info = {"method": "lbfgs", "norm": "l2", "c": good, "search_steps": search_steps, "steps": steps,
                "seed": seed, "masked": check.warn("lbfgs")}
        return finish(model, p, best, info)
