"""Inverse-Hessian solvers: ``X_j = (H + damping I)^-1 B_j`` for the k rows of ``B [k, P]`` at once, in torch.

:func:`exact` (and :class:`Eigen`) works from the explicit Hessian; :func:`cg`, :func:`lissa` and
:func:`arnoldi` + :func:`arnoldi_solve` only call a Hessian-vector product ``hvp(V [k, P]) -> H V`` (rows).
Pure linear algebra: everything stays on ``B``'s device and dtype, iterative loops synchronise with the
host once every few steps. A numerical failure (negative curvature, divergence) raises
:class:`InfluenceError` naming ``damping`` and a value to try; a solve that stops short warns.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.checks import number, positive_int
from ..core.errors import InputError
from .errors import InfluenceError, InfluenceWarning

F64 = torch.float64
_EVERY = 5  # cg / power iteration: steps between convergence checks (one host sync each)
_LISSA_EVERY = 10


def _suggest(x: float) -> str:
    """``1.1 |x|`` rounded up to two significant digits: a damping (or scale) to try."""
    x = 1.1 * abs(x)
    if not 0 < x < math.inf:
        return "1e-3"
    step = 10.0 ** (math.floor(math.log10(x)) - 1)
    return f"{float(f'{math.ceil(x / step - 1e-9) * step:.2g}'):g}"


def _rhs(B: Tensor, P: int | None = None) -> Tensor:
    if not isinstance(B, Tensor) or B.ndim != 2 or not B.is_floating_point():
        raise InputError(f"B: expected a float tensor [k, P] of right-hand sides, got "
                         f"{tuple(B.shape) if isinstance(B, Tensor) else type(B).__name__}")
    if P is not None and B.shape[1] != P:
        raise InputError(f"B: expected {P} columns (one per parameter), got shape {tuple(B.shape)}")
    if not bool(torch.isfinite(B).all()):
        raise InputError("B: the right-hand sides have NaN or inf entries; check the gradients")
    return B


def _start(P: int, seed: int, device, dtype) -> Tensor:
    """A seeded random unit vector ``[1, P]``: the same on every device (drawn on the CPU, then moved)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, P, generator=g, dtype=F64)
    return (v / v.norm()).to(device=device, dtype=dtype or torch.get_default_dtype())


def _project(vectors: Tensor, inv: Tensor, B: Tensor) -> Tensor:
    """``sum_j u_j inv_j (u_j^T b)`` for every row b of ``B``: ``((B U^T) * inv) U``, in ``vectors``' dtype."""
    c = B.to(device=vectors.device, dtype=vectors.dtype) @ vectors.T
    return ((c * inv.to(vectors.dtype)) @ vectors).to(device=B.device, dtype=B.dtype)


@dataclass(frozen=True)
class Eigen:
    """The eigen-decomposition ``H = sum_j lambda_j u_j u_j^T`` in float64, eigenvalues descending.

    Computed once by :func:`eigen`; :meth:`solve` then costs two matmuls for any ``B`` and any damping.
    ``values [r]``, ``vectors [r, P]`` (row j is ``u_j``); ``rtol``: eigenvalues with
    ``|lambda| <= rtol * max|lambda|`` are numerically zero (the pseudo-inverse drops them).
    """

    values: Tensor
    vectors: Tensor
    rtol: float

    @property
    def max(self) -> float:
        return float(self.values[0])

    @property
    def min(self) -> float:  # negative at a non-convex point
        return float(self.values[-1])

    def top(self, k: int) -> Eigen:
        """The k largest eigenpairs only: :meth:`solve` then inverts H on its top-k eigenspace (as arnoldi does)."""
        k = positive_int("k", k)
        return Eigen(self.values[:k], self.vectors[:k], self.rtol)

    def solve(self, B: Tensor, damping: float = 0.0) -> Tensor:
        """``(H + damping I)^+ B_j`` for every row: ``sum_j u_j (u_j^T b) / (lambda_j + damping)``.

        Numerically zero eigenvalues count as 0, so with ``damping=0`` this is the pseudo-inverse on H's
        range (the cross-entropy Hessian of a softmax head is singular along "add one vector to every class
        row"; per-example gradients are orthogonal to that null space). A negative eigenvalue that
        ``damping`` does not lift above 0 raises :class:`InfluenceError` with a damping to try.
        """
        damping = number("damping", damping)
        B = _rhs(B, self.vectors.shape[1])
        lam = self.values
        lam = torch.where(lam.abs() <= self.rtol * lam.abs().max(), 0.0, lam)
        worst = float(lam.min())
        if worst < 0 and worst + damping <= 0:
            raise InfluenceError(f"H + damping*I is not positive definite: the Hessian's smallest eigenvalue is "
                                 f"{worst:.3g} (a non-convex point) and damping={damping:g}; pass "
                                 f"damping={_suggest(worst)} or larger")
        shifted = lam + damping
        inv = torch.where(shifted > 0, 1.0 / torch.where(shifted > 0, shifted, 1.0), 0.0)
        return _project(self.vectors, inv, B)


def eigen(H: Tensor, *, rtol: float | None = None) -> Eigen:
    """The eigen-decomposition of a symmetric ``H [P, P]`` (symmetrised, ``torch.linalg.eigh`` in float64).

    ``rtol=None``: ``max(1e-10, P * eps(H.dtype))``, the usual rank cut-off (numpy/torch ``pinv``) floored
    at 1e-10 so that float64 round-off of an autograd Hessian is not read as curvature.

    Example:
        >>> e = eigen(torch.diag(torch.tensor([4.0, 1.0, 0.0])))
        >>> e.solve(torch.ones(1, 3)).tolist()   # the pseudo-inverse drops the zero eigenvalue
        [[0.25, 1.0, 0.0]]
    """
    if not isinstance(H, Tensor) or H.ndim != 2 or H.shape[0] != H.shape[1] or not H.is_floating_point():
        raise InputError(f"H: expected a square float matrix [P, P], got "
                         f"{tuple(H.shape) if isinstance(H, Tensor) else type(H).__name__}")
    if not bool(torch.isfinite(H).all()):
        raise InputError("H: the Hessian has NaN or inf entries; check the loss and the parameters")
    P = H.shape[0]
    rtol = max(1e-10, P * torch.finfo(H.dtype).eps) if rtol is None else number("rtol", rtol)
    H = H.to(F64)
    values, vectors = torch.linalg.eigh((H + H.T) / 2)
    return Eigen(values.flip(0), vectors.flip(1).T.contiguous(), rtol)


def exact(H: Tensor, B: Tensor, *, damping: float = 0.0, rtol: float | None = None) -> Tensor:
    """``(H + damping I)^-1 B_j`` for every row of ``B [k, P]`` from the explicit Hessian ``H [P, P]``.

    Koh & Liang (2017) with the Hessian inverted through its eigen-decomposition (:func:`eigen`, float64):
    ``x = sum_j u_j (u_j^T b) / (lambda_j + damping)``, the pseudo-inverse on H's range when ``damping=0``.
    To solve many ``B`` or several dampings, keep ``e = eigen(H)`` and call ``e.solve(B, damping)``.
    Returns ``[k, P]`` in ``B``'s dtype and device.
    """
    return eigen(H, rtol=rtol).solve(B, damping)


@dataclass(frozen=True)
class SolveInfo:
    """How an iterative solve ended.

    ``iterations``: steps taken (by the slowest row); ``residual``: the worst row's relative residual
    ``|b - (H + damping I) x| / |b|`` (cg; the recursively updated one) or relative change of x over the
    last step (lissa); ``converged``: every row met ``tol``; ``scale``: LiSSA's scale (None for cg).
    """

    iterations: int
    residual: float
    converged: bool
    scale: float | None = None


def _cg_breakdown(curv: Tensor, top: Tensor, damping: float, dtype: torch.dtype) -> InfluenceError:
    """The error for ``p^T (H + damping I) p <= 0``: negative curvature, or a zero-curvature direction."""
    c = float(curv.min()) - damping              # p^T H p / p^T p along the failing direction
    scale = max(float(top.max()) - damping, 0.0)
    if not math.isfinite(c):
        return InfluenceError(f"cg: the Hessian-vector product returned NaN or inf (damping={damping:g}); check the "
                              "loss and the parameters")
    if -c > math.sqrt(torch.finfo(dtype).eps) * scale:
        return InfluenceError(f"cg met negative curvature (p^T H p / p^T p = {c:.3g}, a non-convex point) that "
                              f"damping={damping:g} does not cover; pass damping={_suggest(c)} or larger")
    return InfluenceError(f"cg met a zero-curvature direction of H + damping*I (damping={damping:g}): the "
                          f"right-hand side has a component in the Hessian's null space; pass "
                          f"damping={_suggest(1e-3 * scale / 1.1)} or larger")


def cg(hvp: Callable[[Tensor], Tensor], B: Tensor, *, damping: float = 0.0, tol: float = 1e-8,
       max_iter: int | None = None) -> tuple[Tensor, SolveInfo]:
    """Batched conjugate gradient: solves ``(H + damping I) X_j = B_j`` for the k rows of ``B [k, P]``.

    Hestenes & Stiefel (1952), as used for influence by Koh & Liang (2017) and Martens (2010):
    ``alpha = r^T r / p^T A p;  x += alpha p;  r -= alpha A p;  p = r + (r'^T r' / r^T r) p``, with
    ``A = H + damping I`` applied as ``hvp(p) + damping p``. Each row has its own alpha and beta; a row
    whose relative residual ``|r| / |b|`` is below ``tol`` is frozen and leaves the batch at the next
    check, so ``hvp`` sees fewer rows as they converge. ``tol`` is raised to ``16 eps`` of ``B``'s dtype
    (a float32 residual goes no lower); ``max_iter=None``: ``min(2 P, 1000)`` (rounding makes CG need
    more than its P exact-arithmetic steps). Not converged: :class:`InfluenceWarning`, not an error.
    ``p^T A p <= 0`` raises :class:`InfluenceError` naming ``damping`` and a value to try.

    Returns ``(X [k, P], SolveInfo)``.

    Example:
        >>> H = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> X, info = cg(lambda V: V @ H, torch.eye(2, dtype=torch.float64))
        >>> torch.allclose(X, torch.linalg.inv(H)), info.converged
        (True, True)
    """
    damping = number("damping", damping)
    tol = max(number("tol", tol, strict=True), 16 * torch.finfo(_rhs(B).dtype).eps)
    k, P = B.shape
    max_iter = min(2 * P, 1000) if max_iter is None else positive_int("max_iter", max_iter)
    out, res_out = torch.zeros_like(B), torch.zeros(k, device=B.device, dtype=B.dtype)
    bnorm = B.norm(dim=1)
    rows, X, R, D = torch.arange(k, device=B.device), torch.zeros_like(B), B.clone(), B.clone()
    rs, goal = (R * R).sum(1), (tol * bnorm) ** 2
    broke, tiny = torch.zeros(k, dtype=torch.bool, device=B.device), torch.finfo(B.dtype).tiny
    curv = torch.full_like(bnorm, math.inf)      # smallest p^T A p / p^T p where it was <= 0
    top = torch.zeros_like(bnorm)                # largest p^T A p / p^T p seen (the scale of A)
    it = 0
    while True:
        if it % _EVERY == 0 or it >= max_iter:
            done = rs <= goal
            status = torch.cat([done, broke.any()[None]]).cpu()    # the one host sync of this check
            if status[-1]:
                raise _cg_breakdown(curv[broke], top, damping, B.dtype)
            finished = done if it < max_iter else torch.ones_like(done)
            if bool(status[:-1].any()) or it >= max_iter:
                out[rows[finished]] = X[finished]
                res_out[rows[finished]] = rs[finished].sqrt() / bnorm[rows[finished]].clamp_min(tiny)
                keep = ~finished
                rows, X, R, D, rs, goal = rows[keep], X[keep], R[keep], D[keep], rs[keep], goal[keep]
                broke, curv, top = broke[keep], curv[keep], top[keep]
            if rows.numel() == 0:
                break
        active = rs > goal                                        # converged rows stay frozen until removed
        AD = hvp(D) + damping * D
        pAp, pp = (D * AD).sum(1), (D * D).sum(1)
        ok = pAp > 0
        c = pAp / pp.clamp_min(tiny)
        bad = active & ~ok & (pp > 0)
        broke, curv = broke | bad, torch.where(bad, torch.minimum(curv, c), curv)
        top = torch.maximum(top, torch.where(active, c, 0.0))
        alpha = torch.where(active & ok, rs / torch.where(ok, pAp, 1.0), 0.0)[:, None]
        X, R = X + alpha * D, R - alpha * AD
        rs_new = torch.where(active, (R * R).sum(1), rs)
        beta = torch.where(active & (rs > 0), rs_new / torch.where(rs > 0, rs, 1.0), 0.0)[:, None]
        D = torch.where(active[:, None], R + beta * D, D)
        rs = rs_new
        it += 1
    residual = float(res_out.max()) if k else 0.0
    converged = residual <= tol
    if not converged:
        n_bad = int((res_out > tol).sum())
        warnings.warn(f"cg: {n_bad} of {k} right-hand sides not converged after max_iter={max_iter} iterations "
                      f"(worst relative residual {residual:.2g} > tol={tol:.2g}); raise max_iter, or damping "
                      "(a larger damping makes H + damping*I better conditioned)", InfluenceWarning, stacklevel=2)
    return out, SolveInfo(it, residual, converged)


def top_eigenvalue(hvp: Callable[[Tensor], Tensor], P: int, *, iters: int = 30, seed: int = 0,
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                   tol: float = 1e-4) -> float:
    """The eigenvalue of largest magnitude of H, signed, by power iteration (von Mises 1929).

    ``v <- H v / |H v|`` from a seeded random start; returns the Rayleigh quotient ``v^T H v`` once it
    changes by less than ``tol`` (relative) between checks, or after ``iters`` products.
    ``hvp(V [1, P]) -> H V``; ``device`` / ``dtype`` are those ``hvp`` expects (default: CPU, torch's default).
    """
    P, iters = positive_int("P", P), positive_int("iters", iters)
    v = _start(P, seed, device, dtype)
    prev, rq = math.nan, v.new_zeros(())
    for i in range(iters):
        w = hvp(v)
        rq = (v * w).sum()
        v = w / w.norm().clamp_min(torch.finfo(w.dtype).tiny)
        if (i + 1) % _EVERY == 0:
            r = float(rq)
            if abs(r - prev) <= tol * abs(r):
                return r
            prev = r
    return float(rq)


def _lissa_diverged(hvp, v: Tensor, step: int, damping: float, scale: float) -> InfluenceError:
    """The error for a diverging recursion: the Rayleigh quotient of the growing direction says why."""
    u = v / v.norm()
    rq = float((u * hvp(u[None], step)[0]).sum()) if bool(torch.isfinite(u).all()) else math.nan
    head = f"lissa diverged at step {step}"
    if rq + damping <= 0:
        return InfluenceError(f"{head}: H + damping*I has negative curvature along the growing direction "
                              f"(v^T H v / v^T v = {rq:.3g}, a non-convex point), and LiSSA diverges whenever damping "
                              f"does not cover it (always with damping=0; here damping={damping:g}); pass "
                              f"damping={_suggest(rq)} or larger")
    if rq + damping > 1.9 * scale:
        return InfluenceError(f"{head}: scale={scale:.3g} is below half the top eigenvalue of H + damping*I "
                              f"(~{rq + damping:.3g}; damping={damping:g}); pass scale={_suggest(rq + damping)} "
                              "or scale=None to estimate it")
    return InfluenceError(f"{head}: the recursion needs 0 < eig(H + damping*I) < 2*scale; raise damping "
                          f"(now {damping:g}) if the loss is not convex here, or scale (now {scale:.3g})")


def lissa(hvp: Callable[[Tensor, int], Tensor], B: Tensor, *, damping: float = 0.0, scale: float | None = None,
          depth: int | None = None, tol: float = 1e-6, seed: int = 0,
          top: float | None = None) -> tuple[Tensor, SolveInfo]:
    """LiSSA (Agarwal et al. 2017; Koh & Liang 2017): ``(H + damping I)^-1 B_j`` by a Neumann recursion.

    ``v_0 = b,  v_{j+1} = b + (I - (H + damping I) / scale) v_j,  x = v / scale``: a fixed point of the
    recursion solves the system, and it contracts when ``0 < eig(H + damping I) < 2 scale``.
    ``hvp(V [k, P], step) -> H V`` receives the step index (feed a different mini-batch per step, or
    ignore it). ``scale=None``: ``1.05 (|top| + damping)`` with ``top`` the largest-magnitude eigenvalue
    (:func:`top_eigenvalue` on ``hvp(., 0)`` unless given). A row stops when ``|x_{j+1} - x_j| / |x_{j+1}|
    <= tol`` (checked every 10 steps) or at ``depth`` steps (default 5000; a warning). Convergence takes
    about ``scale / (lambda_min + damping)`` steps. Divergence (a non-finite v, or ``|v_j|`` above
    ``10 (j + 1) |b|``, which a contraction never exceeds) raises :class:`InfluenceError` naming
    ``damping`` / ``scale``; with negative curvature and ``damping=0`` LiSSA always diverges.

    Returns ``(X [k, P], SolveInfo)`` with ``info.scale`` the scale used.
    """
    damping = number("damping", damping)
    tol = number("tol", tol, strict=True)
    k, P = _rhs(B).shape
    depth = 5000 if depth is None else positive_int("depth", depth)
    if scale is None:
        if top is None:
            top = top_eigenvalue(lambda V: hvp(V, 0), P, seed=seed, device=B.device, dtype=B.dtype)
        top = number("top", top, low=-math.inf)
        if top < 0 and top + damping <= 0:
            raise InfluenceError(f"lissa: the Hessian's largest-magnitude eigenvalue is {top:.3g} (a non-convex "
                                 f"point) and LiSSA diverges unless damping covers it; pass "
                                 f"damping={_suggest(top)} or larger (now {damping:g})")
        scale = 1.05 * (abs(top) + damping)
        if scale == 0:
            raise InfluenceError("lissa: the Hessian-vector product is zero (top eigenvalue 0) and damping=0; "
                                 "pass damping > 0 or check which parameters the loss depends on")
    scale = number("scale", scale, strict=True)
    out, change_out = torch.zeros_like(B), torch.zeros(k, device=B.device, dtype=B.dtype)
    rows, b = torch.arange(k, device=B.device), B.clone()
    bnorm, v, step = b.norm(dim=1), b.clone(), 0
    while rows.numel():
        v_new = b + v - (hvp(v, step) + damping * v) / scale
        step += 1
        if step % _LISSA_EVERY and step < depth:
            v = v_new
            continue
        vn = v_new.norm(dim=1)
        change = (v_new - v).norm(dim=1) / vn.clamp_min(torch.finfo(B.dtype).tiny)
        bad = ~torch.isfinite(vn) | (vn > 10 * (step + 1) * bnorm)
        done = (change <= tol) | (step >= depth)
        status = torch.cat([bad.any()[None], done]).cpu()        # the one host sync of this check
        if status[0]:
            i = int(bad.nonzero()[0, 0])
            raise _lissa_diverged(hvp, v_new[i] if bool(torch.isfinite(v_new[i]).all()) else v[i], step,
                                  damping, scale)
        v = v_new
        if bool(status[1:].any()):
            out[rows[done]], change_out[rows[done]] = v[done] / scale, change[done]
            keep = ~done
            rows, b, v, bnorm = rows[keep], b[keep], v[keep], bnorm[keep]
    residual = float(change_out.max()) if k else 0.0
    converged = residual <= tol
    if not converged:
        warnings.warn(f"lissa: not converged after depth={depth} steps (relative change {residual:.2g} > "
                      f"tol={tol:.2g}); raise depth, or damping (LiSSA needs about scale / (lambda_min + damping) "
                      f"steps; scale={scale:.3g})", InfluenceWarning, stacklevel=2)
    return out, SolveInfo(step, residual, converged, scale)


def arnoldi(hvp: Callable[[Tensor], Tensor], P: int, *, rank: int = 20, iterations: int | None = None,
            seed: int = 0, device: torch.device | str | None = None,
            dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """The top-``rank`` eigenpairs of H by Arnoldi iteration (Schioppa et al. 2022, "Scaling up influence functions").

    Builds an orthonormal Krylov basis ``q_0 .. q_m`` of ``{q_0, H q_0, H^2 q_0, ...}`` (seeded random
    ``q_0``; each new vector re-orthogonalised twice against all previous ones, Gram-Schmidt "twice is
    enough"), so that ``H Q_m = Q_{m+1} h`` with ``h`` upper Hessenberg (float64). The eigenpairs
    ``(theta, y)`` of its square part ``Q_m^T H Q_m`` (symmetric for a Hessian: ``eigh``) give Ritz values
    ``theta`` and Ritz vectors ``Q_m^T y``. An invariant subspace (an exhausted Krylov space, e.g. a
    low-rank Hessian) restarts from a fresh random direction orthogonal to the basis.

    Kept: the ``rank`` largest *positive* Ritz values above ``100 eps * max|theta|``. Negative ones are
    dropped (along negative curvature the loss has no minimum: ``1 / lambda`` is no leave-one-out response),
    with an :class:`InfluenceWarning` when one outweighs a kept positive one. ``iterations=None``:
    ``max(2 rank, 60)``, capped at P.

    Returns ``(eigvals [r] float64, descending; eigvecs [r, P] in dtype)``, ``r <= rank``, on ``device``.
    """
    P, rank = positive_int("P", P), positive_int("rank", rank)
    rank = min(rank, P)
    m = min(max(2 * rank, 60) if iterations is None else positive_int("iterations", iterations), P)
    if m < rank:
        raise InputError(f"iterations: need at least rank={rank} Arnoldi iterations, got {m}")
    Q = _start(P, seed, device, dtype).expand(m + 1, P).clone()
    dtype, device = Q.dtype, Q.device
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    h = torch.zeros(m + 1, m, dtype=F64, device=device)
    scale = torch.zeros((), dtype=dtype, device=device)

    def orthogonalise(w: Tensor, j: int) -> tuple[Tensor, Tensor]:
        c = torch.zeros(j + 1, dtype=dtype, device=device)
        for _ in range(2):
            d = Q[: j + 1] @ w
            w, c = w - d @ Q[: j + 1], c + d
        return w, c

    for j in range(m):
        w = hvp(Q[j : j + 1])[0]
        scale = torch.maximum(scale, w.norm())
        w, c = orthogonalise(w, j)
        h[: j + 1, j] = c.to(F64)
        nrm = w.norm()
        fresh, _ = orthogonalise(torch.randn(P, generator=gen, device=device, dtype=dtype), j)
        small = nrm <= 1e3 * torch.finfo(dtype).eps * scale      # invariant subspace: restart, no host sync
        Q[j + 1] = torch.where(small, fresh / fresh.norm(), w / nrm.clamp_min(torch.finfo(dtype).tiny))
        h[j + 1, j] = torch.where(small, 0.0, nrm.to(F64))
    T = h[:m, :m]
    theta, Y = torch.linalg.eigh((T + T.T) / 2)
    theta, Y = theta.flip(0), Y.flip(1)
    cut = 100 * torch.finfo(dtype).eps * theta.abs().max()
    keep = (theta > cut).nonzero()[:rank, 0]
    values = theta[keep]
    negatives = theta[theta < -cut]
    if negatives.numel() and (values.numel() < rank or -float(negatives.min()) > float(values[-1])):
        warnings.warn(f"arnoldi: dropped {negatives.numel()} negative Ritz values down to {float(negatives.min()):.3g} "
                      f"(negative curvature among the dominant directions: a non-convex point); the inverse is "
                      f"taken on the top positive eigenspace only", InfluenceWarning, stacklevel=2)
    vectors = Y[:, keep].T.to(dtype) @ Q[:m]
    return values, vectors / vectors.norm(dim=1, keepdim=True)


def arnoldi_solve(eigvals: Tensor, eigvecs: Tensor, B: Tensor, damping: float = 0.0) -> Tensor:
    """``sum_j u_j (u_j^T b) / (lambda_j + damping)`` for every row b of ``B [k, P]``.

    The inverse of ``H + damping I`` restricted to the top eigenspace found by :func:`arnoldi`
    (Schioppa et al. 2022, eq. 7: ``g_q^T (H + damping I)^-1 g_i ~ (U g_q)^T diag(1 / (lambda + damping)) U g_i``);
    with all P eigenpairs it is the exact inverse. ``eigvals [r]``, ``eigvecs [r, P]``; returns ``[k, P]``.
    """
    damping = number("damping", damping)
    if eigvecs.ndim != 2 or eigvals.shape != (eigvecs.shape[0],):
        raise InputError(f"eigvals, eigvecs: expected shapes [r] and [r, P], got {tuple(eigvals.shape)} and "
                         f"{tuple(eigvecs.shape)}")
    B = _rhs(B, eigvecs.shape[1])
    shifted = eigvals.to(F64) + damping
    if eigvals.numel() and float(shifted.min()) <= 0:
        raise InfluenceError(f"arnoldi_solve: eigenvalue {float(eigvals.min()):.3g} + damping={damping:g} <= 0; "
                             f"pass damping={_suggest(float(eigvals.min()))} or larger")
    return _project(eigvecs, 1.0 / shifted, B)
