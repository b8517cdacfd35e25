"""The influence family's validation (issue 16): statistics, the exact logistic fit, and tiers 1-2 and the
mislabel finder at small sizes. LDS (tier 3) is in test_influence_lds.py (slow lane)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from underhood.core.errors import InputError
from underhood.influence import validation as V

from .conftest import check_protocol


def _blobs(n: int = 200, d: int = 5, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64)
    x = centres[y] + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y


# ---------------------------------------------------------------------------- statistics


def test_statistics_match_scipy_and_sklearn():
    from scipy import stats
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, generator=g, dtype=torch.float64)
    b = a + torch.randn(50, generator=g, dtype=torch.float64)
    b[3] = b[7]  # a tie
    assert V.pearson(a, b) == pytest.approx(stats.pearsonr(a.numpy(), b.numpy())[0], abs=1e-12)
    assert V.spearman(a, b) == pytest.approx(stats.spearmanr(a.numpy(), b.numpy())[0], abs=1e-12)
    positive = b > 0.5
    assert V.roc_auc(a, positive) == pytest.approx(roc_auc_score(positive.numpy(), a.numpy()), abs=1e-12)
    assert math.isnan(V.pearson(torch.ones(4), torch.arange(4.0)))
    with pytest.raises(InputError, match="positive"):
        V.roc_auc(a, torch.zeros(50, dtype=torch.bool))


def test_recall_curve_and_interval():
    scores = torch.tensor([0.9, 0.1, 0.8, 0.3])
    hits = torch.tensor([True, False, False, True])
    torch.testing.assert_close(V.recall_curve(scores, hits), torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64))
    mean, low, high = V.interval(torch.tensor([1.0, 2.0, 3.0, float("nan")]))
    half = 1.96 / math.sqrt(3)
    assert mean == 2.0 and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)


# ---------------------------------------------------------------------------- the exact logistic fit and its LOO


def test_fit_logistic_reaches_the_optimum_of_the_l2_objective():
    x, y = _blobs()
    lam = 1e-2
    head = V.fit_logistic(x, y, lam=lam, tol=1e-12)
    assert head.weight.dtype == torch.float64 and head.weight.shape == (3, 5)
    params = [head.weight, head.bias]
    objective = F.cross_entropy(head(x), y) + lam / 2 * sum(p.pow(2).sum() for p in params)
    grads = torch.autograd.grad(objective, params)
    assert max(float(g.abs().max()) for g in grads) < 1e-11


def test_refit_without_equals_a_cold_fit_that_keeps_the_one_over_n_weighting():
    x, y = _blobs(seed=2)
    lam = 1e-2
    head = V.fit_logistic(x, y, lam=lam, tol=1e-12)
    warm = V.refit_without(head, x, y, [4, 17], lam=lam, tol=1e-12)
    for i, refit in zip([4, 17], warm):
        w = torch.ones(len(x), dtype=torch.float64)
        w[i] = 0
        cold = V.fit_logistic(x, y, lam=lam, weights=w, tol=1e-12)
        torch.testing.assert_close(refit.weight, cold.weight, atol=1e-9, rtol=0)
        # not the (1/(n-1)) refit: that one moves further
        keep = torch.arange(len(x)) != i
        other = V.fit_logistic(x[keep], y[keep], n_classes=3, lam=lam)
        assert not torch.allclose(refit.weight, other.weight, atol=1e-6)


def test_closed_form_predicts_leave_one_out_and_has_the_family_sign():
    x, y = _blobs(n=153, seed=3)
    x, y, xq, yq = x[:150], y[:150], x[150:], y[150:]
    lam = 1e-2
    head = V.fit_logistic(x, y, lam=lam, tol=1e-12)
    scores = V.exact_influence(head, (x, y), (xq, yq), lam=lam)
    drop = torch.cat([scores[0].topk(5).indices, scores[0].topk(5, largest=False).indices])
    base = V.ce_losses(head, xq, yq)[0]
    actual = torch.stack([V.ce_losses(h, xq, yq)[0] - base for h in V.refit_without(head, x, y, drop, lam=lam)])
    predicted = scores[0, drop]
    assert V.pearson(predicted, actual) > 0.98
    assert (actual[:5] > 0).all() and (actual[5:] < 0).all()  # positive = removing it raises the query's loss
    self_scores = V.exact_influence(head, (x, y), (xq, yq), lam=lam, self_scores=True)
    torch.testing.assert_close(self_scores[:3], torch.diagonal(V.exact_influence(head, (x, y), (x[:3], y[:3]),
                                                                                lam=lam)[:, :3]))


def test_the_families_exact_method_equals_the_closed_form():
    from underhood.influence.api import influence

    x, y = _blobs(n=124, seed=5)
    x, y, xq, yq = x[:120], y[:120], x[120:], y[120:]
    lam = 1e-2
    head = V.fit_logistic(x, y, lam=lam)
    result = influence(head, (x, y), (xq, yq), method="exact", damping=lam, progress=False, fragility=False)
    torch.testing.assert_close(result.scores.double(), V.exact_influence(head, (x, y), (xq, yq), lam=lam),
                               atol=1e-12, rtol=1e-9)


# ---------------------------------------------------------------------------- tier 1 on the shapes model


@pytest.fixture(scope="module")
def convex():
    return V.convex_loo(n_train=300, n_queries=3, dim=16, progress=False)


def test_convex_loo_estimators_reach_the_issues_bars(convex):
    check_protocol(convex, "ConvexLOO")
    assert convex.indices.shape == (3, 40) and convex.actual.shape == (3, 40)
    for m in ("exact", "cg", "lissa"):
        assert convex.pearson[m] >= 0.95 and convex.spearman[m] >= 0.95, (m, convex.pearson, convex.spearman)
    assert convex.agreement["arnoldi"] >= 0.95 and convex.agreement["lissa"] >= 0.95, convex.agreement
    assert convex.agreement["ekfac"] >= 0.9, convex.agreement
    # the refit points are the extremes: the 20 most helpful are helpful after retraining
    assert (convex.actual[:, :20] > 0).float().mean() > 0.9 and (convex.actual[:, 20:] < 0).float().mean() > 0.9
    scalars = convex.scalars()
    assert scalars["pearson.cg"] == convex.pearson["cg"] and scalars["agreement.ekfac"] == convex.agreement["ekfac"]
    assert convex.info["cpu_s"] > 0 and set(convex.info["method_cpu_s"]) == set(convex.scores)


def test_convex_loo_figure_and_save(convex, tmp_path):
    from underhood.core.results import load

    fig = convex.figure()
    assert len(fig.axes) >= len(convex.scores)
    back = load(convex.save(tmp_path / "loo"))
    torch.testing.assert_close(back.actual, convex.actual)
    assert back.pearson == convex.pearson


def test_convex_loo_refuses_bad_arguments():
    with pytest.raises(InputError, match="n_extreme"):
        V.convex_loo(n_train=30, n_extreme=20, progress=False)
    with pytest.raises(InputError, match="lam"):
        V.convex_loo(lam=0.0, progress=False)


# ---------------------------------------------------------------------------- tier 2: dog vs fish


def test_dog_fish_rbf_influence_is_local_and_cnn_influence_follows_the_class():
    r = V.dog_fish(n_train=160, n_queries=4, progress=False)
    check_protocol(r, "DogFish")
    assert r.scores["rbf"].shape == (4, 160) and r.distances.shape == (4, 160)
    assert r.proximity["rbf"] > r.proximity["cnn"] + 0.15, r.proximity
    assert r.near_rank["rbf"] < 0.3 < r.near_rank["cnn"], r.near_rank
    assert r.same_class["cnn"] >= 0.95, r.same_class  # 1.0 at the default 400 images and 6 queries
    fig = r.figure()
    assert len(fig.axes) >= 2


def test_dog_fish_refuses_one_class():
    with pytest.raises(InputError, match="classes"):
        V.dog_fish(classes=("star", "star"), progress=False)
    with pytest.raises(InputError, match="classes"):
        V.dog_fish(classes=("star", "dog"), progress=False)


# ---------------------------------------------------------------------------- the mislabel finder


def test_flip_labels_flips_the_share_asked_to_another_class():
    from underhood.influence.mislabel import flip_labels

    labels = torch.arange(200) % 8
    noisy, flipped = flip_labels(labels, 0.1, 8, seed=3)
    assert int(flipped.sum()) == 20 and (noisy[flipped] != labels[flipped]).all()
    assert torch.equal(noisy[~flipped], labels[~flipped])
    assert torch.equal(flip_labels(labels, 0.1, 8, seed=3)[0], noisy)


def test_mislabel_self_influence_finds_the_flipped_labels():
    from underhood.influence.mislabel import mislabel

    r = mislabel(n_train=600, progress=False)
    check_protocol(r, "Mislabel")
    assert int(r.flipped.sum()) == 60
    assert r.auc["self_influence"] >= 0.95 and r.recall_at["self_influence"] >= 0.8, (r.auc, r.recall_at)
    assert abs(r.auc["random"] - 0.5) < 0.1
    assert r.winner in ("self_influence", "loss", "tie")
    if r.winner == "tie":
        assert r.auc["self_influence"] == r.auc["loss"]
    fig = r.figure()
    assert len(fig.axes) == 1


# ---------------------------------------------------------------------------- the bundle


def test_validate_runs_the_tiers_asked_and_prints_a_table():
    with pytest.raises(InputError, match="tiers"):
        V.validate((4,), progress=False)
    with pytest.raises(InputError, match="options"):
        V.validate((1,), progress=False, bogus={})
    r = V.validate((1,), progress=False, convex_loo={"n_train": 120, "n_queries": 2, "dim": 8, "lam": 1e-2,
                                                     "n_extreme": 5, "methods": ("exact", "cg")})
    check_protocol(r, "Validation")
    assert list(r.items) == ["convex_loo"]
    table = r.table()
    assert "| 1 convex LOO | cg: Pearson / Spearman vs retraining |" in table and ">= 0.95" in table
    assert r.scalars()["convex_loo.pearson.cg"] == r["convex_loo"].pearson["cg"]
