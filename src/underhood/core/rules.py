"""ReLU backward rules: the modified backward passes of deconvnet and guided backprop.

Inside ``with relu_rule("guided"):`` every ReLU evaluated in ``forward`` -- ``nn.ReLU`` modules
(in place or not, one module reused several times) and the functional ``torch.relu``,
``F.relu``, ``Tensor.relu`` and their in-place forms -- runs forward as usual but passes
backward, instead of ``grad_out * [x > 0]``:

- ``"deconvnet"`` (Zeiler & Fergus 2014): ``relu(grad_out)``;
- ``"guided"`` (Springenberg et al. 2014): ``relu(grad_out) * [x > 0]``;
- ``"gradient"``: the ordinary gradient (for comparisons).

The calls are intercepted with a torch function mode, so no module is touched and no module hook
is registered (guided backprop puts a tensor hook on each ReLU output, which lives and dies with
that graph); the rule ends with the block. TorchScript models are compiled past this
mechanism and are refused by the attribution methods that need a rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .errors import InputError
from .hooks import positive_gradient

RULES = ("gradient", "deconvnet", "guided")


class _RuleReLU(torch.autograd.Function):
    """ReLU whose backward applies a rule (deconvnet: it ignores the forward gate, so the native ReLU's
    backward cannot be reused); in place when the caller asked for it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: str, inplace: bool) -> torch.Tensor:
        ctx.rule = rule
        if inplace:
            ctx.mark_dirty(x)
            out = x.clamp_(min=0)
        else:
            out = x.clamp(min=0)
        ctx.active = out > 0  # equals [x > 0]; kept as a mask, so later in-place ops on `out` are harmless
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.rule == "deconvnet":
            return grad.clamp(min=0), None, None
        if ctx.rule == "guided":
            return grad.clamp(min=0) * ctx.active, None, None
        return grad * ctx.active, None, None


# function -> in place? (None: read the ``inplace`` argument)
_RELUS = {torch.relu: False, torch.relu_: True, torch.Tensor.relu: False, torch.Tensor.relu_: True,
          F.relu: None}


class _RuleMode(TorchFunctionMode):
    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS and args and isinstance(args[0], torch.Tensor) and self.rule != "deconvnet":
            # guided (and the plain gradient): the native ReLU, whose backward already multiplies by
            # [x > 0]; for guided a hook first clamps the gradient arriving at its output (the gradient
            # with respect to that value, even if a later op changes the tensor in place)
            self.count += 1
            out = func(*args, **kwargs)
            if self.rule == "guided" and out.requires_grad:
                positive_gradient(out)
            return out
        if func in _RELUS and args and isinstance(args[0], torch.Tensor):
            inplace = _RELUS[func]
            if inplace is None:
                inplace = bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            self.count += 1
            return _RuleReLU.apply(args[0], self.rule, inplace)
        return func(*args, **kwargs)


@contextlib.contextmanager
def relu_rule(rule: str) -> Iterator[_RuleMode]:
    """Apply a ReLU backward rule to every ReLU evaluated in the block.

    The yielded object's ``count`` is the number of ReLU calls the rule reached, so a caller
    can refuse a model without ReLUs (where the rule would silently do nothing).

    Example:
        >>> with relu_rule("guided") as mode:        # doctest: +SKIP
        ...     model(x.requires_grad_()).max().backward()
    """
    if rule not in RULES:
        raise InputError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")
    with _RuleMode(rule) as mode:
        yield mode
