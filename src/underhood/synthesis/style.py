"""Neural style transfer (Gatys, Ecker & Bethge 2015, "A Neural Algorithm of Artistic Style").

An image ``x`` is optimised so that its features at content layers match those of a content
image ``p``, and the Gram matrices (channel correlations, blind to *where* a feature occurs) of
its features at several style layers match those of a style image ``a``:

    E_l  = 1 / (4 N_l^2 M_l^2) * sum_ij (G_l(x) - G_l(a))_ij^2        (the paper's layer style loss)
    L(x) = content_weight * sum_l mean((F_l(x) - F_l(p))^2) / mean(F_l(p)^2)
         + style_weight   * 1/L sum_l E_l / E_l(0)                      (E_l(0) = 1/(4 N_l^2 M_l^2) sum A_l^2)
         + tv_weight      * TV(x) / (C H W)                      (TV: priors.total_variation, beta = 2)

with ``N_l`` channels, ``M_l = H_l * W_l`` positions and ``G_l = F_l F_l^T``. Gatys et al. weight
the layers equally (``w_l = 1/L``) in a VGG whose filters they rescaled to a mean activation of 1;
an arbitrary network's layers differ in scale by orders of magnitude (the last ReLU of ``shapes``
outweighs the first by 100x), so each term is taken relative to its target's size instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checks import choice, number, positive_int
from ..core.device import threads
from ..core.errors import InputError, LayerError
from ..core.hooks import differentiable, frozen, trace
from ..core.inputs import check_inputs, check_size
from ..core.layers import conv_layers, named_layers, resolve
from ..core.results import Result
from ..core.seeding import generator
from .priors import total_variation

INITS = ("content", "noise", "style")
SMALL = 4 * 64 * 64  # pixels per step up to which one CPU thread is used (threads only add waiting)
OPTIMIZERS = ("adam", "lbfgs")
# modules that may sit between a convolution and its non-linearity ("conv -> BN -> ReLU")
_BETWEEN = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm, nn.Identity, nn.Dropout, nn.Dropout2d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish)


@dataclass(repr=False)
class StyleResult(Result):
    """What :func:`style_transfer` returns.

    Attributes:
        image: the stylised images ``[N, C, H, W]`` in ``[0, 1]`` (the content images' size).
        trace: ``"content"``, ``"style"``, ``"tv"``, ``"total"`` -> ``[steps, N]`` weighted loss of each
            image at the start of each step (before its update).
        layers: ``"content"`` and ``"style"`` -> the layer names used.
        content, style: the content images (after ``size``) and the style images, for the figure
            (``None`` when not kept).
    """

    image: torch.Tensor
    trace: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: dict[str, list[str]] = field(default_factory=dict)
    content: torch.Tensor | None = None
    style: torch.Tensor | None = None

    def scalars(self) -> dict:
        """Images, steps, layers used, and the mean total loss at the first and the last step."""
        out: dict = {"n": len(self.image)}
        total = self.trace.get("total")
        if total is not None and len(total):
            out.update(steps=len(total), first_loss=float(total[0].mean()), final_loss=float(total[-1].mean()))
        out.update({f"{kind}_layers": ", ".join(names) for kind, names in self.layers.items()})
        return out

    def figure(self, **kwargs):
        """Content | style | result per image (:func:`underhood.viz.synthesis.pairs_figure`; ``kwargs`` go to it);
        only the results when the inputs were not kept."""
        from ..viz.synthesis import pairs_figure

        columns, headers = [], []
        if self.content is not None:
            columns.append(list(self.content))
            headers.append("content")
        if self.style is not None:
            columns.append([self.style[i if len(self.style) > 1 else 0] for i in range(len(self.image))])
            headers.append("style")
        columns.append(list(self.image))
        headers.append("result")
        return pairs_figure(list(zip(*columns)), headers, **kwargs)


def gram(features: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Gram matrix of feature maps: ``G_ij = sum_k F_ik F_jk`` over positions ``k``.

    Args:
        features: ``[N, C, H, W]``; ``F`` is each sample's ``[C, H * W]`` matrix.
        normalize: divide by ``C * H * W`` (default), so that Gatys et al.'s layer loss
            ``E_l = 1 / (4 N_l^2 M_l^2) sum (G - A)^2`` is ``1/4 sum (gram(x) - gram(a))^2``
            (see :func:`style_loss`) and images of different sizes are compared fairly;
            ``False`` gives the raw ``F F^T``.

    Returns:
        ``[N, C, C]``, symmetric; it does not change when positions are permuted.

    Example:
        >>> gram(torch.ones(1, 2, 3, 3), normalize=False)
        tensor([[[9., 9.],
                 [9., 9.]]])
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 4:
        raise InputError(f"features: expected a [N, C, H, W] tensor, got {getattr(features, 'shape', type(features))}")
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    g = flat @ flat.transpose(1, 2)
    return g / (c * h * w) if normalize else g


def style_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gatys et al.'s layer style loss ``E_l`` per sample: ``1/4 sum_ij (gram(features) - target)_ij^2``.

    Args:
        features: ``[N, C, H, W]`` feature maps of the image being optimised.
        target: ``[N, C, C]`` or ``[1, C, C]`` normalised Gram matrices of the style (``gram(...)``).

    Returns:
        ``[N]``; ``0`` when the Gram matrices match (e.g. features against their own Gram).
    """
    return 0.25 * (gram(features) - target).pow(2).sum((1, 2))


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Content loss per sample: the mean squared feature difference, ``[N]``.

    Gatys et al. use ``1/2 sum (F - P)^2``; the mean (that sum divided by ``N_l M_l / 2``) keeps
    the weights independent of the image size and of the layer's width.
    """
    return (features - target).pow(2).flatten(1).mean(1)


def _call_order(model: nn.Module, example: torch.Tensor) -> tuple[list[str], dict[str, int]]:
    """One forward pass on ``example`` (eval mode, no gradients): the order in which named modules first
    return, and their call counts."""
    record = trace(model, example)
    return record.returned, record.calls


def _default_layers(model: nn.Module, order: list[str], calls: dict[str, int]) -> list[str]:
    """Every Conv2d that runs, each replaced by the activation module that directly follows it
    (through normalisation layers) when that module runs once per forward."""
    modules = named_layers(model)
    picked = []
    for conv in (c for c in conv_layers(model) if calls.get(c)):
        chosen = conv
        if calls[conv] == 1:
            for name in order[order.index(conv) + 1:]:
                if isinstance(modules[name], _ACTIVATIONS) and calls[name] == 1:
                    chosen = name
                if not isinstance(modules[name], _BETWEEN):
                    break
        picked.append(chosen)
    if not picked:
        raise LayerError("style_layers: the model has no Conv2d layer that runs; name the layers explicitly")
    return picked


def _as_batch(x: object) -> object:
    return x[None] if isinstance(x, torch.Tensor) and x.ndim == 3 else x


@contextlib.contextmanager
def _features(model: nn.Module, layers: Sequence[str], counts: dict[str, int]) -> Iterator[Callable]:
    """Yield ``run(x) -> {layer: output}`` through :func:`underhood.core.hooks.differentiable`: one
    forward pass that stops once every layer has run ``counts[layer]`` times, each output checked
    to be a ``[N, C, H, W]`` feature map."""
    with differentiable(model, layers, counts=counts) as forward:
        def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
            feats, _ = forward(x)
            for name, out in feats.items():
                if out.ndim != 4:
                    raise LayerError(f"layers: {name!r} returns {tuple(out.shape)}, not [N, C, H, W] feature "
                                     "maps; pick a convolutional layer")
            return feats
        yield run


def style_transfer(model: nn.Module, content: torch.Tensor, style: torch.Tensor, *,
                   content_layers: str | Sequence[str] | None = None,
                   style_layers: str | Sequence[str] | None = None,
                   content_weight: float = 1.0, style_weight: float = 100.0, tv_weight: float = 0.0,
                   steps: int = 300, lr: float | None = None, optimizer: str = "adam", init: str = "content",
                   seed: int = 0, size: int | tuple[int, int] | None = None,
                   progress: bool = False) -> StyleResult:
    """Render the content images in the style of a style image (Gatys et al. 2015).

    Minimises ``content_weight * L_content + style_weight * L_style + tv_weight * TV`` over the
    image (module docstring). The image is ``sigmoid(z)`` of free parameters ``z`` (so it stays in
    ``(0, 1)`` with no clipping, for Adam and L-BFGS alike), started from ``logit`` of the init image.

    Default layers: every ``Conv2d`` that runs, each read after its non-linearity when one follows it
    directly or through normalisation layers (``conv -> BN -> ReLU`` gives the ReLU, as Gatys's
    ``relu1_1 ... relu5_1``; a functional ``F.relu`` gives the conv itself), for style; the middle
    one of these for content. On the built-in ``shapes`` model: style ``features.2, 6, 9, 13, 16``,
    content ``features.9``. ImageNet VGG features give the classic painterly look.

    Args:
        model: any convolutional model taking ``[0, 1]`` pixels; frozen during the call and restored.
        content: ``[N, C, H, W]`` or ``[C, H, W]`` images in ``[0, 1]``.
        style: ``[1, C, H', W']`` (shared by every content image) or ``[N, C, H', W']`` (one each);
            any size (Gram matrices are normalised by the number of positions), but the texture scale
            the model sees depends on it.
        content_layers, style_layers: layer names (dotted paths), or ``None`` for the defaults.
        content_weight, style_weight, tv_weight: the loss weights (of relative errors, see the module
            docstring). With ``style_weight=100`` the result carries the style's colours and textures
            while the content's shapes stay recognisable (on ``shapes`` with the default layers);
            lower it to keep more content. ``tv_weight`` (about 50; TV is a mean over pixels) smooths
            pixel noise; the paper has none. ``0`` removes a term (and its layers are not run).
        steps: optimisation steps (an L-BFGS step is one iteration with a strong-Wolfe line search).
        lr: step size on ``z``; ``None`` = 0.1 for Adam, 1.0 for L-BFGS.
        optimizer: ``"adam"`` (each image's loss is summed, and Adam is per-element, so a batch gives
            the same images as one at a time) or ``"lbfgs"`` (couples the batch through its line search).
        init: start from ``"content"`` (default), ``"style"`` (resized) or ``"noise"`` (``sigmoid`` of
            standard normal noise drawn with ``seed``).
        seed: seeds the noise init.
        size: resize the content images first: an int for the shorter side, or ``(H, W)``.
        progress: show a tqdm bar over steps.

    Small jobs on CPU (up to ``SMALL`` pixels per step) run on one thread: there, threads only wait.

    Returns:
        A :class:`StyleResult`: ``image [N, C, H, W]``, ``trace`` of losses, ``layers`` used.

    Example:
        >>> model = underhood.load_model("shapes")                          # doctest: +SKIP
        >>> data = underhood.datasets.shapes(2, seed=1)                     # doctest: +SKIP
        >>> out = style_transfer(model, data.images[:1], data.images[1:])  # doctest: +SKIP
        >>> out.image.shape                                                # doctest: +SKIP
        torch.Size([1, 3, 64, 64])
    """
    _check_options(steps, optimizer, init, lr, (content_weight, style_weight, tv_weight))
    content = check_inputs(model, _as_batch(content), "content")
    style = check_inputs(model, _as_batch(style), "style")
    if len(style) not in (1, len(content)):
        raise InputError(f"style: expected 1 image or one per content image ({len(content)}), got {len(style)}")
    if size is not None:
        content = _resize(content, size)
        check_size(model, tuple(content.shape[-2:]), "size", channels=content.shape[1], hint="pass a larger size")
    lr = (0.1 if optimizer == "adam" else 1.0) if lr is None else float(lr)
    weights = {"content": float(content_weight), "style": float(style_weight), "tv": float(tv_weight)}
    small = content.device.type == "cpu" and content[:, 0].numel() <= SMALL
    with frozen(model), threads(1) if small else contextlib.nullcontext():
        c_layers, s_layers, counts = _layers(model, content, content_layers, style_layers)
        use = {"content": c_layers if content_weight else [], "style": s_layers if style_weight else []}
        with _features(model, list(dict.fromkeys(use["content"] + use["style"])), counts) as run:
            loss = _objective(run, content, style, use, weights)
            z = _init(content, style, init, seed).requires_grad_(True)
            losses = _optimise(z, loss, optimizer, lr, steps, progress)
    return StyleResult(image=torch.sigmoid(z.detach()), trace=losses, layers={"content": c_layers, "style": s_layers},
                       content=content.detach(), style=style.detach())


def _objective(run: Callable, content: torch.Tensor, style: torch.Tensor, use: dict[str, list[str]],
               weights: dict[str, float]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``loss(x) -> {"content", "style", "tv", "total"}``, each ``[N]`` (weighted, per image).

    Each layer's ``E_l`` is divided by ``1/4 sum A^2`` (the ``E_l`` of an all-zero feature map) and
    each content loss by ``mean P^2``: relative errors, so every layer counts whatever its
    activation scale and one set of weights suits many models. (Gatys et al. instead rescaled
    VGG's filters to a mean activation of 1.)
    """
    with torch.no_grad():
        target_c = run(content) if use["content"] else {}
        grams = {n: gram(f) for n, f in (run(style) if use["style"] else {}).items() if n in use["style"]}
    scale_c = {n: target_c[n].pow(2).flatten(1).mean(1).clamp_min(1e-12) for n in use["content"]}
    scale_s = {n: 0.25 * grams[n].pow(2).sum((1, 2)).clamp_min(1e-12) for n in use["style"]}

    def loss(x: torch.Tensor) -> dict[str, torch.Tensor]:
        acts = run(x)
        zero = x.new_zeros(len(x))
        c = sum((content_loss(acts[n], target_c[n]) / scale_c[n] for n in use["content"]), zero)
        s = sum((style_loss(acts[n], grams[n]) / scale_s[n] for n in use["style"]), zero)
        parts = {"content": weights["content"] * c,
                 "style": weights["style"] * s / max(len(use["style"]), 1),
                 "tv": weights["tv"] * total_variation(x) / x[0].numel() if weights["tv"] else zero}
        parts["total"] = parts["content"] + parts["style"] + parts["tv"]
        return parts
    return loss


def _optimise(z: torch.Tensor, loss: Callable, optimizer: str, lr: float, steps: int,
              progress: bool) -> dict[str, torch.Tensor]:
    """Minimise ``loss(sigmoid(z))["total"].sum()`` over ``z`` in place; the losses before each step."""
    from tqdm.auto import tqdm

    opt = torch.optim.Adam([z], lr=lr) if optimizer == "adam" else \
        torch.optim.LBFGS([z], lr=lr, max_iter=1, history_size=20, line_search_fn="strong_wolfe")
    rows: list[dict[str, torch.Tensor]] = []
    first = [True]

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        parts = loss(torch.sigmoid(z))
        if first[0]:  # the step's first evaluation (L-BFGS evaluates more in its line search)
            rows.append({k: v.detach() for k, v in parts.items()})
            first[0] = False
        total = parts["total"].sum()  # summed, not averaged: each image gets its own gradient
        total.backward()
        return total

    for _ in tqdm(range(steps), desc="style transfer", disable=not progress, leave=False):
        first[0] = True
        opt.step(closure)
    return {k: torch.stack([r[k] for r in rows]).cpu() for k in ("content", "style", "tv", "total")}


def _check_options(steps: object, optimizer: object, init: object, lr: object, weights: tuple) -> None:
    positive_int("steps", steps)
    choice("optimizer", optimizer, OPTIMIZERS)
    choice("init", init, INITS)
    if lr is not None:
        number("lr", lr, strict=True)
    for name, w in zip(("content_weight", "style_weight", "tv_weight"), weights):
        number(name, w)
    if not weights[0] and not weights[1]:
        raise InputError("content_weight, style_weight: both are 0; give at least one a positive weight")


def _names(layers: str | Sequence[str] | None, arg: str) -> list[str] | None:
    if layers is None:
        return None
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise LayerError(f"{arg}: no layer named; give at least one name or None for the defaults")
    return names


def _layers(model: nn.Module, content: torch.Tensor, content_layers: object, style_layers: object):
    """Resolve the layer names (defaults where ``None``) and count each layer's calls per forward."""
    c_names, s_names = _names(content_layers, "content_layers"), _names(style_layers, "style_layers")
    for arg, names in (("content_layers", c_names), ("style_layers", s_names)):
        for name in names or ():
            try:
                resolve(model, name)
            except LayerError as exc:
                raise LayerError(str(exc).replace("layer:", f"{arg}:", 1)) from None
    order, calls = _call_order(model, content[:1])
    if c_names is None or s_names is None:
        picked = _default_layers(model, order, calls)
        c_names = c_names if c_names is not None else [picked[len(picked) // 2]]
        s_names = s_names if s_names is not None else picked
    for arg, names in (("content_layers", c_names), ("style_layers", s_names)):
        for name in names:
            if not calls.get(name):
                raise LayerError(f"{arg}: {name!r} did not run in forward; pick a layer that does")
    return c_names, s_names, {n: calls[n] for n in c_names + s_names}


def _init(content: torch.Tensor, style: torch.Tensor, init: str, seed: int) -> torch.Tensor:
    """The free parameters ``z`` (``image = sigmoid(z)``) of the starting image."""
    if init == "noise":
        g = generator(seed)
        return torch.randn(content.shape, generator=g).to(content.device)
    start = content if init == "content" else \
        F.interpolate(style, size=content.shape[-2:], mode="bilinear", align_corners=False,
                      antialias=True).expand_as(content)
    return torch.logit(start.clamp(1e-3, 1 - 1e-3)).clone()


def _resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        h, w = x.shape[-2:]
        s = size / min(h, w)
        hw = (max(1, round(h * s)), max(1, round(w * s)))
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        hw = (int(size[0]), int(size[1]))
    else:
        raise InputError(f"size: expected a positive int (shorter side) or (H, W), got {size!r}")
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


__all__ = ["gram", "style_loss", "content_loss", "style_transfer", "StyleResult", "INITS", "OPTIMIZERS"]
