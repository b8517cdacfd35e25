"""Influence functions: which training images made this prediction (Koh & Liang 2017).

One convention everywhere: ``score[q, i]`` is the predicted change of query ``q``'s loss if training
point ``i`` were removed,

    score[q, i] = (1/n) g_q^T (H + damping I)^-1 g_i,

with ``g`` the per-example loss gradient over the chosen parameters and ``H`` the Hessian of the mean
training loss. Positive = helpful (removing the point would hurt the query), negative = harmful.

:func:`influence` scores training points for queries, :func:`self_influence` scores each point on its
own loss (mislabelled points score high). Estimators (``method=``): ``exact``, ``cg``, ``lissa``,
``arnoldi``, ``ekfac``; without a Hessian: ``tracin``, ``grad_dot``, ``grad_cos``, ``relatif``.
:class:`Influence` keeps a fitted estimator for new queries. :func:`validate` checks the estimators against
retraining in three tiers (:func:`convex_loo`, :func:`dog_fish`, :func:`lds`); :func:`mislabel` plants flipped
labels and ranks them by self-influence.

Example:
    >>> from underhood.influence import influence                                  # doctest: +SKIP
    >>> r = influence(model, train, queries, params="classifier", method="exact")   # doctest: +SKIP
    >>> r.helpful(0, k=8), r.harmful(0, k=8)                                       # doctest: +SKIP
"""

from __future__ import annotations

from .api import HESSIAN, METHODS, Influence, influence, self_influence
from .errors import InfluenceError, InfluenceWarning
from .mislabel import Mislabel, mislabel
from .problem import Problem, head_layer, select_params
from .result import InfluenceResult, SelfInfluenceResult
from .validation import LDS, ConvexLOO, DogFish, Validation, convex_loo, dog_fish, lds, validate

__all__ = ["HESSIAN", "LDS", "METHODS", "ConvexLOO", "DogFish", "Influence", "InfluenceError", "InfluenceResult",
           "InfluenceWarning", "Mislabel", "Problem", "SelfInfluenceResult", "Validation", "convex_loo", "dog_fish",
           "head_layer", "influence", "lds", "mislabel", "select_params", "self_influence", "validate"]
