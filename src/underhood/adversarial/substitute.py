"""The black-box substitute attack of Papernot et al. 2017: learn a copy from labels alone, attack the copy.

Papernot, McDaniel, Goodfellow, Jha, Celik & Swami, "Practical Black-Box Attacks against Machine
Learning", AsiaCCS 2017 (arXiv:1602.02697). The adversary sees only the target's *labels*
``O(x) = argmax f(x)`` on inputs of its choice. It trains a local substitute ``F`` on a small
initial set ``S_0`` labelled by the target, grows the set by Jacobian-based dataset augmentation,

    ``S_{r+1} = S_r  U  {clip_[0,1](x + lam_r * sign(d F_{O(x)}(x) / dx)) : x in S_r}``,

which probes the target where the substitute's decision changes fastest, and crafts adversarial
examples on ``F`` with a white-box attack; they transfer to the target.

Conventions (besides those of :mod:`underhood.adversarial.base`):

* the target is queried only for labels, under ``torch.no_grad``, in eval mode with frozen
  parameters (:func:`~underhood.adversarial.base.attacking`); it is never differentiated, so the
  attack works on targets without gradients (rounding, argmax inside, a remote service);
* every image shown to the target counts as one query, and each is queried once: the labels of
  ``S_r`` are kept when it grows;
* ``rounds`` counts the substitute's training rounds (the paper's substitute epochs ``rho``), as in
  the authors' reference code (cleverhans' ``mnist_blackbox``, ``data_aug=6``): round ``r`` trains
  on ``|S_0| * 2^r`` points, and the last round is not followed by an augmentation that nobody
  would label. The final set holds ``|S_0| * 2^(rounds - 1)`` points (4,800 for the paper's 150
  images and 6 rounds);
* the number of classes is the width of the target's output (the adversary knows the label set);
* the Jacobian is that of the substitute's *logit* for the label (the paper writes ``F`` for the
  softmax output, whose gradient vanishes on confident points); pixels with a zero derivative stay
  put, and new points are clipped to the ``[0, 1]`` box;
* the paper's reservoir sampling (after some rounds, only a fixed number of new points is labelled
  per round) is not implemented; ``max_queries`` caps the labels bought instead;
* the evaluation reads the target's logits (for :attr:`AttackResult.confidence`); the adversary
  never does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import batches, logits
from ..core.checks import choice, number, positive_int
from ..core.errors import InputError
from ..core.inputs import check_inputs
from ..core.results import Result
from ..core.seeding import generator, seeded
from .base import AttackResult, Labels, Problem, _classes, attacking, check_eps, finish
from .gradient import fgsm, pgd

CRAFT = ("fgsm", "pgd")
Factory = Callable[[tuple[int, ...], int], nn.Module]


@dataclass(repr=False)
class SubstituteResult(Result):
    """What :func:`substitute` returns.

    Attributes:
        substitute: the trained substitute (eval mode), taking ``[N, C, H, W]`` pixels.
        result: the adversarial test images crafted on the substitute and scored on the *target*
            (:class:`AttackResult`; ``labels`` are ``test_labels`` or the target's clean labels,
            ``success`` means the target's label differs from them).
        transfer_rate: share of the test images the target classifies as their label (all of them
            when the labels are the target's own) whose adversarial image it misclassifies; ``nan``
            when there is none.
        agreement: share of the clean test images on which substitute and target give the same
            label (the paper's "substitute accuracy" when the target is accurate).
        queries: images shown to the target, evaluation included (see ``info``).
        inputs: ``[M, C, H, W]`` the substitute's final training set ``S``: ``S_0`` first, then the
            points of each augmentation (the parent of point ``i + |S_r|`` is point ``i``). The
            largest tensor of a run (236 MB for 4,800 RGB images of 64x64): drop it if unused.
        labels: ``[M]`` the target's labels of ``inputs``.
        history: one dict per round: ``round``, ``size`` (points trained on, all labelled by the
            target: the training queries so far), ``lam`` (the step of the augmentation that
            followed, ``None`` after the last round), ``loss`` (mean training loss of the round's last
            epoch), ``agreement`` (on the test images after the round).
        info: method, hyperparameters, seed, ``training_queries``, ``test_queries`` and
            ``substitute_success_rate`` (the attack's white-box success on the substitute).
    """

    substitute: nn.Module
    result: AttackResult
    transfer_rate: float
    agreement: float
    queries: int
    inputs: torch.Tensor
    labels: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, Any]:
        """Transfer rate and agreement, queries, and the crafting attack with its budget."""
        return {"transfer_rate": self.transfer_rate, "agreement": self.agreement, "queries": self.queries,
                "rounds": self.info.get("rounds"), "attack": self.info.get("attack"), "eps": self.info.get("eps"),
                "n": len(self.result), "seed": self.info.get("seed")}

    def figure(self, **kwargs: Any):
        """The transferred adversarial images in the lectures' three panels (:meth:`AttackResult.figure` of
        :attr:`result`; ``kwargs`` go to :func:`underhood.viz.adversarial.attack_figure`)."""
        return self.result.figure(**kwargs)


def substitute_net(shape: tuple[int, ...], classes: int) -> nn.Module:
    """The default substitute: a small CNN for ``shape = (C, H, W)`` inputs and ``classes`` outputs.

    Average pooling to 16x16 (8x8 below 16 pixels), then two 3x3 conv/ReLU/max-pool blocks (16 and
    32 channels), a hidden layer of 64 units and the logits: about 45k parameters, a little smaller
    than the paper's substitutes for MNIST (two conv layers and two hidden layers of 200 units).
    Small on purpose: it is trained ``rounds`` times on up to ``|S_0| * 2^(rounds - 1)`` images.
    """
    channels, height, width = shape
    side = 16 if min(height, width) >= 16 else 8
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(side),
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (side // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, classes),
    )


def jacobian_augmentation(net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, lam: float, *,
                          batch_size: int = 128) -> torch.Tensor:
    """Papernot et al.'s new points ``clip_[0,1](x + lam * sign(d F_y(x) / dx))``, ``y = labels``.

    ``F_y`` is the logit of class ``y``, so a positive ``lam`` steps towards more of the target's
    label and a negative one towards the decision boundary. Differentiates ``net`` (not the
    target), in batches of ``batch_size``.

    Returns:
        ``[N, C, H, W]``: every pixel moved by exactly ``|lam|`` (or 0 where the derivative is 0),
        clipped to the box.

    Example:
        >>> new = jacobian_augmentation(net, x, oracle_labels, 0.1)      # doctest: +SKIP
    """
    out = []
    for s in batches(len(inputs), batch_size):
        x = inputs[s].detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(x).gather(1, labels[s, None]).sum(), x)
        out.append((x.detach() + lam * grad.sign()).clamp(0, 1))
    return torch.cat(out)


def _labels(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The black box: the target's labels, nothing else (``len(x)`` queries)."""
    return logits(model, x, batch_size).argmax(1)


@torch.no_grad()
def _classes_and_labels(model: nn.Module, x: torch.Tensor, batch_size: int) -> tuple[int, torch.Tensor]:
    """The width of the target's output (the label set, which the adversary knows) and its labels of ``x``."""
    first = model(x[:batch_size])
    if first.ndim != 2:
        raise InputError(f"model: attacks need [N, classes] logits, the model gives {tuple(first.shape)}")
    rest = [model(x[s]).argmax(1) for s in list(batches(len(x), batch_size))[1:]]
    return first.shape[1], torch.cat([first.argmax(1), *rest])


@torch.no_grad()
def _agreement(net: nn.Module, x: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    return float((_labels(net, x, batch_size) == labels).float().mean())


def _train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int,
           g: torch.Generator) -> float:
    """``epochs`` of Adam on the cross-entropy of ``y`` (a fresh optimiser, as in the reference code);
    the mean loss of the last epoch."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    total = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).to(x.device)
        total = 0.0
        for s in batches(len(x), batch_size):
            idx = order[s]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
    net.eval()
    for p in net.parameters():
        p.grad = None
    return total / len(x)


def _grow(model: nn.Module, net: nn.Module, s0: torch.Tensor, test: torch.Tensor, test_pred: torch.Tensor, *,
          rounds: int, lam: float, tau: int | None, max_queries: int | None, progress: bool,
          train: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Algorithm 1: label, train, augment, ``rounds`` times. ``(S, the target's labels of S, history)``."""
    from tqdm.auto import tqdm

    batch_size = train["batch_size"]
    x, y = s0, _labels(model, s0, batch_size)
    history: list[dict[str, Any]] = []
    bar = tqdm(range(rounds), desc="substitute", disable=not progress, leave=False)
    for r in bar:
        loss = _train(net, x, y, **train)
        step = None if r == rounds - 1 else lam * (-1) ** (r // tau) if tau else lam
        if max_queries is not None and len(x) >= max_queries:
            step = None  # the budget is spent: this round was the last
        history.append({"round": r, "size": len(x), "lam": step, "loss": loss,
                        "agreement": _agreement(net, test, test_pred, batch_size)})
        bar.set_postfix(size=len(x), agreement=f"{history[-1]['agreement']:.2f}")
        if step is None:
            break
        new = jacobian_augmentation(net, x, y, step, batch_size=batch_size)
        if max_queries is not None:
            new = new[:max_queries - len(x)]
        x, y = torch.cat([x, new]), torch.cat([y, _labels(model, new, batch_size)])
    bar.close()
    return x, y, history


def _build(spec: nn.Module | Factory | None, shape: tuple[int, ...], classes: int, seed: int,
           device: torch.device) -> nn.Module:
    """The substitute: a copy of a module, or a factory's (default :func:`substitute_net`) seeded build."""
    if isinstance(spec, nn.Module):
        return copy.deepcopy(spec).to(device)
    if spec is not None and not callable(spec):
        raise InputError(f"substitute: expected an nn.Module or a factory (shape, classes) -> nn.Module, "
                         f"got {type(spec).__name__}")
    with seeded(seed):  # built on the CPU: the same weights on every device
        net = (spec or substitute_net)(shape, classes)
    if not isinstance(net, nn.Module):
        raise InputError(f"substitute: the factory returned {type(net).__name__}, expected an nn.Module")
    return net.to(device)


def _check_lam(lam: object) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam == 0:
        raise InputError(f"lam: expected a finite non-zero step such as 0.1 (negative: towards the boundary), "
                         f"got {lam!r}")
    return float(lam)


def substitute(model: nn.Module, inputs: torch.Tensor, *, test_inputs: torch.Tensor | None = None,
               test_labels: Labels = None, substitute: nn.Module | Factory | None = None, rounds: int = 6,
               lam: float = 0.1, tau: int | None = None, epochs: int = 10, lr: float = 1e-3, batch_size: int = 128,
               attack: str = "fgsm", eps: float | str = 8 / 255, max_queries: int | None = None, seed: int = 0,
               progress: bool = False) -> SubstituteResult:
    """Papernot et al. 2017's black-box attack: train a substitute on the target's labels, attack it, transfer.

    Algorithm 1 of the paper, for ``r = 0 .. rounds - 1``: label the new points of ``S_r`` with
    the target, train the substitute ``epochs`` epochs on all of ``S_r`` (warm start; Adam, ``lr``,
    ``batch_size``), and, unless it is the last round, augment
    ``S_{r+1} = S_r U {clip(x + lam_r * sign(J_F(x)[O(x)]))}`` (:func:`jacobian_augmentation`),
    doubling the set. ``lam_r = lam``, or with ``tau`` the paper's periodic step
    ``lam_r = lam * (-1)^floor(r / tau)``. Then FGSM (the paper's choice; ``attack="pgd"`` for
    PGD with its defaults) with budget ``eps`` crafts untargeted adversarial examples of
    ``test_inputs`` on the substitute, away from ``test_labels`` (default: the target's labels),
    and the target classifies them.

    ``S_0 = inputs``: the paper uses 150 held-out images, ``lam = 0.1``, 6 rounds of 10 epochs and
    FGSM with ``eps = 0.3`` on MNIST; ``eps`` defaults to 8/255 like the other attacks here, and
    transfer needs larger budgets than white-box attacks. On the built-in digits model (LeNet; the
    paper's MNIST setting: 150 seed images and the defaults) the substitute agrees with the target
    on 93% of held-out digits, and FGSM on it fools the target on 1%, 18% and 95% of them at
    ``eps`` = 16/255, 32/255 and 0.3 (random noise: 0%, 0%, 1%; an untrained substitute: 0%, 1%,
    17%); ``lam = -0.1`` does better (97% agreement; 5%, 43%, 99%).
    On the shapes model 150 images teach a substitute little (16% agreement, 8 classes): its
    transfer at 32/255 (57%) is no better than an untrained substitute's (49%).

    Queries: ``|S_0| * 2^(rounds - 1)`` labels to train (fewer with ``max_queries``, which caps
    them: the augmentation that would exceed it keeps only its first points and training stops
    after that round), plus ``2 * len(test_inputs)`` to evaluate (clean labels and adversarial
    images; the substitute never trains on them).

    Args:
        model: the target, used as a black box (labels only); left as it was found.
        inputs: ``[N, C, H, W]`` the initial set ``S_0``, pixels in ``[0, 1]``.
        test_inputs: images to attack (default: ``inputs``).
        test_labels: their true classes, or None for the target's clean labels.
        substitute: an ``nn.Module`` (copied, then trained; the given one is untouched), or a
            factory ``(shape (C, H, W), classes) -> nn.Module`` called with the torch seed set to
            ``seed``; default :func:`substitute_net`. It takes pixels in ``[0, 1]``.
        rounds: substitute training rounds (the paper's ``rho``).
        lam: the augmentation step ``lambda`` in pixel units, non-zero: positive steps towards more
            of the target's label (the paper's formula), negative ones towards the decision boundary
            (the authors' reference code, cleverhans' ``mnist_blackbox``, uses ``-lam`` in its first
            three augmentations).
        tau: the period of the sign flips of ``lam``, or None for a constant step.
        epochs, lr, batch_size: training per round; ``batch_size`` also batches the queries.
        attack: ``"fgsm"`` or ``"pgd"``, crafted on the substitute.
        eps: the L-inf budget of the attack.
        max_queries: the most labels to buy for training (at least ``len(inputs)``), or None.
        seed: seeds the substitute's initialisation, the training order and PGD's random start.
        progress: show a progress bar over the rounds.

    Returns:
        :class:`SubstituteResult`.

    Example:
        >>> r = substitute(model, data.images[:150], test_inputs=data.images[1000:1256],
        ...                test_labels=data.labels[1000:1256])                  # doctest: +SKIP
        >>> r.agreement, r.transfer_rate, r.queries                              # doctest: +SKIP
    """
    rounds = positive_int("rounds", rounds)
    lam = _check_lam(lam)
    tau = None if tau is None else positive_int("tau", tau)
    epochs = positive_int("epochs", epochs)
    lr = number("lr", lr, strict=True)
    batch_size = positive_int("batch_size", batch_size)
    attack = choice("attack", attack, CRAFT)
    max_queries = None if max_queries is None else positive_int("max_queries", max_queries)
    with attacking(model):
        s0 = check_inputs(model, inputs)
        test = s0 if test_inputs is None else check_inputs(model, test_inputs, "test_inputs")
        if test.shape[1:] != s0.shape[1:]:
            raise InputError(f"test_inputs: images of shape {tuple(test.shape[1:])}, the inputs' are "
                             f"{tuple(s0.shape[1:])}; give images of one size")
        eps = check_eps(eps, "linf", tuple(s0.shape[1:]))
        if max_queries is not None and max_queries < len(s0):
            raise InputError(f"max_queries: {max_queries} cannot label the {len(s0)} initial inputs; "
                             f"give at least {len(s0)} or None")
        classes, test_pred = _classes_and_labels(model, test, batch_size)
        y_test = test_pred if test_labels is None else _classes(test_labels, len(test), classes, test.device,
                                                                "test_labels", "None for the target's labels")
        net = _build(substitute, tuple(s0.shape[1:]), classes, seed, s0.device)
        with seeded(seed, s0.device):  # dropout in a user's substitute draws from the global generator
            x, y, history = _grow(model, net, s0, test, test_pred, rounds=rounds, lam=lam, tau=tau,
                                  max_queries=max_queries, progress=progress,
                                  train={"epochs": epochs, "lr": lr, "batch_size": batch_size, "g": generator(seed)})
        crafted = (fgsm(net, test, y_test, eps=eps, seed=seed) if attack == "fgsm"
                   else pgd(net, test, y_test, eps=eps, seed=seed))
        scores = logits(model, crafted.adversarial, batch_size)
        info = {"method": "substitute", "attack": attack, "eps": eps, "norm": "linf", "rounds": len(history),
                "lam": lam, "tau": tau, "epochs": epochs, "lr": lr, "batch_size": batch_size,
                "max_queries": max_queries, "seed": seed, "training_queries": len(x), "test_queries": 2 * len(test),
                "substitute_success_rate": crafted.success_rate}
        result = finish(model, Problem(test, y_test, None, classes), crafted.adversarial, info, logits=scores)
    correct = test_pred == y_test
    rate = float(result.success[correct].float().mean()) if correct.any() else math.nan
    return SubstituteResult(substitute=net, result=result, transfer_rate=rate,
                            agreement=history[-1]["agreement"], queries=len(x) + 2 * len(test), inputs=x, labels=y,
                            history=history, info=info)
