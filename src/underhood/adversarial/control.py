"""Controls and evaluation: random perturbations, the linear-model demonstration, robustness curves.

An attack's success means little without its controls: random perturbations as large as the
adversarial one (or twice as large, as in the EE-559 lecture) should not change the label, and
accuracy should be measured across budgets, not at one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.batching import batches, resolve_batch_size
from ..core.errors import InputError
from ..core.inputs import check_inputs
from ..core.seeding import generator
from .base import (
    AttackResult,
    Labels,
    attacking,
    check_box,
    check_eps,
    check_norm,
    check_number,
    check_positive_int,
    finish,
    parse_eps,
    setup,
)

BLOCK = 64  # random directions are drawn in blocks of this many, whatever the batch size
NORM_OPTION = ("pgd", "noise", "deepfool")  # attacks with a ``norm`` option
BUILT_IN = ("gradient_ascent", "fgsm", "pgd", "noise", "deepfool", "cw", "lbfgs")


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


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
            delta = d * _col(eps / d.flatten(1).norm(dim=1).clamp_min(1e-12))
        info = {"method": "noise", "eps": eps, "norm": norm, "seed": seed}
        return finish(model, p, (p.x + delta.to(p.x)).clamp(0, 1), info)


@dataclass
class ControlResult:
    """The random-sphere control of an attack (see :func:`random_control`).

    Attributes:
        changed: ``[N]`` share of the ``n`` random perturbations that changed the sample's class.
        share: the share over all samples and draws.
        radius: ``[N]`` sphere radius, ``factor * ||x - x_adv||_2``.
        clipped: ``[N]`` mean L2 norm of the random perturbations after clipping to the box.
        labels: ``[N]`` the clean predictions the draws are compared with.
        info: ``n``, ``factor``, ``seed``.
    """

    changed: torch.Tensor
    share: float
    radius: torch.Tensor
    clipped: torch.Tensor
    labels: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


def random_control(model: nn.Module, inputs: torch.Tensor, adversarial: torch.Tensor | AttackResult, *,
                   n: int = 1000, factor: float = 2.0, seed: int = 0, batch_size: int | str | None = None,
                   progress: bool = False) -> ControlResult:
    """The lecture's control: do random perturbations twice as large as the adversarial one change the label?

    For each sample, ``n`` points ``x + factor * ||x - x_adv||_2 * u`` with ``u`` uniform on the
    unit L2 sphere (a normalised Gaussian), clipped to ``[0, 1]``, are classified and compared
    with the clean prediction. Fleuret's EE-559 lecture reports no change of label over 1,000
    such draws at ``factor = 2``: adversarial directions are special, not merely large. Every
    sample sees the same seeded directions (drawn in blocks of :data:`BLOCK`), so the result does
    not depend on ``batch_size``.

    Args:
        adversarial: the adversarial inputs ``[N, C, H, W]``, or an :class:`AttackResult`.

    Returns:
        :class:`ControlResult`.

    Example:
        >>> r = pgd(model, x)                                     # doctest: +SKIP
        >>> random_control(model, x, r, n=1000).share              # doctest: +SKIP
    """
    n = check_positive_int("n", n)
    factor = check_number("factor", factor)
    adv = adversarial.adversarial if isinstance(adversarial, AttackResult) else adversarial
    x = check_box(check_inputs(model, inputs))
    adv = check_box(check_inputs(model, adv, "adversarial"), "adversarial")
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
        ref = torch.cat([model(x[s]).argmax(1) for s in batches(len(x), size)])
        for start in tqdm(range(0, n, BLOCK), desc="random control", disable=not progress, leave=False):
            b = min(BLOCK, n - start)
            u = torch.randn((b, *shape), generator=g)
            u = (u / _col(u.flatten(1).norm(dim=1))).to(x)
            for part in batches(len(x) * b, size):
                k = torch.arange(part.start, part.stop, device=x.device)
                i, j = k // b, k % b
                copies = (x[i] + _col(radius[i]) * u[j]).clamp(0, 1)
                changed.index_add_(0, i, (model(copies).argmax(1) != ref[i]).float())
                clipped.index_add_(0, i, (copies - x[i]).flatten(1).norm(dim=1))
    changed, clipped = changed / n, clipped / n
    return ControlResult(changed=changed, share=float(changed.mean()), radius=radius, clipped=clipped, labels=ref,
                         info={"n": n, "factor": factor, "seed": seed})


# ---------------------------------------------------------------------------- the linear demonstration


@dataclass
class LinearDemo:
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
    reg = check_number("regularization", regularization, strict=True)
    confidence = check_number("confidence", confidence)
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


# ---------------------------------------------------------------------------- robustness curves


@dataclass
class RobustnessCurve:
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


def _data(model: nn.Module, data: Any, labels: Labels) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data[0], data[1] if labels is None else labels
    else:
        images = getattr(data, "images", data)
        labels = getattr(data, "labels", None) if labels is None else labels
    if not isinstance(images, torch.Tensor):
        raise InputError(f"data: expected an ImageSet, an (images, labels) pair or an [N, C, H, W] tensor, "
                         f"got {type(data).__name__}")
    x = check_box(check_inputs(model, images, "data"), "data")
    return x, None if labels is None else torch.as_tensor(labels).to(x.device).long().flatten()


def _attack(attack: str | Callable[..., AttackResult]) -> tuple[Callable[..., AttackResult], str, bool]:
    """``(function, name, whether it is a minimal-norm attack)``; attacks without a budget are refused."""
    from . import MINIMAL, get  # the registry lives in the package, which imports this module

    fn = get(attack)
    name = getattr(fn, "__name__", str(attack))
    if name in ("gradient_ascent", "one_pixel"):
        raise InputError(f"attack: {name} has no budget to sweep; use pgd, fgsm, noise or a minimal-norm "
                         "attack (deepfool, cw, lbfgs)")
    return fn, name, name in MINIMAL


def _norm_option(name: str, norm: str | None, options: dict[str, Any], default: str) -> str:
    """The norm of the budgets; put into ``options`` for attacks that take one (and for callables given one)."""
    given = norm if norm is not None else options.get("norm")
    norm = check_norm(given if given is not None else default)
    if name in NORM_OPTION or (given is not None and name not in BUILT_IN):
        options["norm"] = norm
    elif norm != default:
        raise InputError(f"norm: {name} works in the {default} norm only, got {given!r}")
    return norm


def robustness_curve(model: nn.Module, data: Any, attack: str | Callable[..., AttackResult] = "pgd",
                     eps_list: Sequence[float | str] | None = None, *, labels: Labels = None,
                     norm: str | None = None, batch_size: int | str | None = None, seed: int = 0,
                     progress: bool = False, **options: Any) -> RobustnessCurve:
    """Accuracy against the attack budget, over a dataset.

    A budgeted attack (``"pgd"``, ``"fgsm"``, ``"noise"``, or a callable taking ``eps``) runs
    once per budget in ``eps_list`` (``eps = 0`` is the clean accuracy, not attacked). A
    minimal-norm attack (``"deepfool"``, ``"cw"``, ``"lbfgs"``) runs once: each sample's
    minimal adversarial norm ``d_i`` gives the whole curve, ``accuracy(e) = mean(d_i > e)``,
    at ``eps_list`` or, when it is ``None``, at every distinct ``d_i`` (a step curve).

    Args:
        data: an ImageSet, an ``(images, labels)`` pair, or images (labels: the clean predictions).
        attack: a name from :data:`underhood.adversarial.ATTACKS` or a callable with the attack
            signature ``attack(model, inputs, labels, *, eps=..., seed=..., **options)``.
        norm: the norm of ``eps``: the attack's ``norm`` option (default ``"linf"`` for budgeted
            attacks, ``"l2"`` for minimal ones).
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

    fn, name, minimal = _attack(attack)
    norm = _norm_option(name, norm, options, default="l2" if minimal else "linf")
    x, y = _data(model, data, labels)
    size = resolve_batch_size(batch_size, model, tuple(x.shape[1:]), grad=True)
    chunks = list(batches(len(x), size))
    with attacking(model), torch.no_grad():
        clean_pred = torch.cat([model(x[s]).argmax(1) for s in chunks])
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


@dataclass
class TransferMatrix:
    """How adversarial examples crafted on one model fool others.

    Attributes:
        names: the models' names (rows: source, columns: target).
        accuracy: ``[S, S]``: accuracy of model ``j`` on the adversarial inputs crafted on model
            ``i``; the diagonal is white-box robust accuracy.
        clean: ``[S]`` each model's clean accuracy.
        attack: the attack's name; ``eps``, ``norm``: its budget.
        info: seed, batch size, attack options.
    """

    names: list[str]
    accuracy: torch.Tensor
    clean: torch.Tensor
    attack: str
    eps: float | None
    norm: str
    info: dict[str, Any] = field(default_factory=dict)


def transfer_matrix(models: Mapping[str, nn.Module] | Sequence[nn.Module], data: Any,
                    attack: str | Callable[..., AttackResult] = "pgd", *, eps: float | str = 8 / 255,
                    labels: Labels = None, norm: str | None = None, batch_size: int = 64, seed: int = 0,
                    progress: bool = False, **options: Any) -> TransferMatrix:
    """Black-box transfer (Szegedy et al. 2014; Papernot et al. 2016): attack each model, score every model.

    Each source model is attacked on ``data`` (chunks of ``batch_size``, the same ``seed``); every
    model then classifies those adversarial inputs. Models must take the same inputs. A
    minimal-norm attack ignores ``eps``.

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
    batch_size = check_positive_int("batch_size", batch_size)
    fn, name, minimal = _attack(attack)
    norm = _norm_option(name, norm, options, default="l2" if minimal else "linf")
    first = next(iter(named.values()))
    x, y = _data(first, data, labels)
    chunks = list(batches(len(x), batch_size))

    def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with attacking(model), torch.no_grad():
            return torch.cat([model(images[s].to(x.device)).argmax(1) for s in chunks])

    if y is None:
        y = predict(first, x)
    budget = {} if minimal else {"eps": check_eps(eps, norm, tuple(x.shape[1:]))}
    clean = torch.tensor([float((predict(m, x) == y).float().mean()) for m in named.values()])
    rows = []
    for source in tqdm(list(named.values()), desc=f"{name} transfer", disable=not progress, leave=False):
        adv = torch.cat([fn(source, x[s], y[s], seed=seed, **budget, **options).adversarial for s in chunks])
        rows.append([float((predict(m, adv) == y).float().mean()) for m in named.values()])
    return TransferMatrix(names=list(named), accuracy=torch.tensor(rows), clean=clean, attack=name,
                          eps=budget.get("eps"), norm=norm,
                          info={"seed": seed, "batch_size": batch_size, "options": dict(options), "n": len(x)})
