"""Validation of the influence estimators against retraining, in three tiers (issue 16).

1. :func:`convex_loo`: L2-regularised logistic regression on a built-in model's frozen features,
   where ``damping = lam`` makes the first-order prediction exact up to second order; every
   estimator's prediction is compared with the actual loss change after refitting without the
   20 most helpful and 20 most harmful points (Koh & Liang 2017, Fig. 2).
2. :func:`dog_fish`: Koh & Liang's Fig. 4 on two shapes classes: a head on the CNN's features finds
   helpful images of the query's class whatever they look like; an RBF-kernel model on pixels finds
   the pixel-nearest ones.
3. :func:`lds`: the linear datamodeling score (Park et al. 2023) of a small deep net: Spearman, over
   models retrained on random half subsets, between predicted and actual query losses.

:func:`validate` runs the tiers asked for and returns a :class:`Validation` bundle with a summary
table. The mislabel finder lives in :mod:`underhood.influence.mislabel`.

Sign convention (the family's): ``score[q, i]`` is the predicted change of query ``q``'s loss when
training point ``i`` is removed, so the actual change after a leave-one-out refit is
``loss_q(theta_-i) - loss_q(theta)``, and a model trained on subset ``S`` is predicted to have
``loss_q(S) = loss_q(full) + sum_{i not in S} score[q, i]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import number, positive_int
from ..core.errors import InputError
from ..core.results import Result
from .mislabel import (  # noqa: F401  (re-exported: the shared statistics and the exact logistic fit)
    DEFAULT_OPTIONS,
    _elapsed,
    _model,
    _run,
    _shapes_split,
    _timer,
    ce_losses,
    exact_influence,
    features,
    fit_logistic,
    interval,
    pearson,
    recall_curve,
    refit_without,
    roc_auc,
    spearman,
    spearman_rows,
    standardise,
)

# ---------------------------------------------------------------------------- tier 1: convex leave-one-out

CONVEX_METHODS = ("exact", "cg", "lissa", "arnoldi", "ekfac")


@dataclass(repr=False)
class ConvexLOO(Result):
    """Tier 1: predicted against actual leave-one-out loss changes of an L2 logistic regression.

    Attributes:
        scores: method -> ``[Q, N]`` scores for every training point.
        indices: ``[Q, 2 * n_extreme]`` the refit points of each query: the ``n_extreme`` most positive and most
            negative by the ``exact`` scores.
        predicted: method -> ``[Q, 2 * n_extreme]`` its scores at those points.
        actual: ``[Q, 2 * n_extreme]`` ``loss_q(theta_-i) - loss_q(theta)`` after refitting without point ``i``.
        pearson, spearman: method -> correlation of predicted and actual over all refit points of all queries.
        agreement: method -> Spearman of its scores with ``exact``'s over all training points (mean over queries).
        lam: the L2 strength of the fit (the damping every method ran with); info: sizes, options, timings.
    """

    scores: dict[str, torch.Tensor]
    indices: torch.Tensor
    predicted: dict[str, torch.Tensor]
    actual: torch.Tensor
    pearson: dict[str, float]
    spearman: dict[str, float]
    agreement: dict[str, float]
    lam: float
    info: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, Any]:
        """The figures the issue sets bars for: Pearson and Spearman against retraining of the methods that
        invert the Hessian exactly or iteratively, rank agreement with ``exact`` of the others (every number is
        in the fields and in :meth:`Validation.table`)."""
        out: dict[str, Any] = {"n_train": self.info.get("n_train"), "lam": self.lam}
        for m in self.scores:
            if m in ("exact", "cg", "lissa"):
                out.update({f"pearson.{m}": self.pearson[m], f"spearman.{m}": self.spearman[m]})
        out.update({f"agreement.{m}": self.agreement[m] for m in self.scores if m not in ("exact", "cg")})
        return out

    def figure(self, **kwargs: Any):
        """Predicted against actual loss change, one panel per method
        (:func:`underhood.viz.influence.validation_scatter`)."""
        from ..viz.influence import validation_scatter

        pairs = {m: (p.flatten(), self.actual.flatten()) for m, p in self.predicted.items()}
        return validation_scatter(pairs, pearson=self.pearson, spearman=self.spearman,
                                  title=kwargs.pop("title", f"Leave-one-out retraining (logistic regression, "
                                                   f"n={self.info.get('n_train')}, lam={self.lam:g})"), **kwargs)


def convex_loo(model: str | nn.Module = "shapes", *, layer: str = "pool", n_train: int = 800, n_queries: int = 4,
               lam: float = 3e-2, dim: int | None = None, n_extreme: int = 20, methods: Sequence[str] = CONVEX_METHODS,
               options: dict[str, dict[str, Any]] | None = None, tol: float = 1e-11, seed: int = 0,
               progress: bool = True) -> ConvexLOO:
    """Tier 1: every estimator against exact leave-one-out retraining of a convex model.

    A float64 logistic regression ``nn.Linear(d, K)`` on the standardised ``layer`` features of ``model``
    (the built-in shapes model's pooled features by default) is fitted by Newton's method to
    ``(1/n) sum_i CE_i + lam/2 ||theta||^2`` on ``n_train`` training-seed shapes images; every method runs
    through :func:`underhood.influence.influence` with ``damping=lam`` on ``n_queries`` held-out images. For
    each query the ``n_extreme`` most positive and most negative points by ``exact`` are refitted away
    (warm-started, gradient norm ``<= tol``), and the actual change ``loss_q(theta_-i) - loss_q(theta)`` is
    compared with each method's score (Koh & Liang 2017, Fig. 2).

    Args:
        dim: keep the top ``dim`` principal components of the features (default: all ``d``); the head has
            ``K * (dim + 1)`` parameters.
        methods: estimators to check (``"exact"`` is always run: it picks the refit points).
        lam: the L2 strength, also every method's damping. The default 3e-2 keeps the condition number
            near 30 (LiSSA converges in a few hundred steps); EKFAC's ranking agreement with ``exact`` depends
            on it most (Kronecker factors miss the correlation of features and softmax probabilities, which the
            damping masks): 0.94 at 3e-2, 0.76 at 1e-2 (16 features), 0.53 at 1e-3.
        options: per-method keyword arguments for :func:`~underhood.influence.influence`, merged over
            :data:`DEFAULT_OPTIONS`, e.g. ``{"arnoldi": {"rank": 260}}``.

    Returns:
        :class:`ConvexLOO`.

    Example:
        >>> r = convex_loo(n_train=400, methods=("exact", "cg"))   # doctest: +SKIP
        >>> r.pearson["cg"] > 0.95                                 # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from ..data.splits import SHAPES_TEST_SEED

    positive_int("n_train", n_train), positive_int("n_queries", n_queries), positive_int("n_extreme", n_extreme)
    lam = number("lam", lam, strict=True)
    if 2 * n_extreme > n_train:
        raise InputError(f"n_extreme: {n_extreme} most positive and negative of {n_train} points overlap; "
                         f"give n_extreme <= {n_train // 2}")
    methods = ["exact", *[m for m in methods if m != "exact"]]
    given = options or {}
    options = {m: {**DEFAULT_OPTIONS.get(m, {}), **given.get(m, {})} for m in {*DEFAULT_OPTIONS, *given}}
    start = _timer()
    net = _model(model)
    x_img, y = _shapes_split(n_train, seed * 1000)
    q_img, qy = _shapes_split(n_queries, SHAPES_TEST_SEED)
    x, xq = standardise(features(net, x_img, layer), features(net, q_img, layer), dim=dim)
    n_classes = int(torch.cat([y, qy]).max()) + 1
    head = fit_logistic(x, y, n_classes=n_classes, lam=lam, tol=tol)
    train, queries = (x, y), (xq, qy)
    scores, seconds = {}, {}
    for m in tqdm(methods, desc="convex loo", disable=not progress, leave=False):
        clock = time.process_time()
        scores[m] = _run(m, head, train, queries, damping=lam, seed=seed, options=options.get(m, {}))
        seconds[m] = round(time.process_time() - clock, 2)
    exact = scores["exact"]
    indices = torch.cat([exact.topk(n_extreme, 1).indices, exact.topk(n_extreme, 1, largest=False).indices], 1)
    drop = indices.unique()
    refits = refit_without(head, x, y, drop, lam=lam, tol=tol)
    base = ce_losses(head, xq, qy)
    change = torch.stack([ce_losses(h, xq, qy) - base for h in refits], 1)  # [Q, len(drop)]
    actual = change.gather(1, torch.searchsorted(drop, indices))
    predicted = {m: s.gather(1, indices) for m, s in scores.items()}
    return ConvexLOO(
        scores=scores, indices=indices, predicted=predicted, actual=actual,
        pearson={m: pearson(p, actual) for m, p in predicted.items()},
        spearman={m: spearman(p, actual) for m, p in predicted.items()},
        agreement={m: spearman_rows(s, exact).mean().item() for m, s in scores.items()}, lam=lam,
        info={"n_train": n_train, "n_queries": n_queries, "n_extreme": n_extreme, "layer": layer, "seed": seed,
              "features": tuple(x.shape), "n_params": head.weight.numel() + head.bias.numel(), "refits": len(drop),
              "options": options, "method_cpu_s": seconds,
              "train_accuracy": (head(x).argmax(1) == y).double().mean().item(), **_elapsed(start)})


# ---------------------------------------------------------------------------- tier 2: dog vs fish


@dataclass(repr=False)
class DogFish(Result):
    """Tier 2 (Koh & Liang 2017, Fig. 4): a head on CNN features against an RBF-kernel model on pixels.

    Attributes:
        queries: ``[Q, C, h, w]`` held-out query images (at the pixel-distance resolution);
            query_labels: ``[Q]`` (0 or 1: index into ``classes``).
        train_images: ``[N, C, h, w]``; train_labels: ``[N]``.
        distances: ``[Q, N]`` Euclidean pixel distance of each training image to each query.
        scores: ``{"cnn": [Q, N], "rbf": [Q, N]}`` exact influence over each model's head.
        proximity: model -> Spearman of ``|score|`` with ``-distance`` (does influence come from near images?).
        signed: model -> Spearman of ``score`` with ``-distance``.
        same_class: model -> share of the top-10 helpful images that have the query's class.
        near_rank: model -> mean pixel-distance percentile of the top-10 helpful (0 = nearest, 0.5 = chance).
        classes: the two class names; gamma: the RBF width (median heuristic); lam: the heads' L2.
    """

    queries: torch.Tensor
    query_labels: torch.Tensor
    train_images: torch.Tensor
    train_labels: torch.Tensor
    distances: torch.Tensor
    scores: dict[str, torch.Tensor]
    proximity: dict[str, float]
    signed: dict[str, float]
    same_class: dict[str, float]
    near_rank: dict[str, float]
    classes: list[str]
    gamma: float
    lam: float
    info: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, Any]:
        """Per model: proximity, the same-class share and the distance percentile of the top-10 helpful."""
        out: dict[str, Any] = {"classes": "/".join(self.classes)}
        for m in self.scores:
            out.update({f"proximity.{m}": self.proximity[m], f"same_class.{m}": self.same_class[m],
                        f"near_rank.{m}": self.near_rank[m]})
        return out

    def figure(self, q: int = 0, **kwargs: Any):
        """Influence against pixel distance for query ``q``, by class
        (:func:`~underhood.viz.influence.dog_fish_figure`)."""
        from ..viz.influence import dog_fish_figure

        names = [self.classes[int(i)] for i in self.train_labels]
        panels = {"RBF model on pixels": self.scores["rbf"][q], "CNN features": self.scores["cnn"][q]}
        return dog_fish_figure(self.queries[q], self.classes[int(self.query_labels[q])], self.train_images, names,
                               self.distances[q], panels, **kwargs)


def _class_index(name: str | int) -> int:
    from ..data.shapes import CLASSES

    if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < len(CLASSES):
        return name
    if name in CLASSES:
        return CLASSES.index(name)
    raise InputError(f"classes: unknown shapes class {name!r}; choose two of {', '.join(CLASSES)}")


def _locality(scores: torch.Tensor, distances: torch.Tensor, labels: torch.Tensor, query_labels: torch.Tensor,
              k: int = 10) -> dict[str, float]:
    top = scores.topk(k, 1).indices
    percentile = (distances.argsort(1).argsort(1).double() / (distances.shape[1] - 1)).gather(1, top)
    return {"proximity": spearman_rows(scores.abs(), -distances).mean().item(),
            "signed": spearman_rows(scores, -distances).mean().item(),
            "same_class": (labels[top] == query_labels[:, None]).double().mean().item(),
            "near_rank": percentile.mean().item()}


def dog_fish(model: str | nn.Module = "shapes", *, classes: Sequence[str | int] = ("square", "star"),
             layer: str = "pool", n_train: int = 400, n_queries: int = 6, size: int = 32, lam: float = 1e-3,
             seed: int = 0, progress: bool = True) -> DogFish:
    """Tier 2: Koh & Liang's dog-vs-fish experiment (Fig. 4) on two shapes classes.

    Two binary models on the same ``n_train`` images: (a) a logistic head on ``model``'s frozen ``layer``
    features, (b) an RBF-kernel model on pixels (downsampled to ``size``): features
    ``phi_j(x) = exp(-gamma ||x - x_j||^2)`` over the training images, ``gamma = 1 / median ||x_i - x_j||^2``,
    a logistic head on ``phi``. Both heads are fitted with L2 strength ``lam`` and their influence is exact
    (``method="exact"``, ``damping=lam``). Koh & Liang's finding, measured: the RBF model's influence comes
    from the pixel-nearest images; the CNN head's helpful images share the query's class, near or far.

    Returns:
        :class:`DogFish` (its figure: influence against pixel distance for one query).

    Example:
        >>> r = dog_fish()                                          # doctest: +SKIP
        >>> r.proximity["rbf"] > r.proximity["cnn"]                 # doctest: +SKIP
    """
    from ..data.shapes import CLASSES
    from ..data.splits import SHAPES_TEST_SEED

    pair = [_class_index(c) for c in classes]
    if len(pair) != 2 or pair[0] == pair[1]:
        raise InputError(f"classes: expected two different shapes classes, got {list(classes)!r}")
    positive_int("n_train", n_train), positive_int("n_queries", n_queries), positive_int("size", size)
    lam = number("lam", lam, strict=True)
    start = _timer()
    net = _model(model)
    x_img, y = _shapes_split(n_train, seed * 1000, pair)
    q_img, qy = _shapes_split(n_queries, SHAPES_TEST_SEED, pair)
    y, qy = (y == pair[1]).long(), (qy == pair[1]).long()
    cnn, cnn_q = standardise(features(net, x_img, layer), features(net, q_img, layer))
    pix = F.interpolate(x_img, size=(size, size), mode="area")
    pix_q = F.interpolate(q_img, size=(size, size), mode="area")
    sq = torch.cdist(pix.flatten(1).double(), pix.flatten(1).double()).pow(2)
    gamma = 1.0 / sq[sq > 0].median().item()
    dist = torch.cdist(pix_q.flatten(1).double(), pix.flatten(1).double())
    rbf, rbf_q = torch.exp(-gamma * sq), torch.exp(-gamma * dist.pow(2))
    scores, metrics = {}, {}
    for name, (a, b) in {"cnn": (cnn, cnn_q), "rbf": (rbf, rbf_q)}.items():
        head = fit_logistic(a, y, n_classes=2, lam=lam)
        scores[name] = _run("exact", head, (a, y), (b, qy), damping=lam, seed=seed, options=DEFAULT_OPTIONS["exact"])
        metrics[name] = {**_locality(scores[name], dist, y, qy),
                         "accuracy": (head(b).argmax(1) == qy).double().mean().item()}
    return DogFish(queries=pix_q, query_labels=qy, train_images=pix, train_labels=y, distances=dist, scores=scores,
                   proximity={m: v["proximity"] for m, v in metrics.items()},
                   signed={m: v["signed"] for m, v in metrics.items()},
                   same_class={m: v["same_class"] for m, v in metrics.items()},
                   near_rank={m: v["near_rank"] for m, v in metrics.items()},
                   classes=[CLASSES[c] for c in pair], gamma=gamma, lam=lam,
                   info={"n_train": n_train, "size": size, "layer": layer, "seed": seed,
                         "query_accuracy": {m: v["accuracy"] for m, v in metrics.items()}, **_elapsed(start)})


# ---------------------------------------------------------------------------- tier 3: linear datamodeling score

LDS_METHODS = ("cg", "ekfac", "tracin")


@dataclass(repr=False)
class LDS(Result):
    """Tier 3: the linear datamodeling score (Park et al. 2023) of each method on a small deep net.

    For each query, the Spearman correlation over ``M`` models retrained on random half subsets ``S_m`` between
    the predicted loss ``loss_q(full) + sum_{i not in S_m} score[q, i]`` and the subset model's actual loss.

    Attributes:
        per_query: method -> ``[Q]`` Spearman per query; lds: method -> its mean; intervals: method ->
            95% interval of the mean over queries (normal approximation).
        masks: ``[M, N]`` the subsets (True = kept); actual: ``[M, Q]`` the subset models' query losses;
            full_losses: ``[Q]`` the full model's query losses; scores: method -> ``[Q, N]``.
        damping: the damping the Hessian methods ran with (how it was chosen: ``info["damping_rule"]``).
    """

    per_query: dict[str, torch.Tensor]
    lds: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    masks: torch.Tensor
    actual: torch.Tensor
    full_losses: torch.Tensor
    scores: dict[str, torch.Tensor]
    damping: float
    info: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, Any]:
        """LDS per method, the damping and the full model's test accuracy (intervals: :attr:`intervals` and
        :meth:`Validation.table`)."""
        out: dict[str, Any] = {"subsets": len(self.masks), "damping": self.damping}
        out.update({f"lds.{m}": v for m, v in self.lds.items()})
        out["test_accuracy"] = self.info.get("test_accuracy")
        return out

    def figure(self, **kwargs: Any):
        """LDS per method with its interval (:func:`underhood.viz.influence.lds_figure`)."""
        from ..viz.influence import lds_figure

        return lds_figure(self.lds, intervals=self.intervals, n_subsets=len(self.masks), **kwargs)


def _mlp(d_in: int, hidden: int, n_classes: int, seed: int) -> nn.Module:
    from ..core.seeding import seeded

    with seeded(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def train_full_batch(net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, steps: int, lr: float,
                     momentum: float = 0.9, weight_decay: float = 0.0, every: int | None = None
                     ) -> list[tuple[dict[str, torch.Tensor], float]]:
    """Train ``net`` in place by full-batch SGD with momentum on ``mean CE + weight_decay/2 ||theta||^2``.

    Deterministic: the same start, data and recipe give the same weights (no mini-batch order to seed).
    Returns ``(state_dict, lr)`` checkpoints every ``every`` steps (for TracIn), the final weights last.
    """
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    saved = []
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(inputs), labels).backward()
        opt.step()
        if every and step % every == 0 and step < steps:
            saved.append(({k: v.detach().clone() for k, v in net.state_dict().items()}, lr))
    saved.append(({k: v.detach().clone() for k, v in net.state_dict().items()}, lr))
    return saved


def _top_eigenvalue(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, seed: int) -> float:
    """Largest eigenvalue of the mean training loss's Hessian over all parameters (power iteration)."""
    from . import solvers
    from .problem import Problem

    problem = Problem(model)
    return abs(float(solvers.top_eigenvalue(problem.hvp(inputs, labels), problem.n_params, seed=seed,
                                            device=problem.device, dtype=problem.dtype)))


def lds(*, methods: Sequence[str] = LDS_METHODS, n_train: int = 1000, n_queries: int = 40, n_subsets: int = 50,
        hidden: int = 32, steps: int = 300, lr: float = 0.1, weight_decay: float = 1e-3,
        damping: float | None = None, checkpoints: int = 10, seed: int = 0, progress: bool = True) -> LDS:
    """Tier 3: the linear datamodeling score (Park et al. 2023) on an MLP trained on the built-in 8x8 digits.

    The MLP ``64 -> hidden -> 10`` (ReLU) starts from one seeded initialisation and is trained by
    :func:`train_full_batch` (``steps`` full-batch SGD steps, momentum 0.9, ``weight_decay``) on the first
    ``n_train`` training digits, and again on each of ``n_subsets`` random halves (seeded). Each method in
    ``methods`` scores the full model over all its parameters (``tracin`` over ``checkpoints`` checkpoints of
    the full run); the predicted loss of the model trained on ``S`` is ``loss_q(full) + sum_{i not in S}
    score[q, i]``, and LDS is the mean over the ``n_queries`` held-out digits of the Spearman correlation over
    subsets between predicted and actual losses.

    A deep net's Hessian is not positive definite: ``damping=None`` takes ``weight_decay + 0.01 * lambda_max``
    (``lambda_max`` the top eigenvalue of the mean loss's Hessian at the trained weights, by power iteration).
    Single-point leave-one-out on a deep net is dominated by retraining noise; LDS measures what can be.

    Returns:
        :class:`LDS`.
    """
    from tqdm.auto import tqdm

    from ..data import digits

    for name, value in (("n_train", n_train), ("n_queries", n_queries), ("n_subsets", n_subsets),
                        ("hidden", hidden), ("steps", steps), ("checkpoints", checkpoints)):
        positive_int(name, value)
    start = _timer()
    train, test = digits(split="train", size=8), digits(split="test", size=8)
    if n_train > len(train) or n_queries > len(test):
        raise InputError(f"n_train, n_queries: the digits have {len(train)} training and {len(test)} test images; "
                         f"got {n_train} and {n_queries}")
    x, y = train.images[:n_train].double(), train.labels[:n_train]
    xq, yq = test.images[:n_queries].double(), test.labels[:n_queries]
    init = _mlp(x[0].numel(), hidden, 10, seed).double()

    def fit(keep: torch.Tensor | None = None, every: int | None = None):
        net = _mlp(x[0].numel(), hidden, 10, seed).double()
        net.load_state_dict(init.state_dict())
        xs, ys = (x, y) if keep is None else (x[keep], y[keep])
        return net, train_full_batch(net, xs, ys, steps=steps, lr=lr, weight_decay=weight_decay, every=every)

    def query_losses(net: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return F.cross_entropy(net(xq), yq, reduction="none")

    full, ckpts = fit(every=max(1, steps // checkpoints))
    full_losses = query_losses(full)
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n_subsets, n_train, dtype=torch.bool)
    for m in range(n_subsets):
        masks[m, torch.randperm(n_train, generator=g)[: n_train // 2]] = True
    actual = torch.stack([query_losses(fit(keep)[0]) for keep in tqdm(masks, desc="lds retraining",
                                                                        disable=not progress, leave=False)])
    rule = "given"
    if damping is None:
        top = _top_eigenvalue(full, x, y, seed)
        damping, rule = weight_decay + 0.01 * top, f"weight_decay + 0.01 * lambda_max ({top:.4g})"
    damping = number("damping", damping)
    scores, per_query = {}, {}
    for method in methods:
        options = {"checkpoints": ckpts} if method == "tracin" else {}
        scores[method] = _run(method, full, (x, y), (xq, yq), damping=damping, seed=seed, options=options)
        predicted = full_losses[None, :] + (~masks).double() @ scores[method].T  # [M, Q]
        per_query[method] = spearman_rows(predicted.T, actual.T)
    stats = {m: interval(v) for m, v in per_query.items()}
    with torch.no_grad():
        accuracy = (full(test.images.double()).argmax(1) == test.labels).double().mean().item()
    return LDS(per_query=per_query, lds={m: s[0] for m, s in stats.items()},
               intervals={m: (s[1], s[2]) for m, s in stats.items()}, masks=masks, actual=actual,
               full_losses=full_losses, scores=scores, damping=damping,
               info={"n_train": n_train, "n_queries": n_queries, "hidden": hidden, "steps": steps, "lr": lr,
                     "weight_decay": weight_decay, "damping_rule": rule, "checkpoints": len(ckpts), "seed": seed,
                     "test_accuracy": accuracy, **_elapsed(start)})


# ---------------------------------------------------------------------------- the bundle

TIERS = {1: "convex_loo", 2: "dog_fish", 3: "lds"}


@dataclass(repr=False)
class Validation(Result):
    """The validation tiers that ran (and the mislabel finder when asked): one result per name.

    ``scalars()`` prefixes each item's key figures with its name; :meth:`table` is the summary the command
    line prints and the README quotes.
    """

    items: dict[str, Result]
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Result:
        return self.items[name]

    def scalars(self) -> dict[str, Any]:
        return {f"{name}.{k}": v for name, item in self.items.items() for k, v in item.scalars().items()}

    def table(self) -> str:
        """A Markdown table: one row per check, its measured value and the bar it must clear."""
        rows = ["| tier | check | measured | bar |", "|---|---|---|---|"]
        for row in _rows(self.items):
            rows.append("| " + " | ".join(row) + " |")
        return "\n".join(rows)

    def figure(self, name: str | None = None, **kwargs: Any):
        """The figure of item ``name`` (default: the first)."""
        item = self.items[name or next(iter(self.items))]
        return item.figure(**kwargs)  # type: ignore[attr-defined]


def _f(v: float) -> str:
    return "nan" if v != v else f"{v:.3f}"


BARS = {"pearson": {"exact": 0.95, "cg": 0.95, "lissa": 0.95},
        "agreement": {"arnoldi": 0.95, "lissa": 0.95, "ekfac": 0.9}}


def _rows(items: dict[str, Result]) -> list[list[str]]:
    rows: list[list[str]] = []
    loo = items.get("convex_loo")
    if isinstance(loo, ConvexLOO):
        for m in loo.scores:
            bar = BARS["pearson"].get(m)
            rows.append(["1 convex LOO", f"{m}: Pearson / Spearman vs retraining",
                         f"{_f(loo.pearson[m])} / {_f(loo.spearman[m])}", f">= {bar}" if bar else "-"])
        for m in loo.scores:
            if m != "exact":
                bar = BARS["agreement"].get(m)
                rows.append(["1 convex LOO", f"{m}: Spearman with exact (all points)", _f(loo.agreement[m]),
                             f">= {bar}" if bar else "-"])
    dog = items.get("dog_fish")
    if isinstance(dog, DogFish):
        for m, name in (("rbf", "RBF on pixels"), ("cnn", "CNN features")):
            rows.append(["2 dog-fish", f"{name}: Spearman(abs score, -pixel distance)", _f(dog.proximity[m]),
                         "rbf > cnn"])
            rows.append(["2 dog-fish", f"{name}: top-10 helpful of the query's class", _f(dog.same_class[m]),
                         "cnn = 1" if m == "cnn" else "-"])
    ld = items.get("lds")
    if isinstance(ld, LDS):
        for m, v in ld.lds.items():
            lo, hi = ld.intervals[m]
            rows.append(["3 LDS", f"{m} (95% interval over queries)", f"{_f(v)} [{_f(lo)}, {_f(hi)}]", "> 0"])
    mis = items.get("mislabel")
    if mis is not None and hasattr(mis, "auc"):
        for k in mis.auc:
            bar = ">= 0.95 / >= 0.8" if k == "self_influence" else "-"
            rows.append(["mislabel", f"{k}: ROC AUC / recall at {mis.fraction:g}",
                         f"{_f(mis.auc[k])} / {_f(mis.recall_at[k])}", bar])
        rows.append(["mislabel", "the better ranking", str(mis.winner), "-"])
    return rows


def validate(tiers: Sequence[int] = (1, 2), *, mislabels: bool = False, model: str | nn.Module = "shapes",
             seed: int = 0, progress: bool = True, **options: dict[str, Any]) -> Validation:
    """Run the validation tiers asked for (1: :func:`convex_loo`, 2: :func:`dog_fish`, 3: :func:`lds`, slow) and,
    with ``mislabels``, the mislabel finder (:func:`underhood.influence.mislabel.mislabel`).

    ``options``: keyword arguments per item, by name, e.g. ``convex_loo={"n_train": 400}``, ``lds={"n_subsets": 20}``.

    Returns:
        :class:`Validation` (``.table()``: the summary; ``["convex_loo"]`` ... the tiers' results).

    Example:
        >>> print(validate((1,)).table())   # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    wanted = list(dict.fromkeys(tiers))
    bad = [t for t in wanted if t not in TIERS]
    if bad or not (wanted or mislabels):
        raise InputError(f"tiers: expected some of 1, 2, 3, got {list(tiers)!r}")
    unknown = set(options) - {*TIERS.values(), "mislabel"}
    if unknown:
        raise InputError(f"options: unknown item {sorted(unknown)[0]!r}; give convex_loo, dog_fish, lds or mislabel")
    net = _model(model)
    runs: dict[str, Any] = {"convex_loo": lambda **kw: convex_loo(net, **kw),
                            "dog_fish": lambda **kw: dog_fish(net, **kw), "lds": lambda **kw: lds(**kw)}
    names = [TIERS[t] for t in sorted(wanted)]
    if mislabels:
        from .mislabel import mislabel

        runs["mislabel"] = lambda **kw: mislabel(net, **kw)
        names.append("mislabel")
    start = _timer()
    items = {}
    for name in tqdm(names, desc="influence validation", disable=not progress, leave=False):
        items[name] = runs[name](**{"seed": seed, "progress": progress, **options.get(name, {})})
    return Validation(items=items, info={"tiers": sorted(wanted), "seed": seed, **_elapsed(start)})
