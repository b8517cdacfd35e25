"""Adversarial training losses: fast FGSM, PGD (Madry et al.) and virtual adversarial training.

Each ``*_loss(model, x, y, ...)`` returns the scalar training loss of one batch for a model in
training mode; :func:`loss` picks one by name, and :func:`training_loss` wraps it for
:func:`underhood.models.training.train` (``underhood train --adversarial``), with the robust
accuracy it records (:func:`robust_accuracy`). Inputs are
pixels in ``[0, 1]``; perturbed inputs stay in that box. The examples are crafted with the model
in training mode (BatchNorm on batch statistics), as Madry et al. and Wong et al. do: the model
is trained on the examples that fool it as it is at that step. Parameter gradients from the
crafting passes are not accumulated (the inputs alone are differentiated).

* ``"fgsm"`` — Wong, Rice & Kolter 2020, "Fast is better than free": one FGSM step of size
  ``1.25 eps`` from a uniform random start in the L-inf ball, projected back onto it. Two
  forward+backward passes per batch.
* ``"pgd"`` — Madry et al. 2018: ``steps`` PGD steps (default 7, step ``2.5 eps / steps``) from a
  random start; the loss is the cross-entropy of the final iterate. ``steps + 1`` passes.
* ``"vat"`` — Miyato et al. 2018, "Virtual adversarial training": cross-entropy plus ``alpha``
  times the KL divergence between the predictions at ``x`` and at ``x + r_vadv``, where
  ``r_vadv`` is the L2 direction of steepest KL increase (one power iteration from a random
  direction, finite difference ``xi``) scaled to ``eps``. It needs no labels for the KL term and
  smooths the model rather than defending a norm ball, so its L-inf robustness is modest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core import seeding
from ..core.checks import parse_eps
from ..core.device import model_device
from ..core.errors import InputError
from ..models.training import TrainingLoss

METHODS = ("fgsm", "pgd", "vat")
DEFAULT_EPS = {"fgsm": 8 / 255, "pgd": 8 / 255, "vat": 2.0}  # L-inf for fgsm/pgd, L2 for vat


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return grad


def fgsm_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, alpha: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Wong et al.'s fast FGSM example: ``clip(x + P(d + alpha sign(grad)))``, ``d ~ U[-eps, eps]``."""
    alpha = 1.25 * eps if alpha is None else alpha
    delta = (torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1) * eps
    start = (x + delta).clamp(0, 1)
    grad = _input_grad(model, start, y)
    return (x + (start - x + alpha * grad.sign()).clamp(-eps, eps)).clamp(0, 1).detach()


def pgd_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 7,
                step_size: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Madry et al.'s L-inf PGD example from a uniform random start (training-time settings)."""
    step_size = 2.5 * eps / steps if step_size is None else step_size
    adv = (x + (torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        grad = _input_grad(model, adv, y)
        adv = (x + (adv + step_size * grad.sign() - x).clamp(-eps, eps)).clamp(0, 1).detach()
    return adv


def _kl(clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``KL(softmax(clean) || softmax(logits))``."""
    p = clean_logits.log_softmax(1)
    return (p.exp() * (p - logits.log_softmax(1))).sum(1).mean()


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (d.ndim - 1)))


def vat_direction(model: nn.Module, x: torch.Tensor, clean_logits: torch.Tensor, eps: float, *, xi: float = 1e-2,
                  iterations: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """``r_vadv``: ``eps`` times the unit L2 direction that most increases the KL at ``x`` (power iteration).

    Miyato et al. use ``xi = 1e-6``; at float32 the KL of so small a step is rounding noise, so
    the default here is ``1e-2`` (the direction estimate needs only ``xi`` small against ``eps``).
    """
    d = _unit(torch.randn(x.shape, generator=generator).to(x.device))
    clean = clean_logits.detach()
    for _ in range(iterations):
        d = (xi * d).requires_grad_(True)
        (grad,) = torch.autograd.grad(_kl(clean, model(x + d)), d)
        d = _unit(grad.detach())
    return eps * d


def fgsm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255,
              generator: torch.Generator | None = None, **ce: float) -> torch.Tensor:
    """Cross-entropy on Wong et al.'s fast FGSM examples."""
    return F.cross_entropy(model(fgsm_example(model, x, y, eps, generator=generator)), y, **ce)


def pgd_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 8 / 255, steps: int = 7,
             generator: torch.Generator | None = None, **ce: float) -> torch.Tensor:
    """Cross-entropy on Madry et al.'s PGD examples."""
    return F.cross_entropy(model(pgd_example(model, x, y, eps, steps=steps, generator=generator)), y, **ce)


def vat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 2.0, alpha: float = 1.0,
             xi: float = 1e-2, generator: torch.Generator | None = None, **ce: float) -> torch.Tensor:
    """Cross-entropy plus ``alpha`` times the local distributional smoothness term of Miyato et al."""
    logits = model(x)
    r = vat_direction(model, x, logits, eps, xi=xi, generator=generator)
    return F.cross_entropy(logits, y, **ce) + alpha * _kl(logits.detach(), model((x + r).clamp(0, 1)))


def loss(method: str, *, eps: float | None = None, steps: int = 7,
         generator: torch.Generator | None = None) -> Callable[..., torch.Tensor]:
    """The training loss ``f(model, x, y, **cross_entropy_options)`` of ``method`` (fgsm, pgd or vat)."""
    if method not in METHODS:
        raise InputError(f"adversarial: unknown method {method!r}; choose fgsm, pgd or vat")
    eps = DEFAULT_EPS[method] if eps is None else float(eps)
    if not eps > 0 or (method != "vat" and eps >= 1):
        raise InputError(f"adversarial_eps: expected a radius in (0, 1) for the L-inf ball of {method} (pixels lie "
                         f"in [0, 1]; e.g. 8/255), got {eps!r}" if method != "vat" else
                         f"adversarial_eps: expected a positive L2 radius for vat (e.g. 2.0), got {eps!r}")
    if method == "fgsm":
        return lambda model, x, y, **ce: fgsm_loss(model, x, y, eps=eps, generator=generator, **ce)
    if method == "pgd":
        if not isinstance(steps, int) or steps < 1:
            raise InputError(f"adversarial_steps: expected a positive int, got {steps!r}")
        return lambda model, x, y, **ce: pgd_loss(model, x, y, eps=eps, steps=steps, generator=generator, **ce)
    return lambda model, x, y, **ce: vat_loss(model, x, y, eps=eps, generator=generator, **ce)


ROBUST_EVAL = "PGD-20, L-inf 8/255, first 500 held-out images"  # what robust_accuracy's defaults measure


def robust_accuracy(model: nn.Module, data, *, eps: float = 8 / 255, steps: int = 20, n: int = 500,
                    batch_size: int = 250, seed: int = 0) -> float:
    """Accuracy under L-inf PGD (``steps`` steps, radius ``eps``) on the first ``n`` images of ``data``
    (an ImageSet).

    The attack uses the true labels, so a clean mistake counts as a robust mistake.
    """
    from .gradient import pgd

    device = model_device(model)
    correct = 0
    n = min(n, len(data))
    for i in range(0, n, batch_size):
        x, y = data.images[i:min(n, i + batch_size)].to(device), data.labels[i:min(n, i + batch_size)].to(device)
        correct += int((pgd(model, x, y, eps=eps, steps=steps, seed=seed + i).predicted == y).sum())
    return correct / max(1, n)


def training_loss(method: str, *, eps: float | str | None = None, steps: int = 7, seed: int = 0) -> TrainingLoss:
    """The adversarial training loss of ``method`` (fgsm, pgd or vat) for :func:`underhood.models.training.train`.

    ``eps`` defaults to 8/255 (L-inf) for fgsm and pgd and 2.0 (L2) for vat; strings such as
    ``"8/255"`` are read. The weights' metadata records the method and radius, the command line
    that reproduces them, and the accuracy under PGD-20 at 8/255 (``robust_accuracy``) on the
    held-out images.

    Example:
        >>> train("shapes", loss=training_loss("fgsm", eps="8/255"))   # doctest: +SKIP
    """
    radius = DEFAULT_EPS.get(method) if eps is None else parse_eps(eps, "adversarial_eps")
    fn = loss(method, eps=radius, steps=steps, generator=seeding.generator(seed + 1))
    pgd_steps = {"steps": steps} if method == "pgd" else {}
    command = f" --adversarial {method} --adversarial-eps {radius:.6g}" + (
        f" --adversarial-steps {steps}" if method == "pgd" else "")
    return TrainingLoss(fn, meta={"adversarial": {"method": method, "eps": radius, **pgd_steps}}, command=command,
                        evaluate=lambda model, held_out: {"robust_accuracy": robust_accuracy(model, held_out),
                                                          "robust_eval": ROBUST_EVAL})
