"""Adversarial examples beyond neural networks: the exact flip of an affine model, scikit-learn models attacked
white-box or through a substitute, the transfer matrix, and the logits along the FGSM direction."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from underhood import adversarial as adv
from underhood.adversarial.linear import minimal_affine
from underhood.core.errors import InputError

from .adversarial_models import one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def small_digits():
    """The bundled digits at their native 8x8: 64 pixels, fast to fit."""
    from underhood.data import digits

    return digits(split="train", size=8), digits(split="test", size=8)


@pytest.fixture(scope="module")
def softmax8(small_digits):
    train, _ = small_digits
    return adv.softmax_regression(train, steps=60)


def _margin(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``z_t - max_{k != t} z_k`` per row."""
    return z.gather(1, t[:, None])[:, 0] - z.scatter(1, t[:, None], -torch.inf).amax(1)


# ---------------------------------------------------------------------------- the solver


def _enumerate(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Slow reference, no box: min ||d|| s.t. a d >= c, by trying every set of active constraints (KKT)."""
    best = None
    for size in range(len(c) + 1):
        for active in itertools.combinations(range(len(c)), size):
            if size:
                s = list(active)
                lam = torch.linalg.solve(a[s] @ a[s].T, c[s])
                if (lam < -1e-12).any():
                    continue
                d = a[s].T @ lam
            else:
                d = torch.zeros(a.shape[1], dtype=a.dtype)
            if (a @ d >= c - 1e-9).all() and (best is None or d.norm() < best.norm()):
                best = d
    return best


def test_one_competitor_is_the_closed_form_step_to_the_tie():
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(2, 7, generator=g, dtype=torch.float64), torch.randn(2, dtype=torch.float64), \
        torch.randn(3, 7, generator=g, dtype=torch.float64)
    z = x @ w.T + b
    t = (1 - z.argmax(1))  # the class that loses now
    d = minimal_affine(w, b, x, t, kappa=0.5, box=None)
    a = w[t] - w[1 - t]  # [3, 7]
    need = 0.5 - _margin(z, t)
    torch.testing.assert_close(d, (need / a.pow(2).sum(1))[:, None] * a, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("seed", range(4))
def test_several_competitors_match_the_enumeration_of_active_sets(seed):
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 0])
    d = minimal_affine(w, b, x, t, kappa=0.1, box=None)
    for i in range(len(x)):
        others = [k for k in range(4) if k != int(t[i])]
        a = w[int(t[i])] - w[others]
        c = 0.1 - (x[i] @ w[int(t[i])] + b[int(t[i])] - (x[i] @ w[others].T + b[others]))
        torch.testing.assert_close(d[i], _enumerate(a, c), atol=1e-6, rtol=1e-6)


def test_in_the_box_it_matches_a_general_solver():
    from scipy.optimize import minimize

    g = torch.Generator().manual_seed(7)
    w, b = torch.randn(3, 6, generator=g, dtype=torch.float64) * 2, torch.zeros(3, dtype=torch.float64)
    x = torch.rand(1, 6, generator=g, dtype=torch.float64) * 0.6 + 0.2
    z = x @ w.T + b
    t = z.argmin(1)  # the least likely class: a long way, through the walls of the box
    d = minimal_affine(w, b, x, t, kappa=0.2)[0]
    others = [k for k in range(3) if k != int(t)]
    a = (w[int(t)] - w[others]).numpy()
    c = (0.2 - (z[0, int(t)] - z[0, others])).numpy()
    ref = minimize(lambda v: 0.5 * v @ v, torch.zeros(6).numpy(), jac=lambda v: v, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda v: a @ v - c, "jac": lambda v: a}],
                   bounds=list(zip((-x[0]).tolist(), (1 - x[0]).tolist())), options={"ftol": 1e-14, "maxiter": 500})
    assert ref.success
    touching = ((x[0] + d <= 1e-9) | (x[0] + d >= 1 - 1e-9)).sum()
    assert touching > 0, "the test should exercise the box"
    torch.testing.assert_close(d, torch.from_numpy(ref.x), atol=1e-5, rtol=1e-5)
    assert ((x[0] + d) >= -1e-12).all() and ((x[0] + d) <= 1 + 1e-12).all()


def test_a_target_out_of_reach_in_the_box_is_not_reached():
    from scipy.optimize import linprog

    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 6, generator=g, dtype=torch.float64) * 2
    x = torch.rand(1, 6, generator=g, dtype=torch.float64) * 0.6 + 0.2
    t = int((x @ w.T).argmin())
    others = [k for k in range(3) if k != t]
    a = (w[t] - w[others]).numpy()
    # the best lead the target can have anywhere in [0, 1]^6: max s s.t. s <= a x' (a linear programme)
    lp = linprog([0.0] * 6 + [-1.0], A_ub=[[*(-row), 1.0] for row in a], b_ub=[0.0, 0.0],
                 bounds=[(0, 1)] * 6 + [(None, None)])
    assert lp.success and -lp.fun < 0.2
    d = minimal_affine(w, torch.zeros(3, dtype=torch.float64), x, torch.tensor([t]), kappa=0.2, steps=500)
    assert float(_margin((x + d) @ w.T, torch.tensor([t]))[0]) < 0.2


# ---------------------------------------------------------------------------- the exact flip of softmax regression


def test_softmax_regression_learns_the_digits(softmax8, small_digits):
    _, test = small_digits
    with torch.no_grad():
        assert float((softmax8(test.images).argmax(1) == test.labels).float().mean()) > 0.9
    assert isinstance(softmax8[1], nn.Linear) and softmax8.input_size == (1, 8, 8)


def test_a_nine_is_pushed_exactly_to_every_other_digit(softmax8, small_digits):
    _, test = small_digits
    with torch.no_grad():
        pred = softmax8(test.images).argmax(1)
    i = int(((test.labels == 9) & (pred == 9)).nonzero()[0])
    x = test.images[i:i + 1].expand(9, -1, -1, -1)
    targets = torch.arange(9)
    w, b = softmax8[1].weight.detach().double(), softmax8[1].bias.detach().double()

    def logits(images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1).double() @ w.T + b

    won = adv.linear_flip(softmax8, x, target=targets, kappa=1e-3)
    assert won.success.all() and torch.equal(won.predicted, targets)
    assert (_margin(logits(won.adversarial), targets) > 0).all()
    tie = adv.linear_flip(softmax8, x, target=targets, kappa=0.0)
    delta = tie.perturbation
    # the oracle of the tie point: the target's logit equals the best other one
    torch.testing.assert_close(_margin(logits(tie.adversarial), targets), torch.zeros(9, dtype=torch.float64),
                               atol=2e-4, rtol=0)
    # minimal along its own direction: a slightly shorter step leaves the target behind
    shorter = (x + 0.995 * delta).clamp(0, 1)
    assert (_margin(logits(shorter), targets) < 0).all()
    assert won.norms["l2"].min() > 0 and (won.norms["l2"] >= tie.norms["l2"] - 1e-5).all()


def test_untargeted_it_is_never_longer_than_deepfool(softmax8, small_digits):
    _, test = small_digits
    x, y = test.images[:12], test.labels[:12]
    with torch.no_grad():
        keep = softmax8(x).argmax(1) == y
    x, y = x[keep], y[keep]
    ours, theirs = adv.linear_flip(softmax8, x, y, kappa=1e-4), adv.deepfool(softmax8, x, y, overshoot=0.0)
    assert ours.success.all()
    assert (ours.norms["l2"] <= theirs.norms["l2"] * 1.0001 + 1e-4).all()


def test_a_network_is_refused_and_left_as_found():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(InputError, match="not affine"):
        adv.linear_flip(net, torch.rand(2, 1, 8, 8))
    assert net.training and all(p.requires_grad for p in net.parameters())


# ---------------------------------------------------------------------------- scikit-learn models


def _toy_svm():
    """A hand-made 2-class linear SVM on 2-pixel images ``[N, 1, 1, 2]``."""
    from sklearn.svm import LinearSVC

    pts = torch.tensor([[0.2, 0.3], [0.3, 0.2], [0.25, 0.1], [0.7, 0.8], [0.8, 0.7], [0.75, 0.9]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    return LinearSVC(C=10.0, dual="auto").fit(pts.numpy(), labels.numpy()), pts


def test_a_linear_svm_becomes_its_exact_decision_function():
    svm, pts = _toy_svm()
    model = adv.from_sklearn(svm, (1, 1, 2))
    x = pts.view(-1, 1, 1, 2).float()
    with torch.no_grad():
        z = model(x)
    torch.testing.assert_close(z[:, 1] - z[:, 0], torch.from_numpy(svm.decision_function(pts.numpy())).float())
    assert adv.has_gradient(model, x)


def test_the_svm_gradient_attack_flips_a_linear_svm_exactly():
    svm, pts = _toy_svm()
    model = adv.from_sklearn(svm, (1, 1, 2))
    w, b = torch.from_numpy(svm.coef_[0]), float(svm.intercept_[0])
    x = torch.tensor([[0.4, 0.35]], dtype=torch.float64)  # class 0, inside the box
    s = float(x @ w + b)
    assert s < 0
    flip = adv.linear_flip(model, x.view(1, 1, 1, 2).float(), kappa=1e-6)
    step = flip.perturbation.flatten(1)[0].double()
    torch.testing.assert_close(step, (-s / float(w @ w)) * w, atol=1e-5, rtol=1e-4)  # straight to the boundary
    assert svm.predict((x + step).numpy())[0] == 1
    # FGSM: the score moves by eps * ||w||_1; just past it flips, just short of it does not
    needed = -s / float(w.abs().sum())
    for factor, flips in ((1.01, True), (0.99, False)):
        r = adv.fgsm(model, x.view(1, 1, 1, 2).float(), 0, eps=needed * factor)
        assert bool(r.success[0]) is flips
        assert svm.predict(r.adversarial.flatten(1).double().numpy())[0] == int(flips)


def test_a_black_box_model_answers_like_the_estimator_and_has_no_gradient(small_digits):
    from sklearn.neighbors import KNeighborsClassifier

    train, test = small_digits
    knn = KNeighborsClassifier(3).fit(train.images.flatten(1).numpy(), train.labels.numpy())
    model = adv.from_sklearn(knn, (1, 8, 8))
    assert isinstance(model, adv.SklearnClassifier)
    with torch.no_grad():
        pred = model(test.images[:40]).argmax(1)
    assert pred.tolist() == knn.predict(test.images[:40].flatten(1).double().numpy()).tolist()
    assert not adv.has_gradient(model, test.images[:1])


def test_the_substitute_learns_the_models_labels_not_the_true_ones(small_digits):
    from sklearn.tree import DecisionTreeClassifier

    train, test = small_digits
    x, y = train.images[:300], train.labels[:300]
    liar = (y + 1) % 10  # the tree is trained to answer the next digit
    tree = DecisionTreeClassifier(random_state=0).fit(x.flatten(1).numpy(), liar.numpy())
    model = adv.from_sklearn(tree, (1, 8, 8), classes=10)
    r = adv.substitute(model, x[:40], test_inputs=test.images[:30], rounds=2, epochs=3, eps=0.3)
    r.substitute.eval()
    asked = tree.predict(r.inputs.flatten(1).double().numpy())
    assert r.labels.tolist() == asked.tolist()
    assert float((r.labels[:40] == liar[:40]).float().mean()) == 1.0
    assert not (r.labels[:40] == y[:40]).any()
    crafted = adv.craft(model, test.images[:30], eps=0.3, substitute_inputs=x[:40], rounds=2, epochs=3)
    assert crafted.info["via"] == "substitute" and 0 <= crafted.info["agreement"] <= 1


def test_the_transfer_matrix_rows_are_each_models_own_attack(small_digits):
    from sklearn.tree import DecisionTreeClassifier

    train, test = small_digits
    models = adv.sklearn_models(train, kinds=("linear SVM",), n_train=400)
    tree = DecisionTreeClassifier(max_depth=8, random_state=0).fit(train.images[:400].flatten(1).numpy(),
                                                                   train.labels[:400].numpy())
    models["tree"] = adv.from_sklearn(tree, (1, 8, 8), classes=10)
    x, y = test.images[:40], test.labels[:40]
    opts = {"eps": 0.3, "substitute_inputs": train.images[-30:], "rounds": 2, "epochs": 2}
    m = adv.transfer_matrix(models, (x, y), adv.craft, batch_size=len(x), **opts)
    assert m.fooling.shape == m.accuracy.shape == (2, 2) and m.names == ["linear SVM", "tree"]
    assert ((m.fooling >= 0) & (m.fooling <= 1)).all()
    for i, source in enumerate(models.values()):  # the diagonal: the model's own (white-box or substitute) attack
        own = adv.craft(source, x, y, **opts)
        with torch.no_grad():
            correct = source(x).argmax(1) == y
        assert float(m.fooling[i, i]) == pytest.approx(float(own.success[correct].float().mean()))
    # accuracy under attack and fooling rate agree: acc >= clean * (1 - fooling), with at most the wrong ones fixed
    low = m.clean[None] * (1 - m.fooling)
    assert (m.accuracy >= low - 1e-6).all() and (m.accuracy <= low + (1 - m.clean[None]) + 1e-6).all()
    assert float(m.fooling[0, 0]) > 0.9  # eps = 0.3 white-box on a linear model


# ---------------------------------------------------------------------------- excessive linearity


def test_the_logits_of_a_linear_model_are_straight_lines_along_fgsm(softmax8, small_digits):
    _, test = small_digits
    x = test.images[:3]
    path = adv.logit_path(softmax8, x, eps_max=0.4, points=9)
    w, b = softmax8[1].weight.detach().double(), softmax8[1].bias.detach().double()
    z0 = x.flatten(1).double() @ w.T + b
    p = z0.softmax(1)
    y = z0.argmax(1)
    grad = (p - torch.nn.functional.one_hot(y, 10).double()) @ w  # d CE / dx of softmax regression
    assert torch.equal(path.direction.flatten(1), grad.sign().float())
    slope = path.direction.flatten(1).double() @ w.T
    want = z0[:, None, :] + path.eps.double()[None, :, None] * slope[:, None, :]
    torch.testing.assert_close(path.logits.double(), want, atol=1e-4, rtol=1e-5)
    assert (path.linearity() > 1 - 1e-6).all()


def test_a_relu_network_bends_and_the_path_starts_at_the_clean_logits():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    net.input_size = (1, 4, 4)
    x = torch.rand(2, 1, 4, 4)
    path = adv.logit_path(net, x, eps_max=2.0, points=21, box=True, keep_images=True)
    with torch.no_grad():
        torch.testing.assert_close(path.logits[:, 10], net(x))
    assert path.images.shape == (2, 21, 1, 4, 4) and path.images.min() >= 0 and path.images.max() <= 1
    assert (path.linearity() < 1 - 1e-4).all()
    assert "mean_r2" in path.summary()


def test_a_logit_path_and_a_fooling_matrix_survive_save_and_load(tmp_path, softmax8, small_digits):
    from underhood.core.results import load

    _, test = small_digits
    path = adv.logit_path(softmax8, test.images[:2], eps_max=0.2, points=5)
    back = load(path.save(tmp_path / "path"))
    assert torch.equal(back.logits, path.logits) and torch.equal(back.eps, path.eps)
    m = adv.transfer_matrix({"a": softmax8, "b": softmax8}, (test.images[:8], test.labels[:8]), "fgsm", eps=0.1)
    again = load(m.save(tmp_path / "matrix"))
    assert torch.equal(again.fooling, m.fooling) and torch.equal(m.fooling[0], m.fooling[1])
