"""Evaluation across budgets and models: robustness curves and transfer matrices.

Accuracy should be measured across budgets, not at one (:func:`robustness_curve`), and
adversarial examples crafted on one model should be scored on others (:func:`transfer_matrix`).
Which attacks can be swept, and how their norms are set, is read from the registry's flags
(:mod:`underhood.adversarial.registry`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.batching import batches, logits, resolve_batch_size
from ..core.checks import parse_eps, positive_int
from ..core.errors import InputError
from ..core.inputs import check_inputs
from ..core.results import Result
from .base import AttackResult, Labels, attacking, check_eps, check_norm, relative_norm
from .registry import Attack, entry

__all__ = ["RobustnessCurve", "TransferMatrix", "relative_norm", "robustness_curve", "transfer_matrix"]

# ---------------------------------------------------------------------------- robustness curves


@dataclass(repr=False)
class RobustnessCurve(Result):
    """Accuracy under attack against the budget.

    Attributes:
        eps: ``[E]`` budgets (or norm thresholds for a minimal-norm attack), pixel units.
        accuracy: ``[E]`` share of samples still classified as their label within that budget.
        clean_accuracy: accuracy on the clean inputs.
        attack: the attack's name; ``norm``: the norm of ``eps``.
        norms: ``[N]`` per-sample minimal adversarial norms, sorted (minimal-norm attacks only):
            0 where the clean input is already misclassified, ``inf`` where the attack failed.
        info: seed, batch size, attack options.
    """

    eps: torch.Tensor
    accuracy: torch.Tensor
    clean_accuracy: float
    attack: str
    norm: str
    norms: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def median_norm(self) -> float:
        """Median minimal norm over the samples the model classifies correctly (``norms > 0``; ``inf`` counts
        as the largest); ``nan`` for a budgeted curve or when there is none."""
        if self.norms is None or not bool((self.norms > 0).any()):
            return math.nan
        return float(self.norms[self.norms > 0].median())

    def scalars(self) -> dict[str, Any]:
        """The attack and norm, the images, the clean accuracy, the largest budget and the accuracy there,
        and, for a minimal-norm attack, the median minimal norm."""
        out = {"attack": self.attack, "norm": self.norm, "n": self.info.get("n"),
               "clean_accuracy": self.clean_accuracy, "points": len(self.eps),
               "eps_max": float(self.eps[-1]) if len(self.eps) else math.nan,
               "accuracy_at_max": float(self.accuracy[-1]) if len(self.accuracy) else math.nan}
        if self.norms is not None:
            out["median_norm"] = self.median_norm()
        return out

    def figure(self, **kwargs: Any):
        """Accuracy against the budget (:func:`underhood.viz.adversarial.robustness_figure`; ``kwargs`` go
        to it)."""
        from ..viz.adversarial import robustness_figure

        return robustness_figure({self.attack: self}, **kwargs)


def _data(model: nn.Module, data: Any, labels: Labels) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data[0], data[1] if labels is None else labels
    else:
        images = getattr(data, "images", data)
        labels = getattr(data, "labels", None) if labels is None else labels
    if not isinstance(images, torch.Tensor):
        raise InputError(f"data: expected an ImageSet, an (images, labels) pair or an [N, C, H, W] tensor, "
                         f"got {type(data).__name__}")
    x = check_inputs(model, images, "data")
    return x, None if labels is None else torch.as_tensor(labels).to(x.device).long().flatten()


def _sweepable(attack: str | Callable[..., AttackResult] | Attack) -> Attack:
    """The registry entry of ``attack``; attacks without a budget to sweep are refused (by their flags)."""
    spec = entry(attack)
    if not spec.per_image:
        raise InputError(f"attack: {spec.name} is a dataset-level attack; give a per-image attack such as pgd, "
                         "fgsm, noise or a minimal-norm one (deepfool, cw, lbfgs)")
    if not spec.sweepable:
        raise InputError(f"attack: {spec.name} has no budget to sweep; use pgd, fgsm, noise or a minimal-norm "
                         "attack (deepfool, cw, lbfgs)")
    return spec


def _norm_option(spec: Attack, norm: str | None, options: dict[str, Any]) -> str:
    """The norm of the budgets; put into ``options`` for attacks that take one (and for callables given one)."""
    given = norm if norm is not None else options.get("norm")
    default = spec.default_norm
    norm = check_norm(given if given is not None else default)
    if spec.norm_option or (given is not None and spec.norms is None):
        options["norm"] = norm
    elif norm != default:
        raise InputError(f"norm: {spec.name} works in the {default} norm only, got {given!r}")
    return norm


def robustness_curve(model: nn.Module, data: Any, attack: str | Callable[..., AttackResult] | Attack = "pgd",
                     eps_list: Sequence[float | str] | None = None, *, labels: Labels = None,
                     norm: str | None = None, batch_size: int | str | None = None, seed: int = 0,
                     progress: bool = False, **options: Any) -> RobustnessCurve:
    """Accuracy against the attack budget, over a dataset.

    A budgeted attack (registry flag ``budget``: ``"pgd"``, ``"fgsm"``, ``"noise"``, or a callable
    taking ``eps``) runs once per budget in ``eps_list`` (``eps = 0`` is the clean accuracy, not
    attacked). A minimal-norm attack (flag ``minimal``: ``"deepfool"``, ``"cw"``, ``"lbfgs"``) runs once: each sample's
    minimal adversarial norm ``d_i`` gives the whole curve, ``accuracy(e) = mean(d_i > e)``,
    at ``eps_list`` or, when it is ``None``, at every distinct ``d_i`` (a step curve).

    Args:
        data: an ImageSet, an ``(images, labels)`` pair, or images (labels: the clean predictions).
        attack: a name from :data:`underhood.adversarial.ATTACKS`, a callable with the attack
            signature ``attack(model, inputs, labels, *, eps=..., seed=..., **options)`` (taken as
            budgeted), or a :class:`~underhood.adversarial.registry.Attack` entry declaring its flags.
        norm: the norm of ``eps``: the attack's ``norm`` option for attacks that take one (default: the
            entry's first norm, ``"linf"`` for budgeted attacks, ``"l2"`` for minimal ones).
        batch_size: images per attack call (default: measured, see :mod:`underhood.core.batching`);
            every chunk is attacked with the same ``seed``.
        options: passed to the attack (``steps``, ``restarts``, ...).

    Returns:
        :class:`RobustnessCurve`.

    Example:
        >>> c = robustness_curve(model, data, "pgd", [0, 2/255, 4/255, 8/255], steps=10)   # doctest: +SKIP
        >>> c = robustness_curve(model, data, "deepfool")                                   # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    spec = _sweepable(attack)
    fn, name, minimal = spec.fn, spec.name, spec.minimal
    norm = _norm_option(spec, norm, options)
    x, y = _data(model, data, labels)
    size = resolve_batch_size(batch_size, model, tuple(x.shape[1:]), grad=True)
    chunks = list(batches(len(x), size))
    clean_pred = logits(model, x, size).argmax(1)
    y = clean_pred if y is None else y
    if len(y) != len(x):
        raise InputError(f"labels: {len(y)} labels for {len(x)} images; give one per image")
    correct = clean_pred == y
    info: dict[str, Any] = {"seed": seed, "batch_size": size, "options": dict(options), "n": len(x)}

    def run(**kw: Any) -> list[AttackResult]:
        return [fn(model, x[s], y[s], seed=seed, **kw, **options)
                for s in tqdm(chunks, desc=name, disable=not progress, leave=False)]

    if minimal:
        results = run()
        success = torch.cat([r.success for r in results])
        d = torch.cat([r.norms[norm] for r in results])
        d = torch.where(success, d, torch.inf)
        d = torch.where(correct, d, 0.0).sort().values
        if eps_list is None:
            grid = torch.cat([d.new_zeros(1), d[torch.isfinite(d) & (d > 0)].unique()])
        else:
            grid = torch.tensor([parse_eps(e, "eps_list") for e in eps_list], device=d.device)
        acc = (d[None, :] > grid[:, None]).float().mean(1)
        return RobustnessCurve(eps=grid.cpu(), accuracy=acc.cpu(), clean_accuracy=float(correct.float().mean()),
                               attack=name, norm=norm, norms=d.cpu(), info=info)
    if eps_list is None or len(eps_list) == 0:
        raise InputError(f"eps_list: {name} needs the budgets to try, e.g. [0, 2/255, 4/255, 8/255]")
    grid = torch.tensor([check_eps(e, norm, tuple(x.shape[1:]), "eps_list") for e in eps_list])
    acc = []
    for e in grid.tolist():
        if e == 0:
            acc.append(float(correct.float().mean()))
            continue
        results = run(eps=e)
        acc.append(float(torch.cat([r.predicted == r.labels for r in results]).float().mean()))
    return RobustnessCurve(eps=grid, accuracy=torch.tensor(acc), clean_accuracy=float(correct.float().mean()),
                           attack=name, norm=norm, info=info)


# ---------------------------------------------------------------------------- transfer across models


@dataclass(repr=False)
class TransferMatrix(Result):
    """How adversarial examples crafted on one model fool others.

    Attributes:
        names: the models' names (rows: source, columns: target).
        accuracy: ``[S, S]``: accuracy of model ``j`` on the adversarial inputs crafted on model
            ``i``; the diagonal is white-box robust accuracy.
        clean: ``[S]`` each model's clean accuracy.
        attack: the attack's name; ``eps``, ``norm``: its budget.
        info: seed, batch size, attack options.
        fooling: ``[S, S]``: the fooling rate, the share of the inputs that model ``j`` classifies
            correctly when clean whose adversarial version crafted on model ``i`` it misclassifies
            (``nan`` where it classifies none correctly); ``None`` in results saved before it existed.
    """

    names: list[str]
    accuracy: torch.Tensor
    clean: torch.Tensor
    attack: str
    eps: float | None
    norm: str
    info: dict[str, Any] = field(default_factory=dict)
    fooling: torch.Tensor | None = None

    def scalars(self) -> dict[str, Any]:
        """The attack and budget, the models and images, the mean white-box accuracy (the diagonal) and the
        mean transfer accuracy (off the diagonal; ``nan`` for one model)."""
        s = len(self.names)
        off = self.accuracy[~torch.eye(s, dtype=torch.bool)]
        return {"attack": self.attack, "eps": self.eps, "norm": self.norm, "models": s, "n": self.info.get("n"),
                "white_box_accuracy": float(self.accuracy.diagonal().mean()),
                "transfer_accuracy": float(off.mean()) if len(off) else math.nan}

    def figure(self, **kwargs: Any):
        """The matrix as a heat map (:func:`underhood.viz.adversarial.transfer_figure`; ``kwargs`` go to it)."""
        from ..viz.adversarial import transfer_figure

        return transfer_figure(self, **kwargs)


def transfer_matrix(models: Mapping[str, nn.Module] | Sequence[nn.Module], data: Any,
                    attack: str | Callable[..., AttackResult] | Attack = "pgd", *, eps: float | str = 8 / 255,
                    labels: Labels = None, norm: str | None = None, batch_size: int = 64, seed: int = 0,
                    progress: bool = False, **options: Any) -> TransferMatrix:
    """Black-box transfer (Szegedy et al. 2014; Papernot et al. 2016): attack each model, score every model.

    Each source model is attacked on ``data`` (chunks of ``batch_size``, the same ``seed``); every
    model then classifies those adversarial inputs. Models must take the same inputs. The attacks
    accepted, and their norms, are those of :func:`robustness_curve`; a minimal-norm attack
    ignores ``eps``.

    Args:
        models: ``{name: model}``, or a sequence (named ``model0``, ``model1``, ...).
        data: an ImageSet, an ``(images, labels)`` pair, or images (labels: the first model's
            clean predictions).

    Returns:
        :class:`TransferMatrix`.

    Example:
        >>> m = transfer_matrix({"vgg": load_model("shapes"), "resnet": load_model("shapes-resnet")},
        ...                     data, "pgd", eps=8/255)                                   # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    named = dict(models) if isinstance(models, Mapping) else {f"model{i}": m for i, m in enumerate(models)}
    if not named or not all(isinstance(m, nn.Module) for m in named.values()):
        raise InputError("models: expected a non-empty {name: nn.Module} mapping or sequence of modules")
    batch_size = positive_int("batch_size", batch_size)
    spec = _sweepable(attack)
    fn, name, minimal = spec.fn, spec.name, spec.minimal
    norm = _norm_option(spec, norm, options)
    first = next(iter(named.values()))
    x, y = _data(first, data, labels)
    chunks = list(batches(len(x), batch_size))

    def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with attacking(model), torch.no_grad():
            return torch.cat([model(images[s].to(x.device)).argmax(1) for s in chunks])

    if y is None:
        y = predict(first, x)
    budget = {} if minimal else {"eps": check_eps(eps, norm, tuple(x.shape[1:]))}
    correct = [predict(m, x) == y for m in named.values()]
    clean = torch.tensor([float(c.float().mean()) for c in correct])
    rows, fooled = [], []
    for source in tqdm(list(named.values()), desc=f"{name} transfer", disable=not progress, leave=False):
        adv = torch.cat([fn(source, x[s], y[s], seed=seed, **budget, **options).adversarial for s in chunks])
        right = [predict(m, adv) == y for m in named.values()]
        rows.append([float(r.float().mean()) for r in right])
        fooled.append([float((~r[c]).float().mean()) if c.any() else math.nan for r, c in zip(right, correct)])
    return TransferMatrix(names=list(named), accuracy=torch.tensor(rows), clean=clean, attack=name,
                          eps=budget.get("eps"), norm=norm,
                          info={"seed": seed, "batch_size": batch_size, "options": dict(options), "n": len(x)},
                          fooling=torch.tensor(fooled))
