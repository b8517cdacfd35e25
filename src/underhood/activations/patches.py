"""Top-activating images and patches of every channel of a layer (Zeiler & Fergus 2014, Fig. 2).

A dataset is scanned once in batches: each channel keeps the ``k`` images on which its maximum
over positions is highest, with that position (a streaming top-k: memory does not grow with the
dataset). The exact receptive field of the winning unit then gives the image patch that can
influence it, and a backward pass from that unit with the deconvnet or guided-backprop ReLU
rule gives the pattern inside the patch that excites it.

Token layers ``[N, L, C]`` (vision transformers) and channels-last layers ``[N, h, w, C]`` are
scanned on their ``h x w`` grid (the ``[N, C, h, w]`` view of :func:`underhood.activations.maps`;
prefix tokens such as the class token are not positions). A unit after attention sees the whole
image, so its box is the patch cell it sits on (the ``H/h x W/w`` pixels its token embeds); a
channels-last unit whose field the tracer follows (convolutions, per-position MLPs) gets its
receptive field, as a convolutional unit does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.batching import batches, resolve_batch_size, stream
from ..core.checks import choice, positive_int
from ..core.device import model_device
from ..core.errors import InputError, LayerError, ModelError
from ..core.hooks import StopForward, hooked
from ..core.inputs import dataset_images
from ..core.layers import first_tensor, layers, resolve
from ..core.layout import Layout, infer
from ..core.results import Result
from ..core.rules import RULES, relu_rule
from ..core.state import frozen
from .maps import feature_view

PAD = 0.5  # grey, for the part of a receptive field that falls outside the image


@dataclass(repr=False)
class TopPatches(Result):
    """What :func:`top_patches` found for each scanned channel ``c = channels[i]``.

    Attributes:
        layer: the layer's name.
        n: number of images scanned.
        channels: ``[C]`` the channel ids (row ``i`` of every other tensor is channel ``channels[i]``).
        values: ``[C, k]`` the channel's maximum over positions on each of its top images, descending.
        index: ``[C, k]`` the dataset index of those images (ties: the lower index first).
        position: ``[C, k, 2]`` ``(y, x)`` of the maximum in the layer's map, on the token grid for a
            token layer (``(0, 0)`` for a layer without spatial output).
        box: ``[C, k, 4]`` ``(top, left, bottom, right)`` of the unit's receptive field in input
            pixels, half-open; it may extend beyond the image (the part outside is padding). For a
            token or channels-last unit that sees the whole input: its patch cell (see :func:`boxes`).
        field: ``(height, width)`` of the receptive field; ``None`` when a unit sees the whole input.
        info: ``layout`` (how the layer was read, e.g. ``"tokens on a 14x14 grid after 1 prefix
            token"``; ``None`` for ``[N, C]``) and ``box`` (``"field"``, ``"cell"`` or ``"image"``).
        patches: ``[C, k, channels, fh, fw]`` the images cut to each box (grey outside the image),
            or ``None`` when not requested.
        patterns: ``[C, k, channels, fh, fw]`` the gradient of the unit w.r.t. the input under
            ``rule``, cut to the same box (raw: signed, unnormalised), or ``None``.
        rule: the ReLU rule of ``patterns`` (``"deconvnet"``, ``"guided"`` or ``"gradient"``).
    """

    layer: str
    n: int
    channels: torch.Tensor
    values: torch.Tensor
    index: torch.Tensor
    position: torch.Tensor
    box: torch.Tensor
    field: tuple[int, int] | None
    patches: torch.Tensor | None = None
    patterns: torch.Tensor | None = None
    rule: str | None = None
    info: dict = field(default_factory=dict)

    def scalars(self) -> dict:
        channels, k = self.index.shape
        out = {"layer": self.layer, "n": self.n, "k": k, "channels": channels}
        if self.field is not None:
            out["field"] = f"{self.field[0]}x{self.field[1]}"
        if self.info.get("box") == "cell":
            out["box"] = "patch cell"
        if self.rule is not None:
            out["rule"] = self.rule
        return out

    def figure(self, **kwargs):
        """The top-patches figure (:func:`underhood.viz.units.top_patches_figure`; ``kwargs`` go to it)."""
        from ..viz.units import top_patches_figure

        return top_patches_figure(self, **kwargs)


@dataclass
class Partial:
    """A streaming top-k state over part of a dataset: mergeable with :func:`merge`."""

    values: torch.Tensor    # [C, m] descending
    index: torch.Tensor     # [C, m] dataset indices
    position: torch.Tensor  # [C, m, 2]
    channels: torch.Tensor  # [C] the channel ids of the rows

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "index": self.index, "position": self.position, "channels": self.channels}


def _keep(values: torch.Tensor, index: torch.Tensor, position: torch.Tensor, k: int, channels: torch.Tensor) -> Partial:
    """The ``k`` best of each row: value descending, ties broken by the lower dataset index."""
    by_index = index.argsort(dim=1, stable=True)
    values, index = values.gather(1, by_index), index.gather(1, by_index)
    position = position.gather(1, by_index[..., None].expand(-1, -1, 2))
    order = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return Partial(values.gather(1, order), index.gather(1, order),
                   position.gather(1, order[..., None].expand(-1, -1, 2)), channels)


def merge(parts: Sequence[Partial], k: int) -> Partial:
    """Merge top-k states of disjoint parts of a dataset (the result does not depend on how it was split)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise InputError("parts: nothing to merge")
    return _keep(torch.cat([p.values for p in parts], 1), torch.cat([p.index for p in parts], 1),
                 torch.cat([p.position for p in parts], 1), k, parts[0].channels)


def _channels(channels: object, count: int) -> torch.Tensor:
    if channels is None:
        return torch.arange(count)
    if isinstance(channels, int):
        channels = [channels]
    ids = torch.as_tensor(list(channels) if not isinstance(channels, torch.Tensor) else channels).long().flatten()
    if len(ids) == 0 or int(ids.min()) < 0 or int(ids.max()) >= count:
        raise InputError(f"channels: expected channel ids in 0..{count - 1}, got {channels!r}")
    return ids


def scan(model: nn.Module, dataset: object, layer: str, k: int = 9, *, channels: object = None,
         batch_size: int | str | None = None, start: int = 0, stop: int | None = None,
         progress: bool = False, tokens: int | None = None, grid: tuple[int, int] | None = None,
         layout: str | None = None) -> Partial:
    """The streaming top-k pass of :func:`top_patches` over ``dataset[start:stop]`` alone.

    Dataset indices in the result are global (``start`` included), so the states of several
    slices merge with :func:`merge` into the state of the whole. The running top-k stays on the
    model's device during the pass; the returned state is on the CPU.
    """
    images = dataset_images(dataset, model)
    stop = len(images) if stop is None else stop
    part_images = images[start:stop]
    if len(part_images) == 0:
        raise InputError(f"start/stop: the slice {start}:{stop} of a {len(images)}-image dataset is empty")
    size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]))
    reading = {"tokens": tokens, "grid": grid, "layout": layout}
    state: Partial | None = None
    ids = rows = None
    for part, acts in stream(model, layer, part_images, size, progress=progress, desc="top patches"):
        a = feature_view(acts[layer], images.shape[-2:], layer, **reading)[0]
        if a.ndim < 2:
            raise LayerError(f"layer: {layer!r} gives {a.ndim}-D output; pick a layer with channels")
        if ids is None:
            ids = _channels(channels, a.shape[1])
            rows = ids.to(a.device)
        a = a[:, rows].float()
        flat = a.flatten(2) if a.ndim > 2 else a[:, :, None]
        best, where = flat.max(2)  # the first maximal position (row-major on the grid)
        width = a.shape[-1] if a.ndim == 4 else flat.shape[2]  # [N, C]: where is 0, the position (0, 0)
        pos = torch.stack([where // width, where % width], -1).transpose(0, 1)
        index = torch.arange(part.start + start, part.stop + start, device=a.device)
        values, index = best.T, index[None].expand(len(ids), -1)
        if state is not None:
            values = torch.cat([state.values, values], 1)
            index = torch.cat([state.index, index], 1)
            pos = torch.cat([state.position, pos], 1)
        state = _keep(values, index, pos, k, ids)
    assert state is not None
    return Partial(state.values.cpu(), state.index.cpu(), state.position.cpu(), state.channels)


Geometry = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


def _geometry(model: nn.Module, layer: str, shape: tuple[int, ...],
              reading: dict) -> tuple[Layout | None, Geometry | None]:
    """The layer's spatial reading and its receptive field ``(size, jump, start)`` (``None``: global)."""
    rows = {r.name: r for r in layers(model, input_size=shape)}
    row = rows.get(layer)
    if row is None or row.output_shape is None:
        return None, None
    lay = infer((1, *row.output_shape), shape[-2:], layer=layer, **reading)
    if row.rf is None:
        return lay, None
    return lay, (row.rf, row.jump, row.start)  # type: ignore[return-value]


def boxes(model: nn.Module, layer: str, position: torch.Tensor, shape: tuple[int, ...], *,
          tokens: int | None = None, grid: tuple[int, int] | None = None,
          layout: str | None = None) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """Receptive-field boxes ``(top, left, bottom, right)`` (half-open) of the units at ``position [..., 2]``,
    and the field's ``(height, width)`` (``None`` when a unit sees the whole input).

    The field is traced through every convolution, pooling (with stride, padding, dilation) and
    the union of residual branches (see :func:`underhood.core.layers.layers`), also through the
    per-position layers of a channels-last map. A unit whose field is the whole input gets:

    - on a token grid or a channels-last grid (after attention, a patch merging): its *patch cell*,
      the ``ceil(H/h) x ceil(W/w)`` pixels starting at ``(y H // h, x W // w)``, i.e. the patch its
      token embeds. A ViT unit sees the whole image; we show the patch it sits on.
    - otherwise (after global pooling or a linear layer, or a convolutional map whose field the
      tracer cannot follow): the whole image.

    ``tokens`` / ``grid`` / ``layout`` read the layer as in :func:`underhood.activations.maps`.
    """
    lay, geometry = _geometry(model, layer, shape, {"tokens": tokens, "grid": grid, "layout": layout})
    return _boxes(position, shape, lay, geometry)[:2]


def _boxes(position: torch.Tensor, shape: tuple[int, ...], lay: Layout | None,
           geometry: Geometry | None) -> tuple[torch.Tensor, tuple[int, int] | None, str]:
    """``(boxes, field, kind)`` with ``kind`` ``"field"``, ``"cell"`` or ``"image"`` (see :func:`boxes`)."""
    h, w = shape[-2:]
    if geometry is None and lay is not None and lay.kind != "nchw":
        (gh, gw), pos = lay.grid, position.long()
        top, left = pos[..., 0] * h // gh, pos[..., 1] * w // gw
        return torch.stack([top, left, top + -(-h // gh), left + -(-w // gw)], -1), None, "cell"
    if geometry is None:
        box = torch.tensor([0, 0, h, w]).expand(*position.shape[:-1], 4).clone()
        return box, None, "image"
    (rh, rw), (jh, jw), (ch, cw) = geometry
    rh_i, rw_i = int(round(rh)), int(round(rw))
    top = torch.floor(ch + position[..., 0].double() * jh - (rh - 1) / 2 + 0.5).long()
    left = torch.floor(cw + position[..., 1].double() * jw - (rw - 1) / 2 + 0.5).long()
    return torch.stack([top, left, top + rh_i, left + rw_i], -1), (rh_i, rw_i), "field"


def crop(image: torch.Tensor, box: Sequence[int], fill: float = PAD) -> torch.Tensor:
    """``image [C, H, W]`` cut to ``box`` (top, left, bottom, right; half-open), ``fill`` outside the image."""
    top, left, bottom, right = (int(v) for v in box)
    c, h, w = image.shape
    out = image.new_full((c, bottom - top, right - left), fill)
    y0, y1, x0, x1 = max(top, 0), min(bottom, h), max(left, 0), min(right, w)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top:y1 - top, x0 - left:x1 - left] = image[:, y0:y1, x0:x1]
    return out


def unit_gradients(model: nn.Module, images: torch.Tensor, layer: str, channels: torch.Tensor, position: torch.Tensor,
                   *, rule: str = "guided", batch_size: int | str | None = None, tokens: int | None = None,
                   grid: tuple[int, int] | None = None, layout: str | None = None) -> torch.Tensor:
    """Gradient of each unit ``layer[i, channels[i], y_i, x_i]`` w.r.t. its own image ``images[i]``,
    under a ReLU backward rule (``"deconvnet"``, ``"guided"`` or the plain ``"gradient"``).

    ``(y, x)`` are positions of the layer's ``[N, C, h, w]`` view: for a token layer, the patch
    token at row ``y``, column ``x`` of the grid (prefix tokens are not positions), for a
    channels-last layer the map's ``(y, x)`` (``tokens`` / ``grid`` / ``layout`` as in
    :func:`underhood.activations.maps`).

    Returns ``[N, C, H, W]`` where ``images`` are; the model is in eval mode with parameters frozen
    during the call and restored afterwards. ``"deconvnet"`` and ``"guided"`` are defined at ReLUs
    only: on a model whose forward runs none (GELU transformers, ConvNeXt) they raise a one-line
    :class:`~underhood.core.errors.ModelError`; use ``rule="gradient"`` there.
    """
    grads, relus = _unit_gradients(model, images, layer, channels, position, rule=rule, batch_size=batch_size,
                                   reading={"tokens": tokens, "grid": grid, "layout": layout})
    if relus == 0 and rule != "gradient":
        raise ModelError(_no_relu(rule))
    return grads


def _no_relu(rule: str) -> str:
    return (f"rule: the {rule} rule acts at ReLUs and found none in forward (GELU, SiLU: no on/off gate to rule), "
            "so it has nothing to act on; use rule='gradient'")


def _unit_gradients(model: nn.Module, images: torch.Tensor, layer: str, channels: torch.Tensor,
                    position: torch.Tensor, *, rule: str, batch_size: int | str | None,
                    reading: dict) -> tuple[torch.Tensor, int]:
    """:func:`unit_gradients` and the number of ReLU calls its rule reached."""
    choice("rule", rule, RULES)
    module = resolve(model, layer)
    device = model_device(model)
    size = resolve_batch_size(batch_size, model, tuple(images.shape[1:]), grad=True)
    grads: list[torch.Tensor] = []
    picked: list[torch.Tensor] = []
    current: dict = {"calls": 0, "stop": False}
    relus = 0

    def hook(mod: nn.Module, inputs: object, output: object) -> None:
        current["calls"] += 1
        t = feature_view(first_tensor(output), images.shape[-2:], layer, **reading)[0]  # a view: differentiable
        c, pos = current["channels"], current["position"]
        rows = torch.arange(len(c), device=t.device)
        if t.ndim == 4:
            value = t[rows, c, pos[:, 0], pos[:, 1]]
        else:
            value = t.reshape(len(c), t.shape[1], -1)[rows, c, 0]
        picked.clear()
        picked.append(value)  # the last call of a reused module wins, as in the scan
        if current["stop"]:
            raise StopForward  # nothing after the layer matters to the gradient

    with frozen(model), hooked(model, {module: hook}):
        for i, part in enumerate(batches(len(images), size)):
            x = images[part].to(device).requires_grad_(True)
            current["channels"] = channels[part].to(device)
            current["position"] = position[part].to(device)
            current["calls"] = 0
            with relu_rule(rule) as mode, torch.enable_grad():
                try:
                    model(x)
                except StopForward:
                    pass
                (grad,) = torch.autograd.grad(picked[0].sum(), x)
            relus += mode.count
            if i == 0:  # the layer runs once per forward: later batches stop right after it
                current["stop"] = current["calls"] == 1
            grads.append(grad.detach())
            picked.clear()
    return (torch.cat(grads).to(images.device) if grads else torch.empty_like(images)), relus


def top_patches(model: nn.Module, dataset: object, layer: str, k: int = 9, *, channels: object = None,
                pattern: str | None = "guided", crops: bool = True, batch_size: int | str | None = None,
                progress: bool = False, max_bytes: int = 2 << 30, tokens: int | None = None,
                grid: tuple[int, int] | None = None, layout: str | None = None) -> TopPatches:
    """For every channel of ``layer``, the ``k`` dataset images that excite it most, with the
    receptive-field patch around the maximum and the unit's deconvnet / guided-backprop pattern.

    A channel's score on an image is its maximum over positions. The dataset is streamed in
    batches (eval mode, no gradients; the forward pass stops after ``layer`` when it can), and a
    running top-k is kept per channel, so memory does not grow with the dataset. Ties go to the
    lower dataset index, so the result does not depend on batching or sharding.

    Token layers ``[N, L, C]`` and channels-last layers ``[N, h, w, C]`` are scanned on their
    ``h x w`` grid (prefix tokens such as the class token are not positions). Their boxes: a unit
    whose receptive field is local (a channels-last map after convolutions) gets that field, as a
    convolutional unit does; a unit after attention sees the whole image, so its box is its patch
    cell, the ``H/h x W/w`` pixels of the patch its token embeds (see :func:`boxes`), and its
    pattern, cut to that cell, is the part of its (global) gradient over its own patch.

    Args:
        dataset: an :class:`~underhood.data.ImageSet` or an ``[N, C, H, W]`` tensor in ``[0, 1]``.
        layer: any layer with ``[N, C, H, W]``, ``[N, C]``, token ``[N, L, C]`` or channels-last
            ``[N, h, w, C]`` output.
        k: images per channel (at most the dataset's size).
        channels: channel ids to scan (default: all).
        pattern: ``"guided"`` (Springenberg et al.), ``"deconvnet"`` (Zeiler & Fergus), ``"gradient"``
            or ``None`` (no patterns). The two rules act at ReLUs; on a model that runs none (GELU
            transformers) the pattern is the plain gradient, ``rule`` says ``"gradient"`` and
            ``info["pattern"]`` says why (:func:`unit_gradients` raises instead).
        crops: cut the patches (and patterns) to the receptive field; with ``False`` only the
            indices, positions and boxes are returned.
        max_bytes: refuse to build patches and patterns larger than this (pick fewer ``channels``).
        tokens: prefix tokens before the patch tokens (default: inferred from ``L`` and the image size).
        grid: ``(h, w)`` of the token grid (default: inferred).
        layout: ``"nchw"``, ``"nhwc"`` or ``"tokens"`` (default: inferred from the output's shape).

    Example:
        >>> tp = top_patches(model, underhood.datasets.shapes(2000), "features.10", k=9)   # doctest: +SKIP
        >>> tp.index[0]       # the 9 images that excite channel 0 most                      # doctest: +SKIP
    """
    images = dataset_images(dataset, model)
    positive_int("k", k)
    if k > len(images):
        raise InputError(f"k: {k} images per channel asked, the dataset has only {len(images)}; pass k <= "
                         f"{len(images)}")
    if pattern is not None and pattern not in RULES:
        raise InputError(f"pattern: expected one of {', '.join(RULES)} or None, got {pattern!r}")
    reading = {"tokens": tokens, "grid": grid, "layout": layout}
    state = scan(model, images, layer, k, channels=channels, batch_size=batch_size, progress=progress, **reading)
    return finish(model, images, layer, state, pattern=pattern if crops else None, crops=crops,
                  batch_size=batch_size, max_bytes=max_bytes, **reading)


def finish(model: nn.Module, images: torch.Tensor, layer: str, state: Partial, *,
           pattern: str | None = "guided", crops: bool = True, batch_size: int | str | None = None,
           max_bytes: int = 2 << 30, tokens: int | None = None, grid: tuple[int, int] | None = None,
           layout: str | None = None) -> TopPatches:
    """Turn a (merged) top-k state into a :class:`TopPatches`: boxes, patches and patterns
    (``tokens`` / ``grid`` / ``layout`` as given to :func:`scan`)."""
    shape = tuple(images.shape[1:])
    reading = {"tokens": tokens, "grid": grid, "layout": layout}
    lay, geometry = _geometry(model, layer, shape, reading)
    box, rf, kind = _boxes(state.position, shape, lay, geometry)
    channels = state.channels
    result = TopPatches(layer, len(images), channels, state.values, state.index, state.position, box, rf,
                        info={"layout": lay.describe() if lay else None, "box": kind})
    if not crops:
        return result
    c, k = state.index.shape
    fh, fw = (int(box[0, 0, 2] - box[0, 0, 0]), int(box[0, 0, 3] - box[0, 0, 1]))
    need = c * k * shape[0] * fh * fw * 4 * (2 if pattern else 1)
    if need > max_bytes:
        raise InputError(f"channels: patches of {c} channels would take {need / 2**30:.1f} GiB; pass fewer channels "
                         f"(e.g. channels=range({max(1, int(c * max_bytes / need))})) or crops=False")
    flat_index = state.index.flatten()
    chosen = images[flat_index]
    result.patches = torch.stack([crop(img, b) for img, b in zip(chosen, box.flatten(0, 1))]).view(
        c, k, shape[0], fh, fw)
    if pattern is not None:
        grads, relus = _unit_gradients(model, chosen, layer, channels.repeat_interleave(k),
                                       state.position.flatten(0, 1), rule=pattern, batch_size=batch_size,
                                       reading=reading)
        if relus == 0 and pattern != "gradient":  # the rule had nothing to act on: say what the pattern is
            result.info["pattern"] = f"the {pattern} rule found no ReLU in forward: the pattern is the plain gradient"
            pattern = "gradient"
        result.patterns = torch.stack([crop(g, b, fill=0.0) for g, b in zip(grads, box.flatten(0, 1))]).view(
            c, k, shape[0], fh, fw)
        result.rule = pattern
    return result
