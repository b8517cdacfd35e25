"""Unit ablation and class selectivity (Morcos et al. 2018, "On the importance of single
directions for generalization").

A channel of a layer is *ablated* by replacing its output with 0 at every position. The
accuracy of the model is measured with each unit ablated alone and with units ablated
cumulatively in several orders: at random, most class-selective first, least first. Morcos
et al. found that class-selective units are no more important to the network than others.

Every ablated evaluation is exact and general (any model, any layer): each input runs up to the
layer once, a forward hook there expands the layer's output into ``M`` copies and multiplies each
by its ``0/1`` channel mask, so one forward pass evaluates ``M`` masks and the layers before the
ablated one are not re-run per mask (ablating a late layer costs little more than one pass).
Eval mode makes the copies independent (batch norm uses its running statistics), so the result
equals evaluating one mask at a time. Besides accuracy, the mean softmax probability of the true
class is measured: on a confident model, zeroing one unit rarely flips a decision but does move it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.batching import batches, resolve_batch_size
from ..core.device import model_device
from ..core.errors import InputError, LayerError
from ..core.hooks import capture, hooked
from ..core.inputs import dataset_images
from ..core.layers import resolve
from ..core.layout import infer
from ..core.results import Result
from ..core.seeding import generator
from .maps import feature_view

ORDERS = ("random", "selectivity", "selectivity-low")


@dataclass(repr=False)
class Ablation(Result):
    """What :func:`ablate` measured on ``n`` labelled inputs at ``layer``.

    Accuracies are fractions of the ``n`` inputs whose argmax logit is their label.

    Attributes:
        layer: the layer's name.
        n: number of inputs.
        n_classes: number of the model's outputs (chance accuracy is ``1 / n_classes``).
        units: ``[U]`` the channels that were ablated (all ``C`` channels unless restricted).
        baseline: accuracy of the intact model.
        single: ``[U]`` accuracy with only channel ``units[i]`` zeroed.
        selectivity: ``[C]`` class selectivity index of every channel (see :func:`class_selectivity`).
        curves: order -> accuracy after zeroing the first ``counts[j]`` units of that order
            (``curves[o][0] == baseline``).
        counts: ``[P]`` the numbers of units zeroed at which the curves are measured (``0..U`` unless
            ``points`` was given).
        order_units: order -> ``[U]`` the channels in the order they were zeroed (a permutation
            of ``units``).
        baseline_probability: the intact model's softmax probability of the true class, averaged
            over the inputs (it moves when accuracy does not: a unit can lower the confidence in
            the right answer without flipping any decision).
        single_probability: ``[U]`` the same with only channel ``units[i]`` zeroed.
    """

    layer: str
    n: int
    n_classes: int
    units: torch.Tensor
    baseline: float
    single: torch.Tensor
    selectivity: torch.Tensor
    curves: dict[str, torch.Tensor]
    order_units: dict[str, torch.Tensor]
    counts: torch.Tensor | None = None
    baseline_probability: float | None = None
    single_probability: torch.Tensor | None = None

    def scalars(self) -> dict:
        """Layer, sizes, the intact accuracy, the worst single-unit accuracy and each order's mean accuracy
        over its curve (lower: zeroing in that order hurts more)."""
        out = {"layer": self.layer, "n": self.n, "n_classes": self.n_classes, "units": len(self.units),
               "baseline": self.baseline, "worst_single": float(self.single.min()) if len(self.single) else None}
        out.update({f"mean[{order}]": float(curve.mean()) for order, curve in self.curves.items()})
        return out

    def figure(self, **kwargs):
        """The ablation figure (:func:`underhood.viz.ablation.ablation_figure`; ``kwargs`` go to it)."""
        from ..viz.ablation import ablation_figure

        return ablation_figure(self, **kwargs)


def _labelled(dataset: object, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        got = tuple(dataset.shape) if isinstance(dataset, torch.Tensor) else type(dataset).__name__
        raise InputError(f"dataset: expected a labelled ImageSet (images and labels), got {got}; "
                         "wrap images and labels in underhood.ImageSet(images, labels, classes)")
    if images.ndim != 4 or len(images) == 0 or labels.shape != (len(images),) or labels.is_floating_point():
        raise InputError(f"dataset: expected non-empty [N, C, H, W] images with [N] integer labels, got "
                         f"images {tuple(images.shape)} and labels {tuple(labels.shape)} {labels.dtype}")
    return dataset_images(images, model), labels.long().cpu()


@torch.no_grad()
def _class_means(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: str, size: int,
                 progress: bool) -> torch.Tensor:
    """``[K, C]`` float64 mean response (activation averaged over positions) of each present class."""
    from tqdm.auto import tqdm

    present, index = torch.unique(labels, return_inverse=True)
    device, sums = model_device(model), None
    with capture(model, layer, eval=True) as cap:
        for part in tqdm(list(batches(len(images), size)), desc="selectivity", disable=not progress, leave=False):
            model(images[part].to(device))
            if layer not in cap.activations:
                raise InputError(f"layer: {layer!r} did not run in forward; pick a layer that does")
            a = cap.activations[layer]
            if a.ndim < 2:
                raise LayerError(f"layer: {layer!r} outputs shape {tuple(a.shape)}; pick a layer with channels")
            a, _ = feature_view(a, tuple(images.shape[-2:]), layer)  # tokens / channels-last as [N, C, h, w]
            response = a.double().flatten(2).mean(2) if a.ndim > 2 else a.double()
            if sums is None:  # summed on the model's device: one copy to the host at the end
                sums = torch.zeros(len(present), response.shape[1], dtype=torch.float64, device=response.device)
            sums.index_add_(0, index[part].to(response.device), response)
            cap.clear()
    counts = torch.bincount(index, minlength=len(present)).double()
    return sums.cpu() / counts[:, None]


def class_selectivity(model: nn.Module, dataset: object, layer: str, *,
                      batch_size: int | str | None = None, progress: bool = False) -> torch.Tensor:
    """The class selectivity index of every channel of ``layer`` (Morcos et al. 2018), ``[C]``.

    A channel's response to an input is its activation averaged over positions (the value itself
    for a ``[N, C]`` layer). With ``mu_k`` its mean response over the inputs of class ``k``,
    ``mu_max = max_k mu_k`` and ``mu_-max`` the mean of the other classes' ``mu_k``::

        SI = (mu_max - mu_-max) / (mu_max + mu_-max)

    0 when the channel responds equally to every class, 1 when it responds to one class only.
    Only classes present in ``dataset.labels`` count (at least two are needed). A channel whose
    denominator is 0 (a dead unit) gets 0. The index assumes non-negative responses, as the paper's
    ReLU units are; it is computed on whatever ``layer`` outputs, with no ReLU applied for you
    (a hidden rectification would change which layer is measured). Name the ReLU's output
    (``"features.16"`` rather than the convolution ``"features.14"``): on a layer with negative
    class means the index leaves ``[0, 1]`` and a ``UserWarning`` says so.

    Example:
        >>> si = class_selectivity(model, underhood.datasets.shapes(512), "features.16")  # doctest: +SKIP
        >>> si.argsort(descending=True)[:5]                                                # doctest: +SKIP
    """
    images, labels = _labelled(dataset, model)
    resolve(model, layer)
    if len(torch.unique(labels)) < 2:
        raise InputError("dataset: labels hold a single class; class selectivity needs inputs of two or more classes")
    size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
    mu = _class_means(model, images, labels, layer, size, progress)
    return _selectivity(mu, layer)


def _selectivity(mu: torch.Tensor, layer: str) -> torch.Tensor:
    if bool((mu < 0).any()):
        warnings.warn(f"layer {layer!r} has negative mean responses, so class selectivity leaves [0, 1]; "
                      "Morcos et al. measure it after a ReLU: name the ReLU's output", UserWarning, stacklevel=3)
    top = mu.max(0).values
    rest = (mu.sum(0) - top) / (len(mu) - 1)
    denominator = top + rest
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return torch.where(denominator == 0, torch.zeros_like(top), (top - rest) / safe).float()


@contextlib.contextmanager
def _masked(model: nn.Module, layer: str) -> Iterator[dict]:
    """Eval mode and a forward hook multiplying ``layer``'s output by ``state["mask"]`` (``[rows, C]``);
    both undone on exit (:func:`underhood.core.hooks.hooked`). With ``state["expand"]``, an output of
    ``B`` rows gives one copy per mask (``M * B`` rows, mask-major; ``state["expanded"]`` records it)."""
    state: dict = {"mask": None, "ran": False, "expand": False, "expanded": False, "size": None}

    def hook(mod: nn.Module, inputs: object, output: object) -> torch.Tensor:
        mask = state["mask"]
        if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.ndim < 2:
            raise LayerError(f"layer: {layer!r} returns {type(output).__name__}, not a float tensor with "
                             "channels; pick a layer whose output is a feature map")
        # the channel axis: dim 1 of [N, C, ...], the last one of tokens [N, L, C] and channels-last [N, h, w, C]
        lay = infer(output.shape, state["size"], layer=layer) if output.ndim in (3, 4) else None
        last = lay is not None and lay.kind != "nchw"
        channels = output.shape[-1] if last else output.shape[1]
        tail = (*([1] * (output.ndim - 2)), -1) if last else (-1, *([1] * (output.ndim - 2)))
        copies, rows = len(mask) // max(len(output), 1), len(output)
        if state["expand"] and copies > 1 and copies * rows == len(mask) and channels == mask.shape[1]:
            state["expanded"] = state["ran"] = True  # one broadcast product, mask-major as x.repeat gives
            return (output.unsqueeze(0) * mask.to(output.dtype).view(copies, rows, *tail)).flatten(0, 1)
        if (rows, channels) != tuple(mask.shape):
            raise LayerError(f"layer: {layer!r} output {tuple(output.shape)} does not match {mask.shape[0]} "
                             f"inputs x {mask.shape[1]} channels; pick a layer that keeps the batch dimension")
        state["ran"] = True
        return output * mask.to(output.dtype).view(rows, *tail)

    with hooked(model, {layer: hook}):
        model.eval()
        yield state


@torch.no_grad()
def ablated_logits(model: nn.Module, inputs: torch.Tensor, layer: str,
                   units: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``[N, classes]`` logits of ``model`` on ``inputs`` with channels ``units`` of ``layer`` zeroed at every
    position, in eval mode: one mask of :func:`ablate` (the same hook), applied to one batch. The model is left
    as it was found.

    Example:
        >>> ablated_logits(model, x, "features.16", [3, 7]).argmax(1)   # doctest: +SKIP
    """
    from ..core.outputs import logits_of

    resolve(model, layer)
    x = dataset_images(inputs, model, "inputs")
    device = model_device(model)
    x = x.to(device)
    channels = _channels_of(model, layer, x[:1])
    keep = torch.ones(1, channels, device=device)
    keep[0, _units(units, channels).to(device)] = 0
    with _masked(model, layer) as state:
        state.update(mask=keep.repeat(len(x), 1), size=tuple(x.shape[-2:]))
        out = logits_of(model(x))
        if not state["ran"]:
            raise InputError(f"layer: {layer!r} did not run in forward; pick a layer that does")
    return out


def _channels_of(model: nn.Module, layer: str, example: torch.Tensor) -> int:
    """How many channels ``layer`` outputs for ``example`` (read as :func:`ablate`'s hook reads them)."""
    with capture(model, layer, eval=True) as cap:
        model(example)
    if layer not in cap.activations:
        raise InputError(f"layer: {layer!r} did not run in forward; pick a layer that does")
    a = cap.activations[layer]
    if a.ndim < 2:
        raise LayerError(f"layer: {layer!r} outputs shape {tuple(a.shape)}; pick a layer with channels")
    lay = infer(a.shape, tuple(example.shape[-2:]), layer=layer) if a.ndim in (3, 4) else None
    return int(a.shape[-1] if lay is not None and lay.kind != "nchw" else a.shape[1])


class _Retry(Exception):
    """The expanded evaluation of an input failed after the expansion: evaluate it the exact slow way."""


def _scores(model: nn.Module, state: dict, layer: str, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor,
            expand: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Correct counts and summed true-class probabilities ``[len(k)]`` of the inputs ``x`` under each mask of ``k``."""
    rows = len(x)
    state.update(mask=k.repeat_interleave(rows, 0), expand=expand, ran=False, expanded=False)
    try:
        logits = model(x if expand else x.repeat(len(k), *([1] * (x.ndim - 1))))
    except Exception as exc:
        if state["expanded"]:  # perhaps the expansion's doing (a concatenation with an earlier tensor)
            raise _Retry from exc
        raise
    if not state["ran"]:
        raise InputError(f"layer: {layer!r} did not run in forward; pick a layer that does")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(k) * rows:
        if state["expanded"]:
            raise _Retry
        raise InputError(f"model: expected [N, classes] logits, got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}; ablation measures accuracy")
    classes = logits.shape[1]
    low, high = state["labels"]
    if high >= classes or low < 0:
        raise InputError(f"dataset: labels range over {low}..{high} but the model has {classes} outputs; give "
                         f"labels in 0..{classes - 1}")
    logits = logits.view(len(k), rows, -1)
    hits = (logits.argmax(2) == y).sum(1)
    truth = logits.double().softmax(2).gather(2, y.view(1, rows, 1).expand(len(k), -1, -1))[..., 0].sum(1)
    return hits.cpu(), truth.cpu(), classes


def _copy_bytes(model: nn.Module, layer: str, state: dict, shape: tuple[int, ...], channels: int) -> int:
    """Bytes of activations one input produces from ``layer`` on: what one more mask copy costs."""
    target, total, after = resolve(model, layer), 0, False

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal total, after
        after = after or module is target
        if after and isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    state.update(mask=torch.ones(1, channels, device=model_device(model)), expand=False)
    with hooked(model, dict.fromkeys([target, *leaves], hook)):
        model(torch.zeros(1, *shape, device=model_device(model)))
    return max(total, 1)


@torch.no_grad()
def _masked_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: str,
                     keep: torch.Tensor, size: int, progress: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``[P]`` number of inputs classified correctly with ``layer``'s output multiplied by each row
    of ``keep`` (``[P, C]``, 1 keeps a channel, 0 zeroes it), ``[P]`` the sum over inputs of the
    true class's softmax probability, and the number of classes (logits per input).

    A batch of ``B = min(n, size)`` inputs runs once up to ``layer``, whose output the hook repeats
    once per mask (as many masks per pass as the memory bound allows for the layers from ``layer``
    on): the layers before ``layer`` run once per batch, not once per mask. A tensor from before
    ``layer`` that joins later (a residual) cannot meet ``M * B`` rows; the forward then fails
    after the repetition and is retried with one input at a time (``B = 1``: such a tensor has one
    row and broadcasts over the copies), and, should that fail too (a concatenation), the plain way:
    the inputs themselves repeated, ``size`` rows per pass.
    """
    from tqdm.auto import tqdm

    from ..core.batching import memory_bound

    device = model_device(model)
    n, start, modes = len(images), 0, ["batch", "single", "plain"]
    correct, truth = torch.zeros(len(keep), dtype=torch.long), torch.zeros(len(keep), dtype=torch.float64)
    classes = 0
    keep = keep.to(device)
    with _masked(model, layer) as state, tqdm(total=n, desc="ablate", disable=not progress, leave=False) as bar:
        state["labels"], state["size"] = (int(labels.min()), int(labels.max())), tuple(images.shape[-2:])
        room = max(size, memory_bound(device) // _copy_bytes(model, layer, state, tuple(images.shape[1:]),
                                                              keep.shape[1]))
        while start < n:
            mode = modes[0]
            rows = {"batch": min(n - start, size), "single": 1}.get(mode, min(n - start, size))
            masks = max(1, (room if mode != "plain" else size) // rows)
            x, y = images[start:start + rows].to(device), labels[start:start + rows].to(device)
            hits, probs = torch.zeros_like(correct), torch.zeros_like(truth)
            try:
                for chunk in batches(len(keep), masks):
                    h, p, classes = _scores(model, state, layer, x, y, keep[chunk], mode != "plain")
                    hits[chunk], probs[chunk] = h, p
            except _Retry:
                modes.pop(0)  # these inputs again, and the rest, the next way
                continue
            correct += hits
            truth += probs
            start += rows
            bar.update(rows)
    return correct, truth, classes


def _units(units: Sequence[int] | torch.Tensor | None, channels: int) -> torch.Tensor:
    if units is None:
        return torch.arange(channels)
    u = torch.as_tensor(units)
    if u.ndim != 1 or len(u) == 0 or u.is_floating_point() or u.dtype == torch.bool:
        raise InputError(f"units: expected a non-empty sequence of channel indices, got {units!r}")
    if int(u.min()) < 0 or int(u.max()) >= channels or len(torch.unique(u)) != len(u):
        raise InputError(f"units: expected distinct channels in 0..{channels - 1}, got {u.tolist()}")
    return u.long()


def _order(order: str, units: torch.Tensor, selectivity: torch.Tensor, seed: int) -> torch.Tensor:
    if order == "random":
        return units[torch.randperm(len(units), generator=generator(seed))]
    s = selectivity[units]
    return units[torch.argsort(s, descending=order == "selectivity", stable=True)]


def ablate(model: nn.Module, dataset: object, layer: str, *, orders: Sequence[str] = ORDERS, seed: int = 0,
           units: Sequence[int] | torch.Tensor | None = None, points: int | None = None,
           batch_size: int | str | None = None, progress: bool = False) -> Ablation:
    """Accuracy of ``model`` on ``dataset`` as channels of ``layer`` are zeroed (Morcos et al. 2018).

    Each unit is zeroed alone (``single``), and units are zeroed cumulatively in each of
    ``orders`` (``curves``): ``"random"`` (a permutation seeded by ``seed``), ``"selectivity"``
    (most class-selective first) and ``"selectivity-low"`` (least first), ties kept in channel
    order. Zeroing replaces the channel's output by 0 at every position (at every call, for a
    module called several times) in eval mode. ``units`` restricts which channels are ablated
    (say the first 64 of a wide layer); the others stay intact throughout. ``points`` measures the
    cumulative curves at that many evenly spaced counts (0 and ``U`` included) instead of every
    count, which divides their cost by about ``U / points``.

    The cost is one pass for the selectivity and one per distinct mask: ``U + len(orders)(U + 1)``
    less shared masks (the intact and the all-zeroed one). ``batch_size`` counts inputs per forward
    pass, mask copies included; the automatic one is measured per model (see
    :mod:`underhood.core.batching`), and a dataset smaller than it is repeated to evaluate several
    masks per pass.

    Args:
        dataset: a labelled ImageSet (``images`` ``[N, C, H, W]`` in ``[0, 1]``, ``labels`` ``[N]``).
        layer: dotted layer name whose output has channels: ``[N, C]``, ``[N, C, h, w]``, or a token
            sequence ``[N, L, C]`` / channels-last map ``[N, h, w, C]`` (read through
            :mod:`underhood.core.layout`; a channel is zeroed at every token, prefix tokens included).

    Example:
        >>> ab = ablate(model, underhood.datasets.shapes(512), "features.16")   # doctest: +SKIP
        >>> ab.baseline, ab.curves["selectivity"][10], ab.curves["random"][10]    # doctest: +SKIP
    """
    images, labels = _labelled(dataset, model)
    resolve(model, layer)
    if isinstance(orders, str):
        orders = (orders,)
    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise InputError(f"orders: expected some of {', '.join(ORDERS)}, got {list(orders)!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed: expected an int, got {seed!r}")
    if len(torch.unique(labels)) < 2:
        raise InputError("dataset: labels hold a single class; ablation needs inputs of two or more classes")
    size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
    selectivity = _selectivity(_class_means(model, images, labels, layer, size, progress), layer)
    channels = len(selectivity)
    chosen = _units(units, channels)
    order_units = {o: _order(o, chosen, selectivity, seed) for o in dict.fromkeys(orders)}
    if points is None:
        counts = torch.arange(len(chosen) + 1)
    elif isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise InputError(f"points: expected an int >= 2 (or None for every count), got {points!r}")
    else:
        counts = torch.unique(torch.linspace(0, len(chosen), min(points, len(chosen) + 1)).round().long())

    # rows: intact, each unit alone, then each order's first 0..U units zeroed; shared rows run once
    masks = [torch.ones(1, channels)]
    alone = torch.ones(len(chosen), channels)
    alone[torch.arange(len(chosen)), chosen] = 0
    masks.append(alone)
    for perm in order_units.values():
        cumulative = torch.ones(len(counts), channels)
        # row j keeps the units from position counts[j] on: the first counts[j] are zeroed
        cumulative[:, perm] = (counts[:, None] <= torch.arange(len(chosen))[None, :]).float()
        masks.append(cumulative)
    keep = torch.cat(masks)
    distinct, inverse = torch.unique(keep, dim=0, return_inverse=True)
    correct, truth, n_classes = _masked_accuracy(model, images, labels, layer, distinct, size, progress)
    accuracy = (correct.double() / len(images)).float()[inverse]
    probability = (truth / len(images)).float()[inverse]
    start, curves = 1 + len(chosen), {}
    for o in order_units:
        curves[o] = accuracy[start:start + len(counts)]
        start += len(counts)
    return Ablation(layer, len(images), n_classes, chosen, float(accuracy[0]), accuracy[1:1 + len(chosen)],
                    selectivity, curves, order_units, counts, float(probability[0]),
                    probability[1:1 + len(chosen)])

