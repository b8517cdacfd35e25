"""The influence family's results: scores of training points for queries, and self-influence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.checks import positive_int
from ..core.errors import InputError
from ..core.results import Result


def _top(values: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    k = min(positive_int("k", k), len(values))
    return torch.topk(values, k, largest=largest).indices


@dataclass(repr=False)
class InfluenceResult(Result):
    """Influence of every training point on every query.

    ``scores[q, i]`` is the predicted change of query ``q``'s loss if training point ``i`` were removed,
    ``(1/n) g_q^T (H + damping I)^-1 g_i`` for the Hessian-based methods: positive = helpful (removing it
    would raise the query's loss), negative = harmful. The similarity methods (``tracin``, ``grad_dot``,
    ``grad_cos``, ``relatif``) keep the sign convention with their own scale (see :func:`influence`).

    Attributes:
        scores: ``[Q, N]``.
        method, params, damping: the estimator, the parameter names and the damping it ran with.
        query_labels, train_labels: ``[Q]`` and ``[N]`` labels the losses used.
        query_losses: ``[Q]`` the queries' losses under the model.
        query_predictions: ``[Q]`` the model's predicted classes for the queries.
        fragility: top-10 overlap of each query's helpful points when damping is scaled by 0.1 and 10
            (Basu et al. 2021), and the dampings compared; empty for methods without damping.
        relatif: ``[Q, N]`` RelatIF scores (Barshan et al. 2020) when the top helpful points are shared by
            most queries, else ``None``.
        warnings: what a reader should know (fragility, dominance, estimator notes).
        settings: every other setting (rank, projection, seed, iterations, ...).
    """

    scores: torch.Tensor
    method: str
    params: list[str]
    damping: float
    query_labels: torch.Tensor
    train_labels: torch.Tensor
    query_losses: torch.Tensor
    query_predictions: torch.Tensor | None = None
    fragility: dict[str, float] = field(default_factory=dict)
    relatif: torch.Tensor | None = None
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return self.scores.shape[1]

    def _query(self, q: int) -> int:
        if isinstance(q, bool) or not isinstance(q, int) or not -len(self.scores) <= q < len(self.scores):
            raise InputError(f"q: expected a query index in [0, {len(self.scores)}), got {q!r}")
        return q

    def helpful(self, q: int = 0, k: int = 8) -> torch.Tensor:
        """Indices of the ``k`` training points whose removal would raise query ``q``'s loss most."""
        return _top(self.scores[self._query(q)], k, largest=True)

    def harmful(self, q: int = 0, k: int = 8) -> torch.Tensor:
        """Indices of the ``k`` training points whose removal would lower query ``q``'s loss most."""
        return _top(self.scores[self._query(q)], k, largest=False)

    def scalars(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "queries": len(self.scores), "train": self.n_train,
                               "params": len(self.params), "damping": self.damping}
        out.update({k: round(v, 3) if isinstance(v, float) else v for k, v in self.fragility.items()})
        return out

    def figure(self, train: Any = None, queries: Any = None, q: int = 0, k: int = 8,
               actual: dict[int, float] | None = None):
        """The lecture's figure for query ``q``: it, its ``k`` most helpful and ``k`` most harmful training images.

        ``train`` and ``queries`` are the data the scores were computed on (ImageSets or ``(images, labels)``).
        """
        from .plots import influence_plot

        return influence_plot(self, train, queries, q=q, k=k, actual=actual)


@dataclass(repr=False)
class SelfInfluenceResult(Result):
    """Each training point's influence on its own loss, ``(1/n) g_i^T (H + damping I)^-1 g_i`` (or the method's
    analogue): how much its loss relies on itself. Mislabelled and atypical points score high.

    Attributes:
        scores: ``[N]``.
        losses: ``[N]`` the points' training losses (the usual baseline ranking).
        labels: ``[N]``.
    """

    scores: torch.Tensor
    losses: torch.Tensor
    labels: torch.Tensor
    method: str
    params: list[str]
    damping: float
    settings: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int = 10) -> torch.Tensor:
        """Indices of the ``k`` highest self-influence points (the first to inspect)."""
        return _top(self.scores, k, largest=True)

    def scalars(self) -> dict[str, Any]:
        return {"method": self.method, "train": len(self.scores), "params": len(self.params),
                "damping": self.damping, "max": float(self.scores.max()), "median": float(self.scores.median())}
