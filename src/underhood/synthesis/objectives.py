"""Objectives of activation maximisation: what a synthetic image should excite.

An :class:`Objective` maps the activations it declares (``layers``) and the logits to one value
per image (``[N]``, to be maximised). Objectives compose: ``a + b``, ``a - b``, ``2 * a``, ``-a``;
:func:`batch` gives each image of a batch its own objective (e.g. every channel of a layer in one
run). Only the declared layers are hooked during optimisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import InputError

LOGITS = "logits"  # the pseudo-layer of the model's output


@dataclass(frozen=True)
class Objective:
    """``fn(activations, logits) -> Tensor[N]``, reading the layers in ``layers`` (``"logits"``: the output)."""

    fn: Callable[[dict[str, torch.Tensor], torch.Tensor | None], torch.Tensor]
    layers: frozenset[str]
    name: str

    def __call__(self, acts: dict[str, torch.Tensor], logits: torch.Tensor | None = None) -> torch.Tensor:
        return self.fn(acts, logits)

    @property
    def needs_logits(self) -> bool:
        return LOGITS in self.layers

    @property
    def hooked(self) -> list[str]:
        """The model layers to hook (the declared layers except the logits)."""
        return sorted(self.layers - {LOGITS})

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, (int, float)):
            return Objective(lambda a, z: self(a, z) + other, self.layers, f"{self.name} + {other:g}")
        return Objective(lambda a, z: self(a, z) + other(a, z), self.layers | other.layers,
                         f"{self.name} + {other.name}")

    __radd__ = __add__

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-1.0) * other if isinstance(other, Objective) else self + (-other)

    def __mul__(self, factor: float) -> Objective:
        if not isinstance(factor, (int, float)) or isinstance(factor, bool):
            raise InputError(f"factor: objectives scale by numbers, got {type(factor).__name__}")
        return Objective(lambda a, z: factor * self(a, z), self.layers, f"{factor:g} * {self.name}")

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return self * -1.0


def _map(acts: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
    return acts[layer]


def _check_channel(a: torch.Tensor, c: int, layer: str) -> None:
    if not 0 <= c < a.shape[1]:
        raise InputError(f"channel: {layer!r} has {a.shape[1]} channels, got {c}; pick 0..{a.shape[1] - 1}")


def unit(layer: str, channel: int, y: int | None = None, x: int | None = None) -> Objective:
    """The activation of one unit: channel ``channel`` at position ``(y, x)`` (default: the centre)."""
    def fn(acts, logits):
        a = _map(acts, layer)
        _check_channel(a, channel, layer)
        if a.ndim == 2:
            return a[:, channel]
        yy = a.shape[2] // 2 if y is None else y
        xx = a.shape[3] // 2 if x is None else x
        if not (0 <= yy < a.shape[2] and 0 <= xx < a.shape[3]):
            raise InputError(f"y, x: ({yy}, {xx}) is outside {layer!r}'s {a.shape[2]}x{a.shape[3]} map")
        return a[:, channel, yy, xx]
    return Objective(fn, frozenset({layer}), f"unit({layer}, {channel}, {y}, {x})")


REDUCTIONS = ("mean", "sum", "l2")


def channel(layer: str, c: int, *, reduce: str = "mean") -> Objective:
    """Channel ``c`` of ``layer`` reduced over positions: its ``"mean"`` activation (default), its ``"sum"``
    (EE-559: "the sum over an activation map"), or the ``"l2"`` norm of the whole map,
    ``||h_{l,c}(x)||_2`` (MAP583's maximum response samples)."""
    if reduce not in REDUCTIONS:
        raise InputError(f"reduce: expected one of {', '.join(REDUCTIONS)}, got {reduce!r}")

    def fn(acts, logits):
        a = _map(acts, layer)
        _check_channel(a, c, layer)
        flat = a[:, c].reshape(len(a), -1)
        if reduce == "l2":
            return torch.linalg.vector_norm(flat, dim=1)
        return flat.sum(1) if reduce == "sum" else flat.mean(1)
    suffix = "" if reduce == "mean" else f", {reduce}"
    return Objective(fn, frozenset({layer}), f"channel({layer}, {c}{suffix})")


def layer(name: str) -> Objective:
    """The mean squared activation of a whole layer (the Deep Dream objective)."""
    def fn(acts, logits):
        a = _map(acts, name)
        return a.pow(2).reshape(len(a), -1).mean(1)
    return Objective(fn, frozenset({name}), f"layer({name})")


def class_logit(k: int) -> Objective:
    """The logit of class ``k`` (pre-softmax, as Simonyan et al. maximise it)."""
    def fn(acts, logits):
        if not 0 <= k < logits.shape[1]:
            raise InputError(f"k: the model has {logits.shape[1]} classes, got {k}")
        return logits[:, k]
    return Objective(fn, frozenset({LOGITS}), f"class_logit({k})")


def direction(layer: str, vector: torch.Tensor | Sequence[float]) -> Objective:
    """The activation along a direction of channel space, averaged over positions: ``<a(y, x), v>``."""
    v = torch.as_tensor(vector, dtype=torch.float32).flatten()
    if v.norm() == 0:
        raise InputError("vector: the direction is zero; give a non-zero vector")

    def fn(acts, logits):
        a = _map(acts, layer)
        if a.shape[1] != len(v):
            raise InputError(f"vector: {layer!r} has {a.shape[1]} channels, the vector {len(v)}")
        flat = a.reshape(len(a), a.shape[1], -1)
        return torch.einsum("ncp,c->n", flat, v.to(a.device, a.dtype)) / flat.shape[2]
    return Objective(fn, frozenset({layer}), f"direction({layer})")


def diversity(layer: str) -> Objective:
    """Minus the mean cosine similarity of each image's Gram matrix at ``layer`` to the others' in
    the batch (Olah et al. 2017): added to an objective, it pushes a batch towards different facets."""
    def fn(acts, logits):
        a = _map(acts, layer)
        n = len(a)
        if n < 2:
            return a.new_zeros(n)
        flat = a.reshape(n, a.shape[1], -1)
        grams = torch.nn.functional.normalize((flat @ flat.transpose(1, 2)).reshape(n, -1), dim=1)
        sim = grams @ grams.T
        return -(sim.sum(1) - sim.diagonal()) / (n - 1)
    return Objective(fn, frozenset({layer}), f"diversity({layer})")


def batch(objectives: Sequence[Objective]) -> Objective:
    """Image ``i`` of the batch gets ``objectives[i]`` (e.g. ``batch([channel(L, c) for c in range(16)])``)."""
    objectives = list(objectives)
    if not objectives or not all(isinstance(o, Objective) for o in objectives):
        raise InputError("objectives: give a non-empty list of Objective")
    layers = frozenset().union(*(o.layers for o in objectives))

    def fn(acts, logits):
        n = next(iter(acts.values())).shape[0] if acts else logits.shape[0]
        if n != len(objectives):
            raise InputError(f"objectives: {len(objectives)} objectives for a batch of {n} images")
        # unbind once rather than slicing per image: the backward then assembles one gradient
        # instead of adding up N full-size mostly-zero ones (the same values, much faster for large N)
        parts = {k: v.unbind(0) for k, v in acts.items()}
        rows = logits.unbind(0) if logits is not None else None
        return torch.cat([o({k: p[i][None] for k, p in parts.items()}, None if rows is None else rows[i][None])
                          for i, o in enumerate(objectives)])
    return Objective(fn, layers, f"batch of {len(objectives)}")
