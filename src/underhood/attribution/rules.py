"""The ReLU-rule family: deconvnet and guided backprop.

Both are the input gradient with the backward pass through every ReLU replaced by the rule's
quantity (see :mod:`underhood.core.rules`); max-pooling routes the signal through its
"switches" as in the ordinary gradient. Maps are signed, shaped like ``inputs``; the papers
show them as normalised RGB images (``underhood.viz``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ModelError
from ..core.hooks import frozen
from ..core.rules import relu_rule
from ..core.targets import Target
from .base import input_gradient, prepare


def _ruled_gradient(model: nn.Module, inputs: torch.Tensor, target: Target, rule: str, name: str) -> torch.Tensor:
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(f"model: {name} needs to reach the ReLUs inside forward, which TorchScript hides; "
                         "load the eager model (an architecture + state_dict) instead")
    x = prepare(model, inputs)
    with frozen(model), relu_rule(rule) as mode:
        grad, _ = input_gradient(model, x, target)
    if mode.count == 0:
        raise ModelError(f"model: {name} found no ReLU (nn.ReLU, torch.relu, F.relu, Tensor.relu) in forward, "
                         "so its rule has nothing to act on; use saliency for this model")
    return grad


def deconvnet(model: nn.Module, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014): backward through each ReLU passes ``relu(grad_out)``.

    The reconstruction ignores the forward ReLU's gate: it shows what pattern the network would
    answer to, rather than which pixels of this input mattered.

    Returns ``[N, C, H, W]``, signed.

    Example:
        >>> rec = deconvnet(model, x, target=Unit("features.10", 5))   # doctest: +SKIP
    """
    return _ruled_gradient(model, inputs, target, "deconvnet", "deconvnet")


def guided_backprop(model: nn.Module, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2014): ``relu(grad_out) * [x > 0]`` at each ReLU.

    Only positive signal flows back, and only through units active in the forward pass, which
    gives sharp, edge-like maps (Adebayo et al. 2018 show they barely depend on the top layers).

    Returns ``[N, C, H, W]``, signed.
    """
    return _ruled_gradient(model, inputs, target, "guided", "guided_backprop")
