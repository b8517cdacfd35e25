"""The CAM family: CAM, Grad-CAM, Grad-CAM++, Score-CAM and guided Grad-CAM.

Each method weighs the channels ``A_k`` of one convolutional layer and returns
``relu(sum_k w_k A_k)`` upsampled bilinearly (``align_corners=False``) to the input size,
``[N, 1, H, W]``, without normalisation. They differ only in the channel weights ``w_k``
(CAM returns the map before the ReLU, as in its paper). A reused module (one ReLU called
several times) uses its last call.

The layer may output a convolutional map ``[N, C, h, w]``, a channels-last map ``[N, h, w, C]``
(Swin stages, ConvNeXt blocks in NHWC) or a token sequence ``[N, L, C]`` (ViT blocks): it is read
as ``[N, C, h, w]`` by :func:`underhood.core.layout.spatial` (prefix tokens such as the class
token dropped, the grid inferred from the input size). The keyword options ``tokens=`` (number
of prefix tokens), ``grid=(h, w)`` and ``layout=`` ("nchw", "nhwc", "tokens") fix that reading.
``layer=None`` is :func:`underhood.core.layers.default_layer`: the last ``Conv2d`` of a CNN, the
last block before the final norm of a transformer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import positive_int
from ..core.errors import InputError, LayerError
from ..core.hooks import frozen, graph_from, hooked
from ..core.layers import default_layer, named_layers, resolve
from ..core.layout import Layout, infer, spatial, to_nchw
from ..core.outputs import logits_of
from ..core.results import Result
from ..core.targets import Target, class_indices, fix, is_class_target, scores
from .base import autocast, check_amp, finite, fixed_target, prepare, scaled_grad, score_copies


def _feature_map(layer: str, a: torch.Tensor, size: tuple[int, ...], reading: dict) -> tuple[torch.Tensor, Layout]:
    """The layer output as ``[N, C, h, w]`` and its layout (``reading``: tokens / grid / layout options)."""
    return spatial(a, size, layer=layer, what="a CAM method", **reading)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``[N, K, h, w]`` maps to ``size`` (``align_corners=False``)."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def combine(weights: torch.Tensor, activations: torch.Tensor, size: tuple[int, int], *,
            relu: bool = True) -> torch.Tensor:
    """``relu(sum_k w_k A_k)`` at input resolution: ``[N, K]`` x ``[N, K, h, w]`` -> ``[N, 1, H, W]``."""
    m = torch.einsum("nk,nkhw->nhw", weights, activations)[:, None]
    return upsample(m.clamp(min=0) if relu else m, size)


def layer_gradients(model: nn.Module, x: torch.Tensor, target: Target, layer: str | None, *,
                    tokens: int | None = None, grid: tuple[int, int] | None = None,
                    layout: str | None = None, amp: bool | str = False) -> tuple[str, torch.Tensor, torch.Tensor]:
    """``(layer, A, d score / d A)``, both ``[N, C, h, w]`` float32, with one forward (under ``amp``'s
    autocast) and a backward that stops at the layer."""
    layer = layer or default_layer(model, x)
    resolve(model, layer)
    with frozen(model), graph_from(model, layer) as leaves:
        with autocast(x.device, amp):
            s, _ = scores(model, x, target)
        if not leaves:
            raise LayerError(f"layer: {layer!r} did not run in forward; pick a layer that does")
        a, lay = _feature_map(layer, leaves[-1], tuple(x.shape[-2:]), dict(tokens=tokens, grid=grid, layout=layout))
        grad = scaled_grad(s, leaves[-1], amp, allow_unused=True) if s.requires_grad else None
    if grad is None:
        raise InputError(f"target: the score does not depend on layer {layer!r}; for a Unit target, "
                         "pick a CAM layer before the unit's layer")
    return layer, a.detach().float(), to_nchw(grad, lay)


def gradcam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, layer: str | None = None,
            tokens: int | None = None, grid: tuple[int, int] | None = None,
            layout: str | None = None, amp: bool | str = False) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``relu(sum_k alpha_k A_k)``, ``alpha_k = mean_ij d score / d A_k[i, j]``.

    Costs one forward pass and one backward pass that stops at ``layer``. On a ViT block the
    ``h x w`` patch tokens are the positions (the class token is left out of ``A`` and of the mean).

    Returns ``[N, 1, H, W]``, non-negative, unnormalised.

    Example:
        >>> heat = gradcam(model, x, layer="features.14")   # doctest: +SKIP
        >>> heat = gradcam(vit, x, layer="encoder.layers.encoder_layer_10")   # doctest: +SKIP
    """
    x, amp = prepare(model, inputs), check_amp(amp)
    _, a, g = layer_gradients(model, x, target, layer, tokens=tokens, grid=grid, layout=layout, amp=amp)
    return finite(combine(g.mean((2, 3)), a, tuple(x.shape[-2:])), amp)


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
               layer: str | None = None, tokens: int | None = None, grid: tuple[int, int] | None = None,
               layout: str | None = None, amp: bool | str = False) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018): pixel-weighted positive gradients as channel weights.

    Returns ``[N, 1, H, W]``, non-negative, unnormalised (see :func:`gradcam_pp_weights`).
    """
    x, amp = prepare(model, inputs), check_amp(amp)
    _, a, g = layer_gradients(model, x, target, layer, tokens=tokens, grid=grid, layout=layout, amp=amp)
    return finite(combine(gradcam_pp_weights(a, g), a, tuple(x.shape[-2:])), amp)


@torch.no_grad()
def _activations_and_target(model: nn.Module, x: torch.Tensor, layer: str, target: Target,
                            reading: dict, amp: bool | str = False) -> tuple[torch.Tensor, Target]:
    """The layer's output as ``[N, C, h, w]`` and the target fixed on the clean inputs, from one forward pass."""
    with graph_from(model, layer) as leaves, autocast(x.device, amp):
        _, outputs = scores(model, x, target)
    if not leaves:
        raise LayerError(f"layer: {layer!r} did not run in forward; pick a layer that does")
    a, _ = _feature_map(layer, leaves[-1].detach().float(), tuple(x.shape[-2:]), reading)
    return a, (fix(target, outputs) if is_class_target(target) else target)


def scorecam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, layer: str | None = None,
             batch_size: int | str | None = None, progress: bool = False, tokens: int | None = None,
             grid: tuple[int, int] | None = None, layout: str | None = None,
             amp: bool | str = False) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020): each channel weighted by the class probability of the input masked by it.

    ``w_k = softmax(f(x * H_k))_c`` with ``H_k`` the channel upsampled and min-max scaled to
    [0, 1] (as the authors' code; a Unit or callable target is scored raw). A constant channel
    gives no mask and weight 0. Costs one forward per (sample, non-constant channel), batched;
    masked images are built one batch at a time.

    Returns ``[N, 1, H, W]``, non-negative, unnormalised.
    """
    x, amp = prepare(model, inputs), check_amp(amp)
    layer = layer or default_layer(model, x)
    size = tuple(x.shape[-2:])
    with frozen(model):
        a, fixed = _activations_and_target(model, x, layer, target, dict(tokens=tokens, grid=grid, layout=layout),
                                           amp)
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
                         kind=kind, progress=progress, desc="score-cam", amp=amp)
    weights = a.new_zeros(a.shape[:2])
    weights[pairs[:, 0], pairs[:, 1]] = s.to(a.dtype)
    return finite(combine(weights, a, size), amp)


def guided_gradcam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *,
                   layer: str | None = None, tokens: int | None = None, grid: tuple[int, int] | None = None,
                   layout: str | None = None, amp: bool | str = False) -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backprop times Grad-CAM, broadcast over channels.

    Guided backprop needs ReLUs (see :mod:`underhood.attribution.rules`), so on a GELU / SiLU
    model (most vision transformers) this raises its one-line error; use Grad-CAM there.

    Returns ``[N, C, H, W]``, signed.
    """
    from .rules import guided_backprop

    x, amp = prepare(model, inputs), check_amp(amp)
    with frozen(model):
        fixed, _ = fixed_target(model, x, target, amp=amp)
    return guided_backprop(model, x, fixed) * gradcam(model, x, fixed, layer=layer, tokens=tokens, grid=grid,
                                                      layout=layout, amp=amp)


@torch.no_grad()
def pooled_maps(model: nn.Module, x: torch.Tensor, *, layer: str | None = None, tokens: int | None = None,
                grid: tuple[int, int] | None = None,
                layout: str | None = None) -> tuple[list[tuple[str, torch.Tensor]], nn.Linear, torch.Tensor]:
    """One forward: ``(layers whose spatial mean is the head's input, in call order, with their output as
    [N, C, h, w]; the head: the nn.Linear whose output is the model's output; the model's outputs)`` --
    the feature maps CAM can use. Token and channels-last outputs are read through
    :mod:`underhood.core.layout` (``tokens`` / ``grid`` / ``layout`` apply to ``layer`` only)."""
    layers = named_layers(model)
    widths = {m.in_features for m in layers.values() if isinstance(m, nn.Linear)}
    if not widths:
        raise LayerError("model: cam needs a global-average-pooling + linear head and this model has no "
                         "nn.Linear; use gradcam")
    maps: list[tuple[str, torch.Tensor]] = []
    linears: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
    size = tuple(x.shape[-2:])

    def make(name: str):
        reading = dict(tokens=tokens, grid=grid, layout=layout) if name == layer else {}

        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                return
            if isinstance(module, nn.Linear) and inputs and isinstance(inputs[0], torch.Tensor):
                linears.append((module, inputs[0].detach().clone(), output.detach()))
            if output.ndim not in (3, 4):
                return
            try:
                lay = infer(output.shape, size, layer=name, **reading)
            except LayerError:
                if name == layer:
                    raise
                return
            a = to_nchw(output.detach(), lay)
            if a.shape[1] in widths and lay.grid[0] * lay.grid[1] > 1:
                maps.append((name, a.clone()))
        return hook

    with frozen(model), hooked(model, {m: make(n) for n, m in layers.items()}):
        outputs = model(x)
    if not linears:
        raise LayerError("model: cam needs a linear head and no nn.Linear ran in forward; use gradcam")
    # the head is the linear layer that gives the logits (an auxiliary head may run after it)
    heads = [(m, f) for m, f, o in linears if o.shape == outputs.shape and torch.equal(o, outputs)]
    if not heads:
        raise LayerError("model: cam needs the model's output to be an nn.Linear's output (a global-average-"
                         "pooling + linear head), and no linear layer gives it; use gradcam")
    linear, features = heads[-1]
    pooled = [(n, a) for n, a in maps if a.shape[:2] == features.shape
              and torch.allclose(a.mean((2, 3)), features, rtol=1e-4, atol=1e-5)]
    return pooled, linear, outputs


def cam(model: nn.Module, inputs: torch.Tensor, target: Target = None, *, layer: str | None = None,
        tokens: int | None = None, grid: tuple[int, int] | None = None, layout: str | None = None) -> torch.Tensor:
    """Class activation map (Zhou et al. 2016) of a global-average-pooling + linear head.

    ``M_c(i, j) = sum_k w_ck A_k(i, j)``, where ``A`` is the feature map the head averages and
    ``w_c`` the row for class ``c`` (bias excluded) of the linear layer whose output is the model's
    output. ``layer=None`` finds ``A``: the last layer whose spatial mean is the head's input; a
    named layer must satisfy that too. Grad-CAM at the same layer equals ``relu(M_c) / (h w)``.
    A channels-last map averaged over ``(h, w)`` (a Swin-style ``norm(x).mean((1, 2))`` head)
    qualifies; a ViT whose head reads the class token does not (use :func:`gradcam`).

    Returns ``[N, 1, H, W]``, signed (the paper's map, before any ReLU).
    """
    x = prepare(model, inputs)
    if not is_class_target(target):
        raise InputError("target: cam explains a class logit; give None, a class index or one per sample "
                         "(use gradcam for a Unit or callable target)")
    pooled, linear, outputs = pooled_maps(model, x, layer=layer, tokens=tokens, grid=grid, layout=layout)
    matches = [(n, a) for n, a in pooled if layer is None or n == layer]
    if not matches:
        where = f"layer {layer!r} is not" if layer else "no layer is"
        raise LayerError(f"layer: {where} the feature map averaged into the final nn.Linear, so cam does not "
                         "apply; cam needs global-average-pooling + one linear layer (use gradcam)")
    _, a = matches[-1]
    classes = class_indices(target, outputs)
    return combine(linear.weight.detach()[classes], a, tuple(x.shape[-2:]), relu=False)


@dataclass(repr=False)
class TopCams(Result):
    """The class activation maps of each image's ``k`` most probable classes (see :func:`top_cams`).

    Attributes:
        maps: ``[N, k, H, W]``, ``maps[:, j]`` is ``cam(model, inputs, classes[:, j])``, signed, unnormalised.
        classes: ``[N, k]`` long, the classes by decreasing probability.
        probs: ``[N, k]``, their softmax probabilities.
        names: the class names (the model's ``classes`` when it has them, else the indices as strings).
    """

    maps: torch.Tensor
    classes: torch.Tensor
    probs: torch.Tensor
    names: list[str]

    def scalars(self) -> dict[str, float | int]:
        """Images, k, and the mean probability of the top class and of the k classes together."""
        return {"images": int(self.maps.shape[0]), "k": int(self.maps.shape[1]),
                "top1_prob": float(self.probs[:, 0].mean()), "topk_prob": float(self.probs.sum(1).mean())}

    def titles(self, index: int = 0) -> list[str]:
        """``"class p%"`` of each of sample ``index``'s k classes."""
        return [f"{self.names[int(c)]} {float(p):.0%}" for c, p in zip(self.classes[index], self.probs[index])]

    def figure(self, index: int = 0, image: torch.Tensor | None = None, **options):
        """Sample ``index``: the image (when given) and one CAM overlay per class, titled with class and probability."""
        from ..viz.attribution import top_cams_figure

        return top_cams_figure(image, self.maps[index], self.titles(index), **options)


def top_cams(model: nn.Module, inputs: torch.Tensor, *, k: int = 5, layer: str | None = None,
             tokens: int | None = None, grid: tuple[int, int] | None = None, layout: str | None = None) -> TopCams:
    """Class activation maps of the ``k`` most probable classes of each image (Zhou et al. 2016, Fig. 4: "class
    activation maps of top 5 predictions", as CMP784 shows them).

    One forward pass ranks the classes by softmax probability; map ``j`` is :func:`cam` for each image's
    ``j``-th class (the same layer options). Different classes often look at different parts of one image.

    Returns:
        A :class:`TopCams`: ``maps [N, k, H, W]`` (signed, unnormalised), ``classes`` and ``probs`` ``[N, k]``.

    Example:
        >>> top = top_cams(model, x[:1], k=5)                # doctest: +SKIP
        >>> top.figure(0, image=x[0])                        # doctest: +SKIP
    """
    x = prepare(model, inputs)
    k = positive_int("k", k)
    with torch.no_grad(), frozen(model):
        probs = logits_of(model(x)).float().softmax(1)
    if k > probs.shape[1]:
        raise InputError(f"k: the model has {probs.shape[1]} classes, so k must be at most {probs.shape[1]}; "
                         f"got {k}")
    top = probs.topk(k, dim=1)
    maps = torch.cat([cam(model, x, top.indices[:, j], layer=layer, tokens=tokens, grid=grid, layout=layout)
                      for j in range(k)], 1)
    names = getattr(model, "classes", None) or [str(c) for c in range(probs.shape[1])]
    return TopCams(maps=maps.detach().cpu(), classes=top.indices.cpu(), probs=top.values.cpu(), names=list(names))
