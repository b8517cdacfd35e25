"""The model is left as it was found: ``training`` and ``requires_grad`` flags restored on exit.

Every family that runs a model inside a call (attribution, synthesis, attacks, dataset scans)
wraps the call in :func:`preserved` or :func:`frozen`; the flags come back also when the
block raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's ``training`` flag and every parameter's ``requires_grad`` on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter for the block; both restored after
    (inside :func:`preserved`). For methods that differentiate w.r.t. inputs or activations only:
    attribution, synthesis, attacks. Eval mode fixes BatchNorm statistics and turns dropout off,
    so the function studied is the deployed one."""
    with preserved(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block (parameters keep their ``requires_grad``); restored after."""
    with preserved(model):
        model.eval()
        yield model
