"""The model is left as it was found: ``training`` and ``requires_grad`` flags restored on exit.

Every family that runs a model inside a call (attribution, synthesis, attacks, dataset scans)
wraps the call in :func:`preserved`, :func:`frozen` or :func:`evaluating`; the flags come back also
when the block raises, and for the block the model's output reads as logits (a tuple, dict or
``.logits`` output gives its logits; :mod:`underhood.core.outputs`). The three live in
:mod:`underhood.core.hooks`, the one home of hooks, since reading the output takes a hook on the root.
"""

from __future__ import annotations

from .hooks import evaluating, frozen, preserved

__all__ = ["preserved", "frozen", "evaluating"]
