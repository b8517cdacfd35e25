"""Adversarial examples beyond neural networks: linear models, scikit-learn models, and "excessive linearity".

The lectures (MAP583 and CMP784, "Not just for neural networks") list the models that adversarial
examples also fool: logistic and softmax regression, support vector machines, decision trees and
nearest neighbours. Goodfellow, Shlens & Szegedy (2015) explain why: a linear score
``w . x + b`` moves by ``eps * ||w||_1`` under an L-inf step of ``eps``, which is large in high
dimension, and deep networks are "very piecewise linear" (their logits along the FGSM direction are
nearly straight lines).

* :func:`softmax_regression` trains a multinomial logistic regression on the bundled digits;
  :func:`linear_flip` finds, for any *affine* classifier, the exact minimal L2 perturbation (inside
  the pixel box) that makes a chosen class win (the lecture's "9 turned into every other digit");
  :func:`minimal_affine` is its solver on weights and vectors.
* :func:`from_sklearn` wraps a fitted scikit-learn classifier as a module on ``[N, C, H, W]`` pixels:
  linear ones (``coef_``/``intercept_``: linear SVM, logistic regression) as an exact, differentiable
  ``nn.Linear``; the others (k-NN, trees) as a black box with no gradient.
  :func:`sklearn_models` fits the lectures' three on digits. :func:`craft` attacks any of them:
  white-box where an input gradient exists, Papernot et al.'s :func:`~underhood.adversarial.substitute`
  attack otherwise; give it to :func:`~underhood.adversarial.transfer_matrix` for the cross-model matrix.
* :func:`logit_path` records every logit along the FGSM direction ``x + eps * sign(grad)`` as ``eps``
  sweeps ``[-eps_max, eps_max]`` (Goodfellow et al. 2015's "excessive linearity" plot).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import logits as batched_logits
from ..core.checks import choice, number, positive_int
from ..core.errors import InputError
from ..core.inputs import check_inputs
from ..core.results import Result
from ..core.seeding import seeded
from .base import AttackResult, Labels, attacking, finish, setup
from .gradient import fgsm, pgd
from .substitute import substitute

WHITE_BOX = ("fgsm", "pgd")

# ---------------------------------------------------------------------------- softmax regression


def softmax_regression(data: Any = None, *, weight_decay: float = 1e-3, steps: int = 100, seed: int = 0) -> nn.Module:
    """Multinomial logistic regression ``softmax(W x + b)`` on flattened pixels, trained here (the lectures' model).

    Minimises the mean cross-entropy plus ``weight_decay / 2 * ||W||^2`` over ``data`` with full-batch
    L-BFGS (``steps`` iterations, strong-Wolfe line search) from zero weights: deterministic, a second
    or so on the digits' 1,437 training images. ``seed`` seeds torch's generators during training
    (L-BFGS itself draws nothing). The weight decay keeps ``W`` smooth, so its rows (and minimal
    perturbations, which are combinations of them) look like digits.

    Args:
        data: an ImageSet or an ``(images, labels)`` pair of ``[N, C, H, W]`` pixels; default the bundled
            digits' training split (32x32).

    Returns:
        ``nn.Sequential(nn.Flatten(), nn.Linear(C*H*W, K))`` in eval mode, taking ``[N, C, H, W]`` pixels,
        with ``input_size = (C, H, W)`` and ``meta`` (``train_accuracy``, and ``test_accuracy`` on the
        digits' test split when trained on the default data).

    Example:
        >>> model = softmax_regression()
        >>> model.meta["test_accuracy"] > 0.9
        True
    """
    from ..data import digits

    decay = number("weight_decay", weight_decay)
    steps = positive_int("steps", steps)
    x, y = _pair(digits(split="train") if data is None else data, "data")
    classes = int(y.max()) + 1
    linear = nn.Linear(x[0].numel(), classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    flat = x.flatten(1)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(flat), y) + 0.5 * decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with seeded(seed):
        opt.step(closure)
    linear.weight.grad = linear.bias.grad = None
    model = nn.Sequential(nn.Flatten(), linear).eval()
    model.input_size = tuple(x.shape[1:])
    with torch.no_grad():
        meta = {"arch": "softmax-regression", "weight_decay": decay, "steps": steps, "seed": seed,
                "train_accuracy": float((model(x).argmax(1) == y).float().mean())}
        if data is None:
            test = digits(split="test")
            meta.update(dataset="digits", test_accuracy=float((model(test.images).argmax(1) == test.labels)
                                                               .float().mean()))
    model.meta = meta
    return model


def _pair(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, C, H, W], labels [N])`` of an ImageSet or a pair."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        x, y = getattr(data, "images", None), getattr(data, "labels", None)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or y is None:
        raise InputError(f"{name}: expected an ImageSet or an (images [N, C, H, W], labels [N]) pair, "
                         f"got {type(data).__name__}")
    y = torch.as_tensor(y).long().flatten()
    if len(y) != len(x):
        raise InputError(f"{name}: {len(y)} labels for {len(x)} images; give one per image")
    return x.float(), y


# ---------------------------------------------------------------------------- the exact flip of an affine model


def affine_parts(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W [K, D], b [K])`` of a model whose logits are affine in its input, ``f(x) = W x.flatten() + b``.

    Read with one batched backward pass at ``x = 0`` (``b = f(0)``, row ``k`` of ``W`` is the gradient of
    logit ``k``), then checked at ``inputs``: a model that is not affine (a ReLU network) is an
    :class:`InputError`. Run inside :func:`~underhood.adversarial.base.attacking`.
    """
    k = model(inputs[:1]).shape[1]
    zero = inputs.new_zeros((k, *inputs.shape[1:]), requires_grad=True)
    out = model(zero)
    if not out.requires_grad:
        raise InputError("model: its logits have no input gradient; linear_flip needs an affine torch model "
                         "(use from_sklearn for a scikit-learn linear model, craft for a black box)")
    (grad,) = torch.autograd.grad(out.diagonal().sum(), zero)
    weight, bias = grad.flatten(1).double(), out[0].detach().double()
    with torch.no_grad():
        got = model(inputs).double()
    want = inputs.flatten(1).double() @ weight.T + bias
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + float(want.abs().max()))):
        raise InputError("model: its logits are not affine in the input (W x + b); linear_flip is exact for "
                         "linear models only; use deepfool or cw for a network")
    return weight, bias


def minimal_affine(weight: torch.Tensor, bias: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, *,
                   kappa: float = 0.0, box: tuple[float, float] | None = (0.0, 1.0), steps: int = 5000,
                   tol: float = 1e-9) -> torch.Tensor:
    """The smallest L2 step ``delta`` after which class ``target`` beats every other class of ``W x + b`` by ``kappa``.

    Solves the convex quadratic programme (Szegedy et al. 2014's minimal perturbation, exact for an
    affine model)::

        min ||delta||_2   s.t.  (w_t - w_k) . (x + delta) + b_t - b_k >= kappa  for all k != t,
                                box[0] <= x + delta <= box[1]

    through its dual, one multiplier ``lambda_k >= 0`` per competing class: for fixed ``lambda`` the box
    makes the minimiser ``delta = clip(sum_k lambda_k (w_t - w_k), box - x)``, and accelerated projected
    gradient ascent (FISTA with adaptive restart) maximises the concave dual until the constraints hold
    to ``tol`` and the duality gap ``sum_k lambda_k * slack_k`` is below ``tol`` times ``||delta||^2``.
    With one active competitor it is the closed form ``delta = (z_k - z_t + kappa) / ||w_t - w_k||^2 *
    (w_t - w_k)``: move along ``w_t - w_k`` until the logits tie (plus ``kappa``). Where the box makes
    the target unreachable the constraints stay violated (the caller sees no success).

    Args:
        weight: ``[K, D]``; bias: ``[K]``; inputs: ``[N, D]``; target: ``[N]`` classes.
        box: the pixel range, or ``None`` for no box.

    Returns:
        ``[N, D]`` float64 steps (zero where ``target`` already wins by ``kappa``).
    """
    w, b, x = weight.double(), bias.double(), inputs.double()
    t = target.long()
    k = w.shape[0]
    others = torch.stack([torch.cat([torch.arange(c), torch.arange(c + 1, k)]) for c in t.tolist()]).to(x.device)
    a = w[t][:, None, :] - w[others]                              # [N, m, D]: a_k = w_t - w_k
    z = x @ w.T + b
    c = kappa - (z.gather(1, t[:, None]) - z.gather(1, others))   # [N, m]: need a_k . delta >= c_k
    lo, hi = (None, None) if box is None else (box[0] - x, box[1] - x)

    def primal(lam: torch.Tensor) -> torch.Tensor:
        d = torch.einsum("nmd,nm->nd", a, lam)
        return d if lo is None else torch.maximum(torch.minimum(d, hi), lo)

    lipschitz = torch.linalg.eigvalsh(a @ a.transpose(1, 2))[:, -1].clamp_min(1e-30)[:, None]
    lam = torch.zeros_like(c)
    mom, theta = lam.clone(), torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
    scale = 1 + c.abs().amax(1)
    for it in range(steps):
        grad = c - torch.einsum("nmd,nd->nm", a, primal(mom))
        new = (mom + grad / lipschitz).clamp_min(0)
        restart = ((new - lam) * grad).sum(1, keepdim=True) < 0   # O'Donoghue & Candes: momentum went uphill
        theta_new = torch.where(restart, 1.0, (1 + torch.sqrt(1 + 4 * theta ** 2)) / 2)
        mom = new + torch.where(restart, 0.0, (theta - 1) / theta_new) * (new - lam)
        lam, theta = new, theta_new
        if it % 25 == 24 or it == steps - 1:
            d = primal(lam)
            slack = torch.einsum("nmd,nd->nm", a, d) - c
            violation = (-slack).clamp_min(0).amax(1)
            gap = (lam * slack).sum(1).abs()
            if bool(((violation <= tol * scale) & (gap <= tol * (1 + d.pow(2).sum(1)))).all()):
                break
    return primal(lam)


def linear_flip(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, target: Labels = None,
                kappa: float = 1e-3, steps: int = 5000, tol: float = 1e-9, seed: int = 0) -> AttackResult:
    """The exact minimal L2 adversarial perturbation of an affine classifier (softmax regression, linear SVM).

    For logits ``z = W x + b`` (read from the model by :func:`affine_parts`; a model that is not affine
    is refused), the smallest ``delta`` inside the ``[0, 1]`` box after which ``target`` wins by
    ``kappa`` logits (:func:`minimal_affine`). Untargeted (``target=None``), every class other than
    the label is tried and the closest one kept: DeepFool's answer (Moosavi-Dezfooli et al. 2016)
    without its linearisation error, and in the box. The lectures' figure (MAP583, CMP784: softmax
    regression turning a 9 into every other digit) is ``target = 0..8`` on nine copies of a 9.
    ``kappa > 0`` is the overshoot that makes the win strict: with ``kappa = 0`` the result is the
    tie point, and any shorter step along it keeps the label. Nothing is random: ``seed`` is only
    recorded.

    Returns:
        :class:`AttackResult` (``info["margin"]``: ``[N]`` the target's final lead over the best other
        logit; ``norms["l2"]`` the minimal norms).

    Example:
        >>> model = softmax_regression()                              # doctest: +SKIP
        >>> r = linear_flip(model, nine.expand(9, -1, -1, -1), target=range(9))   # doctest: +SKIP
        >>> r.success.all(), r.norms["l2"]                            # doctest: +SKIP
    """
    kappa = number("kappa", kappa)
    steps = positive_int("steps", steps)
    if target is not None and not isinstance(target, (int, torch.Tensor)):
        target = list(target)
    with attacking(model):
        p = setup(model, inputs, labels, target)
        weight, bias = affine_parts(model, p.x)
        flat = p.x.flatten(1)
        if p.target is not None:
            delta = minimal_affine(weight, bias, flat, p.target, kappa=kappa, steps=steps, tol=tol)
        else:  # every other class; the nearest wins
            cand = torch.stack([minimal_affine(weight, bias, flat, torch.full_like(p.labels, k), kappa=kappa,
                                               steps=steps, tol=tol) for k in range(p.classes)], 1)
            norms = cand.norm(dim=2).scatter(1, p.labels[:, None], torch.inf)
            delta = cand[torch.arange(len(flat)), norms.argmin(1)]
        adv = (flat.double() + delta).clamp(0, 1).view_as(p.x).to(p.x.dtype)
        z = adv.flatten(1).double() @ weight.T + bias
        goal = p.target if p.target is not None else z.scatter(1, p.labels[:, None], -torch.inf).argmax(1)
        lead = z.gather(1, goal[:, None])[:, 0] - z.scatter(1, goal[:, None], -torch.inf).amax(1)
        info = {"method": "linear_flip", "norm": "l2", "kappa": kappa, "steps": steps, "tol": tol, "seed": seed,
                "margin": lead.float()}
        return finish(model, p, adv, info)


# ---------------------------------------------------------------------------- scikit-learn models


class SklearnClassifier(nn.Module):
    """A fitted scikit-learn classifier as a black-box module on ``[N, C, H, W]`` pixels (no input gradient).

    ``forward`` flattens the images, calls ``predict_proba`` (or one-hot ``predict`` when the estimator
    has no probabilities) and returns ``log(p + 1e-6)`` ``[N, classes]`` as logits, so ``argmax`` is the
    estimator's ``predict`` (the first class on ties, as scikit-learn). The output does not require a
    gradient: gradient attacks see none, black-box ones (:func:`~underhood.adversarial.substitute`,
    :func:`~underhood.adversarial.one_pixel`) work.
    """

    def __init__(self, estimator: Any, shape: Sequence[int], classes: int | None = None) -> None:
        super().__init__()
        self.estimator = estimator
        self.input_size = tuple(int(s) for s in shape)
        self.columns = [int(c) for c in estimator.classes_]
        self.classes = classes or max(self.columns) + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().flatten(1).cpu().double().numpy()
        if hasattr(self.estimator, "predict_proba"):
            probs = self.estimator.predict_proba(flat)
        else:
            pred = self.estimator.predict(flat)
            probs = (np.asarray(pred)[:, None] == np.asarray(self.columns)[None]).astype(float)
        full = np.zeros((len(flat), self.classes))
        full[:, self.columns] = probs
        return torch.from_numpy(np.log(full + 1e-6)).to(x.device, torch.float32)

    def extra_repr(self) -> str:
        return f"{type(self.estimator).__name__}, input_size={self.input_size}"


def from_sklearn(estimator: Any, shape: Sequence[int], *, classes: int | None = None) -> nn.Module:
    """A fitted scikit-learn classifier as a module taking ``[N, *shape]`` pixels (flattened) and giving logits.

    A linear classifier (``coef_`` and ``intercept_``: ``LinearSVC``, ``LogisticRegression``,
    ``SGDClassifier``, ...) becomes ``nn.Sequential(nn.Flatten(), nn.Linear)`` whose logits are its
    ``decision_function`` exactly (float64 weights; a binary one gives ``[0, decision]``), so gradient
    attacks and :func:`linear_flip` apply: its gradient is the weight vector. Any other classifier becomes
    a :class:`SklearnClassifier` black box. Both have ``input_size = shape``; ``classes`` widens the output
    to that many classes (default: the largest class seen plus one).

    Example:
        >>> from sklearn.svm import LinearSVC                                     # doctest: +SKIP
        >>> svm = from_sklearn(LinearSVC().fit(x.flatten(1), y), (1, 32, 32))      # doctest: +SKIP
    """
    shape = tuple(int(s) for s in shape)
    if not hasattr(estimator, "classes_"):
        raise InputError(f"estimator: expected a fitted scikit-learn classifier, got {type(estimator).__name__} "
                         "(call .fit first)")
    if not (hasattr(estimator, "coef_") and hasattr(estimator, "intercept_")):
        return SklearnClassifier(estimator, shape, classes).eval()
    coef = torch.as_tensor(np.asarray(estimator.coef_), dtype=torch.float64)
    intercept = torch.as_tensor(np.atleast_1d(np.asarray(estimator.intercept_)), dtype=torch.float64)
    cols = [int(c) for c in estimator.classes_]
    if coef.shape[0] == 1:  # binary: decision = w . x + b for classes_[1]
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    width = classes or max(cols) + 1
    weight = torch.zeros(width, coef.shape[1], dtype=torch.float64)
    fill = torch.full((width,), -1e4, dtype=torch.float64)  # classes it never saw never win
    weight[cols], fill[cols] = coef, intercept
    linear = nn.Linear(coef.shape[1], width, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(fill)
    model = _Float64(nn.Sequential(nn.Flatten(), linear)).eval()
    model.input_size = shape
    return model


class _Float64(nn.Module):
    """Runs a float64 network on float32 pixels and gives float32 logits (scikit-learn works in float64)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.double()).float()


def sklearn_models(data: Any = None, *, kinds: Sequence[str] = ("linear SVM", "k-NN", "decision tree"),
                   n_train: int | None = None, neighbors: int = 5, max_depth: int | None = None,
                   seed: int = 0) -> dict[str, nn.Module]:
    """The lectures' non-neural classifiers, fitted by scikit-learn on flat pixels, wrapped by :func:`from_sklearn`.

    ``"linear SVM"``: ``LinearSVC`` (one-vs-rest, squared hinge, ``C = 0.01``, ``dual="auto"``), affine and
    differentiable; ``"k-NN"``: ``KNeighborsClassifier(neighbors)``; ``"decision tree"``:
    ``DecisionTreeClassifier(max_depth, random_state=seed)``; the last two are black boxes.

    Args:
        data: an ImageSet or ``(images, labels)`` pair (default: the digits' training split, 32x32);
            its first ``n_train`` images (default all) are used.

    Returns:
        ``{kind: module}`` in the order of ``kinds``.
    """
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    from ..data import digits

    makers = {"linear SVM": lambda: LinearSVC(C=0.01, dual="auto", max_iter=5000, random_state=seed),
              "k-NN": lambda: KNeighborsClassifier(positive_int("neighbors", neighbors)),
              "decision tree": lambda: DecisionTreeClassifier(max_depth=max_depth, random_state=seed)}
    x, y = _pair(digits(split="train") if data is None else data, "data")
    if n_train is not None:
        x, y = x[:positive_int("n_train", n_train)], y[:n_train]
    classes = int(y.max()) + 1
    out = {}
    for kind in kinds:
        choice("kinds", kind, tuple(makers))
        est = makers[kind]().fit(x.flatten(1).double().numpy(), y.numpy())
        out[kind] = from_sklearn(est, tuple(x.shape[1:]), classes=classes)
    return out


def has_gradient(model: nn.Module, inputs: torch.Tensor) -> bool:
    """Whether ``model``'s logits on ``inputs[:1]`` depend differentiably on the input (a black box's do not)."""
    with attacking(model), torch.enable_grad():
        x = inputs[:1].detach().clone().requires_grad_(True)
        return bool(model(x).requires_grad)


def craft(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, eps: float | str = 0.3,
          attack: str = "fgsm", substitute_inputs: torch.Tensor | None = None, rounds: int = 4, epochs: int = 10,
          lam: float = 0.1, seed: int = 0) -> AttackResult:
    """Untargeted adversarial examples for any classifier: white-box where it has an input gradient, else transfer.

    A model with an input gradient (a network, :func:`softmax_regression`, a linear SVM from
    :func:`from_sklearn`) is attacked directly with ``attack`` (``"fgsm"`` or ``"pgd"``, L-inf ``eps``).
    A black box (k-NN, a tree) gets Papernot et al.'s :func:`~underhood.adversarial.substitute` attack:
    a substitute CNN trained on the *model's* labels of ``substitute_inputs`` (default: ``inputs``) and
    their Jacobian augmentations (``rounds``, ``epochs``, ``lam``), attacked with ``attack`` at ``eps``,
    its examples scored on the model. This is the crafting step of Papernot, McDaniel & Goodfellow
    2016's cross-technique transferability matrix; give it to
    :func:`~underhood.adversarial.transfer_matrix` (with ``batch_size = len(data)`` so that each
    substitute is trained once).

    Returns:
        :class:`AttackResult` on the model (``info["via"]``: ``"white-box"`` or ``"substitute"``; for the
        latter also ``agreement`` and ``queries``).

    Example:
        >>> m = transfer_matrix({"cnn": cnn, **sklearn_models()}, test, craft, eps=0.3,
        ...                     batch_size=len(test))                     # doctest: +SKIP
    """
    attack = choice("attack", attack, WHITE_BOX)
    if has_gradient(model, check_inputs(model, inputs)):
        fn = fgsm if attack == "fgsm" else pgd
        result = fn(model, inputs, labels, eps=eps, seed=seed)
        result.info["via"] = "white-box"
        return result
    seeds = inputs if substitute_inputs is None else substitute_inputs
    r = substitute(model, seeds, test_inputs=inputs, test_labels=labels, rounds=rounds, epochs=epochs, lam=lam,
                   attack=attack, eps=eps, seed=seed)
    r.result.info.update(via="substitute", agreement=r.agreement, queries=r.queries)
    return r.result


# ---------------------------------------------------------------------------- excessive linearity


@dataclass(repr=False)
class LogitPath(Result):
    """Every logit along a straight line through the input (see :func:`logit_path`).

    Attributes:
        eps: ``[P]`` step sizes, from ``-eps_max`` to ``eps_max`` (0 included when ``P`` is odd).
        logits: ``[N, P, K]`` the logits of ``x + eps_p * direction``.
        direction: ``[N, C, H, W]`` the direction (FGSM: ``sign(grad_x CE(f(x), y))``).
        labels: ``[N]`` the classes whose loss the direction increases.
        images: ``[N, P, C, H, W]`` the inputs along the path, or ``None`` (``keep_images=False``).
        info: ``eps_max``, ``box``, ``direction`` (``"fgsm"`` or ``"given"``).
    """

    eps: torch.Tensor
    logits: torch.Tensor
    direction: torch.Tensor
    labels: torch.Tensor
    images: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def probs(self) -> torch.Tensor:
        """``[N, P, K]`` the softmax of :attr:`logits`."""
        return self.logits.softmax(-1)

    @property
    def predicted(self) -> torch.Tensor:
        """``[N, P]`` the predicted class along the path."""
        return self.logits.argmax(-1)

    def linearity(self) -> torch.Tensor:
        """``[N]`` the R^2 of straight lines through the logit curves: the share of the logits' variance along the
        path that the best line through each class's curve explains, pooled over classes (1: exactly linear).

        Goodfellow et al.'s point in one number: a deep network's logits along the FGSM direction are close
        to straight lines (R^2 near 1). A path on which no logit moves counts as linear.
        """
        e = self.eps.double() - self.eps.double().mean()
        z = self.logits.double() - self.logits.double().mean(1, keepdim=True)
        slope = (z * e[None, :, None]).sum(1) / e.pow(2).sum()
        resid = (z - slope[:, None, :] * e[None, :, None]).pow(2).sum((1, 2))
        total = z.pow(2).sum((1, 2))
        return torch.where(total > 0, 1 - resid / total.clamp_min(1e-300), torch.ones_like(total)).float()

    def scalars(self) -> dict[str, Any]:
        """The images, points and range, the mean R^2 of a straight line through the logits, the share of the
        path on which the label is still predicted."""
        kept = (self.predicted == self.labels[:, None]).float().mean()
        return {"n": len(self.labels), "points": len(self.eps), "eps_max": self.info.get("eps_max"),
                "box": self.info.get("box"), "mean_r2": float(self.linearity().mean()), "label_kept": float(kept)}

    def figure(self, **kwargs: Any):
        """The logits against ``eps`` (:func:`underhood.viz.adversarial_linear.linearity_figure`)."""
        from ..viz.adversarial_linear import linearity_figure

        return linearity_figure({"model": self}, **kwargs)


def logit_path(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, eps_max: float = 0.5,
               points: int = 101, direction: torch.Tensor | None = None, box: bool = False,
               keep_images: bool = False, batch_size: int = 256) -> LogitPath:
    """The logits of ``x + eps * d`` for ``eps`` in ``[-eps_max, eps_max]``: Goodfellow et al. 2015's linearity plot.

    ``d`` is the FGSM direction ``sign(grad_x CE(f(x), y))`` (``y`` = ``labels``, default the
    prediction) unless ``direction`` ``[N, C, H, W]`` is given. For an affine model every logit is a
    straight line in ``eps``, ``z(x) + eps * W d``; "Explaining and harnessing adversarial examples"
    (Fig. 4, a maxout network on CIFAR-10) shows that a deep network's logits are nearly so, piecewise
    linear, which is why one step along ``d`` fools it. As in the paper the inputs may leave the
    ``[0, 1]`` box; ``box=True`` clips them to it (then the lines bend where pixels saturate).

    Returns:
        :class:`LogitPath` (float32 logits ``[N, points, K]``).

    Example:
        >>> path = logit_path(load_model("digits"), x[:1], eps_max=0.5)   # doctest: +SKIP
        >>> path.linearity().mean()                                        # doctest: +SKIP
    """
    eps_max = number("eps_max", eps_max, strict=True)
    points = positive_int("points", points)
    with attacking(model):
        p = setup(model, inputs, labels)
        if direction is None:
            x = p.x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x), p.labels, reduction="sum"), x)
            d, how = grad.sign(), "fgsm"
        else:
            if not isinstance(direction, torch.Tensor) or direction.shape != p.x.shape:
                raise InputError(f"direction: expected a tensor of the inputs' shape {tuple(p.x.shape)}, got "
                                 f"{getattr(direction, 'shape', type(direction).__name__)}")
            d, how = direction.detach().to(p.x), "given"
        eps = torch.linspace(-eps_max, eps_max, points, dtype=torch.float32)
        path = p.x[:, None] + eps.to(p.x)[None, :, None, None, None] * d[:, None]
        if box:
            path = path.clamp(0, 1)
        flat = path.flatten(0, 1)
        z = batched_logits(model, flat, batch_size).float().view(len(p.x), points, -1)
    return LogitPath(eps=eps, logits=z.cpu(), direction=d.cpu(), labels=p.labels.cpu(),
                     images=path.detach().cpu() if keep_images else None,
                     info={"eps_max": eps_max, "box": box, "direction": how, "points": points})


__all__ = ["SklearnClassifier", "LogitPath", "affine_parts", "craft", "from_sklearn", "has_gradient", "linear_flip",
           "logit_path", "minimal_affine", "sklearn_models", "softmax_regression"]
