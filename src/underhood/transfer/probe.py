"""Linear probes (Alain & Bengio 2016): how much of the task each layer's frozen features already solve.

For every layer, a multinomial logistic regression is fitted on the layer's pooled, standardised
activations of a training set and scored on a held-out set. Accuracy rising with depth shows the
classes untangling; the same probe on a randomly re-initialised copy of the network, and on the
raw pixels, says how much of that the training put there (Yosinski et al. 2014's "general to
specific" read from the other side).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import batches, logits, resolve_batch_size, stream
from ..core.checks import choice, number, positive_int
from ..core.device import model_device, threads
from ..core.errors import InputError, UnderhoodError
from ..core.inputs import dataset_images
from ..core.layers import last_hidden, stages
from ..core.layers import layers as layer_table
from ..core.layout import infer, to_nchw
from ..core.names import named_layers, resolve
from ..core.randomize import randomized_copy
from ..core.results import Result

PIXELS = "pixels"
"""The layer name of the raw input: the image average-pooled to ``PIXEL_GRID x PIXEL_GRID`` and flattened."""
PIXEL_GRID = 8
POOLS = ("avg", "max", "flatten")
BASELINES = ("pixels", "random")
L2 = 1e-3
"""Default L2 weight on the probe's weights, against the *mean* cross-entropy: sklearn's ``C = 1 / (l2 * n)``."""
MIN_PER_CLASS = 2
ONE_THREAD_UP_TO = 1 << 20
"""Fits on CPU features of at most this many values run on one thread: their hundreds of small steps lose
far more waiting for a second thread than they gain (on a busy 2-core machine, 30-70x)."""
MAX_ITER = 500


@dataclass(repr=False)
class ProbeResult(Result):
    """What :func:`probe` measured: held-out accuracy of a linear classifier on each layer's frozen features.

    Attributes:
        accuracy: ordered layer -> held-out accuracy in ``[0, 1]``; ``"pixels"`` first when that baseline ran,
            then the model's layers from the input to the output.
        random: the same for a randomly re-initialised copy of the model (its layers only, not ``"pixels"``,
            which has no weights); empty without the ``"random"`` baseline.
        pixels: accuracy on the raw pixels (``None`` without that baseline).
        model_accuracy: the model's own accuracy on the test set, when its classes are the labels' classes
            (``model.classes == train.classes``); else ``None``.
        chance: the share of the test set's most frequent class (what always guessing it scores).
        layers: the model's layers probed, in order (``"pixels"`` not included).
        rf: layer -> receptive field label (``"4"``, ``"34"``, ``"global"``), where the layer table knows it.
        pool: how a feature map became a vector (``"avg"``, ``"max"``, ``"flatten"``).
        l2: the L2 weight of the fit; n_train, n_test: the images; classes: the label names.
        info: the fits' iterations and final losses per layer, the seed of the random copy.
    """

    accuracy: dict[str, float]
    random: dict[str, float]
    pixels: float | None
    model_accuracy: float | None
    chance: float
    layers: list[str]
    rf: dict[str, str] = field(default_factory=dict)
    pool: str = "avg"
    l2: float = L2
    n_train: int = 0
    n_test: int = 0
    classes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.accuracy = OrderedDict(self.accuracy)
        self.random = OrderedDict(self.random)

    def scalars(self) -> dict:
        """The size, the baselines and per layer the probe's accuracy (``accuracy[layer]``, ``random[layer]``)."""
        out: dict = {"pool": self.pool, "n_train": self.n_train, "n_test": self.n_test, "chance": self.chance,
                     "pixels": self.pixels, "model_accuracy": self.model_accuracy}
        for name in self.layers:
            out[f"accuracy[{name}]"] = self.accuracy.get(name)
            if name in self.random:
                out[f"random[{name}]"] = self.random[name]
        return out

    def figure(self, **kwargs):
        """Probe accuracy against depth (:func:`underhood.viz.transfer.probe_figure`; ``kwargs`` go to it)."""
        from ..viz.transfer import probe_figure

        return probe_figure(self, **kwargs)


# --- the fit --------------------------------------------------------------------------------------------------

def logistic_regression(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = L2,
                        max_iter: int = MAX_ITER) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Multinomial logistic regression fitted to convergence with full-batch L-BFGS (strong Wolfe line search).

    Minimises ``mean_i CE(x_i W + b, y_i) + l2 / 2 * ||W||_F^2`` (the bias is not penalised), which is
    scikit-learn's ``LogisticRegression(C=1 / (l2 * n))`` objective divided by ``C * n``: the same
    minimiser. Runs on ``x``'s device, in its dtype.

    Args:
        x: ``[n, d]`` features (standardise them first: the L2 weight assumes comparable scales).
        y: ``[n]`` long labels in ``[0, n_classes)``.

    Returns:
        ``(W [d, n_classes], b [n_classes], {"iterations", "loss"})``, detached.

    Example:
        >>> W, b, fit = logistic_regression(torch.randn(100, 5), torch.randint(0, 3, (100,)), 3)
        >>> W.shape, b.shape
        (torch.Size([5, 3]), torch.Size([3]))
    """
    W = torch.zeros(x.shape[1], n_classes, device=x.device, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(n_classes, device=x.device, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ W + b, y) + 0.5 * l2 * W.pow(2).sum()
        loss.backward()
        return loss

    small = x.device.type == "cpu" and x.numel() <= ONE_THREAD_UP_TO  # threads only wait on a small fit
    with torch.enable_grad(), threads(1) if small else contextlib.nullcontext():
        opt.step(closure)
    iterations = int(opt.state[W]["n_iter"])
    W, b = W.detach(), b.detach()
    loss = F.cross_entropy(x @ W + b, y) + 0.5 * l2 * W.pow(2).sum()
    return W, b, {"iterations": iterations, "loss": float(loss)}


def _fit_and_score(train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor, y_test: torch.Tensor,
                   n_classes: int, l2: float) -> tuple[float, dict[str, float]]:
    """Standardise with the train statistics, fit, and return the held-out accuracy (and the fit's figures)."""
    train, test = train.float(), test.float()
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))  # constant features
    W, b, fit = logistic_regression((train - mean) / std, y_train, n_classes, l2=l2)
    hits = (((test - mean) / std) @ W + b).argmax(1) == y_test
    return float(hits.float().mean()), fit


# --- the features ---------------------------------------------------------------------------------------------

def _pool(a: torch.Tensor, pool: str, size: tuple[int, int], layer: str) -> torch.Tensor:
    """``[B, ...]`` -> ``[B, D]``: a feature map (NCHW, NHWC or tokens, read as ``[B, C, h, w]``) averaged or
    maxed over its positions, or flattened; a vector output as it is."""
    if a.ndim <= 2 or pool == "flatten":
        return a.flatten(1)
    lay = infer(a.shape, size, layer=layer)
    a = to_nchw(a, lay) if lay is not None else a
    return a.flatten(2).mean(2) if pool == "avg" else a.flatten(2).amax(2)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """The pixels row's features: the image averaged down to ``PIXEL_GRID x PIXEL_GRID`` per channel, flattened
    (a global average would keep only the mean colour; the full image would be 12,288 features at 64x64)."""
    return F.adaptive_avg_pool2d(x, PIXEL_GRID).flatten(1)


@torch.no_grad()
def _features(model: nn.Module, images: torch.Tensor, names: list[str], pool: str, batch_size: int,
              with_pixels: bool, progress: bool, desc: str) -> dict[str, torch.Tensor]:
    """One ``[N, D]`` matrix per layer (and ``"pixels"``), on the model's device, from one streamed pass."""
    size = (int(images.shape[-2]), int(images.shape[-1]))
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in ([PIXELS] if with_pixels else []) + names}
    if names:
        for part, acts in stream(model, names, images, batch_size, progress=progress, desc=desc):
            for n in names:
                parts[n].append(_pool(acts[n], pool, size, n).float())
            if with_pixels:
                parts[PIXELS].append(_pixels(images[part].to(acts[names[0]].device)))
    elif with_pixels:
        parts[PIXELS] = [_pixels(images[s].to(model_device(model))) for s in batches(len(images), batch_size)]
    return {n: torch.cat(p) for n, p in parts.items()}


# --- inputs ---------------------------------------------------------------------------------------------------

def _split(data: object, name: str, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """``(images, labels, class names or None)`` of an ImageSet or an ``(images, labels)`` pair, checked."""
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise InputError(f"{name}: expected an ImageSet or an (images, labels) pair, got {len(data)} items")
        images, labels, classes = data[0], data[1], None
    else:
        images, labels = data, getattr(data, "labels", None)
        classes = list(getattr(data, "classes", None) or []) or None
    images = dataset_images(images, model, name)
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or len(labels) != len(images) \
            or labels.is_floating_point() or labels.is_complex():
        raise InputError(f"{name}: expected one integer label per image ({len(images)}), got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}; give an ImageSet or (images, labels)")
    return images, labels.long(), classes


def _classes(train: tuple, test: tuple) -> list[str]:
    """The label names both sets share; labels out of range are an error that names the set."""
    given = train[2] or test[2]
    if train[2] and test[2] and train[2] != test[2]:
        raise InputError(f"test: its classes {test[2][:4]} differ from the training set's {train[2][:4]}; "
                         "probe on two splits of the same dataset")
    top = max(int(train[1].max()), int(test[1].max()))
    classes = given or [str(i) for i in range(top + 1)]
    for name, (_, y, _) in (("train", train), ("test", test)):
        if int(y.min()) < 0 or int(y.max()) >= len(classes):
            raise InputError(f"{name}: labels must lie in [0, {len(classes) - 1}] (one per class of {len(classes)}), "
                             f"got {int(y.min())}..{int(y.max())}; fix the labels or the class list")
    counts = torch.bincount(train[1].cpu(), minlength=len(classes))
    used = torch.bincount(test[1].cpu(), minlength=len(classes)) + counts > 0
    few = [(classes[i], int(counts[i])) for i in range(len(classes)) if used[i] and counts[i] < MIN_PER_CLASS]
    if few or int((counts > 0).sum()) < 2:
        what = f"class {few[0][0]!r} has {few[0][1]} training image(s)" if few else "only one class is present"
        raise InputError(f"train: {what}; a probe needs at least {MIN_PER_CLASS} images of each of at least two "
                         "classes: give a bigger training set (e.g. shapes:2000)")
    return classes


def _layers(model: nn.Module, layers: Sequence[str] | str | None) -> list[str]:
    """The model's layers to probe: the ones given (checked, duplicates once), else its stages and last hidden layer."""
    if layers is None:
        names = list(stages(model))
        hidden = last_hidden(model)
        mods = named_layers(model)
        # the last hidden layer when it adds something: a global pool of the last stage is that stage, pooled
        if hidden not in names and not isinstance(mods.get(hidden), (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            names.append(hidden)
        return names
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"layers: expected layer names (str), got {layers!r}; see `underhood layers`")
    for n in names:
        if n != PIXELS:
            resolve(model, n)  # an unknown name fails here, with close matches
    return [n for n in dict.fromkeys(names) if n != PIXELS]


def _receptive_fields(model: nn.Module, size: Sequence[int], names: list[str]) -> dict[str, str]:
    try:
        rows = {r.name: r for r in layer_table(model, input_size=tuple(int(v) for v in size))}
    except UnderhoodError:  # a model the tracer cannot follow: the figure goes without
        return {}
    return {n: rows[n].rf_size for n in names if n in rows}


# --- the probe ------------------------------------------------------------------------------------------------

def probe(model: nn.Module, train: object, test: object, *, layers: Sequence[str] | str | None = None,
          pool: str = "avg", baselines: Sequence[str] = BASELINES, l2: float = L2, seed: int = 0,
          batch_size: int | str | None = None, progress: bool = False) -> ProbeResult:
    """Linear probes (Alain & Bengio 2016): held-out accuracy of a logistic regression on each layer's features.

    Each layer's output is pooled into one vector per image (``pool="avg"``: channel means of a feature
    map; ``"max"``: channel maxima; ``"flatten"``: every value), standardised with the training set's mean
    and std, and a multinomial logistic regression with L2 weight ``l2`` is fitted to convergence with
    L-BFGS (:func:`logistic_regression`); its accuracy on ``test`` is the layer's score. The model is
    frozen: it runs in eval mode without gradients, one streamed pass per image set for all layers at
    once (only the pooled features are kept), and is left as it was found.

    Baselines: ``"pixels"`` probes the raw input averaged down to 8x8 per channel (192 features for RGB;
    a global average would keep only the mean colour); ``"random"`` probes a copy of the model with every
    layer re-initialised (``reset_parameters``, seeded by ``seed``): what the architecture alone gives.

    Args:
        model: any module taking ``[N, C, H, W]`` pixels in ``[0, 1]``.
        train, test: ImageSets, or ``(images, labels)`` pairs; the labels are the classes the probe learns
            (any labelling: the model's own classes, or a new task).
        layers: layer names (dotted paths); default: the model's stages (:func:`underhood.core.layers.stages`),
            plus its last hidden layer when that is not a global pool of the last stage.
        l2: weight of ``l2 / 2 * ||W||^2`` against the mean cross-entropy.

    Returns:
        A :class:`ProbeResult` (``.accuracy``, ``.random``, ``.pixels``, ``.model_accuracy``, ``.figure()``).

    Example:
        >>> model = underhood.load_model("shapes")                                     # doctest: +SKIP
        >>> r = probe(model, shapes(2000, seed=1), underhood.datasets.test_set("shapes", 1000))  # doctest: +SKIP
        >>> list(r.accuracy)                                                           # doctest: +SKIP
        ['pixels', 'features.3', 'features.10', 'features.17']
    """
    choice("pool", pool, POOLS)
    number("l2", l2)
    baselines = [baselines] if isinstance(baselines, str) else list(baselines or ())
    for b in baselines:
        choice("baselines", b, BASELINES)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed: expected an int, got {seed!r}")
    if batch_size not in (None, "auto"):
        positive_int("batch_size", batch_size)
    tr, te = _split(train, "train", model), _split(test, "test", model)
    classes = _classes(tr, te)
    names = _layers(model, layers)
    with_pixels = "pixels" in baselines or (layers is not None and PIXELS in ([layers] if isinstance(layers, str)
                                                                               else list(layers)))
    if not names and not with_pixels:
        raise InputError("layers: nothing to probe; name a layer or keep the 'pixels' baseline")
    size = resolve_batch_size(batch_size, model, tuple(tr[0].shape[1:]))
    device = model_device(model)
    y_train, y_test = tr[1].to(device), te[1].to(device)

    def run(net: nn.Module, pixels: bool, desc: str) -> tuple[dict[str, float], dict[str, dict]]:
        f_train = _features(net, tr[0], names, pool, size, pixels, progress, f"{desc} (train)")
        f_test = _features(net, te[0], names, pool, size, pixels, progress, f"{desc} (test)")
        scores, fits = OrderedDict(), {}
        for n in f_train:
            scores[n], fits[n] = _fit_and_score(f_train[n], y_train, f_test[n], y_test, len(classes), l2)
        return scores, fits

    accuracy, fits = run(model, with_pixels, "probe")
    random: dict[str, float] = OrderedDict()
    if "random" in baselines and names:
        random, random_fits = run(randomized_copy(model, seed=seed), False, "probe, random copy")
        fits = {**fits, **{f"random[{n}]": f for n, f in random_fits.items()}}
    own = None
    if list(getattr(model, "classes", None) or []) == classes:
        predicted = logits(model, te[0], size).argmax(1)
        own = float((predicted == y_test).float().mean())
    chance = float(torch.bincount(te[1].cpu(), minlength=len(classes)).max()) / len(te[1])
    return ProbeResult(accuracy=accuracy, random=random, pixels=accuracy.get(PIXELS), model_accuracy=own,
                       chance=chance, layers=names, rf=_receptive_fields(model, tr[0].shape[1:], names), pool=pool,
                       l2=float(l2), n_train=len(tr[0]), n_test=len(te[0]), classes=classes,
                       info={"seed": seed, "batch_size": size, "fits": fits})


__all__ = ["probe", "ProbeResult", "logistic_regression", "PIXELS", "POOLS", "BASELINES", "L2"]
