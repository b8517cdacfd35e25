"""Targets: which scalar per sample a method explains or optimises.

``None`` is the predicted class of each sample; an ``int`` one class for all; a sequence or
tensor one class per sample; a :class:`Unit` an intermediate unit; a callable maps the
model's outputs to a ``[N]`` tensor. Scores are logits unless a method says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from .errors import InputError
from .outputs import logits_of


@dataclass(frozen=True)
class Unit:
    """A unit inside the network: channel ``channel`` of layer ``layer``, at ``(y, x)``.

    With ``y``/``x`` left ``None`` the activation is summed over that axis. For a layer with
    ``[N, C]`` output only ``channel`` applies. A token sequence ``[N, L, C]`` (a ViT block) or a
    channels-last map ``[N, h, w, C]`` (a Swin stage) is read as ``[N, C, h, w]`` through
    :mod:`underhood.core.layout` (the grid inferred from the input size; prefix tokens such as
    the class token are not positions, so a sum over positions leaves them out); ``layout=``,
    ``tokens=`` (number of prefix tokens) and ``grid=(h, w)`` fix the reading when it is ambiguous.

    Example:
        >>> Unit("blocks.1", 7, y=2, x=3)      # channel 7 of the ViT block's patch token (2, 3)
        Unit(layer='blocks.1', channel=7, y=2, x=3)
    """

    layer: str
    channel: int
    y: int | None = None
    x: int | None = None
    layout: str | None = None
    tokens: int | None = None
    grid: tuple[int, int] | None = None

    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("layout", "tokens", "grid")
                        if getattr(self, k) is not None)
        return f"Unit(layer={self.layer!r}, channel={self.channel!r}, y={self.y!r}, x={self.x!r}{extra})"

    def score(self, activation: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """The unit's value per sample, ``[N]``, from the layer's activation (``size``: the input's
        ``(H, W)``, which places a token sequence on its grid)."""
        if activation.ndim in (3, 4):
            from .layout import infer, to_nchw

            lay = infer(activation.shape, size, layout=self.layout, tokens=self.tokens, grid=self.grid,
                        layer=self.layer)
            if lay is not None:
                activation = to_nchw(activation, lay)
        if activation.ndim < 2 or not 0 <= self.channel < activation.shape[1]:
            raise InputError(f"target: channel {self.channel} is out of range for layer {self.layer!r} "
                             f"with output shape {tuple(activation.shape[1:])}")
        a = activation[:, self.channel]
        if a.ndim == 1:
            return a
        if a.ndim != 3:
            return a.flatten(1).sum(1)
        for axis, value, size_ in (("y", self.y, a.shape[1]), ("x", self.x, a.shape[2])):
            if value is not None and not 0 <= value < size_:
                raise InputError(f"target: Unit.{axis}={value} is outside layer {self.layer!r} of size {size_}")
        a = a[:, self.y] if self.y is not None else a.sum(1)
        return a[..., self.x] if self.x is not None else a.sum(-1)


Target = Union[None, int, Sequence[int], torch.Tensor, Unit, Callable[[torch.Tensor], torch.Tensor]]  # noqa: UP007


def class_indices(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample class indices ``[N]`` for a class target (``None``, int, sequence, tensor)."""
    n, k = logits.shape[0], logits.shape[-1]
    if target is None:
        return logits.detach().argmax(-1)
    if isinstance(target, bool):
        raise InputError(f"target: expected a class index, got {target!r}")
    if isinstance(target, int):  # checked on the host: no device round trip
        if not 0 <= target < k:
            raise InputError(f"target: class {target} is out of range for a model with {k} outputs (0..{k - 1})")
        return torch.full((n,), target, dtype=torch.long, device=logits.device)
    else:
        try:
            idx = torch.as_tensor(target).to(logits.device).flatten()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"target: expected None, an int, one int per sample, a Unit or a callable; "
                             f"got {type(target).__name__}") from exc
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            got = repr(target) if isinstance(target, (float, complex)) else f"{type(target).__name__} of {idx.dtype}"
            raise InputError(f"target: a class target must be an int class index (or one int per sample), "
                             f"got {got}; give e.g. target=2")
        idx = idx.long().expand(n) if torch.as_tensor(target).ndim == 0 else idx.long()  # a numpy / 0-d int
        if idx.numel() != n:
            raise InputError(f"target: {idx.numel()} targets for a batch of {n}; give one per sample or one int")
    if ((idx < 0) | (idx >= k)).any():
        bad = idx[(idx < 0) | (idx >= k)][0].item()
        raise InputError(f"target: class {bad} is out of range for a model with {k} outputs (0..{k - 1})")
    return idx


def is_class_target(target: Target) -> bool:
    """Whether ``target`` names classes (``None``, an int, a sequence or tensor of ints)."""
    return not isinstance(target, Unit) and (target is None or isinstance(target, torch.Tensor)
                                             or not callable(target))


def fix(target: Target, outputs: torch.Tensor) -> Target:
    """``target`` made independent of later inputs: class targets become the ``[N]`` class indices
    chosen on ``outputs`` (the clean inputs' predictions for ``None``); a Unit or callable is kept.

    Perturbation methods fix the target on the clean inputs, then score perturbed copies of
    sample ``i`` with ``select(fixed, index)``.
    """
    return class_indices(target, outputs) if is_class_target(target) else target


def select(target: Target, index: torch.Tensor) -> Target:
    """The fixed target for rows that are copies of samples ``index`` (class tensors are indexed)."""
    if isinstance(target, torch.Tensor):
        return target.to(index.device)[index]
    return target


def scores(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
           kind: str = "logit") -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``inputs`` and return ``(scores [N], outputs)``, differentiable w.r.t. ``inputs``.

    ``kind="probability"`` scores class targets by their softmax probability instead of the
    logit (a Unit or callable target is scored as it is). For a :class:`Unit`, the layer is
    hooked for this one pass only.
    """
    if kind not in ("logit", "probability"):
        raise InputError(f"kind: expected 'logit' or 'probability', got {kind!r}")
    if isinstance(target, Unit):
        from .hooks import capture

        with capture(model, target.layer, detach=False) as cap:
            outputs = logits_of(model(inputs))
        if target.layer not in cap.live:
            raise InputError(f"target: layer {target.layer!r} did not run in forward; pick a layer that does")
        return target.score(cap.live[target.layer], inputs.shape[-2:]), outputs
    outputs = logits_of(model(inputs))
    if callable(target) and not isinstance(target, torch.Tensor):
        s = target(outputs)
        if not isinstance(s, torch.Tensor) or s.shape != (inputs.shape[0],):
            raise InputError(f"target: the callable must return a tensor of shape [{inputs.shape[0]}], "
                             f"got {getattr(s, 'shape', type(s).__name__)}")
        return s, outputs
    if outputs.ndim != 2:
        raise InputError(f"target: class targets need [N, classes] outputs, the model gives "
                         f"{tuple(outputs.shape)}; use a Unit or a callable target")
    idx = class_indices(target, outputs)
    values = outputs.softmax(1) if kind == "probability" else outputs
    return values.gather(1, idx[:, None]).squeeze(1), outputs
