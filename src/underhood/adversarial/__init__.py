"""Adversarial examples: small perturbations that fool a model, their controls, and robustness curves.

Every attack is ``attack(model, inputs, labels=None, *, eps=..., target=None, seed=0, **options)``
and returns an :class:`AttackResult` (adversarial inputs, per-sample success, predictions,
confidences, perturbation norms). Attacks work in pixel space inside the ``[0, 1]`` box, on
logits, batched; ``labels`` default to the model's predictions; the model runs in eval mode and
is left as it was found.

Unbounded: :func:`gradient_ascent` (the EE-559 lecture's, ``preset="lecture"``). Budgeted: :func:`fgsm`, :func:`pgd`,
and the :func:`noise` baseline. Minimal-norm: :func:`deepfool`, :func:`cw`, :func:`lbfgs`.
Black-box: :func:`one_pixel` (probabilities only), :func:`substitute` (labels only, transfer from
a trained substitute). Dataset-level: :func:`universal` (one perturbation for all images),
:func:`patch` and :func:`apply_patch` (a universal, targeted patch). From scratch:
:func:`fooling_images`. Controls: :func:`random_control`, :func:`linear_demo`,
:func:`lecture_example`, :func:`directions`. Evaluation: :func:`robustness_curve`, :func:`transfer_matrix`,
:func:`relative_norm`.
Beyond neural networks (:mod:`underhood.adversarial.linear`): :func:`softmax_regression` and the exact
minimal flip of an affine model :func:`linear_flip`; scikit-learn models via :func:`from_sklearn` /
:func:`sklearn_models`, attacked by :func:`craft` (white-box, or the substitute attack for a black box);
the "excessive linearity" plot's :func:`logit_path`.
Adversarial training losses: :mod:`underhood.adversarial.training`.

What each attack can do (takes a budget, returns minimal perturbations, accepts a target, needs
no gradient, works per image; its norms) is one entry of :data:`REGISTRY`
(:mod:`underhood.adversarial.registry`): :func:`entry` gives it, :func:`names` filters by flags,
:data:`ATTACKS` and :data:`MINIMAL` are derived from it and :func:`get` returns an attack by name.

Example:
    >>> from underhood import adversarial as adv                 # doctest: +SKIP
    >>> r = adv.pgd(model, x, y, eps=8/255, steps=20)             # doctest: +SKIP
    >>> r.accuracy, adv.random_control(model, x, r).share          # doctest: +SKIP
"""

from __future__ import annotations

from ..core.checks import parse_eps
from .base import AttackResult, GradientMaskingWarning
from .blackbox import one_pixel
from .control import ControlResult, LinearDemo, directions, lecture_example, linear_demo, noise, random_control
from .evaluation import RobustnessCurve, TransferMatrix, relative_norm, robustness_curve, transfer_matrix
from .fooling import fooling_images
from .gradient import GRADIENT_ASCENT_PRESETS, fgsm, gradient_ascent, gradient_ascent_options, pgd
from .linear import (
    LogitPath,
    SklearnClassifier,
    affine_parts,
    craft,
    from_sklearn,
    has_gradient,
    linear_flip,
    logit_path,
    minimal_affine,
    sklearn_models,
    softmax_regression,
)
from .minimal import cw, deepfool, lbfgs
from .registry import ATTACKS, MINIMAL, REGISTRY, Attack, entry, get, names
from .substitute import SubstituteResult, jacobian_augmentation, substitute, substitute_net
from .universal import PatchResult, UniversalResult, apply_patch, patch, universal

__all__ = ["ATTACKS", "MINIMAL", "REGISTRY", "Attack", "entry", "get", "names", "AttackResult", "ControlResult",
           "GradientMaskingWarning", "LinearDemo", "RobustnessCurve", "parse_eps", "cw", "deepfool", "fgsm",
           "gradient_ascent", "lbfgs", "lecture_example", "linear_demo", "noise", "pgd", "random_control",
           "robustness_curve", "TransferMatrix", "transfer_matrix", "SubstituteResult", "jacobian_augmentation",
           "substitute", "substitute_net", "PatchResult", "UniversalResult", "apply_patch", "patch", "universal",
           "one_pixel", "fooling_images", "LogitPath", "SklearnClassifier", "affine_parts", "craft", "from_sklearn",
           "has_gradient", "linear_flip", "logit_path", "minimal_affine", "sklearn_models", "softmax_regression",
           "GRADIENT_ASCENT_PRESETS", "gradient_ascent_options", "directions", "relative_norm"]
