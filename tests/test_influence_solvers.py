"""influence.solvers: inverse-Hessian products against torch.linalg oracles (solve, pinv, eigh), float64."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.func import grad, vjp, vmap

from underhood.core.errors import InputError
from underhood.influence.errors import InfluenceError, InfluenceWarning
from underhood.influence.solvers import (
    SolveInfo,
    arnoldi,
    arnoldi_solve,
    cg,
    eigen,
    exact,
    lissa,
    top_eigenvalue,
)

F64 = torch.float64


def _spectrum(values, seed=0) -> torch.Tensor:
    """``U diag(values) U^T`` with a seeded random orthogonal U."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=g, dtype=F64))
    return U @ torch.diag(torch.as_tensor(values, dtype=F64)) @ U.T


def _spd(P, seed=0, cond=100.0) -> torch.Tensor:
    return _spectrum(torch.logspace(0, torch.log10(torch.tensor(cond)).item(), P), seed)


def _rhs(k, P, seed=1) -> torch.Tensor:
    return torch.randn(k, P, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _softmax_head(n=30, d=4, K=3, seed=0):
    """A linear softmax model's mean cross-entropy Hessian [K d, K d], its per-example gradients [n, K d]
    and the Hessian-vector product by double backward (the closure the influence family will pass)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g, dtype=F64), torch.randint(0, K, (n,), generator=g)
    w0 = 0.5 * torch.randn(K * d, generator=g, dtype=F64)

    def loss(w, xs=x, ys=y):
        return torch.nn.functional.cross_entropy(xs @ w.view(K, d).T, ys)

    H = torch.autograd.functional.hessian(loss, w0)
    G = vmap(grad(lambda w, xi, yi: loss(w, xi[None], yi[None])), in_dims=(None, 0, 0))(w0, x, y)

    _, pullback = vjp(grad(loss), w0)          # reverse over reverse: H v = v^T H (H symmetric)

    def hvp(V):
        return vmap(lambda v: pullback(v)[0])(V)

    return H, G, hvp


def test_exact_matches_solve_on_spd_for_every_damping():
    H, B = _spd(8), _rhs(3, 8)
    e = eigen(H)
    for damping in (0.0, 0.3, 10.0):
        want = torch.linalg.solve(H + damping * torch.eye(8, dtype=F64), B.T).T
        assert torch.allclose(exact(H, B, damping=damping), want, atol=1e-10)
        assert torch.allclose(e.solve(B, damping), want, atol=1e-10)   # one decomposition, many dampings
    assert e.max == pytest.approx(100.0) and e.min == pytest.approx(1.0)
    assert exact(H.float(), B.float()).dtype == torch.float32


def test_exact_is_the_pseudo_inverse_on_a_singular_psd_matrix():
    H = _spectrum([5.0, 2.0, 1.0, 0.0, 0.0], seed=3)
    B = _rhs(4, 5)
    assert torch.allclose(exact(H, B), (torch.linalg.pinv(H, hermitian=True) @ B.T).T, atol=1e-10)
    top = eigen(H).top(2)        # the inverse on the top-2 eigenspace only
    assert top.values.tolist() == pytest.approx([5.0, 2.0])
    U = top.vectors
    assert torch.allclose(top.solve(B), B @ U.T @ torch.diag(1 / top.values) @ U, atol=1e-10)


def test_cross_entropy_hessian_of_a_softmax_head_is_solved_on_its_range():
    n, d, K = 30, 4, 3
    H, G, hvp = _softmax_head(n, d, K)
    e = eigen(H)
    assert int((e.values.abs() <= 1e-10 * e.max).sum()) == d   # null space: one vector added to every class row
    null = torch.cat([torch.eye(d, dtype=F64)] * K)            # [K d, d]: the directions w_c += a for all c
    assert torch.allclose(G @ null, torch.zeros(n, d, dtype=F64), atol=1e-12)
    want = (torch.linalg.pinv(H, hermitian=True, rtol=1e-10) @ G.T).T
    X = exact(H, G)
    assert torch.allclose(X, want, atol=1e-8)
    Xcg, info = cg(hvp, G)
    assert info.converged and torch.allclose(Xcg, want, atol=1e-6)


def test_exact_rejects_negative_curvature_unless_damping_covers_it():
    H, B = _spectrum([3.0, 1.0, -0.5]), _rhs(2, 3)
    with pytest.raises(InfluenceError, match=r"damping=0.55 or larger") as err:
        exact(H, B)
    assert "-0.5" in str(err.value)
    with pytest.raises(InfluenceError, match="damping"):
        exact(H, B, damping=0.5)
    want = torch.linalg.solve(H + 0.55 * torch.eye(3, dtype=F64), B.T).T
    assert torch.allclose(exact(H, B, damping=0.55), want, atol=1e-10)


def test_bad_arguments_raise_input_errors_naming_them():
    H = _spd(4)
    with pytest.raises(InputError, match="^B:"):
        exact(H, _rhs(2, 5))
    with pytest.raises(InputError, match="^B:"):
        cg(lambda V: V @ H, torch.ones(4, dtype=F64))
    with pytest.raises(InputError, match="^damping:"):
        exact(H, _rhs(1, 4), damping=-1.0)
    with pytest.raises(InputError, match="^H:"):
        eigen(torch.ones(3, 4))
    with pytest.raises(InputError, match="^B: the right-hand sides have NaN"):
        cg(lambda V: V @ H, torch.full((1, 4), float("nan"), dtype=F64))
    with pytest.raises(InfluenceError, match="NaN or inf"):
        cg(lambda V: V * float("nan"), _rhs(1, 4))
    with pytest.raises(InputError, match="^iterations:"):
        arnoldi(lambda V: V @ H, 4, rank=3, iterations=2)


def test_batched_cg_freezes_rows_that_converge_first():
    P = 40
    H = torch.diag(torch.linspace(1.0, 50.0, P, dtype=F64))
    B = torch.zeros(4, P, dtype=F64)
    B[0, 3] = 1.0                          # one eigenvector: converged after one step
    B[1, :2] = 1.0                         # two eigencomponents: two steps
    B[2] = _rhs(1, P)[0]                   # everything: many steps
    # B[3] = 0: done before any step
    sizes = []

    def hvp(V):
        sizes.append(V.shape[0])
        return V @ H

    X, info = cg(hvp, B)
    assert torch.allclose(X, B / torch.diagonal(H), atol=1e-10)
    assert isinstance(info, SolveInfo) and info.converged and info.residual <= 1e-8
    assert sizes[0] == 3 and sizes[-1] == 1 and sizes == sorted(sizes, reverse=True)
    assert info.iterations == len(sizes) < 2 * P


def test_cg_float32_converges_to_its_attainable_tolerance():
    H, B = _spd(20), _rhs(3, 20)
    X, info = cg(lambda V: V @ H.float(), B.float())
    assert info.converged and X.dtype == torch.float32
    assert torch.allclose(X.double(), torch.linalg.solve(H, B.T).T, rtol=1e-4, atol=1e-5)


def test_cg_negative_curvature_names_damping_and_damping_makes_it_solvable():
    H, B = _spectrum([4.0, 2.0, 1.0, -1.0], seed=2), _rhs(2, 4)
    with pytest.raises(InfluenceError, match="negative curvature.*damping=") as err:
        cg(lambda V: V @ H, B)
    assert "damping" in str(err.value)
    X, info = cg(lambda V: V @ H, B, damping=1.5)
    assert info.converged
    assert torch.allclose(X, torch.linalg.solve(H + 1.5 * torch.eye(4, dtype=F64), B.T).T, atol=1e-10)


def test_cg_warns_and_returns_when_it_runs_out_of_iterations():
    H, B = _spd(30, cond=1e6), _rhs(2, 30)
    with pytest.warns(InfluenceWarning, match="max_iter=3"):
        X, info = cg(lambda V: V @ H, B, max_iter=3)
    assert not info.converged and info.iterations == 3 and info.residual > 1e-8 and torch.isfinite(X).all()
    X, info = cg(lambda V: V @ H, torch.zeros(0, 30, dtype=F64))
    assert X.shape == (0, 30) and info.converged


def test_top_eigenvalue_is_signed_and_seeded():
    H = _spectrum([-6.0, 3.0, 1.0, 0.5])
    est = top_eigenvalue(lambda V: V @ H, 4, iters=200, dtype=F64, tol=1e-12)
    assert est == pytest.approx(-6.0, rel=1e-8)
    H = _spd(30)
    a = top_eigenvalue(lambda V: V @ H, 30, seed=3, dtype=F64)
    assert a == top_eigenvalue(lambda V: V @ H, 30, seed=3, dtype=F64)
    assert a == pytest.approx(100.0, rel=1e-3) and a <= 100.0 + 1e-9


def test_lissa_matches_exact_with_its_automatic_scale():
    H, B = _spd(10, cond=20), _rhs(3, 10)
    steps = []

    def hvp(V, step):
        steps.append(step)
        return V @ H

    X, info = lissa(hvp, B, damping=0.1, tol=1e-10)
    want = exact(H, B, damping=0.1)
    assert info.converged and torch.allclose(X, want, rtol=1e-6, atol=1e-8)
    assert info.scale == pytest.approx(1.05 * (20.0 + 0.1), rel=1e-3)
    assert steps[-info.iterations:] == list(range(info.iterations))   # after the power iteration's step-0 calls
    X2, info2 = lissa(hvp, B, damping=0.1, tol=1e-10, top=20.0)      # a known top eigenvalue skips the estimate
    assert info2.scale == pytest.approx(1.05 * 20.1) and torch.allclose(X2, want, rtol=1e-6, atol=1e-8)


def test_lissa_on_the_singular_softmax_hessian_matches_the_pseudo_inverse():
    H, G, _ = _softmax_head()
    X, info = lissa(lambda V, step: V @ H, G[:5], damping=0.01, tol=1e-9, depth=20000)
    assert info.converged
    assert torch.allclose(X, exact(H, G[:5], damping=0.01), rtol=1e-5, atol=1e-6)


def test_lissa_divergence_is_detected_and_explained():
    H, B = _spectrum([5.0, 1.0, -0.5]), _rhs(2, 3)
    with pytest.raises(InfluenceError, match="negative curvature.*damping=0.55") as err:
        lissa(lambda V, step: V @ H, B)
    assert "damping=0" in str(err.value)
    X, info = lissa(lambda V, step: V @ H, B, damping=1.0, tol=1e-10)     # damping covers it
    assert info.converged and torch.allclose(X, exact(H, B, damping=1.0), atol=1e-7)
    with pytest.raises(InfluenceError, match="scale=1 is below half.*pass scale="):
        lissa(lambda V, step: V @ _spd(3), B, scale=1.0)
    with pytest.raises(InfluenceError, match="largest-magnitude eigenvalue is -6"):
        lissa(lambda V, step: V @ _spectrum([-6.0, 1.0]), _rhs(1, 2))


def test_lissa_warns_when_depth_runs_out():
    H, B = _spd(10, cond=1e4), _rhs(1, 10)
    with pytest.warns(InfluenceWarning, match="depth=50"):
        X, info = lissa(lambda V, step: V @ H, B, depth=50, top=1e4)
    assert not info.converged and info.iterations == 50 and torch.isfinite(X).all()


def test_arnoldi_recovers_the_top_eigenpairs_of_a_known_spectrum():
    P = 200
    values = 100.0 / torch.arange(1, P + 1, dtype=F64) ** 1.5
    g = torch.Generator().manual_seed(5)
    U, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=F64))
    H = U @ torch.diag(values) @ U.T
    calls = []

    def hvp(V):
        calls.append(V.shape)
        return V @ H

    vals, vecs = arnoldi(hvp, P, rank=5, dtype=F64)
    assert len(calls) == 60 and calls[0] == (1, P)
    assert vals.dtype == F64 and vecs.shape == (5, P)
    assert torch.allclose(vals, values[:5], rtol=1e-8)
    assert torch.allclose((vecs @ U[:, :5]).abs(), torch.eye(5, dtype=F64), atol=1e-6)
    again = arnoldi(hvp, P, rank=5, dtype=F64)
    assert torch.equal(again[0], vals) and torch.equal(again[1], vecs)


def test_arnoldi_solve_with_full_rank_is_the_exact_inverse():
    H, B = _spd(12), _rhs(3, 12)
    vals, vecs = arnoldi(lambda V: V @ H, 12, rank=12, dtype=F64)
    assert vals.shape == (12,)
    for damping in (0.0, 0.5):
        want = torch.linalg.solve(H + damping * torch.eye(12, dtype=F64), B.T).T
        assert torch.allclose(arnoldi_solve(vals, vecs, B, damping), want, atol=1e-8)


def test_arnoldi_on_a_low_rank_hessian_restarts_and_keeps_the_positive_spectrum():
    H, G, hvp = _softmax_head(n=30, d=4, K=3)   # P = 12, rank 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vals, vecs = arnoldi(hvp, 12, rank=12, dtype=F64)
    true = torch.linalg.eigvalsh(H).flip(0)[:8]
    assert vals.shape == (8,) and torch.allclose(vals, true, rtol=1e-8)
    assert torch.allclose(vecs @ vecs.T, torch.eye(8, dtype=F64), atol=1e-8)
    assert torch.allclose(arnoldi_solve(vals, vecs, G), exact(H, G), atol=1e-7)


def test_arnoldi_drops_dominant_negative_curvature_with_a_warning():
    H = _spectrum([4.0, -3.0, 2.0, 1.0, 0.5, 0.25])
    with pytest.warns(InfluenceWarning, match="negative"):
        vals, _ = arnoldi(lambda V: V @ H, 6, rank=2, dtype=F64)
    assert vals.tolist() == pytest.approx([4.0, 2.0])
    with pytest.raises(InfluenceError, match="damping"):
        arnoldi_solve(torch.tensor([2.0, -1.0], dtype=F64), torch.eye(2, dtype=F64), _rhs(1, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_solvers_stay_on_the_device_and_agree_with_the_cpu():
    H, B = _spd(16), _rhs(3, 16)
    Hc, Bc = H.cuda(), B.cuda()
    want = exact(H, B, damping=0.1)
    assert torch.allclose(exact(Hc, Bc, damping=0.1).cpu(), want, atol=1e-10)
    X, _ = cg(lambda V: V @ Hc, Bc, damping=0.1)
    assert X.is_cuda and torch.allclose(X.cpu(), want, atol=1e-8)
    X, _ = lissa(lambda V, step: V @ Hc, Bc, damping=0.1, tol=1e-10)
    assert X.is_cuda and torch.allclose(X.cpu(), want, rtol=1e-6, atol=1e-8)
    vals, vecs = arnoldi(lambda V: V @ Hc, 16, rank=16, device="cuda", dtype=F64)
    assert vecs.is_cuda and torch.allclose(arnoldi_solve(vals, vecs, Bc, 0.1).cpu(), want, atol=1e-8)
    assert top_eigenvalue(lambda V: V @ Hc, 16, device="cuda", dtype=F64) == pytest.approx(
        top_eigenvalue(lambda V: V @ H, 16, dtype=F64), rel=1e-9)
