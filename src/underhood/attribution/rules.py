"""The ReLU-rule family: deconvnet and guided backprop.

Both are the input gradient with the backward pass through every ReLU replaced by the rule's
quantity (see :mod:`underhood.core.rules`); max-pooling routes the signal through its
"switches" as in the ordinary gradient. Maps are signed, shaped like ``inputs``; the papers
show them as normalised RGB images (``underhood.viz``).

Both rules are defined for ReLU only. At a ReLU ``y = max(x, 0)`` the ordinary backward pass is
``grad_out * [x > 0]``, a binary gate set by the forward pass; deconvnet replaces it with
``relu(grad_out)`` (Zeiler & Fergus) and guided backprop with ``relu(grad_out) * [x > 0]``
(Springenberg et al. 2014: only positive signal, only through units that were on). GELU, SiLU and
other smooth activations have no such gate: their derivative is a continuous function of ``x``
that is neither 0 nor 1 and even negative (GELU's dips below 0 near ``x = -0.75``), so "the units
active in the forward pass" is not defined there. Gating on ``x > 0``, or multiplying
``relu(grad_out)`` by the local derivative or its positive part, would each be a new method with
different maps and no paper behind it; underhood does not invent one. On a model without ReLUs
(most vision transformers, ConvNeXt, EfficientNet) these functions, and guided Grad-CAM, raise a
one-line :class:`~underhood.core.errors.ModelError` naming the activation found; saliency,
integrated gradients and Grad-CAM need no rule and work there. ReLUs that do run are still ruled
(a model mixing ReLU and GELU gets the rule at its ReLUs only).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import ModelError
from ..core.hooks import frozen
from ..core.rules import relu_rule
from ..core.targets import Target
from .base import input_gradient, prepare

_SMOOTH = (nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Tanh, nn.Sigmoid)


def _ruled_gradient(model: nn.Module, inputs: torch.Tensor, target: Target, rule: str, name: str) -> torch.Tensor:
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(f"model: {name} needs to reach the ReLUs inside forward, which TorchScript hides; "
                         "load the eager model (an architecture + state_dict) instead")
    x = prepare(model, inputs)
    with frozen(model), relu_rule(rule) as mode:
        grad, _ = input_gradient(model, x, target)
    if mode.count == 0:
        smooth = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _SMOOTH)})
        uses = f" (the model uses {', '.join(smooth)}: no on/off gate for the rule)" if smooth else ""
        raise ModelError(f"model: {name} found no ReLU (nn.ReLU, torch.relu, F.relu, Tensor.relu) in forward{uses}, "
                         "so its rule has nothing to act on; use saliency, integrated_gradients or gradcam")
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
