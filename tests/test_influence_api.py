"""underhood.influence: the convention, the estimators against closed forms, gradients against autograd loops,
caching, errors and the model left as found."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underhood.core.errors import InputError
from underhood.influence import (
    Influence,
    InfluenceError,
    InfluenceWarning,
    Problem,
    influence,
    select_params,
    self_influence,
)
from underhood.models.architectures import LeNet, ShapesResNet, ShapesVGG
from underhood.models.normalized import Normalized

LAM = 1e-2


def _newton(X: torch.Tensor, y: torch.Tensor, K: int, n: int, lam: float = LAM) -> nn.Linear:
    """Softmax regression minimising (1/n) sum_i CE_i + lam/2 |theta|^2 (bias included) by Newton's method with
    the closed-form gradient and Hessian: the exact optimum, with ``n`` >= len(X) for leave-one-out refits."""
    Z = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)          # [m, d + 1]
    Y = F.one_hot(y, K).to(X.dtype)
    theta = torch.zeros(K, Z.shape[1], dtype=X.dtype)
    eye = torch.eye(theta.numel(), dtype=X.dtype)
    for _ in range(50):
        P = torch.softmax(Z @ theta.T, 1)
        g = (P - Y).T @ Z / n + lam * theta
        S = torch.diag_embed(P) - P.unsqueeze(2) * P.unsqueeze(1)          # [m, K, K]
        H = torch.einsum("mab,mi,mj->aibj", S, Z, Z).reshape(theta.numel(), -1) / n + lam * eye
        theta = theta - torch.linalg.solve(H, g.reshape(-1)).view_as(theta)
        if g.norm() < 1e-13:
            break
    lin = nn.Linear(X.shape[1], K).double()
    with torch.no_grad():
        lin.weight.copy_(theta[:, :-1])
        lin.bias.copy_(theta[:, -1])
    return lin


def _fit_linear(X: torch.Tensor, y: torch.Tensor, K: int) -> nn.Linear:
    return _newton(X, y, K, len(X))


@pytest.fixture(scope="module")
def linear_problem():
    g = torch.Generator().manual_seed(0)
    n, d, K = 120, 6, 3
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(K, d, generator=g, dtype=torch.float64)
    y = (X @ W.T + 0.7 * torch.randn(n, K, generator=g, dtype=torch.float64)).argmax(1)
    Xq = torch.randn(4, d, generator=g, dtype=torch.float64)
    yq = torch.randint(0, K, (4,), generator=g)
    return _fit_linear(X, y, K), X, y, Xq, yq


def _softmax_terms(lin: nn.Linear, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form per-example gradients [n, P] (weight row-major, then bias) and the Hessian of the mean CE."""
    K, d = lin.weight.shape
    P = torch.softmax(lin(X).detach(), 1)
    R = P - F.one_hot(y, K).to(X.dtype)                                    # [n, K]
    G = torch.cat([(R.unsqueeze(2) * X.unsqueeze(1)).reshape(len(X), -1), R], 1)
    Z = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    S = torch.diag_embed(P) - P.unsqueeze(2) * P.unsqueeze(1)
    H4 = torch.einsum("mab,mi,mj->aibj", S, Z, Z) / len(X)                 # [K, d+1, K, d+1]
    # reorder (class, feature|bias) to the flat order: all weights (class-major), then the biases
    order = torch.cat([torch.arange(K * (d + 1)).view(K, d + 1)[:, :d].reshape(-1),
                       torch.arange(K * (d + 1)).view(K, d + 1)[:, d]])
    H = H4.reshape(K * (d + 1), -1)[order][:, order]
    return G, H


def _closed_form(lin: nn.Linear, X, y, Xq, yq, damping: float) -> torch.Tensor:
    """(1/n) g_q^T (H + damping I)^-1 g_i from the closed-form gradients and Hessian of softmax regression."""
    G, H = _softmax_terms(lin, X, y)
    Gq, _ = _softmax_terms(lin, Xq, yq)
    Hd = H + damping * torch.eye(len(H), dtype=H.dtype)
    return Gq @ torch.linalg.solve(Hd, G.T) / len(X)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


# ----------------------------------------------------------------------------- the convention


def test_exact_equals_the_closed_form(linear_problem):
    lin, X, y, Xq, yq = linear_problem
    r = influence(lin, (X, y), (Xq, yq), method="exact", damping=LAM, progress=False)
    ref = _closed_form(lin, X, y, Xq, yq, LAM)
    assert r.scores.shape == (4, len(X))
    torch.testing.assert_close(r.scores, ref, rtol=1e-6, atol=1e-10)


def test_sign_removing_a_helpful_point_raises_the_query_loss(linear_problem):
    """Positive = helpful: refit without the most helpful and the most harmful point, the query's loss moves the
    way the score says and by about its amount."""
    lin, X, y, Xq, yq = linear_problem
    r = influence(lin, (X, y), (Xq[:1], yq[:1]), method="exact", damping=LAM, progress=False)
    for i in (int(r.helpful(0, 1)), int(r.harmful(0, 1))):
        keep = torch.arange(len(X)) != i
        # leave-one-out keeps the 1/n weighting (the convention's objective)
        refit = _newton(X[keep], y[keep], lin.out_features, len(X))
        before = F.cross_entropy(lin(Xq[:1]), yq[:1])
        after = F.cross_entropy(refit(Xq[:1]), yq[:1])
        actual = float((after - before).detach())
        predicted = float(r.scores[0, i])
        assert actual * predicted > 0
        assert abs(actual - predicted) < 0.2 * abs(predicted)
    assert float(r.scores[0, r.helpful(0, 1)]) > 0 > float(r.scores[0, r.harmful(0, 1)])


def test_a_duplicate_of_the_query_is_its_most_helpful_point(linear_problem):
    lin, X, y, Xq, yq = linear_problem
    X2, y2 = torch.cat([X, Xq[:1]]), torch.cat([y, yq[:1]])
    r = influence(lin, (X2, y2), (Xq[:1], yq[:1]), method="exact", damping=LAM, progress=False)
    assert int(r.helpful(0, 1)) == len(X)


# ----------------------------------------------------------------------------- the estimators


@pytest.mark.parametrize("method,tol", [("cg", 1e-6), ("lissa", 1e-4)])
def test_iterative_estimators_match_exact(linear_problem, method, tol):
    lin, X, y, Xq, yq = linear_problem
    ref = _closed_form(lin, X, y, Xq, yq, LAM)
    r = influence(lin, (X, y), (Xq, yq), method=method, damping=LAM, progress=False)
    assert (r.scores - ref).abs().max() <= tol * ref.abs().max()


def test_arnoldi_with_full_rank_is_exact_and_low_rank_ranks_alike(linear_problem):
    lin, X, y, Xq, yq = linear_problem
    ref = _closed_form(lin, X, y, Xq, yq, LAM)
    full = influence(lin, (X, y), (Xq, yq), method="arnoldi", rank=21, damping=LAM, progress=False)
    torch.testing.assert_close(full.scores, ref, rtol=1e-5, atol=1e-8)
    low = influence(lin, (X, y), (Xq, yq), method="arnoldi", rank=8, damping=LAM, progress=False)
    assert _corr(low.scores, ref) > 0.8


def test_ekfac_ranks_like_exact_on_a_linear_model(linear_problem):
    lin, X, y, Xq, yq = linear_problem
    ref = _closed_form(lin, X, y, Xq, yq, LAM)
    r = influence(lin, (X, y), (Xq, yq), method="ekfac", damping=LAM, progress=False)
    assert _corr(r.scores, ref) > 0.8


def test_similarity_baselines_closed_forms(linear_problem):
    lin, X, y, Xq, yq = linear_problem
    pr = Problem(lin)
    G, Gq = pr.grads(X, y), pr.grads(Xq, yq)
    dot = influence(lin, (X, y), (Xq, yq), method="grad_dot", progress=False).scores
    torch.testing.assert_close(dot, Gq @ G.T / len(X))
    cos = influence(lin, (X, y), (Xq, yq), method="grad_cos", progress=False).scores
    torch.testing.assert_close(cos, F.normalize(Gq, dim=1) @ F.normalize(G, dim=1).T)
    rel = influence(lin, (X, y), (Xq, yq), method="relatif", damping=LAM, progress=False).scores
    ref = _closed_form(lin, X, y, Xq, yq, LAM)
    self_ = _closed_form(lin, X, y, X, y, LAM).diagonal()
    torch.testing.assert_close(rel, ref / (self_ * len(X)).sqrt(), rtol=1e-6, atol=1e-10)


def test_tracin_sums_learning_rate_weighted_dot_products_over_checkpoints(linear_problem):
    lin, X, y, Xq, yq = linear_problem
    other = nn.Linear(X.shape[1], lin.out_features).double()
    ckpts = [(other.state_dict(), 0.5), (lin.state_dict(), 0.1)]
    r = influence(lin, (X, y), (Xq, yq), method="tracin", checkpoints=ckpts, progress=False)
    ref = sum(lr * Problem(m).grads(Xq, yq) @ Problem(m).grads(X, y).T / len(X)
              for m, lr in ((other, 0.5), (lin, 0.1)))
    torch.testing.assert_close(r.scores, ref)


def test_self_influence_is_the_diagonal_of_train_on_train(linear_problem):
    lin, X, y, _, _ = linear_problem
    for method in ("exact", "cg", "grad_dot"):
        s = self_influence(lin, (X[:30], y[:30]), method=method, damping=LAM, progress=False)
        full = influence(lin, (X[:30], y[:30]), (X[:30], y[:30]), method=method, damping=LAM, progress=False,
                         fragility=False)
        torch.testing.assert_close(s.scores, full.scores.diagonal(), rtol=1e-5, atol=1e-10)
        assert s.losses.shape == (30,)


def test_grad_cos_self_influence_is_refused(linear_problem):
    lin, X, y, _, _ = linear_problem
    with pytest.raises(InputError, match="grad_cos"):
        self_influence(lin, (X, y), method="grad_cos", progress=False)


# ----------------------------------------------------------------------------- gradients of real networks


def _net(arch, **kw):
    torch.manual_seed(0)
    return Normalized(arch(**kw), [0.5] * kw.get("in_channels", 3), [0.25] * kw.get("in_channels", 3),
                      [str(i) for i in range(10)][:kw.get("num_classes", 8)]).double()


@pytest.mark.parametrize("arch,kw,size", [(ShapesVGG, {"width": 4}, 16), (ShapesResNet, {"width": 4}, 16),
                                          (LeNet, {"in_channels": 1}, 32)])
def test_per_example_gradients_and_hvp_match_autograd_loops(arch, kw, size):
    """BatchNorm in eval mode, in-place ReLUs, a residual block, functional F.relu."""
    net = _net(arch, **kw)
    c = kw.get("in_channels", 3)
    x = torch.rand(5, c, size, size, dtype=torch.float64)
    y = torch.randint(0, 8, (5,))
    net.train()  # the estimators must evaluate in eval mode and restore this flag
    est = Influence(net, (x, y), method="grad_dot", progress=False)
    assert net.training
    pr = est.problem
    net.eval()
    params = [dict(net.net.named_parameters())[n] for n in pr.names]
    ref = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]), params)]) for i in range(5)])
    torch.testing.assert_close(pr.grads(x, y), ref)
    v = torch.randn(2, pr.n_params, dtype=torch.float64)
    flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(net(x), y), params,
                                                                  create_graph=True)])
    hv = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat @ vi, params, retain_graph=True)])
                      for vi in v])
    torch.testing.assert_close(pr.hvp(x, y)(v), hv)


def test_the_head_shortcut_gives_the_same_scores_as_the_full_forward(monkeypatch):
    net = _net(ShapesVGG, width=4)
    x = torch.rand(24, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 8, (24,))
    est = Influence(net, (x, y), method="exact", params="classifier", damping=0.01, progress=False)
    assert est.problem.head == "classifier" and est.inputs.shape == (24, 16)
    fast = est.scores((x[:3], y[:3])).scores
    monkeypatch.setattr(Problem, "prepare", lambda self, inputs: inputs)   # the full network on images
    slow = Influence(net, (x, y), method="exact", params="classifier", damping=0.01, progress=False)
    assert slow.problem.head is None and slow.inputs.shape == x.shape
    torch.testing.assert_close(slow.scores((x[:3], y[:3])).scores, fast)


def test_params_choose_the_head_a_block_or_everything():
    net = _net(ShapesResNet, width=4)
    assert select_params(net, "fc") == ["fc.weight", "fc.bias"]
    block = select_params(net, "layer3")
    assert block and all(n.startswith("layer3.") for n in block)
    assert select_params(net, ["fc.bias", "layer3"])[-1] == "fc.bias"
    assert len(select_params(net, None)) == len(list(net.parameters()))
    with pytest.raises(InputError, match="params: no module or parameter named 'fcc'.*'fc'"):
        select_params(net, "fcc")
    with pytest.raises(InputError, match="params: 'relu'.*no parameters"):
        select_params(net, "relu")


# ----------------------------------------------------------------------------- inputs and errors


def test_inputs_an_imageset_a_dataset_and_unlabelled_queries(linear_problem):
    lin, X, y, Xq, yq = linear_problem
    ds = torch.utils.data.TensorDataset(X, y)
    a = influence(lin, ds, Xq, method="exact", damping=LAM, progress=False)
    assert torch.equal(a.query_labels, lin(Xq).argmax(1))
    b = influence(lin, (X, y), (Xq, a.query_labels), method="exact", damping=LAM, progress=False)
    torch.testing.assert_close(a.scores, b.scores)


@pytest.mark.parametrize("kwargs,match", [
    ({"damping": -1.0}, "damping"),
    ({"method": "koh"}, "method"),
    ({"params": "nope"}, "params"),
    ({"loss": lambda logits, labels: F.cross_entropy(logits, labels)}, "loss: must return one loss per example"),
    ({"checkpoints": [{}]}, "checkpoints"),
])
def test_bad_arguments_get_one_line_naming_them(linear_problem, kwargs, match):
    lin, X, y, Xq, yq = linear_problem
    with pytest.raises(InputError, match=match) as err:
        influence(lin, (X, y), (Xq, yq), progress=False, **{"method": "exact", **kwargs})
    assert "\n" not in str(err.value)


def test_empty_data_and_bad_labels(linear_problem):
    lin, X, y, Xq, yq = linear_problem
    with pytest.raises(InputError, match="train: it is empty"):
        influence(lin, (X[:0], y[:0]), (Xq, yq), progress=False)
    with pytest.raises(InputError, match="labels"):
        influence(lin, (X, y.double()), (Xq, yq), progress=False)


def test_a_parameter_the_loss_does_not_reach():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(InputError, match="params: the loss has no gradient"):
        influence(Two(), (torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), torch.randn(1, 3), params="unused",
                  progress=False)


class _Saddle(nn.Module):
    """logits = (a * b * x, 0) near a = b = 0: the loss's Hessian over (a, b) is about [[0, c], [c, 0]], indefinite."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(0.1)), nn.Parameter(torch.tensor(0.2))

    def forward(self, x):
        return torch.stack([self.a * self.b * x[:, 0], torch.zeros_like(x[:, 0])], 1)


@pytest.mark.parametrize("method", ["exact", "cg", "lissa"])
def test_negative_curvature_without_damping_is_an_error_naming_damping(method):
    x, y = torch.ones(8, 1), torch.zeros(8, dtype=torch.long)
    with pytest.raises(InfluenceError, match="damping"):
        influence(_Saddle(), (x, y), (x[:1], y[:1]), method=method, progress=False)
    r = influence(_Saddle(), (x, y), (x[:1], y[:1]), method=method, damping=1.0, progress=False)
    assert torch.isfinite(r.scores).all()


# ----------------------------------------------------------------------------- cache, fragility, lifecycle


def test_the_cache_reuses_the_fit_and_the_training_gradients(linear_problem, tmp_path):
    lin, X, y, Xq, yq = linear_problem
    first = Influence(lin, (X, y), method="exact", damping=LAM, cache=tmp_path, progress=False)
    a = first.scores((Xq[:2], yq[:2]))
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    second = Influence(lin, (X, y), method="exact", damping=LAM, cache=tmp_path, progress=False)
    b = second.scores((Xq[:2], yq[:2]))
    assert second.info.get("cached_state") and second.info.get("cached_train")
    torch.testing.assert_close(a.scores, b.scores)
    changed = nn.Linear(lin.in_features, lin.out_features).double()
    Influence(changed, (X, y), method="exact", damping=LAM, cache=tmp_path, progress=False).scores((Xq, yq))
    assert len(list(tmp_path.glob("*.safetensors"))) == 4    # other weights, other keys


def test_fragility_and_dominance_are_reported(linear_problem):
    lin, X, y, Xq, yq = linear_problem
    r = influence(lin, (X, y), (Xq, yq), method="exact", damping=LAM, progress=False)
    assert set(r.fragility) == {"overlap_0.1x", "overlap_10x", "damping_0.1x", "damping_10x"}
    assert 0 <= r.fragility["overlap_10x"] <= 1 and r.fragility["damping_10x"] == pytest.approx(10 * LAM)
    # a far-away training point with a huge gradient tops every query's grad_dot ranking
    far = 40 * torch.ones(12, X.shape[1], dtype=X.dtype)
    k = int(lin(far[:1]).argmin())              # misclassified there: a huge gradient
    Xo, yo = torch.cat([X, far]), torch.cat([y, torch.full((12,), k)])
    many = torch.rand(8, X.shape[1], dtype=X.dtype) + 0.5
    with pytest.warns(InfluenceWarning, match="dominated"):
        d = influence(lin, (Xo, yo), (many, torch.full((8,), k)), method="grad_dot", progress=False)
    assert (d.helpful(0, 10) >= len(X)).sum() >= 10
    assert d.relatif is not None and d.relatif.shape == d.scores.shape


def test_the_model_is_left_as_found_also_when_a_call_raises():
    net = _net(ShapesVGG, width=4)
    net.train()
    flags = [p.requires_grad for p in net.parameters()]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.rand(6, 3, 16, 16, dtype=torch.float64), torch.randint(0, 8, (6,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InfluenceWarning)
        influence(net, (x, y), (x[:2], y[:2]), method="cg", params="classifier", damping=0.1, progress=False)
    with pytest.raises(InputError):
        influence(net, (x, y), (x[:2], y[:2]), params="nope", progress=False)
    assert net.training and all(m.training for m in net.modules())
    assert [p.requires_grad for p in net.parameters()] == flags
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_result_helpers_and_round_trip(linear_problem, tmp_path):
    from underhood.core.results import load

    lin, X, y, Xq, yq = linear_problem
    r = influence(lin, (X, y), (Xq, yq), method="exact", damping=LAM, progress=False)
    top = r.helpful(1, 5)
    assert torch.equal(top, r.scores[1].argsort(descending=True)[:5])
    assert torch.equal(r.harmful(1, 5), r.scores[1].argsort()[:5])
    with pytest.raises(InputError, match="q:"):
        r.helpful(9)
    assert "exact" in r.summary() and "tensor(" not in repr(r)
    r.save(tmp_path / "r")
    back = load(tmp_path / "r")
    torch.testing.assert_close(back.scores, r.scores)


def test_a_heads_features_are_cached_and_ekfac_fits_on_a_seeded_subset(tmp_path):
    net = _net(ShapesVGG, width=4)
    x, y = torch.rand(40, 3, 16, 16, dtype=torch.float64), torch.randint(0, 8, (40,))
    a = Influence(net, (x, y), method="exact", params="classifier", damping=0.1, cache=tmp_path, progress=False)
    b = Influence(net, (x, y), method="exact", params="classifier", damping=0.1, cache=tmp_path, progress=False)
    assert b.info.get("cached_features") and not a.info.get("cached_features")
    torch.testing.assert_close(a.inputs, b.inputs)
    torch.testing.assert_close(a.scores((x[:2], y[:2])).scores, b.scores((x[:2], y[:2])).scores)
    sub = [influence(net, (x, y), (x[:2], y[:2]), method="ekfac", params="classifier", damping=0.1, fit_size=16,
                     progress=False, fragility=False).scores for _ in range(2)]
    full = influence(net, (x, y), (x[:2], y[:2]), method="ekfac", params="classifier", damping=0.1, fit_size=None,
                     progress=False, fragility=False).scores
    torch.testing.assert_close(sub[0], sub[1])            # the subset is seeded
    assert not torch.allclose(sub[0], full) and _corr(sub[0], full) > 0.5


def test_cache_keys_follow_checkpoint_weights_and_relatif_damping(linear_problem, tmp_path):
    lin, X, y, Xq, yq = linear_problem
    other = nn.Linear(X.shape[1], lin.out_features).double()
    first = {k: v.clone() for k, v in other.state_dict().items()}
    a = Influence(lin, (X, y), method="tracin", checkpoints=[(first, 1.0)], cache=tmp_path, progress=False)
    with torch.no_grad():
        other.weight.add_(1.0)          # the same shapes, other values: another key
    b = Influence(lin, (X, y), method="tracin", checkpoints=[(other.state_dict(), 1.0)], cache=tmp_path,
                  progress=False)
    assert a._key("state") != b._key("state")
    r1 = Influence(lin, (X, y), method="relatif", damping=0.01, cache=tmp_path, progress=False)
    r2 = Influence(lin, (X, y), method="relatif", damping=0.1, cache=tmp_path, progress=False)
    assert r1._key("train-relatif") != r2._key("train-relatif") and r1._key("state") == r2._key("state")
    r1.scores((Xq, yq))
    torch.testing.assert_close(r2.scores((Xq, yq)).scores,
                               influence(lin, (X, y), (Xq, yq), method="relatif", damping=0.1, progress=False).scores)


def test_a_vision_transformer_hvp_through_attention_and_ekfac_on_its_linear_layers():
    """Forward-mode AD has no rule for the fused attention kernels: the HVP runs attention on its math backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .transformer_models import build

    vit = build("vit").double()
    x, y = torch.rand(6, 3, 32, 32, dtype=torch.float64), torch.randint(0, 4, (6,))
    pr = Problem(vit, "blocks.1.attn")
    v = torch.randn(2, pr.n_params, dtype=torch.float64)
    params = [dict(vit.named_parameters())[n] for n in pr.names]
    with sdpa_kernel([SDPBackend.MATH]):     # the fused kernel has no double backward either
        flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(vit(x), y), params,
                                                                      create_graph=True)])
        hv = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat @ vi, params,
                                                                                retain_graph=True)]) for vi in v])
    torch.testing.assert_close(pr.hvp(x, y)(v), hv)
    r = influence(vit, (x, y), (x[:2], y[:2]), method="cg", params="blocks.1.attn", damping=50.0, progress=False,
                  fragility=False)
    assert torch.isfinite(r.scores).all()
    e = influence(vit, (x, y), (x[:2], y[:2]), method="ekfac", params=["blocks.1.mlp.0", "head"], damping=1.0,
                  progress=False, fragility=False)
    assert e.scores.shape == (2, 6)
    with pytest.raises(InputError, match="cls, pos belong to the TinyViT itself"):
        influence(vit, (x, y), (x[:2], y[:2]), method="ekfac", progress=False)


def test_the_head_is_the_last_linear_the_forward_runs():
    from underhood.influence import head_layer

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.aux = nn.Linear(3, 2)       # registered after fc, never run

        def forward(self, x):
            return self.fc(x)

    m = Unused()
    assert head_layer(m) == "aux" and head_layer(m, torch.randn(1, 3)) == "fc"
    assert head_layer(nn.Sequential(nn.Conv2d(1, 1, 1))) is None
