"""The CAM family: CAM, Grad-CAM, Grad-CAM++, Score-CAM and guided Grad-CAM.

Each method weighs the channels ``A_k`` of one convolutional layer and returns
``relu(sum_k w_k A_k)`` upsampled bilinearly (``align_corners=False``) to the input size,
``[N, 1, H, W]``, without normalisation. They differ only in the channel weights ``w_k``
(CAM returns the map before the ReLU, as in its paper). ``layer=None`` is the last ``Conv2d``;
a reused module (one ReLU called several times) uses its last call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import InputError, LayerError
from ..core.hooks import frozen, graph_from, hooked
from ..core.layers import last_conv, named_layers, resolve
from ..core.targets import Target, class_indices, fix, is_class_target, scores
from .base import fixed_target, prepare, score_copies


def _spatial(layer: str, a: torch.Tensor) -> None:
    if a.ndim != 4:
        raise LayerError(f"layer: {layer!r} outputs {tuple(a.shape)}, but CAM methods need a spatial "
                         "[N, C, H, W] feature map; pick a convolutional layer (the default is the last Conv2d)")


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``[N, K, h, w]`` maps to ``size`` (``align_corners=False``)."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def combine(weights: torch.Tensor, activations: torch.Tensor, size: tuple[int, int], *,
            relu: bool = True) -> torch.Tensor:
    """``relu(sum_k w_k A_k)`` at input resolution: ``[N, K]`` x ``[N, K, h, w]`` -> ``[N, 1, H, W]``."""
    m = torch.einsum("nk,nkhw->nhw", weights, activations)[:, None]
    return upsample(m.clamp(min=0) if relu else m, size)


def layer_gradients(model: nn.Module, x: torch.Tensor, target: Target,
                    layer: str | None) -> tuple[str, torch.Tensor, torch.Tensor]:
    """``(layer, A, d score / d A)`` with one forward and a backward that stops at the layer."""
    layer = layer or last_conv(model)
    resolve(model, layer)
    with frozen(model), graph_from(model, layer) as leaves:
        s, _ = scores(model, x, target)
        if not leaves:
            raise LayerError(f"layer: {layer!r} did not run in forward; pick a layer that does")
        _spatial(layer, leaves[-1])
        grad = torch.autograd.grad(s.sum(), leaves[-1], allow_unused=True)[0] if s.requires_grad else None
    if grad is None:
        raise InputError(f"target: the score does not depend on layer {layer!r}; for a Unit target, "
                         "pick a CAM layer before the unit's layer")
    return layer, leaves[-1].detach(), grad


def gradcam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, layer: str | None = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``relu(sum_k alpha_k A_k)``, ``alpha_k = mean_ij d score / d A_k[i, j]``.

    Costs one forward pass and one backward pass that stops at ``layer``.

    Returns ``[N, 1, H, W]``, non-negative, unnormalised.

    Example:
        >>> heat = gradcam(model, x, layer="features.14")   # doctest: +SKIP
    """
    x = prepare(model, inputs)
    _, a, g = layer_gradients(model, x, target, layer)
    return combine(g.mean((2, 3)), a, tuple(x.shape[-2:]))


def gradcam_pp_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights (Chattopadhay et al. 2018, eq. 19 with ``Y = exp(S)``).

    ``alpha_ij = g^2 / (2 g^2 + sum_ab A_ab g^3)`` and ``w_k = sum_ij alpha_ij relu(g_ij)``, where
    the common factor ``exp(S)`` is dropped (a positive per-sample constant).
    """
    g2, g3 = g.pow(2), g.pow(3)
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(denom))
    return (alpha * g.clamp(min=0)).sum((2, 3))


def gradcam_pp(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
               layer: str | None = None) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018): pixel-weighted positive gradients as channel weights.

    Returns ``[N, 1, H, W]``, non-negative, unnormalised (see :func:`gradcam_pp_weights`).
    """
    x = prepare(model, inputs)
    _, a, g = layer_gradients(model, x, target, layer)
    return combine(gradcam_pp_weights(a, g), a, tuple(x.shape[-2:]))


@torch.no_grad()
def _activations_and_target(model: nn.Module, x: torch.Tensor, layer: str,
                            target: Target) -> tuple[torch.Tensor, Target]:
    """The layer's output and the target fixed on the clean inputs, from one forward pass."""
    with graph_from(model, layer) as leaves:
        _, outputs = scores(model, x, target)
    if not leaves:
        raise LayerError(f"layer: {layer!r} did not run in forward; pick a layer that does")
    _spatial(layer, leaves[-1])
    return leaves[-1].detach(), (fix(target, outputs) if is_class_target(target) else target)


def scorecam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, layer: str | None = None,
             batch_size: int | str | None = None, progress: bool = False) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020): each channel weighted by the class probability of the input masked by it.

    ``w_k = softmax(f(x * H_k))_c`` with ``H_k`` the channel upsampled and min-max scaled to
    [0, 1] (as the authors' code; a Unit or callable target is scored raw). A constant channel
    gives no mask and weight 0. Costs one forward per (sample, non-constant channel), batched;
    masked images are built one batch at a time.

    Returns ``[N, 1, H, W]``, non-negative, unnormalised.
    """
    x = prepare(model, inputs)
    layer = layer or last_conv(model)
    size = tuple(x.shape[-2:])
    with frozen(model):
        a, fixed = _activations_and_target(model, x, layer, target)
        flat = a.flatten(2)
        pairs = ((flat.amax(2) - flat.amin(2)) > 0).nonzero()  # [P, 2]: (sample, channel)

        def make(part: slice):
            i, k = pairs[part, 0], pairs[part, 1]
            h = upsample(a[i, k][:, None], size)
            lo, hi = h.flatten(1).amin(1), h.flatten(1).amax(1)
            h = (h - lo.view(-1, 1, 1, 1)) / (hi - lo).clamp_min(1e-12).view(-1, 1, 1, 1)
            return x[i] * h, i

        kind = "probability" if is_class_target(target) else "logit"
        s = score_copies(model, make, len(pairs), fixed, batch_size=batch_size, shape=tuple(x.shape[1:]),
                         kind=kind, progress=progress, desc="score-cam")
    weights = a.new_zeros(a.shape[:2])
    weights[pairs[:, 0], pairs[:, 1]] = s.to(a.dtype)
    return combine(weights, a, size)


def guided_gradcam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                   layer: str | None = None) -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times Grad-CAM, broadcast over channels.

    Returns ``[N, C, H, W]``, signed.
    """
    from .rules import guided_backprop

    x = prepare(model, inputs)
    with frozen(model):
        fixed, _ = fixed_target(model, x, target)
    return guided_backprop(model, x, fixed) * gradcam(model, x, fixed, layer=layer)


@torch.no_grad()
def pooled_maps(model: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, torch.Tensor]], nn.Linear, torch.Tensor]:
    """One forward: ``(layers whose spatial mean is the head's input, in call order, with their output;
    the last nn.Linear called; the model's outputs)`` -- the feature maps CAM can use."""
    layers = named_layers(model)
    widths = {m.in_features for m in layers.values() if isinstance(m, nn.Linear)}
    if not widths:
        raise LayerError("model: cam needs a global-average-pooling + linear head and this model has no "
                         "nn.Linear; use gradcam")
    maps: list[tuple[str, torch.Tensor]] = []
    head: list[tuple[nn.Linear, torch.Tensor]] = []

    def make(name: str):
        def hook(module, inputs, output):
            if isinstance(module, nn.Linear) and inputs and isinstance(inputs[0], torch.Tensor):
                head.append((module, inputs[0].detach().clone()))
            if (isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[1] in widths
                    and output.shape[2] * output.shape[3] > 1):
                maps.append((name, output.detach().clone()))
        return hook

    with frozen(model), hooked(model, {m: make(n) for n, m in layers.items()}):
        outputs = model(x)
    if not head:
        raise LayerError("model: cam needs a linear head and no nn.Linear ran in forward; use gradcam")
    linear, features = head[-1]
    pooled = [(n, a) for n, a in maps if torch.allclose(a.mean((2, 3)), features, rtol=1e-4, atol=1e-5)]
    return pooled, linear, outputs


def cam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, layer: str | None = None) -> torch.Tensor:
    """Class activation map (Zhou et al. 2016) of a global-average-pooling + linear head.

    ``M_c(i, j) = sum_k w_ck A_k(i, j)``, where ``A`` is the feature map the head averages and
    ``w_c`` the linear layer's row for class ``c`` (bias excluded). ``layer=None`` finds ``A``: the
    last layer whose spatial mean is the head's input; a named layer must satisfy that too.
    Grad-CAM at the same layer equals ``relu(M_c) / (h w)``.

    Returns ``[N, 1, H, W]``, signed (the paper's map, before any ReLU).
    """
    x = prepare(model, inputs)
    if not is_class_target(target):
        raise InputError("target: cam explains a class logit; give None, a class index or one per sample "
                         "(use gradcam for a Unit or callable target)")
    pooled, linear, outputs = pooled_maps(model, x)
    matches = [(n, a) for n, a in pooled if layer is None or n == layer]
    if not matches:
        where = f"layer {layer!r} is not" if layer else "no layer is"
        raise LayerError(f"layer: {where} the feature map averaged into the final nn.Linear, so cam does not "
                         "apply; cam needs global-average-pooling + one linear layer (use gradcam)")
    _, a = matches[-1]
    classes = class_indices(target, outputs)
    return combine(linear.weight.detach()[classes], a, tuple(x.shape[-2:]), relu=False)
