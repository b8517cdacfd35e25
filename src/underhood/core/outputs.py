"""Model outputs: the logits inside whatever ``forward`` returns.

Every family reads a model's output as a ``[N, classes]`` logits tensor. Models that return more
(auxiliary heads, Hugging Face style outputs) are read through :func:`logits_of`, in one of two ways:

- by default, inside every underhood call: while a call runs, a forward hook on the model's root
  (installed by :func:`underhood.core.hooks.preserved`, which every entry point enters, and removed
  on exit) replaces a non-tensor output with its logits. The user's model is not changed;
- by choice, for good: ``load_model(module, output=...)`` returns a wrapper whose ``forward``
  gives the chosen tensor.

Model outputs (the text the README quotes):
    A model's ``forward`` may return a tensor, a tuple or list, a dict, or an object with a
    ``.logits`` attribute (Hugging Face's ``ModelOutput``). underhood reads the logits as the
    dict key ``"logits"``, else the ``.logits`` attribute, else the first tensor (depth first:
    ``(logits, aux)`` gives ``logits``). To read another one, load the model with ``output=``:
    an int index (``output=1``: the second element of a tuple), a str key or attribute name
    (``output="aux"``), or a callable ``output -> Tensor`` (``output=lambda out: out[1]["main"]``):

        model = underhood.load_model(net, output="aux")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Union

import torch

from .errors import InputError
from .names import first_tensor

Output = Union[None, int, str, Callable[[object], torch.Tensor]]  # noqa: UP007


def check_output(output: object) -> Output:
    """``output`` if it is ``None``, an int, a str or a callable (see :func:`logits_of`)."""
    if output is None or callable(output) or (isinstance(output, (int, str)) and not isinstance(output, bool)):
        return output
    raise InputError(f"output: expected None, an int index, a str key or a callable output -> Tensor, "
                     f"got {output!r}")


def _describe(out: object) -> str:
    if isinstance(out, Mapping):
        return f"a dict with keys {', '.join(map(repr, list(out)[:8]))}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}"
    return type(out).__name__


def logits_of(out: object, output: Output = None) -> torch.Tensor:
    """The logits tensor in a model's output ``out``.

    With ``output=None``: ``out`` itself when it is a tensor, else ``out["logits"]``, else
    ``out.logits``, else the first tensor in ``out`` (depth first through tuples, lists and dicts).
    An int indexes a tuple or list, a str is a dict key or an attribute name, a callable is
    applied to ``out``. Anything that does not give a tensor is a one-line :class:`InputError`.

    Example:
        >>> logits_of((torch.zeros(2, 3), torch.ones(2))).shape
        torch.Size([2, 3])
        >>> logits_of({"aux": torch.ones(2), "logits": torch.zeros(2, 3)}).shape
        torch.Size([2, 3])
        >>> logits_of((torch.zeros(2, 3), torch.ones(2)), 1).shape
        torch.Size([2])
    """
    if output is None:
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        if isinstance(getattr(out, "logits", None), torch.Tensor):
            return out.logits
        found = first_tensor(out)
        if found is None:
            raise InputError(f"output: the model returns {_describe(out)}, with no tensor in it; give "
                             "load_model(model, output=...) a callable that picks the logits")
        return found
    if callable(output):
        found = output(out)
    elif isinstance(output, int):
        found = out[output] if isinstance(out, (tuple, list)) and -len(out) <= output < len(out) else None
    else:
        found = out.get(output) if isinstance(out, Mapping) else getattr(out, output, None)
    if not isinstance(found, torch.Tensor):
        raise InputError(f"output: {output!r} gives {type(found).__name__}, not a tensor, from the model's output "
                         f"({_describe(out)}); pick an index, key or callable that gives the logits")
    return found
