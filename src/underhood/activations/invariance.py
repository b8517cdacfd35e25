"""Invariance by layer (Zeiler & Fergus 2014, Fig. 5): how far each layer's features move as an image is
translated, scaled or rotated, and what happens to the probability of its true class.

For images ``x_i`` and a transformation ``T_a`` of amount ``a`` (vertical translation in pixels, scale
ratio, rotation in degrees), the distance at layer ``l`` is the plain Euclidean distance between the
flattened feature vectors ``d_l(i, a) = ||phi_l(T_a x_i) - phi_l(x_i)||_2``, as in the paper's columns 2
and 3 (their y axes say "canonical distance": the distance to the untransformed, canonical image; the
paper states no normalisation and draws each layer on its own axis). Its fourth column is
``p(y_i | T_a x_i)``, the softmax probability of the true class. :attr:`Invariance.relative` divides
``d`` by ``||phi_l(x_i)||`` so that layers of different scales share one axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batching import batches, resolve_batch_size
from ..core.checks import choice
from ..core.device import model_device
from ..core.errors import InputError
from ..core.hooks import capture
from ..core.inputs import dataset_images
from ..core.layers import last_hidden, resolve, stages
from ..core.outputs import logits_of
from ..core.results import Result

TRANSFORMS = ("translate", "scale", "rotate")
PADDINGS = ("zeros", "border", "reflection", "circular")
IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}
UNITS = {"translate": "vertical translation (pixels)", "scale": "scale (ratio)", "rotate": "rotation (degrees)"}


def change(transform: str, amounts: torch.Tensor) -> torch.Tensor:
    """How far each amount is from the identity: ``|a|`` pixels, ``|log a|`` for a scale, the angle to 0 on the
    circle for a rotation (350 degrees is 10 away)."""
    a = torch.as_tensor(amounts, dtype=torch.float64)
    if transform == "scale":
        return a.log().abs()
    if transform == "rotate":
        turn = a.remainder(360.0)
        return torch.minimum(turn, 360.0 - turn)
    return a.abs()


def default_amounts(transform: str, size: int = 64) -> list[float]:
    """The paper's ranges, for an image of side ``size``: vertical shifts of up to about a quarter of
    the image (their -60..60 pixels of 256), scale ratios 1..1.8, rotations 0..350 degrees by 10."""
    choice("transform", transform, TRANSFORMS)
    if transform == "translate":
        top = max(1, round(size * 60 / 256))
        step = max(1, top // 6)
        return [float(a) for a in range(-top, top + 1, step)] if top % step == 0 else \
            [float(a) for a in [*range(-top, 0, step), 0, *range(step, top + 1, step)]]
    if transform == "scale":
        return [round(1 + 0.1 * i, 2) for i in range(9)]
    return [float(a) for a in range(0, 360, 10)]


def transformed(images: torch.Tensor, transform: str, amount: float, *, padding: str = "zeros") -> torch.Tensor:
    """``images`` ``[N, C, H, W]`` moved by ``amount`` of ``transform``, resampled bilinearly about the centre.

    ``"translate"`` shifts down by ``amount`` pixels (negative: up; Zeiler & Fergus's vertical
    translation), ``"scale"`` zooms in by the ratio ``amount`` (1: unchanged; below 1 zooms out),
    ``"rotate"`` turns counter-clockwise as displayed by ``amount`` degrees (90 is ``torch.rot90``).
    Pixels that come from outside the image are ``padding``: ``"zeros"`` (black), ``"border"``
    (edge pixels repeated), ``"reflection"`` or ``"circular"`` (the image tiled: a translation by
    whole pixels is ``torch.roll``). The identity amount returns an exact copy.
    """
    choice("transform", transform, TRANSFORMS)
    choice("padding", padding, PADDINGS)
    amount = float(amount)
    if not math.isfinite(amount) or (transform == "scale" and amount <= 0):
        raise InputError(f"amount: expected a finite number{' > 0' if transform == 'scale' else ''} for "
                         f"{transform!r}, got {amount!r}")
    if amount == IDENTITY[transform]:
        return images.clone()
    n, _, h, w = images.shape
    # output pixel centres relative to the image centre, in pixels (x right, y down)
    ys = torch.arange(h, dtype=torch.float64) + 0.5 - h / 2
    xs = torch.arange(w, dtype=torch.float64) + 0.5 - w / 2
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    if transform == "translate":      # where each output pixel comes from: the inverse map
        sx, sy = x, y - amount
    elif transform == "scale":
        sx, sy = x / amount, y / amount
    else:
        t = math.radians(amount)      # counter-clockwise on screen (y down): the inverse turns clockwise
        c, s = math.cos(t), math.sin(t)
        sx, sy = c * x - s * y, s * x + c * y
    source, tiles = images, 1
    if padding == "circular":         # sample the centre tile of the image repeated 3 x 3
        source, tiles = images.repeat(1, 1, 3, 3), 3
    grid = torch.stack([2 * sx / (w * tiles), 2 * sy / (h * tiles)], -1).to(images.dtype)
    grid = grid.to(images.device)[None].expand(n, -1, -1, -1)
    mode = "border" if padding == "circular" else padding
    return F.grid_sample(source, grid, mode="bilinear", padding_mode=mode, align_corners=False)


@dataclass(repr=False)
class Invariance(Result):
    """What :func:`invariance` measured on ``N`` images at ``A`` amounts of one transformation.

    Attributes:
        transform: ``"translate"``, ``"scale"`` or ``"rotate"``.
        amounts: ``[A]`` the amounts (pixels, ratio or degrees), in the order given.
        layers: the layers measured.
        distance: layer -> ``[A, N]`` Euclidean distance of the flattened features to the untransformed ones.
        norm: layer -> ``[N]`` the norm of the untransformed features (``relative`` divides by it).
        probability: ``[A, N]`` softmax probability of the true class.
        predicted: ``[A, N]`` the predicted class.
        labels: ``[N]`` the true classes.
        padding: how pixels from outside the image were filled.
    """

    transform: str
    amounts: torch.Tensor
    layers: list[str]
    distance: dict[str, torch.Tensor]
    norm: dict[str, torch.Tensor]
    probability: torch.Tensor
    predicted: torch.Tensor
    labels: torch.Tensor
    padding: str = "zeros"

    @property
    def relative(self) -> dict[str, torch.Tensor]:
        """layer -> ``[A, N]`` distance divided by the untransformed features' norm."""
        return {n: d / self.norm[n].clamp_min(1e-12) for n, d in self.distance.items()}

    def scalars(self) -> dict:
        """Transform, sizes, the clean probability and, per layer, the mean relative distance at the largest
        change (``relative[layer]``), with the accuracy there."""
        far = int(change(self.transform, self.amounts).argmax())
        out: dict = {"transform": self.transform, "n": int(self.labels.numel()), "amounts": int(self.amounts.numel()),
                     "padding": self.padding}
        clean = (self.amounts == IDENTITY[self.transform]).nonzero()
        if len(clean):
            out["clean_probability"] = float(self.probability[int(clean[0])].mean())
        for name in self.layers:
            out[f"relative[{name}]"] = float(self.relative[name][far].mean())
        out["accuracy_at_extreme"] = float((self.predicted[far] == self.labels).float().mean())
        return out

    def strip(self, image: torch.Tensor, count: int = 5) -> tuple[torch.Tensor, list[float]]:
        """``image`` ``[C, H, W]`` transformed at ``count`` amounts spread over :attr:`amounts`: ``([M, C, H, W],
        amounts)``, the example row of the figure."""
        picks = sorted(set(torch.linspace(0, len(self.amounts) - 1, min(count, len(self.amounts))).round().long()
                           .tolist()))
        chosen = [float(self.amounts[p]) for p in picks]
        return torch.cat([transformed(image[None].float(), self.transform, a, padding=self.padding)
                          for a in chosen]), chosen

    def figure(self, image: torch.Tensor | None = None, **kwargs):
        """The invariance figure (:func:`underhood.viz.activations_course.invariance_figure`), with ``image``
        transformed on top when given; ``kwargs`` go to it."""
        from ..viz.activations_course import invariance_figure

        return invariance_figure([self], strips=None if image is None else [self.strip(image)], **kwargs)


def _layers(model: nn.Module, layers: str | Sequence[str] | None) -> list[str]:
    if layers is None:
        names = list(dict.fromkeys([*stages(model), last_hidden(model)]))
    else:
        names = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    if not names:
        raise InputError("layers: no layer named; give at least one layer name (see `underhood layers`)")
    for name in names:
        resolve(model, name)  # an unknown name fails here, with close matches
    return names


@torch.no_grad()
def invariance(model: nn.Module, data: object, *, layers: str | Sequence[str] | None = None,
               transform: str = "translate", amounts: Sequence[float] | None = None, target: object = None,
               padding: str = "zeros", batch_size: int | str | None = None) -> Invariance:
    """Feature distances and true-class probability as images are transformed (Zeiler & Fergus 2014, Fig. 5).

    For each amount ``a`` and image ``x_i``: ``distance[l][a, i] = ||phi_l(T_a x_i) - phi_l(x_i)||_2`` over the
    flattened output of layer ``l`` (the paper's "canonical distance", unnormalised), and
    ``probability[a, i] = softmax(f(T_a x_i))[y_i]``. Transformations as :func:`transformed` makes them.

    Args:
        data: an ImageSet (its labels are the true classes) or an ``[N, C, H, W]`` tensor in ``[0, 1]``.
        layers: layer names (default: every stage and the last hidden layer).
        transform: ``"translate"`` (vertical, pixels), ``"scale"`` (ratio) or ``"rotate"`` (degrees).
        amounts: the amounts (default: :func:`default_amounts`, the paper's ranges).
        target: the true classes ``[N]`` (default: the ImageSet's labels, else the predicted class of each
            untransformed image).
        padding: how pixels from outside the image are filled (see :func:`transformed`).
        batch_size: images per forward pass (``None``: measured).

    Returns:
        An :class:`Invariance`. The model is in eval mode during the call and left as it was found.

    Example:
        >>> r = invariance(model, data[:5], transform="rotate")                      # doctest: +SKIP
        >>> r.probability.shape, r.distance["features.3"].shape                      # doctest: +SKIP
        (torch.Size([36, 5]), torch.Size([36, 5]))
    """
    images = dataset_images(data, model, "data")
    choice("transform", transform, TRANSFORMS)
    choice("padding", padding, PADDINGS)
    names = _layers(model, layers)
    amounts = default_amounts(transform, images.shape[-1]) if amounts is None else [float(a) for a in amounts]
    if not amounts:
        raise InputError("amounts: expected at least one amount of transformation")
    for a in amounts:  # bad amounts fail before any pass
        transformed(images[:1], transform, a, padding=padding)
    labels = target if target is not None else getattr(data, "labels", None)
    n, count = len(images), len(amounts)
    if labels is not None:
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape != (n,):
            raise InputError(f"target: expected [{n}] class indices, got shape {tuple(labels.shape)}")
    size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
    device = model_device(model)
    distance = {name: torch.zeros(count, n) for name in names}
    norm = {name: torch.zeros(n) for name in names}
    probability, predicted = torch.zeros(count, n), torch.zeros(count, n, dtype=torch.long)
    truth = torch.zeros(n, dtype=torch.long) if labels is None else labels
    with capture(model, names, eval=True) as cap:
        def run(x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
            cap.clear()
            out = logits_of(model(x.to(device))).float().cpu()
            missing = [name for name in names if name not in cap.activations]
            if missing:
                raise InputError(f"layers: {missing[0]!r} did not run in forward; pick layers that do")
            return {name: cap.activations[name].flatten(1).float() for name in names}, out

        for rows in batches(n, size):
            clean, out = run(images[rows])
            if labels is None:
                truth[rows] = out.argmax(1)
            for name in names:
                norm[name][rows] = clean[name].norm(dim=1).cpu()
            for j, a in enumerate(amounts):
                feats, out = run(transformed(images[rows], transform, a, padding=padding))
                for name in names:
                    distance[name][j, rows] = (feats[name] - clean[name]).norm(dim=1).cpu()
                probability[j, rows] = out.softmax(1).gather(1, truth[rows, None])[:, 0]
                predicted[j, rows] = out.argmax(1)
    return Invariance(transform, torch.tensor(amounts), names, distance, norm, probability, predicted, truth, padding)
