"""The mislabel finder, measured: flip 10% of a shapes training set's labels and see which ranking finds them;
and the exact tools it shares with :mod:`underhood.influence.validation` (statistics, L2 logistic regression).

Self-influence ``(1/n) g_i^T (H + damping I)^-1 g_i`` (Koh & Liang 2017, section 5.4) against the
training-loss ranking and random inspection: the share of the flipped labels found against the share
of the training set inspected (most suspicious first), the ROC AUC, and the recall at 10% inspected.
"""

from __future__ import annotations

import math
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
from ..core.stats import ranks
from ..core.stats import spearman as rank_correlation

# ---------------------------------------------------------------------------- statistics (torch, any device)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two equally long vectors (``nan`` when one is constant)."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    if a.numel() != b.numel() or a.numel() < 2:
        raise InputError(f"pearson: expected two vectors of the same length >= 2, got {a.numel()} and {b.numel()}")
    a, b = a - a.mean(), b - b.mean()
    den = (a.norm() * b.norm()).item()
    return (a @ b).item() / den if den > 0 else math.nan


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equally long vectors (Pearson of the average ranks)."""
    a, b = a.detach().flatten(), b.detach().flatten()
    if a.numel() != b.numel() or a.numel() < 2:
        raise InputError(f"spearman: expected two vectors of the same length >= 2, got {a.numel()} and {b.numel()}")
    return float(rank_correlation(a[None], b[None])[0])


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (``[Q, M]`` each -> ``[Q]``)."""
    return rank_correlation(a, b).cpu()


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` ranking the ``positive`` (bool) points first (Mann-Whitney U)."""
    positive = positive.bool().flatten()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError("positive: needs both positive and negative points to compute a ROC AUC")
    r = ranks(scores.detach().double().flatten()[None])[0]
    return ((r[positive].sum().item() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_curve(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Share of the ``positive`` points found after inspecting the ``k`` highest scores, for ``k = 1..n``."""
    order = scores.detach().flatten().argsort(descending=True)
    hits = positive.flatten()[order].double().cumsum(0)
    return hits / hits[-1].clamp(min=1)


def interval(values: torch.Tensor) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95% interval of the mean of ``values`` (NaNs dropped)."""
    v = values.detach().double().flatten()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return math.nan, math.nan, math.nan
    mean = v.mean().item()
    half = 1.96 * v.std().item() / math.sqrt(v.numel()) if v.numel() > 1 else math.nan
    return mean, mean - half, mean + half


# ---------------------------------------------------------------------------- L2 logistic regression, exactly


def _augmented(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(len(x), 1)], 1)


def _objective(theta: torch.Tensor, xa: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lam: float,
               n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objective ``(1/n) sum_i w_i CE_i + lam/2 ||theta||^2``, its gradient ``[K, D]`` and the softmax ``[N, K]``.

    ``theta`` is ``[K, D]``: the weight with the bias as its last column.
    """
    logits = xa @ theta.T
    ce = F.cross_entropy(logits, y, reduction="none")
    p = logits.softmax(1)
    r = p - F.one_hot(y, theta.shape[0]).to(p.dtype)
    value = (w * ce).sum() / n + lam / 2 * theta.pow(2).sum()
    grad = (w[:, None] * r).T @ xa / n + lam * theta
    return value, grad, p


def _hessian(xa: torch.Tensor, p: torch.Tensor, w: torch.Tensor, lam: float, n: int) -> torch.Tensor:
    """Hessian ``[K*D, K*D]`` of the objective (``theta`` flattened row-major):
    ``(1/n) sum_i w_i (diag(p_i) - p_i p_i^T) (x) x_i x_i^T + lam I``."""
    k, d = p.shape[1], xa.shape[1]
    wp = w[:, None] * p
    diag = torch.einsum("nk,na,nb->kab", wp, xa, xa) / n  # the diag(p) part, one block per class
    z = (p[:, :, None] * xa[:, None, :]).reshape(len(xa), k * d)
    h = -(z.T * w) @ z / n
    blocks = h.view(k, d, k, d)
    idx = torch.arange(k, device=xa.device)
    blocks[idx, :, idx, :] += diag
    return h + lam * torch.eye(k * d, dtype=h.dtype, device=h.device)


def fit_logistic(inputs: torch.Tensor, labels: torch.Tensor, *, n_classes: int | None = None, lam: float = 1e-3,
                 weights: torch.Tensor | None = None, init: nn.Linear | None = None, tol: float = 1e-10,
                 max_iter: int = 100) -> nn.Linear:
    """Multinomial logistic regression fitted by Newton's method to gradient norm ``<= tol``.

    Minimises ``(1/n) sum_i w_i CE(W x_i + b, y_i) + lam/2 (||W||^2 + ||b||^2)`` with ``n = len(inputs)``
    (``weights`` default 1; a 0 drops a point but keeps the ``1/n``, the family's leave-one-out), so
    ``damping=lam`` in :func:`underhood.influence.influence` is exact for it. Newton steps use the
    explicit Hessian with a backtracking line search; float64 throughout.

    Args:
        inputs: ``[N, d]`` features; labels: ``[N]`` class indices.
        init: warm start (a fitted head); default zeros.

    Returns:
        A float64 ``nn.Linear(d, K)`` on ``inputs``' device.
    """
    number("lam", lam, strict=True)
    x = inputs.detach().double().flatten(1)
    y = labels.detach().long().flatten().to(x.device)
    n, d = x.shape
    k = positive_int("n_classes", n_classes if n_classes is not None else int(y.max()) + 1)
    w = torch.ones(n, dtype=x.dtype, device=x.device) if weights is None else weights.double().to(x.device)
    xa = _augmented(x)
    theta = x.new_zeros(k, d + 1) if init is None else _theta(init)
    value, grad, p = _objective(theta, xa, y, w, lam, n)
    for _ in range(max_iter):
        if grad.norm() <= tol:
            break
        step = torch.linalg.solve(_hessian(xa, p, w, lam, n), grad.reshape(-1)).view_as(theta)
        t = 1.0
        decrease = (grad * step).sum()
        while True:  # Armijo backtracking (up to round-off); a full step is taken near the optimum
            new = _objective(theta - t * step, xa, y, w, lam, n)
            if new[0] <= value - 1e-4 * t * decrease + 1e-14 * value.abs() or t < 1e-8:
                break
            t /= 2
        theta = theta - t * step
        value, grad, p = new
    return _linear(theta)


def _theta(head: nn.Linear) -> torch.Tensor:
    return torch.cat([head.weight.detach().double(), head.bias.detach().double()[:, None]], 1)


def _linear(theta: torch.Tensor) -> nn.Linear:
    head = nn.Linear(theta.shape[1] - 1, theta.shape[0], dtype=theta.dtype, device=theta.device)
    with torch.no_grad():
        head.weight.copy_(theta[:, :-1])
        head.bias.copy_(theta[:, -1])
    return head


def refit_without(head: nn.Linear, inputs: torch.Tensor, labels: torch.Tensor, drop: Sequence[int] | torch.Tensor, *,
                  lam: float, tol: float = 1e-10, max_iter: int = 50) -> list[nn.Linear]:
    """Leave-one-out refits of an optimal :func:`fit_logistic` head: one per index in ``drop``.

    Each refit minimises ``(1/n) sum_{j != i} CE_j + lam/2 ||theta||^2`` from ``head`` (warm start)
    to gradient norm ``<= tol``. All refits step together, with the full objective's Hessian at ``head``
    factored once (a chord iteration: removing one of ``n`` points changes the Hessian by ``O(1/n)``, so
    each step gains about ``log10(n)`` digits); a refit that has not converged after ``max_iter`` steps
    is finished by :func:`fit_logistic`'s Newton steps.
    """
    x = inputs.detach().double().flatten(1)
    y = labels.detach().long().flatten().to(x.device)
    n = len(x)
    xa = _augmented(x)
    theta0 = _theta(head)
    k, d = theta0.shape
    ones = torch.ones(n, dtype=x.dtype, device=x.device)
    _, _, p = _objective(theta0, xa, y, ones, lam, n)
    factor = torch.linalg.cholesky(_hessian(xa, p, ones, lam, n))
    drop = torch.as_tensor(drop, device=x.device).long().flatten()
    r = len(drop)
    w = torch.ones(r, n, dtype=x.dtype, device=x.device)
    w[torch.arange(r, device=x.device), drop] = 0
    onehot = F.one_hot(y, k).to(x.dtype)
    theta = theta0.expand(r, k, d).clone()
    done = torch.zeros(r, dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        residual = torch.einsum("nd,rkd->rnk", xa, theta).softmax(-1) - onehot
        grad = torch.einsum("rn,rnk,nd->rkd", w, residual, xa) / n + lam * theta
        done = grad.flatten(1).norm(dim=1) <= tol
        if bool(done.all()):
            break
        step = torch.cholesky_solve(grad.reshape(r, -1).T, factor).T.reshape(r, k, d)
        theta = torch.where(done[:, None, None], theta, theta - step)
    return [_linear(theta[j]) if bool(done[j]) else
            fit_logistic(x, y, n_classes=k, lam=lam, weights=w[j], init=_linear(theta[j]), tol=tol)
            for j in range(r)]


def ce_losses(head: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy ``[N]`` of ``head`` (float64 inputs for a float64 head)."""
    with torch.no_grad():
        return F.cross_entropy(head(inputs.to(head.weight.dtype)), labels, reduction="none")


def exact_influence(head: nn.Linear, train: tuple[torch.Tensor, torch.Tensor],
                    queries: tuple[torch.Tensor, torch.Tensor], *, lam: float, self_scores: bool = False
                    ) -> torch.Tensor:
    """The closed form for a linear softmax head, for tests and as the tier-1 reference:
    ``score[q, i] = (1/n) g_q^T (H + lam I)^-1 g_i``, ``g = (p - e_y) (x) [x, 1]``, ``H`` the Hessian of the
    mean cross-entropy; ``[Q, N]`` (``self_scores``: ``[N]``, each point on itself)."""
    x, y = train[0].double().flatten(1), train[1].long()
    xa = _augmented(x)
    n = len(x)
    theta = _theta(head)
    ones = torch.ones(n, dtype=x.dtype, device=x.device)
    _, _, p = _objective(theta, xa, y, ones, 0.0, n)
    h = _hessian(xa, p, ones, lam, n)

    def grads(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        xs = _augmented(xs.double().flatten(1))
        r = (xs @ theta.T).softmax(1) - F.one_hot(ys.long(), theta.shape[0]).double()
        return (r[:, :, None] * xs[:, None, :]).reshape(len(xs), -1)

    g = grads(x, y)
    solved = torch.linalg.solve(h, g.T).T  # [N, P]
    if self_scores:
        return (g * solved).sum(1) / n
    return grads(*queries) @ solved.T / n


# ---------------------------------------------------------------------------- shared pieces


def _timer() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _elapsed(start: tuple[float, float]) -> dict[str, float]:
    return {"cpu_s": round(time.process_time() - start[0], 2), "wall_s": round(time.perf_counter() - start[1], 2)}


def _model(model: str | nn.Module) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    from ..models import load_model

    return load_model(model, device="cpu")


def features(model: nn.Module, images: torch.Tensor, layer: str = "pool", *, batch_size: int = 256) -> torch.Tensor:
    """``[N, d]`` float64 activations of ``layer`` (flattened: the pooled features a linear head reads)."""
    from ..core.batching import stream

    parts = [acts[layer].flatten(1).double() for _, acts in stream(model, layer, images, batch_size)]
    return torch.cat(parts)


def standardise(train: torch.Tensor, *others: torch.Tensor, dim: int | None = None) -> list[torch.Tensor]:
    """Features centred and scaled per dimension on ``train`` (projected on its top ``dim`` principal
    components when given), then together so that ``E||x||^2 = 1``: the mean loss's Hessian then has
    eigenvalues below about 1, and a small ``lam`` sets a known condition number."""
    mean, std = train.mean(0), train.std(0).clamp(min=1e-8)
    scaled = [(t - mean) / std for t in (train, *others)]
    if dim is not None and positive_int("dim", dim) < train.shape[1]:
        basis = torch.linalg.svd(scaled[0], full_matrices=False).Vh[:dim].T
        scaled = [t @ basis for t in scaled]
    norm = scaled[0].pow(2).sum(1).mean().sqrt().clamp(min=1e-12)
    return [t / norm for t in scaled]


def _run(method: str, model: nn.Module, train: Any, queries: Any, *, damping: float, seed: int,
         options: dict[str, Any]) -> torch.Tensor:
    """``influence(...).scores`` with the validation's settings (no progress bar, no fragility rerun)."""
    from .api import influence

    result = influence(model, train, queries, method=method, damping=damping, seed=seed, progress=False,
                       fragility=False, **options)
    return result.scores.detach().double()


def _shapes_split(n: int, seed: int, classes: Sequence[int] | None = None):
    """``n`` shapes images (of ``classes`` only, when given) from seed ``seed``: ``(images, labels)``."""
    from ..data import shapes

    if classes is None:
        data = shapes(n, seed=seed)
        return data.images, data.labels
    m = n * 8 // max(1, len(classes)) + 64
    while True:
        data = shapes(m, seed=seed)
        keep = torch.isin(data.labels, torch.as_tensor(list(classes)))
        if int(keep.sum()) >= n:
            return data.images[keep][:n], data.labels[keep][:n]
        m *= 2



# Whole-batch vectorised calls: a linear head's per-example work is tiny, so bigger chunks than the CPU default pay.
# Arnoldi's rank: at lam = 3e-2 the top 64 eigenpairs of the shapes head's 520-parameter Hessian already rank
# like exact (Spearman 0.995 over all training points; 0.9999 at rank 260).
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {m: {"batch_size": 4096} for m in ("exact", "cg", "lissa", "arnoldi")}
DEFAULT_OPTIONS["arnoldi"]["rank"] = 64


# ---------------------------------------------------------------------------- the mislabel finder


@dataclass(repr=False)
class Mislabel(Result):
    """How well each ranking finds the flipped labels.

    Attributes:
        flipped: ``[N]`` bool, the points whose label was flipped.
        rankings: ranking name (``"self_influence"``, ``"loss"``, ``"random"``) -> ``[N]`` scores, highest first
            to inspect.
        recall: ranking -> ``[N]`` share of the flipped labels found after inspecting ``k = 1..N`` points.
        auc: ranking -> ROC AUC of its scores as a detector of the flipped points.
        recall_at: ranking -> share found after inspecting ``fraction`` of the set.
        fraction: the share inspected that ``recall_at`` reports (0.1); share: the share flipped.
        winner: ``"self_influence"`` or ``"loss"``, the ranking with the higher ROC AUC (then the higher recall at
            ``fraction``), or ``"tie"`` when both are equal.
    """

    flipped: torch.Tensor
    rankings: dict[str, torch.Tensor]
    recall: dict[str, torch.Tensor]
    auc: dict[str, float]
    recall_at: dict[str, float]
    fraction: float
    share: float
    winner: str
    info: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, Any]:
        """ROC AUC and recall at ``fraction`` per ranking, the winner, sizes and timings."""
        out: dict[str, Any] = {"n_train": len(self.flipped), "flipped": int(self.flipped.sum()),
                               "method": self.info.get("method"), "damping": self.info.get("damping")}
        for name in self.rankings:
            out.update({f"auc.{name}": self.auc[name], f"recall_at_{self.fraction:g}.{name}": self.recall_at[name]})
        out["winner"] = self.winner
        out.update({k: self.info[k] for k in ("cpu_s", "wall_s") if k in self.info})
        return out

    def figure(self, **kwargs: Any):
        """Recall against the share inspected (:func:`underhood.viz.influence.mislabel_figure`)."""
        from ..viz.influence import mislabel_figure

        n = len(self.flipped)
        steps = torch.linspace(0, n, min(n, 200) + 1).round().long()
        fraction = steps.double() / n
        label = {"self_influence": f"self-influence ({self.info.get('method', 'exact')})",
                 "loss": "training loss"}
        curves = {label.get(name, name): torch.cat([r.new_zeros(1), r])[steps] for name, r in self.recall.items()}
        auc = {label.get(name, name): v for name, v in self.auc.items()}
        return mislabel_figure(fraction, curves, auc=auc, flipped_share=self.share, mark=self.fraction, **kwargs)


def flip_labels(labels: torch.Tensor, share: float, n_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``round(share * N)`` labels (a seeded choice) moved to another class uniformly: ``(new labels, flipped)``."""
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    which = torch.randperm(n, generator=g)[: round(share * n)]
    shift = torch.randint(1, n_classes, (len(which),), generator=g)
    out = labels.clone()
    out[which] = (labels[which] + shift.to(labels.device)) % n_classes
    flipped = torch.zeros(n, dtype=torch.bool, device=labels.device)
    flipped[which] = True
    return out, flipped


def mislabel(model: str | nn.Module = "shapes", *, layer: str = "pool", n_train: int = 1500, share: float = 0.1,
             method: str = "exact", lam: float = 1e-3, fraction: float = 0.1, seed: int = 0,
             progress: bool = True) -> Mislabel:
    """The mislabel finder on shapes: ``share`` of ``n_train`` training labels flipped, found by self-influence.

    A float64 logistic head on ``model``'s frozen, standardised ``layer`` features is fitted to the flipped
    labels (``mean CE + lam/2 ||theta||^2``, Newton's method); :func:`~underhood.influence.self_influence`
    (``method``, ``damping=lam``) ranks the points, against the training loss and a seeded random order.

    Returns:
        :class:`Mislabel` (its figure: recall against the share inspected).

    Example:
        >>> r = mislabel()                               # doctest: +SKIP
        >>> r.auc["self_influence"], r.recall_at["loss"]  # doctest: +SKIP
    """
    from .api import self_influence

    positive_int("n_train", n_train)
    share = number("share", share, strict=True, high=0.5)
    fraction = number("fraction", fraction, strict=True, high=1.0)
    lam = number("lam", lam, strict=True)
    if round(share * n_train) < 1:
        raise InputError(f"share: {share:g} of {n_train} flips no label; give a larger share or n_train")
    start = _timer()
    net = _model(model)
    images, labels = _shapes_split(n_train, seed * 1000)
    x, = standardise(features(net, images, layer))
    n_classes = int(labels.max()) + 1
    noisy, flipped = flip_labels(labels, share, n_classes, seed)
    head = fit_logistic(x, noisy, n_classes=n_classes, lam=lam)
    result = self_influence(head, (x, noisy), method=method, damping=lam, seed=seed, progress=progress,
                            **DEFAULT_OPTIONS.get(method, {}))
    rankings = {"self_influence": result.scores.detach().double(), "loss": ce_losses(head, x, noisy),
                "random": torch.rand(n_train, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)}
    recall = {k: recall_curve(v, flipped) for k, v in rankings.items()}
    auc = {k: roc_auc(v, flipped) for k, v in rankings.items()}
    at = max(1, round(fraction * n_train))
    recall_at = {k: r[at - 1].item() for k, r in recall.items()}
    a, b = (auc["self_influence"], recall_at["self_influence"]), (auc["loss"], recall_at["loss"])
    winner = "tie" if max(abs(a[0] - b[0]), abs(a[1] - b[1])) < 1e-9 else "self_influence" if a > b else "loss"
    return Mislabel(flipped=flipped, rankings=rankings, recall=recall, auc=auc, recall_at=recall_at,
                    fraction=fraction, share=share, winner=winner,
                    info={"n_train": n_train, "layer": layer, "method": method, "damping": lam, "seed": seed,
                          "train_accuracy_clean": (head(x).argmax(1) == labels).double().mean().item(),
                          **_elapsed(start)})
