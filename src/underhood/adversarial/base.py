"""What every attack shares: the result type, the norm and budget checks, the losses on logits, the
eval-mode context and the gradient-masking check.

Conventions (every attack in :mod:`underhood.adversarial`):

* inputs are ``[N, C, H, W]`` pixels in ``[0, 1]`` and every adversarial image stays in that box;
* attacks read logits; ``labels`` (default: the model's predictions on the clean inputs) are the
  classes to move away from, ``target`` (default ``None``: untargeted) the classes to reach;
* the model runs in eval mode with frozen parameters during the attack, and its ``training``
  and ``requires_grad`` flags are restored afterwards, also when the attack raises;
* a sample whose input gradient is zero or not finite throughout an attack triggers a
  :class:`GradientMaskingWarning`: the attack's failure there says nothing about robustness.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import parse_eps
from ..core.errors import InputError
from ..core.hooks import frozen
from ..core.inputs import check_inputs
from ..core.results import Result

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")
_NORM_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l-inf": "linf", "l2": "l2", "2": "l2"}

Labels = Union[None, int, Sequence[int], torch.Tensor]  # noqa: UP007  (a runtime alias: py3.10 has no `|` on it)


class GradientMaskingWarning(UserWarning):
    """Input gradients were zero or not finite for some samples during an attack.

    A gradient attack cannot move those samples, so its failure on them is no evidence of
    robustness (Athalye, Carlini & Wagner 2018): check with a gradient-free or transfer attack.
    """


def col(v: torch.Tensor) -> torch.Tensor:
    """A per-sample ``[N]`` tensor shaped ``[N, 1, 1, 1]`` to broadcast against ``[N, C, H, W]``."""
    return v.view(-1, 1, 1, 1)


@dataclass(repr=False)
class AttackResult(Result):
    """What an attack returns; every tensor is per sample, on the model's device.

    Attributes:
        adversarial: ``[N, C, H, W]`` perturbed inputs, inside ``[0, 1]``.
        perturbation: ``[N, C, H, W]`` ``adversarial - inputs``.
        success: ``[N]`` bool: the prediction differs from ``labels`` (untargeted) or equals
            ``target`` (targeted).
        labels: ``[N]`` reference classes (given, or the clean predictions).
        predicted: ``[N]`` the model's class on ``adversarial``.
        confidence: ``[N]`` softmax probability of ``predicted``.
        norms: ``{"linf": [N], "l2": [N]}`` norms of ``perturbation``.
        target: ``[N]`` target classes of a targeted attack, else ``None``.
        history: ``[steps + 1, N]`` predicted class at every iteration (row 0: the clean
            input), for attacks that record it (:func:`gradient_ascent`), else ``None``.
        info: method name, budget, hyperparameters, seed, and ``masked`` (the share of samples
            with zero or non-finite gradients).
    """

    adversarial: torch.Tensor
    perturbation: torch.Tensor
    success: torch.Tensor
    labels: torch.Tensor
    predicted: torch.Tensor
    confidence: torch.Tensor
    norms: dict[str, torch.Tensor]
    target: torch.Tensor | None = None
    history: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.success)

    @property
    def targeted(self) -> bool:
        """Whether the attack aimed at given classes."""
        return self.target is not None

    @property
    def success_rate(self) -> float:
        """Share of samples on which the attack succeeded."""
        return float(self.success.float().mean())

    @property
    def accuracy(self) -> float:
        """Share of adversarial inputs still classified as ``labels`` (robust accuracy when
        ``labels`` are the true classes)."""
        return float((self.predicted == self.labels).float().mean())

    @property
    def inputs(self) -> torch.Tensor:
        """``[N, C, H, W]`` the attacked inputs, ``adversarial - perturbation``."""
        return self.adversarial - self.perturbation

    @property
    def relative_norm(self) -> torch.Tensor:
        """``[N]`` ``||x - x_adv||_2 / ||x||_2``, the share of the image's norm the attack changed (the EE-559
        lecture's 1.02% and 0.27%; :func:`relative_norm`)."""
        return relative_norm(self.inputs, self.adversarial)

    def history_table(self, classes: Sequence[str] | None = None) -> tuple[list[str], list[list[Any]]]:
        """The lecture's "predicted classes" table from :attr:`history`: ``(header, rows)``, one row per
        iteration (row 0: the clean input), one column per image, cells the class names (``classes``) or
        indices. Only for attacks that record a history (:func:`~underhood.adversarial.gradient_ascent`)."""
        if self.history is None:
            raise InputError(f"history_table: {self.info.get('method', 'this attack')} records no per-iteration "
                             "history; use gradient_ascent")
        names = (lambda k: classes[k] if 0 <= k < len(classes) else str(k)) if classes is not None else (lambda k: k)
        header = ["iteration"] + [f"image {i + 1}" for i in range(self.history.shape[1])]
        rows = [[k] + [names(int(c)) for c in row] for k, row in enumerate(self.history.tolist())]
        return header, rows

    def median_norm(self, norm: str = "l2") -> float:
        """Median ``norm`` of the perturbation over the successful samples (``nan`` if none)."""
        values = self.norms[check_norm(norm)][self.success]
        return float(values.median()) if len(values) else math.nan

    def scalars(self) -> dict[str, Any]:
        """Method, size, rates and median norms, and the budget and seed when the attack has them."""
        return {"method": self.info.get("method"), "n": len(self), "targeted": self.targeted,
                "success_rate": self.success_rate, "accuracy": self.accuracy,
                "median_linf": self.median_norm("linf"), "median_l2": self.median_norm("l2"),
                **{k: self.info[k] for k in ("eps", "norm", "seed") if k in self.info}}

    def figure(self, **kwargs: Any):
        """The lectures' three panels per image (:func:`underhood.viz.adversarial.attack_figure`); images made
        from scratch (:func:`~underhood.adversarial.fooling_images`) as a grid
        (:func:`~underhood.viz.adversarial.fooling_figure`). ``kwargs`` go to the figure function."""
        from ..viz.adversarial import attack_figure, fooling_figure

        if self.info.get("from_scratch"):
            return fooling_figure(self, **kwargs)
        return attack_figure(self.inputs, self, **kwargs)


def relative_norm(inputs: torch.Tensor, adversarial: torch.Tensor | AttackResult) -> torch.Tensor:
    """``[N]`` relative L2 size of a perturbation, ``||x - x_adv||_2 / ||x||_2``, per sample.

    The EE-559 lecture (Fleuret, "Under the hood", slide 80/89) prints it under its adversarial
    images (1.02% and 0.27%): the perturbation as a share of the image it is added to, beside the
    absolute L-inf and L2 norms. A black image (``||x|| = 0``) gives ``inf`` (``nan`` if unchanged).

    Example:
        >>> x = torch.ones(1, 1, 2, 2); relative_norm(x, x + 0.01)          # doctest: +ELLIPSIS
        tensor([0.0100...])
    """
    adv = adversarial.adversarial if isinstance(adversarial, AttackResult) else adversarial
    if not isinstance(inputs, torch.Tensor) or not isinstance(adv, torch.Tensor) or adv.shape != inputs.shape:
        raise InputError(f"adversarial: expected a tensor shaped like the inputs "
                         f"{tuple(getattr(inputs, 'shape', ()))}, got {tuple(getattr(adv, 'shape', ()))}")
    x = inputs.detach().flatten(1).double()
    return ((adv.detach().flatten(1).double().to(x.device) - x).norm(dim=1) / x.norm(dim=1)).to(inputs.dtype)


# ---------------------------------------------------------------------------- norms and budgets


def check_norm(norm: str | float) -> str:
    """``"linf"`` or ``"l2"`` (aliases: ``"inf"``, ``float("inf")``, ``2``)."""
    key = "linf" if norm == float("inf") else str(norm).lower()
    if key not in _NORM_ALIASES:
        raise InputError(f"norm: unknown norm {norm!r}; choose 'linf' or 'l2'")
    return _NORM_ALIASES[key]


def max_eps(norm: str, shape: tuple[int, ...]) -> float:
    """The largest useful budget: 1 in L-infinity, the box diagonal ``sqrt(C*H*W)`` in L2."""
    return 1.0 if norm == "linf" else math.sqrt(math.prod(shape))


def check_eps(eps: float | str, norm: str, shape: tuple[int, ...], name: str = "eps") -> float:
    """``eps`` as a float in ``[0, max_eps(norm, shape)]`` (pixel units), with a one-line error."""
    value = parse_eps(eps, name)
    top = max_eps(norm, shape)
    if not math.isfinite(value) or not 0 <= value <= top:
        hint = "pixels are in [0, 1], e.g. 8/255" if norm == "linf" else "an L2 radius in pixel units, e.g. 0.5"
        raise InputError(f"{name}: expected a budget in [0, {top:.4g}] for the {norm} norm, got {value!r}; {hint}")
    return value


def _classes(value: Labels, n: int, k: int, device: torch.device, name: str, none_hint: str) -> torch.Tensor:
    if isinstance(value, bool):
        raise InputError(f"{name}: expected a class index or one per sample, got {value!r}")
    if isinstance(value, int):
        idx = torch.full((n,), value, dtype=torch.long, device=device)
    else:
        try:
            idx = torch.as_tensor(value).to(device).flatten()
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{name}: expected an int or one int per sample, got {type(value).__name__}") from None
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise InputError(f"{name}: expected integer class indices, got dtype {idx.dtype}")
        idx = idx.long()
        if idx.numel() != n:
            raise InputError(f"{name}: {idx.numel()} classes for a batch of {n}; give one per sample, "
                             f"one int, or {none_hint}")
    bad = (idx < 0) | (idx >= k)
    if bad.any():
        raise InputError(f"{name}: class {int(idx[bad][0])} is out of range for a model with {k} outputs "
                         f"(0..{k - 1})")
    return idx


@dataclass
class Problem:
    """A checked attack problem: inputs in the box, reference labels, targets.

    ``logits`` are the clean logits ``[N, K]`` when they were computed (``labels=None`` or
    ``clean=True`` in :func:`setup`), else ``None``.
    """

    x: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor | None
    classes: int
    logits: torch.Tensor | None = None


@torch.no_grad()
def setup(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, target: Labels = None, *,
          clean: bool = False) -> Problem:
    """Check ``inputs`` (shape, box), resolve ``labels`` (None -> clean predictions) and ``target``.

    Call inside :func:`attacking` so forward passes run in eval mode. The clean batch is
    forwarded only when its predictions are needed (``labels=None``) or asked for (``clean``);
    otherwise one sample is, to learn the number of classes. A target equal to a sample's
    label is an error: a targeted attack needs another class.
    """
    x = check_inputs(model, inputs)
    full = labels is None or clean
    logits = model(x if full else x[:1])
    if logits.ndim != 2:
        raise InputError(f"model: attacks need [N, classes] logits, the model gives {tuple(logits.shape)}")
    n, k = len(x), logits.shape[1]
    y = logits.argmax(1) if labels is None else _classes(labels, n, k, x.device, "labels",
                                                         "None for the model's predictions")
    t = None
    if target is not None:
        t = _classes(target, n, k, x.device, "target", "None for an untargeted attack")
        same = t == y
        if same.any():
            i = int(same.nonzero()[0])
            raise InputError(f"target: class {int(t[i])} equals the label of sample {i}; a targeted attack "
                             "needs another class (or target=None for an untargeted attack)")
    return Problem(x, y, t, k, logits.float() if full else None)


def attacking(model: nn.Module):
    """Eval mode and frozen parameters for the block, restored after (:func:`underhood.core.hooks.frozen`):
    attacks differentiate w.r.t. the inputs only, on the deployed function."""
    return frozen(model)


# ---------------------------------------------------------------------------- losses on logits


def _best_other(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """``max_{i != cls} logits_i`` per sample."""
    mask = F.one_hot(cls, logits.shape[1]).bool()
    return logits.masked_fill(mask, -torch.inf).amax(1)


def margin(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """``logits[cls] - max_{i != cls} logits_i``: positive where ``cls`` wins."""
    return logits.gather(1, cls[:, None]).squeeze(1) - _best_other(logits, cls)


def objective(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None,
              loss: str = "ce") -> torch.Tensor:
    """The per-sample quantity an attack *increases*, ``[N]``.

    Untargeted: the loss of the label (``"ce"``: cross-entropy; ``"margin"``: the best other
    logit minus the label's, Carlini & Wagner's f6 without the clip). Targeted: minus the loss
    of the target.
    """
    if target is None:
        return F.cross_entropy(logits, labels, reduction="none") if loss == "ce" else -margin(logits, labels)
    return -F.cross_entropy(logits, target, reduction="none") if loss == "ce" else margin(logits, target)


def is_adversarial(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None,
                   kappa: float = 0.0) -> torch.Tensor:
    """``[N]`` bool: the label lost (untargeted) or the target won (targeted), by more than ``kappa``."""
    if target is None:
        return -margin(logits, labels) > kappa if kappa else logits.argmax(1) != labels
    return margin(logits, target) > kappa if kappa else logits.argmax(1) == target


# ---------------------------------------------------------------------------- hygiene and results


class GradientCheck:
    """Per-sample record of whether an attack ever saw a usable input gradient.

    ``update`` costs a few elementwise ops and no device sync; ``warn`` syncs once at the end.
    """

    def __init__(self, n: int, device: torch.device) -> None:
        self.usable = torch.zeros(n, dtype=torch.bool, device=device)
        self.broken = torch.zeros(n, dtype=torch.bool, device=device)

    def update(self, grad: torch.Tensor, rows: torch.Tensor | None = None,
               expected_zero: torch.Tensor | None = None) -> None:
        """Record a batch of input gradients (``rows``: their sample indices, default all).

        ``expected_zero`` marks samples whose loss is flat by design at this step (a clipped
        loss already satisfied): a zero gradient there is no symptom. One reduction:
        ``sum |g|`` is zero exactly when ``g`` is, and not finite when ``g`` is not.
        """
        size = grad.detach().flatten(1).abs().sum(1)
        usable, broken = torch.isfinite(size) & (size > 0), ~torch.isfinite(size)
        if expected_zero is not None:
            usable |= expected_zero & ~broken
        if rows is None:
            self.usable |= usable
            self.broken |= broken
        else:
            self.usable[rows] |= usable
            self.broken[rows] |= broken

    def warn(self, method: str) -> float:
        """Warn with :class:`GradientMaskingWarning` if any sample had no usable gradient; the share."""
        bad = self.broken | ~self.usable
        count, n = int(bad.sum()), len(bad)
        if count:
            warnings.warn(GradientMaskingWarning(
                f"{method}: the input gradient was zero or not finite for {count} of {n} samples "
                f"({count / n:.0%}); the attack cannot move them, so its failure there is no evidence of "
                "robustness (gradient masking); check with a gradient-free or transfer attack"), stacklevel=3)
        return count / n


def perturbation_norms(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"linf": [N], "l2": [N]}`` norms of a batch of perturbations."""
    flat = delta.flatten(1)
    return {"linf": flat.abs().amax(1), "l2": flat.norm(dim=1)}


@torch.no_grad()
def finish(model: nn.Module, problem: Problem, adversarial: torch.Tensor, info: dict[str, Any], *,
           history: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> AttackResult:
    """Score ``adversarial`` (one forward pass unless ``logits`` are given) and build the result."""
    adv = adversarial.detach().clamp(0, 1)
    out = (model(adv) if logits is None else logits).float()
    probs = out.softmax(1)
    conf, pred = probs.max(1)
    delta = adv - problem.x
    return AttackResult(adversarial=adv, perturbation=delta,
                        success=is_adversarial(out, problem.labels, problem.target),
                        labels=problem.labels, predicted=pred, confidence=conf, norms=perturbation_norms(delta),
                        target=problem.target, history=history, info=info)
