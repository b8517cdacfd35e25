"""Layers by dotted name: the one lookup every family uses.

Layer names are dotted paths as in ``named_modules`` of the user's network. A :class:`Wrapper`
(underhood's ``Normalized``, which adds the normalisation to a network) adds no prefix: names
are resolved inside its ``net``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator

import torch
from torch import nn

from .errors import LayerError


class Wrapper(nn.Module):
    """Base of modules that wrap a network ``self.net`` without adding a prefix to its layer names."""

    net: nn.Module


def inner(model: nn.Module) -> nn.Module:
    """The network inside any :class:`Wrapper` (the model itself otherwise); layer names are relative to it."""
    while isinstance(model, Wrapper):
        model = model.net
    return model


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every named sub-module (the root excluded), by dotted path."""
    return {name: m for name, m in inner(model).named_modules() if name}


def resolve(model: nn.Module, name: str) -> nn.Module:
    """The module at dotted path ``name``; an unknown name raises a :class:`LayerError` with close matches."""
    if not isinstance(name, str):
        raise LayerError(f"layer: expected a dotted layer name (str), got {type(name).__name__}")
    layers = named_layers(model)
    if name in layers:
        return layers[name]
    close = difflib.get_close_matches(name, list(layers), n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else \
        f"known layers: {', '.join(list(layers)[:8])}{' ...' if len(layers) > 8 else ''}"
    raise LayerError(f"layer: no layer named {name!r} in {type(inner(model)).__name__}; {hint}"
                     " (list them with `underhood layers`)")


def tensors(obj: object) -> Iterator[torch.Tensor]:
    """Every tensor in ``obj`` (a tensor, or nested tuples / lists / dicts), depth first."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors(o)


def first_tensor(output: object) -> torch.Tensor | None:
    """The first tensor in a module's output (a tensor, or nested tuples/lists/dicts)."""
    return next(iter(tensors(output)), None)
