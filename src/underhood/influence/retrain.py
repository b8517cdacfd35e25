"""Leave-one-out by retraining: the loss change an influence score predicts, measured.

``loo_change`` refits the chosen parameters without each training point in turn and reports how each
query's loss moved. Both fits (all points, and all but one) minimise the same objective

    f_S(theta) = (1/n) sum_{j in S} L_j(theta) + (damping/2) ||theta - theta_hat||^2,

anchored at the model's own weights ``theta_hat``, with ``n`` the full training set's size in both
(removing a point drops its term, the weighting stays): the leave-one-out that
``score[q, i] = (1/n) g_q^T (H + damping I)^-1 g_i`` predicts to first order. The proximal term makes
``damping`` the exact Hessian shift of the damped influence, so with ``damping > 0`` and a convex loss the
prediction is exact up to second order in ``1/n``. The full fit starts from ``theta_hat``; each refit starts
from the full fit's minimiser ``theta_S`` (a warm start: a strictly convex objective has one minimiser
whatever the start, and starting beside it keeps a non-convex refit in the same basin, where the
influence is defined, and costs a few chord steps).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.batching import batches
from ..core.checks import number, positive_int
from ..core.device import home_device
from ..core.errors import InputError
from ..core.hooks import evaluating
from .errors import InfluenceWarning
from .problem import Loss, Problem, as_data

NEWTON_LIMIT = 2000   # parameters up to which the fits use Newton's method with the explicit Hessian


class _Objective:
    """``f_S`` over the prepared training inputs, in float64: value, gradient and Hessian at ``theta``."""

    def __init__(self, problem: Problem, inputs: torch.Tensor, labels: torch.Tensor, damping: float,
                 anchor: torch.Tensor) -> None:
        self.problem, self.inputs, self.labels = problem, inputs, labels
        self.n, self.damping, self.anchor = len(labels), damping, anchor
        self.size = 4096 if problem.head else 256
        self.drop: int | None = None   # the point left out, or None for the full set

    def _sum(self, theta: torch.Tensor, s: slice) -> torch.Tensor:
        return self.problem._batch_loss(theta, self.inputs[s], self.labels[s])

    def value_grad(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f_S(theta)`` and its gradient (the data passed in chunks, gradients accumulated)."""
        t = theta.detach().requires_grad_(True)
        total = torch.zeros((), dtype=t.dtype, device=t.device)
        grad = torch.zeros_like(t)
        with torch.enable_grad():
            parts = [(s, 1.0) for s in batches(self.n, self.size)]
            if self.drop is not None:
                parts.append((slice(self.drop, self.drop + 1), -1.0))
            for s, sign in parts:
                value = self._sum(t, s) * (sign / self.n)
                (g,) = torch.autograd.grad(value, t)
                total += value.detach()
                grad += g
            prox = self.damping / 2 * (t.detach() - self.anchor).pow(2).sum()
        return total + prox, grad + self.damping * (theta.detach() - self.anchor)

    def hessian(self, theta: torch.Tensor) -> torch.Tensor:
        """The explicit ``[P, P]`` Hessian of ``f_S`` at ``theta``: the full set's, less the dropped point's."""
        H = self.problem.hessian(self.inputs, self.labels, theta=theta)
        if self.drop is not None:
            one = slice(self.drop, self.drop + 1)
            H = H - self.problem.hessian(self.inputs[one], self.labels[one], theta=theta) / self.n
        H.diagonal().add_(self.damping)
        return H


def _newton(f: _Objective, theta: torch.Tensor, factor: torch.Tensor | None, *, steps: int, tol: float
            ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """Minimise ``f`` from ``theta`` by Newton steps with a Cholesky factor of the Hessian, reused while each
    step at least halves the gradient (a chord step: leaving one of ``n`` points out changes the Hessian by
    ``O(1/n)``) and recomputed otherwise; Armijo backtracking far from the optimum.

    Returns ``(theta, factor at the end, converged)``; ``factor`` is ``None`` when the Hessian is not positive
    definite there (the caller falls back to L-BFGS).
    """
    value, grad = f.value_grad(theta)
    last = None
    for _ in range(steps):
        size = grad.abs().max()
        if size <= tol:
            return theta, factor, True
        if factor is None or (last is not None and size > last / 2):
            factor, info = torch.linalg.cholesky_ex(f.hessian(theta))
            if int(info) != 0:
                return theta, None, False
        step = torch.cholesky_solve(grad.unsqueeze(1), factor).squeeze(1)
        t = 1.0
        while True:
            new_value, new_grad = f.value_grad(theta - t * step)
            if new_value <= value - 1e-4 * t * (grad @ step) + 1e-13 * value.abs() or t < 1e-6:
                break
            t /= 2
        theta, value, grad, last = theta - t * step, new_value, new_grad, size
    return theta, factor, bool(grad.abs().max() <= tol)


def _lbfgs(f: _Objective, theta: torch.Tensor, *, steps: int, tol: float) -> tuple[torch.Tensor, bool]:
    """Minimise ``f`` from ``theta`` by L-BFGS with a strong-Wolfe line search on the flat vector."""
    t = theta.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([t], lr=1.0, max_iter=steps, max_eval=2 * steps, tolerance_grad=tol,
                            tolerance_change=1e-300, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        value, grad = f.value_grad(t)
        t.grad = grad
        return value

    opt.step(closure)
    _, grad = f.value_grad(t)
    return t.detach(), bool(grad.abs().max() <= tol)


def _query_losses(problem: Problem, theta: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor
                  ) -> torch.Tensor:
    """Each query's loss ``[Q]`` at ``theta``."""
    from torch.func import vmap

    def one(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return problem._batch_loss(theta, x.unsqueeze(0), y.unsqueeze(0))

    with torch.no_grad():
        return torch.cat([vmap(one)(inputs[s], labels[s]) for s in batches(len(labels), 256)])


def _indices(indices: Sequence[int] | torch.Tensor, n: int) -> list[int]:
    raw = indices.detach().flatten().tolist() if isinstance(indices, torch.Tensor) else indices
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple, range)) or not len(raw):
        raise InputError(f"indices: expected a non-empty list of training indices in [0, {n}), got {indices!r}")
    out = []
    for i in raw:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise InputError(f"indices: {i!r} is not a training index in [0, {n})")
        out.append(i % n)
    return out


def loo_change(model: nn.Module, train: Any, queries: Any, indices: Sequence[int] | torch.Tensor, *,
               params: str | Sequence[str] | None = None, damping: float = 0.0, loss: Loss | None = None,
               steps: int = 200, tol: float = 1e-10, progress: bool = False) -> torch.Tensor:
    """The actual change of each query's loss when each training point in ``indices`` is removed.

    Warm-started retraining of the chosen parameters only (the rest of the model fixed, in eval mode): both
    fits, with all ``n`` points and without point ``i``, minimise
    ``(1/n) sum_{j in S} L_j(theta) + (damping/2) ||theta - theta_hat||^2`` (``theta_hat`` the model's weights,
    ``n`` the full set's size in both) to ``max |gradient| <= tol``, in float64; the full fit starts from
    ``theta_hat``, each refit from the full fit's minimiser ``theta_S``. Newton's method with the explicit
    Hessian up to :data:`NEWTON_LIMIT` parameters (its factor at ``theta_S`` reused by every refit), L-BFGS with
    a strong-Wolfe line search beyond (or where the Hessian is not positive definite). Then
    ``actual[k, q] = L_q(theta_{S minus i_k}) - L_q(theta_S)``.

    This is the leave-one-out that the influence score predicts: ``influence(...).scores[q, i]`` is its
    first-order estimate, and with ``damping > 0`` the proximal term makes the damped influence's
    ``(H + damping I)`` the objective's exact Hessian, so on a convex loss the two agree up to ``O(1/n^2)``.
    Positive = the point helped the query (its removal raises the query's loss), as for the scores. On a deep
    network single-point leave-one-out is dominated by retraining noise: use it on heads and convex models.

    Args:
        model: the trained classifier; never modified (the fits run on a float64 copy of the part they need).
        train, queries: as for :func:`~underhood.influence.influence` (ImageSet, ``(inputs, labels)``, Dataset;
            queries may be a tensor of inputs, labelled by the model's predictions).
        indices: training points to remove, one at a time.
        params, loss: as for :func:`~underhood.influence.influence`.
        damping: the proximal strength (>= 0); use the damping the scores were computed with.
        steps: most iterations per fit; tol: the gradient tolerance.
        progress: show a progress bar over the removed points.

    Returns:
        ``[len(indices), Q]`` float64 loss changes on the model's device.

    Example:
        >>> r = influence(model, train, queries, params="fc", method="exact", damping=1e-3)   # doctest: +SKIP
        >>> top = r.helpful(0, k=3)                                                         # doctest: +SKIP
        >>> loo_change(model, train, queries, top, params="fc", damping=1e-3)[:, 0]          # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    damping = number("damping", damping)
    steps = positive_int("steps", steps)
    tol = number("tol", tol, strict=True)
    device = home_device(model)
    with evaluating(model):
        problem = Problem(model, params, loss)
        x, y = as_data(train, "train", model, device)
        xq, yq = as_data(queries, "queries", model, device)
        inputs, query_inputs = problem.prepare(x), problem.prepare(xq)
        problem.check(inputs, y)
        drop = _indices(indices, len(y))
        dtype = torch.float32 if device.type == "mps" else torch.float64   # MPS has no float64
        if dtype == torch.float32:
            tol = max(tol, 1e-6)
        problem.model = copy.deepcopy(problem.model).to(dtype)   # a private copy: the user's model stays as it is
        inputs, query_inputs = _cast(inputs, dtype), _cast(query_inputs, dtype)
        anchor = problem.theta.detach().to(dtype)
        f = _Objective(problem, inputs, y, damping, anchor)
        newton = problem.n_params <= NEWTON_LIMIT
        failed: list[str] = []

        def fit(start: torch.Tensor, factor: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
            theta, ok = start, False
            if newton:
                theta, factor, ok = _newton(f, start, factor, steps=steps, tol=tol)
            if not ok:
                theta, ok = _lbfgs(f, theta if factor is not None else start, steps=steps, tol=tol)
                if not ok and newton:   # L-BFGS stalls where the loss stops resolving steps: Newton polishes
                    theta, factor, ok = _newton(f, theta, None, steps=steps, tol=tol)
            if not ok:
                failed.append("full set" if f.drop is None else str(f.drop))
            return theta, factor

        theta_full, factor = fit(anchor.clone(), None)
        if newton and factor is None:   # the weights were already optimal: factor the Hessian there once
            factor, info = torch.linalg.cholesky_ex(f.hessian(theta_full))
            factor = factor if int(info) == 0 else None
        base = _query_losses(problem, theta_full, query_inputs, yq)
        out = torch.empty(len(drop), len(yq), dtype=dtype, device=device)
        for k, i in enumerate(tqdm(drop, desc="leave-one-out retraining", disable=not progress, leave=False)):
            f.drop = i
            theta, _ = fit(theta_full, factor)
            out[k] = _query_losses(problem, theta, query_inputs, yq) - base
    if failed:
        warnings.warn(f"loo_change: {len(failed)} fit(s) did not reach max |gradient| <= {tol:g} in {steps} steps "
                      f"(removed: {', '.join(failed[:5])}); raise steps or damping (the objective may have no "
                      "minimum at damping=0)", InfluenceWarning, stacklevel=2)
    return out


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if x.is_floating_point() else x


__all__ = ["NEWTON_LIMIT", "loo_change"]
