"""Controls: random perturbations and the linear-model demonstration.

An attack's success means little without its controls: random perturbations as large as the
adversarial one (or twice as large, as in the EE-559 lecture) should not change the label.
Accuracy across budgets and across models: :mod:`underhood.adversarial.evaluation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.batching import batches, logits, resolve_batch_size
from ..core.checks import number, parse_eps, positive_int
from ..core.errors import InputError
from ..core.inputs import check_inputs
from ..core.results import Result
from ..core.seeding import generator
from .base import AttackResult, Labels, attacking, check_eps, check_norm, col, finish, setup

BLOCK = 64  # random directions are drawn in blocks of this many, whatever the batch size


# ---------------------------------------------------------------------------- random perturbations


def noise(model: nn.Module, inputs: torch.Tensor, labels: Labels = None, *, eps: float | str = 8 / 255,
          norm: str = "linf", seed: int = 0) -> AttackResult:
    """Random noise of the attack's size: the baseline an attack must beat.

    L-inf: ``eps * s`` with independent random signs ``s`` (a random corner of the cube, the
    largest L-inf noise); L2: a uniformly random direction scaled to length ``eps``. Clipped to
    the box and seeded with ``seed``. Costs one forward pass (plus the clean one when
    ``labels`` is None).

    Returns:
        :class:`AttackResult` with ``info["method"] == "noise"``.

    Example:
        >>> noise(model, x, y, eps=8/255).accuracy      # doctest: +SKIP
    """
    norm = check_norm(norm)
    with attacking(model):
        p = setup(model, inputs, labels)
        eps = check_eps(eps, norm, tuple(p.x.shape[1:]))
        g = generator(seed)
        if norm == "linf":
            delta = (torch.randint(0, 2, p.x.shape, generator=g) * 2 - 1).float() * eps
        else:
            d = torch.randn(p.x.shape, generator=g)
            delta = d * col(eps / d.flatten(1).norm(dim=1).clamp_min(1e-12))
        info = {"method": "noise", "eps": eps, "norm": norm, "seed": seed}
        return finish(model, p, (p.x + delta.to(p.x)).clamp(0, 1), info)


@dataclass(repr=False)
class ControlResult(Result):
    """The random-sphere control of an attack (see :func:`random_control`).

    Attributes:
        changed: ``[N]`` share of the ``n`` random perturbations that changed the sample's class.
        share: the share over all samples and draws.
        radius: ``[N]`` sphere radius, ``factor * ||x - x_adv||_2``.
        clipped: ``[N]`` mean L2 norm of the random perturbations after clipping to the box (``radius``
            itself with ``clip=False``).
        labels: ``[N]`` the clean predictions the draws are compared with.
        info: ``n``, ``factor``, ``seed``, ``clip``.
    """

    changed: torch.Tensor
    share: float
    radius: torch.Tensor
    clipped: torch.Tensor
    labels: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> torch.Tensor:
        """``[N]`` how many of the ``n`` draws changed each sample's class (the lecture reports 0 of 1,000)."""
        return (self.changed * self.info["n"]).round().long()

    def scalars(self) -> dict[str, Any]:
        """The share of draws that changed the class, the samples and draws, the radius factor and seed."""
        return {"share": self.share, "samples": len(self.changed), "n": self.info.get("n"),
                "factor": self.info.get("factor"), "median_radius": float(self.radius.median()),
                "seed": self.info.get("seed")}


def random_control(model: nn.Module, inputs: torch.Tensor, adversarial: torch.Tensor | AttackResult, *,
                   n: int = 1000, factor: float = 2.0, seed: int = 0, batch_size: int | str | None = None,
                   progress: bool = False, clip: bool = True) -> ControlResult:
    """The lecture's control: do random perturbations twice as large as the adversarial one change the label?

    For each sample, ``n`` points ``x + factor * ||x - x_adv||_2 * u`` with ``u`` uniform on the
    unit L2 sphere (a normalised Gaussian), clipped to ``[0, 1]``, are classified and compared
    with the clean prediction. Fleuret's EE-559 lecture reports no change of label over 1,000
    such draws at ``factor = 2``: adversarial directions are special, not merely large. Every
    sample sees the same seeded directions (drawn in blocks of :data:`BLOCK`), so the result does
    not depend on ``batch_size``. ``clip=False`` keeps the points on the sphere exactly, as the
    lecture states the control (its inputs were normalised, without a box): they may leave ``[0, 1]``.
    The directions are :func:`directions` ``(n, shape, seed=seed)``.

    Args:
        adversarial: the adversarial inputs ``[N, C, H, W]``, or an :class:`AttackResult`.
        clip: clip the points to the pixel box ``[0, 1]`` (default) or not.

    Returns:
        :class:`ControlResult`.

    Example:
        >>> r = pgd(model, x)                                     # doctest: +SKIP
        >>> random_control(model, x, r, n=1000).share              # doctest: +SKIP
    """
    n = positive_int("n", n)
    factor = number("factor", factor)
    adv = adversarial.adversarial if isinstance(adversarial, AttackResult) else adversarial
    x = check_inputs(model, inputs)
    adv = check_inputs(model, adv, "adversarial")
    if adv.shape != x.shape:
        raise InputError(f"adversarial: shape {tuple(adv.shape)} differs from the inputs' {tuple(x.shape)}; "
                         "give one adversarial image per input")
    from tqdm.auto import tqdm

    shape = tuple(x.shape[1:])
    radius = factor * (adv - x).flatten(1).norm(dim=1)
    changed, clipped = torch.zeros(len(x), device=x.device), torch.zeros(len(x), device=x.device)
    g = generator(seed)
    with attacking(model), torch.no_grad():
        size = resolve_batch_size(batch_size, model, shape)
        ref = logits(model, x, size).argmax(1)
        for start in tqdm(range(0, n, BLOCK), desc="random control", disable=not progress, leave=False):
            b = min(BLOCK, n - start)
            u = _unit(b, shape, g).to(x)
            for part in batches(len(x) * b, size):
                k = torch.arange(part.start, part.stop, device=x.device)
                i, j = k // b, k % b
                copies = x[i] + col(radius[i]) * u[j]
                copies = copies.clamp(0, 1) if clip else copies
                changed.index_add_(0, i, (model(copies).argmax(1) != ref[i]).float())
                clipped.index_add_(0, i, (copies - x[i]).flatten(1).norm(dim=1))
    changed, clipped = changed / n, clipped / n
    return ControlResult(changed=changed, share=float(changed.mean()), radius=radius, clipped=clipped, labels=ref,
                         info={"n": n, "factor": factor, "seed": seed, "clip": bool(clip)})


def _unit(b: int, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """``b`` directions uniform on the unit L2 sphere of ``shape`` (normalised Gaussians), drawn on the CPU."""
    u = torch.randn((b, *shape), generator=g)
    return u / col(u.flatten(1).norm(dim=1))


def directions(n: int, shape: tuple[int, ...], *, seed: int = 0) -> torch.Tensor:
    """``[n, *shape]`` the unit directions :func:`random_control` draws with ``seed`` (blocks of :data:`BLOCK`),
    to inspect or replay its control: sample ``i``'s draw ``j`` is ``x_i + radius_i * directions[j]``."""
    n = positive_int("n", n)
    g = generator(seed)
    return torch.cat([_unit(min(BLOCK, n - s), tuple(shape), g) for s in range(0, n, BLOCK)])


# ---------------------------------------------------------------------------- the linear demonstration


@dataclass(repr=False)
class LinearDemo(Result):
    """A logistic regression ``p(class 1 | x) = sigmoid(w . x + b)`` and one step along ``sign(w)``.

    Attributes:
        x, x_adv: ``[D]`` the input and ``x - sign(score) * eps * sign(w)`` (clipped to the box
            when ``box`` is set).
        w: ``[D]`` weights; ``b`` the bias.
        eps: the L-inf step.
        score, score_adv: ``w . x + b`` before and after.
        prob, prob_adv: ``sigmoid(score)`` before and after (probability of class 1).
        eps_needed: the smallest step that reaches the decision boundary.
        image_shape: ``(C, H, W)`` to draw ``x``, ``x_adv`` and ``w`` as images, or ``None``.
        classes: names of class 0 and class 1.
        box: the pixel range, or ``None`` (the lecture's example has no box).
        model: an ``nn.Module`` with logits ``[0, w . x + b]`` (same probabilities) on
            ``[N, *image_shape]`` inputs, to run the attacks on.
        info: provenance (data, accuracy, sample index).
    """

    x: torch.Tensor
    x_adv: torch.Tensor
    w: torch.Tensor
    b: float
    eps: float
    score: float
    score_adv: float
    prob: float
    prob_adv: float
    eps_needed: float
    image_shape: tuple[int, ...] | None
    classes: tuple[str, str]
    box: tuple[float, float] | None
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        """Number of input dimensions ``D``: the larger, the smaller the step that flips (Goodfellow et al.)."""
        return len(self.w)

    def scalars(self) -> dict[str, Any]:
        """The probabilities of class 1 before and after the step, the step, the smallest step that flips,
        and the dimension."""
        return {"prob": self.prob, "prob_adv": self.prob_adv, "eps": self.eps, "eps_needed": self.eps_needed,
                "dims": self.dims, "classes": " vs ".join(self.classes)}

    def figure(self, **kwargs: Any):
        """Input, step and stepped input as images (:func:`underhood.viz.adversarial.linear_figure`; ``kwargs``
        go to it); only for a demo with an ``image_shape`` (:func:`linear_demo`, not the lecture's vector)."""
        from ..viz.adversarial import linear_figure

        if self.image_shape is None:
            raise InputError("figure: this demonstration has no image shape (the lecture's 10-d vector); "
                             "use linear_demo() for images")
        return linear_figure(self, **kwargs)


def _linear_model(w: torch.Tensor, b: float, shape: tuple[int, ...]) -> nn.Module:
    linear = nn.Linear(len(w), 2)
    with torch.no_grad():
        linear.weight.copy_(torch.stack([torch.zeros_like(w), w]).float())
        linear.bias.copy_(torch.tensor([0.0, b]))
    return nn.Sequential(nn.Flatten(), linear) if len(shape) > 1 else linear


def _step(x: torch.Tensor, w: torch.Tensor, b: float, eps: float, box: tuple[float, float] | None) -> torch.Tensor:
    """``x`` moved by ``eps`` along ``-sign(score) sign(w)``: towards the other class."""
    score = float(w @ x + b)
    out = x - math.copysign(1.0, score) * eps * w.sign()
    return out.clamp(*box) if box is not None else out


def _demo(x: torch.Tensor, w: torch.Tensor, b: float, eps: float | None, box: tuple[float, float] | None,
          shape: tuple[int, ...] | None, classes: tuple[str, str], info: dict[str, Any]) -> LinearDemo:
    score = float(w @ x + b)
    if box is None:
        needed = abs(score) / float(w.abs().sum())
    else:  # the score moves monotonically with the step, clipped or not: bisect for the boundary
        lo, hi = 0.0, float(box[1] - box[0])
        for _ in range(60):
            mid = (lo + hi) / 2
            crossed = math.copysign(1.0, float(w @ _step(x, w, b, mid, box) + b)) != math.copysign(1.0, score)
            lo, hi = (lo, mid) if crossed else (mid, hi)
        needed = hi
    if eps is None:  # just enough: the next 1/255 above the boundary
        eps = math.floor(needed * 255 + 1) / 255
    x_adv = _step(x, w, b, eps, box)
    score_adv = float(w @ x_adv + b)
    sig = lambda s: 1.0 / (1.0 + math.exp(-s))  # noqa: E731
    return LinearDemo(x=x, x_adv=x_adv, w=w, b=b, eps=eps, score=score, score_adv=score_adv, prob=sig(score),
                      prob_adv=sig(score_adv), eps_needed=needed, image_shape=shape, classes=classes, box=box,
                      model=_linear_model(w, b, shape or (len(w),)), info=info)


def lecture_example() -> LinearDemo:
    """The ten-dimensional example of the lectures (Karpathy's "Breaking linear classifiers").

    ``x = [2, -1, 3, -2, 2, 2, 1, -4, 5, 1]``, ``w = [-1, -1, 1, -1, 1, -1, 1, 1, -1, 1]``,
    ``b = 0``: the score is -3 (``p = 0.047``); a step of 0.5 along ``sign(w)`` raises it to 2
    (``p = 0.88``). No box.
    """
    x = torch.tensor([2.0, -1, 3, -2, 2, 2, 1, -4, 5, 1], dtype=torch.float64)
    w = torch.tensor([-1.0, -1, 1, -1, 1, -1, 1, 1, -1, 1], dtype=torch.float64)
    return _demo(x, w, 0.0, 0.5, None, None, ("class 0", "class 1"), {"data": "lecture"})


def linear_demo(*, classes: tuple[int, int] = (4, 9), confidence: float = 0.99, eps: float | str | None = None,
                size: int = 32, regularization: float = 10.0) -> LinearDemo:
    """Logistic regression on two digits: a step of a few grey levels along ``sign(w)`` flips a confident prediction.

    Trains scikit-learn's ``LogisticRegression`` (``C = regularization``, the inverse strength
    of its L2 penalty; lbfgs solver, deterministic) on the training split of the bundled digits
    (``size x size`` pixels in ``[0, 1]``), ``classes[0]`` (class 0) against ``classes[1]``
    (class 1). Of the test images of ``classes[0]`` classified with probability at least
    ``confidence``, it takes the least confident one (the most confident one if none reaches
    it), and steps it by ``eps`` along ``sign(w)``, clipped to the box. ``eps=None`` picks the
    next 1/255 above :attr:`LinearDemo.eps_needed`. The step changes the score by up to
    ``eps * ||w||_1``, which grows with the dimension: Goodfellow et al.'s linearity
    explanation of adversarial examples.

    Example:
        >>> d = linear_demo()
        >>> d.prob < 0.01 and d.prob_adv > 0.5
        True
    """
    from sklearn.linear_model import LogisticRegression

    from ..data import digits

    a, b_ = classes
    if a == b_ or not all(isinstance(c, int) and 0 <= c <= 9 for c in classes):
        raise InputError(f"classes: expected two different digits 0..9, got {classes!r}")
    reg = number("regularization", regularization, strict=True)
    confidence = number("confidence", confidence)
    if confidence >= 1:
        raise InputError(f"confidence: expected a probability below 1, got {confidence!r}")
    train, test = digits(split="train", size=size), digits(split="test", size=size)

    def pick(data):
        keep = (data.labels == a) | (data.labels == b_)
        return data.images[keep].flatten(1).double(), (data.labels[keep] == b_).long()

    xt, yt = pick(train)
    clf = LogisticRegression(C=reg, max_iter=5000).fit(xt.numpy(), yt.numpy())
    w = torch.from_numpy(clf.coef_[0]).double()
    bias = float(clf.intercept_[0])
    xs, ys = pick(test)
    scores = xs @ w + bias
    accuracy = float(((scores > 0).long() == ys).double().mean())
    p0 = torch.sigmoid(-scores)  # probability of class 0
    sure = (ys == 0) & (p0 >= confidence)
    if sure.any():
        index = int(torch.where(sure, p0, torch.inf).argmin())
    else:
        index = int(torch.where(ys == 0, p0, -torch.inf).argmax())
    info = {"data": "digits", "size": size, "train": len(xt), "test_accuracy": accuracy, "test_index": index,
            "regularization": reg, "confidence": confidence}
    return _demo(xs[index], w, bias, None if eps is None else parse_eps(eps), (0.0, 1.0), (1, size, size),
                 (str(a), str(b_)), info)
