"""Convolution arithmetic and receptive fields, exact and by gradient.

Three views of "which input pixels can one unit see":

- :func:`conv_output_size`: the side of a convolution's output (kernel ``k``, stride ``s``, padding ``p``,
  dilation ``d``): ``floor((n + 2p - d(k-1) - 1) / s) + 1``, exactly as ``torch.nn.Conv2d`` (EE-559's example:
  20x30, ``k = 3``, ``d = 4`` gives 12x22, since a dilated kernel spans ``1 + (k-1)d`` pixels).
- :func:`stack_fields` and :func:`support`: for a stack of convolutions, the analytic field (size, jump, centre;
  :class:`underhood.core.layers.Field`, the rule :func:`underhood.core.layers.layers` applies to any model) and
  the exact set of input pixels wired to one output unit (with the holes a dilated stack can leave).
- :func:`effective_receptive_field`: the field measured by gradient, ``E|d a_centre / d x|`` over random inputs
  (Luo et al. 2016, "Understanding the effective receptive field"); its support is the analytic field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, LayerError
from .results import Result

Conv = tuple[int, int, int, int]
"""One convolution along one axis: ``(kernel, stride, padding, dilation)``."""


def _pair(name: str, value: object, *, low: int) -> tuple[int, int]:
    v = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(v) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) and a >= low for a in v):
        raise InputError(f"{name}: expected an int >= {low} or a pair of them, got {value!r}")
    return v  # type: ignore[return-value]


def conv_output_size(size: int | Sequence[int], kernel_size: int | Sequence[int], *, stride: int | Sequence[int] = 1,
                     padding: int | Sequence[int] | str = 0, dilation: int | Sequence[int] = 1
                     ) -> int | tuple[int, int]:
    """The output side(s) of a convolution or pooling, as ``torch.nn.Conv2d`` computes them.

    ``out = floor((n + 2p - d(k - 1) - 1) / s) + 1``: a kernel of size ``k`` with dilation ``d`` spans
    ``1 + (k - 1) d`` input pixels with only ``k`` taps (EE-559, "Dilated convolution": ``k = 3, d = 4`` on a
    20x30 map leaves 12x22). ``padding="same"`` keeps the size (stride 1), ``"valid"`` is 0.

    Args:
        size: input side ``n``, or ``(H, W)``; the result has the same form.
        kernel_size, stride, padding, dilation: as ``nn.Conv2d`` takes them (an int or a pair).

    Example:
        >>> conv_output_size((20, 30), 3, dilation=4)
        (12, 22)
        >>> conv_output_size(64, 3, stride=2, padding=1)
        32
    """
    single = not isinstance(size, (tuple, list, torch.Size))
    n = _pair("size", size, low=1)
    k, s, d = _pair("kernel_size", kernel_size, low=1), _pair("stride", stride, low=1), _pair("dilation", dilation,
                                                                                             low=1)
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise InputError(f"padding: expected an int, a pair, 'same' or 'valid', got {padding!r}")
        if padding == "same" and s != (1, 1):
            raise InputError("padding: 'same' needs stride 1 (as in torch); give the padding in pixels")
        out = n if padding == "same" else tuple((a - dd * (kk - 1) - 1) // 1 + 1 for a, kk, dd in zip(n, k, d))
    else:
        p = _pair("padding", padding, low=0)
        out = tuple((a + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for a, kk, ss, pp, dd in zip(n, k, s, p, d))
    if min(out) < 1:
        raise InputError(f"size: an input of {n[0] if single else tuple(n)} is smaller than the kernel's span "
                         f"{tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d))} (with padding {padding!r}); "
                         "give a larger input or more padding")
    return out[0] if single else tuple(out)  # type: ignore[return-value]


def stack_fields(convs: Sequence[Conv]) -> list[Any]:
    """The receptive field after each convolution of a stack along one axis.

    Each ``(k, s, p, d)`` maps the field ``(r, j, c)`` (size, jump between neighbouring units and centre of unit
    0, in input pixels) to ``(r + d(k-1) j, j s, c + (d(k-1)/2 - p) j)``; this is
    :meth:`underhood.core.layers.Field.through`, the rule the architecture table uses.

    Example:
        >>> [f.r for f in stack_fields([(3, 1, 1, 1), (3, 1, 2, 2), (3, 1, 4, 4)])]   # Yu and Koltun's stack
        [3.0, 7.0, 15.0]
    """
    from .layers import Field

    field, out = Field(1.0, 1.0, 0.0), []
    for conv in convs:
        k, s, p, d = _conv(conv)
        field = field.through(k, s, p, d)
        out.append(field)
    return out


def _conv(conv: Sequence[int]) -> Conv:
    if len(conv) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in conv) \
            or min(conv[0], conv[1], conv[3]) < 1 or conv[2] < 0:
        raise InputError(f"convs: each convolution is (kernel, stride, padding, dilation) with kernel, stride, "
                         f"dilation >= 1 and padding >= 0; got {tuple(conv)!r}")
    return tuple(conv)  # type: ignore[return-value]


def taps(index: int, conv: Conv) -> list[int]:
    """The input positions (along one axis; negative or past the end = padding) read by output unit ``index``.

    Unit ``i`` of a convolution ``(k, s, p, d)`` reads ``i s - p + a d`` for ``a = 0 .. k-1``.

    Example:
        >>> taps(0, (3, 1, 0, 4))
        [0, 4, 8]
    """
    k, s, p, d = _conv(conv)
    return [index * s - p + a * d for a in range(k)]


def support(size: int | Sequence[int], convs: Sequence[Conv] | Sequence[tuple[Conv, Conv]],
            position: int | Sequence[int] | None = None) -> torch.Tensor:
    """The input pixels wired to one output unit of a stack of convolutions: a boolean mask of the input.

    Exact, holes included (a stack of dilation-4 convolutions alone skips three pixels in four), padding
    excluded. It is the support of ``d out[position] / d input`` when every weight is non-zero (the
    back-projection of the unit through each layer's taps, a transposed convolution with a kernel of ones).

    Args:
        size: the input side ``n`` (1-D) or ``(H, W)``.
        convs: the stack, first layer first: ``(k, s, p, d)`` per layer (the same along both axes in 2-D),
            or ``((k, s, p, d), (k, s, p, d))`` per layer for (height, width).
        position: the output unit (an index, or ``(row, col)``); default the centre of the output.

    Returns:
        a bool tensor ``[n]`` or ``[H, W]``.

    Example:
        >>> support(11, [(3, 1, 0, 1), (3, 1, 0, 2)]).int().tolist()
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    """
    one = not isinstance(size, (tuple, list, torch.Size))
    n = _pair("size", size, low=1)
    layers = [(c, c) if isinstance(c[0], int) else tuple(c) for c in convs]
    if not layers:
        raise InputError("convs: give at least one convolution (kernel, stride, padding, dilation)")
    layers = [(_conv(a), _conv(b)) for a, b in layers]  # type: ignore[misc]
    sizes = [n]
    for cy, cx in layers:
        sizes.append(conv_output_size(sizes[-1], (cy[0], cx[0]), stride=(cy[1], cx[1]), padding=(cy[2], cx[2]),
                                      dilation=(cy[3], cx[3])))
    out = sizes[-1]
    if one:
        if position is not None and not isinstance(position, int):
            raise InputError(f"position: a 1-D stack takes an index, got {position!r}")
        pos = (0, out[1] // 2 if position is None else position)
    else:
        pos = (out[0] // 2, out[1] // 2) if position is None else tuple(int(v) for v in position)  # type: ignore
    if len(pos) != 2 or not (0 <= pos[0] < out[0] and 0 <= pos[1] < out[1]):
        shown = out[1] if one else f"{out[0]}x{out[1]}"
        raise InputError(f"position: {position!r} is outside the output of size {shown}; give an index inside it")
    if one:  # a 1-D stack is a 2-D one of height 1 with 1-tap kernels along the height
        sizes = [(1, s[1]) for s in sizes]
        layers = [((1, 1, 0, 1), cx) for _, cx in layers]
    mask = torch.zeros(1, 1, *sizes[-1], dtype=torch.float64)
    mask[0, 0, pos[0], pos[1]] = 1.0
    for (cy, cx), before in zip(reversed(layers), reversed(sizes[:-1])):
        k, s, p, d = zip(cy, cx)
        full = [(m - 1) * ss - 2 * pp + dd * (kk - 1) + 1 for m, ss, pp, dd, kk in zip(mask.shape[2:], s, p, d, k)]
        extra = [b - f for b, f in zip(before, full)]  # rows/columns the forward pass dropped at the end
        mask = F.conv_transpose2d(mask, torch.ones(1, 1, *k, dtype=torch.float64), stride=s, padding=p,
                                  dilation=d, output_padding=tuple(min(e, max(ss, dd) - 1) for e, ss, dd in
                                                                   zip(extra, s, d)))
        mask = F.pad(mask, (0, before[1] - mask.shape[3], 0, before[0] - mask.shape[2])) > 0
        mask = mask.double()
    result = mask[0, 0] > 0
    return result[0] if one else result


@dataclass(repr=False)
class EffectiveField(Result):
    """What :func:`effective_receptive_field` returns, for one layer.

    Attributes:
        layer: the layer's name.
        position: the ``(row, col)`` unit of the layer's map whose gradient was taken.
        gradient: ``[H, W]`` mean over inputs of ``|d a / d x|`` summed over input channels.
        rf, jump, start: the analytic field (size, jump and centre of unit 0, per axis; ``None`` for a layer that
            sees the whole input), from :func:`underhood.core.layers.layers`.
        box: ``(top, left, bottom, right)`` input pixels (inclusive) of the analytic field of ``position``,
            clipped to the input; ``None`` when global.
        n_samples: the random inputs averaged.
    """

    layer: str
    position: tuple[int, int]
    gradient: torch.Tensor
    rf: tuple[float, float] | None
    jump: tuple[float, float] | None
    start: tuple[float, float] | None
    box: tuple[int, int, int, int] | None
    n_samples: int

    @property
    def measured_box(self) -> tuple[int, int, int, int] | None:
        """``(top, left, bottom, right)`` of the pixels with a non-zero gradient (``None``: none)."""
        rows, cols = torch.nonzero(self.gradient.sum(1)).flatten(), torch.nonzero(self.gradient.sum(0)).flatten()
        if len(rows) == 0:
            return None
        return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])

    def scalars(self) -> dict:
        """Layer, unit, analytic field size and box, measured box, and whether they agree."""
        return {"layer": self.layer, "position": list(self.position),
                "rf": None if self.rf is None else list(self.rf), "box": None if self.box is None else list(self.box),
                "measured_box": None if self.measured_box is None else list(self.measured_box),
                "agrees": self.box is not None and self.measured_box == self.box, "n_samples": self.n_samples}


def effective_receptive_field(model: nn.Module, layer: str, *, input_size: Sequence[int] | None = None,
                              position: Sequence[int] | None = None, n_samples: int = 8, seed: int = 0,
                              batch_size: int = 8) -> EffectiveField:
    """The receptive field of one unit measured by gradient (Luo et al. 2016, "effective receptive field").

    ``g(x) = E_x |d (sum_c a_c[position]) / d x|``, summed over input channels, for ``x ~ U[0, 1]`` pixels:
    how strongly each input pixel moves the unit at ``position`` of ``layer`` (all its channels). Its support
    is the analytic receptive field of :func:`underhood.core.layers.layers` (a max pooling routes the gradient
    through one pixel per window, so averaging over several inputs fills it); its mass concentrates near the
    centre (Luo et al.: roughly Gaussian, far smaller than the theoretical field).

    Args:
        model: any module taking ``[N, C, H, W]`` pixels; left as found (eval mode for the passes).
        layer: a layer with a spatial output ``[N, C, h, w]``.
        input_size: ``(C, H, W)``; default ``model.input_size``.
        position: ``(row, col)`` in the layer's map; default its centre.
        n_samples: random inputs averaged; ``seed`` draws them.

    Returns:
        an :class:`EffectiveField` (``gradient [H, W]``, the analytic ``box``; ``summary()``, ``save(dir)``).

    Example:
        >>> erf = effective_receptive_field(load_model("shapes"), "features.10")   # doctest: +SKIP
        >>> erf.box == erf.measured_box                                            # doctest: +SKIP
        True
    """
    from .checks import positive_int
    from .device import model_device
    from .hooks import capture, frozen
    from .layers import layers as table

    positive_int("n_samples", n_samples)
    positive_int("batch_size", batch_size)
    size = tuple(input_size) if input_size is not None else getattr(model, "input_size", None)
    if size is None or len(size) != 3:
        raise InputError(f"input_size: expected (C, H, W), got {size!r}; pass input_size=(3, 64, 64)")
    row = next((r for r in table(model, input_size=size) if r.name == layer), None)
    if row is None:
        from .names import resolve
        resolve(model, layer)  # an unknown name: the error lists close matches
        raise LayerError(f"layer: {layer!r} does not run in forward; pick a layer that does (see `underhood layers`)")
    shape = row.output_shape or ()
    if len(shape) != 3 or row.layout not in (None, "nchw"):
        raise LayerError(f"layer: {layer!r} gives {row.output}, not a [C, h, w] map; pick a convolutional layer")
    h, w = shape[1:]
    pos = (h // 2, w // 2) if position is None else tuple(int(v) for v in position)
    if len(pos) != 2 or not (0 <= pos[0] < h and 0 <= pos[1] < w):
        raise InputError(f"position: {position!r} is outside the {h}x{w} map of {layer!r}; give (row, col) inside it")
    dev = model_device(model)
    gen = torch.Generator().manual_seed(int(seed))
    total = torch.zeros(size[1], size[2], dtype=torch.float64)
    with frozen(model), torch.enable_grad(), capture(model, layer, detach=False, eval=True) as cap:
        for start in range(0, n_samples, batch_size):
            x = torch.rand(min(batch_size, n_samples - start), *size, generator=gen).to(dev).requires_grad_(True)
            cap.clear()
            model(x)
            a = cap.live[layer]
            (g,) = torch.autograd.grad(a[:, :, pos[0], pos[1]].sum(), x)
            total += g.abs().sum(1).sum(0).double().cpu()
    box = None
    if row.rf is not None:
        centre = [row.start[i] + pos[i] * row.jump[i] for i in range(2)]  # type: ignore[index]
        lo = [max(0, math.ceil(centre[i] - (row.rf[i] - 1) / 2)) for i in range(2)]
        hi = [min(size[1 + i] - 1, math.floor(centre[i] + (row.rf[i] - 1) / 2)) for i in range(2)]
        box = (lo[0], lo[1], hi[0], hi[1])
    return EffectiveField(layer, pos, (total / n_samples).float(), row.rf, row.jump, row.start, box,  # type: ignore
                          n_samples)


__all__ = ["Conv", "conv_output_size", "stack_fields", "taps", "support", "EffectiveField",
           "effective_receptive_field"]
