"""Layer output layouts: the one place where token sequences and channels-last maps become ``[N, C, h, w]``.

Methods that read a spatial feature map (the CAM family, top patches, feature maps,
statistics, a :class:`~underhood.core.targets.Unit` at ``(y, x)``) accept three layouts:

- ``"nchw"``: a convolutional map ``[N, C, h, w]`` (the default reading of a 4-D output);
- ``"nhwc"``: a channels-last map ``[N, h, w, C]`` (Swin stages, ConvNeXt blocks written in NHWC);
- ``"tokens"``: a token sequence ``[N, L, C]`` (vision transformers), ``L = prefix + h * w``
  where the ``prefix`` tokens (a class token, distillation or register tokens) come first and
  the patch tokens follow in row-major order.

Inference, from the output's shape and the input's ``(H, W)``:

- 4-D: ``"nchw"`` when ``h / H`` and ``w / W`` agree (the same stride on both axes, within 25 %)
  and ``"nhwc"`` otherwise when the last three axes fit that reading; both fitting means
  ``"nchw"``, unless the NHWC strides agree strictly better (``[N, 8, 12, 16]`` for a 32x48
  input is an 8x12 NHWC map, stride 4 on both axes, not 12x16 with strides 2.7 and 3).
  ``grid=(h, w)`` or ``layout=`` decide when the shape alone cannot.
- 3-D: the smallest ``prefix`` in 0..16 such that ``L - prefix = h * w`` with ``h / w = H / W``
  exactly (for a square input, the patch tokens form a square). ``tokens=`` (the number of
  prefix tokens) and ``grid=`` fix either part explicitly.

:func:`to_nchw` is a view-preserving reshape (``permute``/``reshape`` on a slice), so gradients
taken with respect to the raw layer output convert with the same call; :func:`from_nchw`
writes an ``[N, C, h, w]`` tensor back into the layer's own layout (prefix tokens kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import LayerError

LAYOUTS = ("nchw", "nhwc", "tokens")
MAX_PREFIX = 16


@dataclass(frozen=True)
class Layout:
    """How a layer output maps onto a spatial grid: ``kind``, ``grid=(h, w)``, ``prefix`` tokens."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def describe(self) -> str:
        h, w = self.grid
        if self.kind == "tokens":
            extra = f" after {self.prefix} prefix token{'s' if self.prefix != 1 else ''}" if self.prefix else ""
            return f"tokens on a {h}x{w} grid{extra}"
        return f"{self.kind.upper()} {h}x{w}"


def _pair(grid: Sequence[int] | int | None, name: str = "grid") -> tuple[int, int] | None:
    if grid is None:
        return None
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = (grid, grid)
    try:
        h, w = (int(v) for v in grid)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise LayerError(f"{name}: expected (h, w) positive ints, got {grid!r}") from exc
    if h <= 0 or w <= 0:
        raise LayerError(f"{name}: expected (h, w) positive ints, got {grid!r}")
    return h, w


def _stride_gap(h: int, w: int, size: tuple[int, int] | None) -> float:
    """How far the strides ``H / h`` and ``W / w`` disagree, relative (``inf`` when ``(h, w)`` exceeds the input)."""
    if size is None:
        return 0.0
    H, W = size
    if h > H or w > W:
        return math.inf
    sy, sx = H / h, W / w
    return abs(sy - sx) / max(sy, sx)


def _same_stride(h: int, w: int, size: tuple[int, int] | None) -> bool:
    return _stride_gap(h, w, size) <= 0.25


def _token_grid(n: int, size: tuple[int, int] | None) -> tuple[int, int] | None:
    """``(h, w)`` with ``h * w = n`` and ``h / w = H / W`` (square when the size is unknown)."""
    if n <= 0:
        return None
    H, W = size if size is not None else (1, 1)
    # h = sqrt(n * H / W); exact integer solution only
    h = round(math.sqrt(n * H / W))
    for cand in (h - 1, h, h + 1):
        if cand > 0 and n % cand == 0 and cand * W == (n // cand) * H:
            return cand, n // cand
    return None


def infer(shape: Sequence[int], size: Sequence[int] | None = None, *, layout: str | None = None,
          tokens: int | None = None, grid: Sequence[int] | int | None = None,
          layer: str = "layer") -> Layout | None:
    """The :class:`Layout` of an output of ``shape`` (batch axis included) for inputs of ``size=(H, W)``.

    Returns ``None`` for outputs without a spatial reading (``[N, C]`` vectors, or any other rank).
    Raises :class:`LayerError` naming ``tokens=`` / ``grid=`` when a token sequence cannot be
    placed on a grid, or when an explicit option contradicts the shape.
    """
    shape = tuple(int(v) for v in shape)
    hw = tuple(int(v) for v in size[-2:]) if size is not None else None
    fixed = _pair(grid)
    if layout is not None and layout not in LAYOUTS:
        raise LayerError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0):
        raise LayerError(f"tokens: the number of prefix tokens must be an int >= 0, got {tokens!r}")
    where = f"{layer!r} outputs {shape[1:]}"
    if len(shape) == 4:
        if layout == "tokens" or tokens is not None:
            option = "tokens" if tokens is not None else "layout"
            raise LayerError(f"{option}: {where}, a 4-D map, not a token sequence; drop {option}= or pick a "
                             "transformer block")
        as_nchw, as_nhwc = (shape[2], shape[3]), (shape[1], shape[2])
        if layout == "nchw" or (layout is None and fixed is not None and fixed == as_nchw):
            kind = "nchw"
        elif layout == "nhwc" or (layout is None and fixed is not None and fixed == as_nhwc):
            kind = "nhwc"
        elif fixed is not None:
            raise LayerError(f"grid: {where}; grid={fixed} matches neither [N, C, h, w] nor [N, h, w, C]")
        elif _same_stride(*as_nchw, hw) and _stride_gap(*as_nchw, hw) <= _stride_gap(*as_nhwc, hw):
            kind = "nchw"
        elif _same_stride(*as_nhwc, hw):
            kind = "nhwc"
        else:
            kind = "nchw"
        g = as_nchw if kind == "nchw" else as_nhwc
        if fixed is not None and fixed != g:
            raise LayerError(f"grid: {where}, which as {kind.upper()} is {g[0]}x{g[1]}, not {fixed}")
        return Layout(kind, g)
    if len(shape) == 3:
        if layout in ("nchw", "nhwc"):
            raise LayerError(f"layout: {where}, a token sequence [N, L, C]; use layout='tokens' or leave it out")
        length = shape[1]
        prefixes = [tokens] if tokens is not None else range(0, min(MAX_PREFIX, length - 1) + 1)
        for p in prefixes:
            n = length - p
            if fixed is not None:
                if fixed[0] * fixed[1] == n:
                    return Layout("tokens", fixed, p)
                continue
            g = _token_grid(n, hw)
            if g is not None:
                return Layout("tokens", g, p)
        hint = f" for a {hw[0]}x{hw[1]} input" if hw else ""
        option = "grid" if fixed is not None and tokens is None else "tokens"
        raise LayerError(f"{option}: {where}, a sequence of {length} tokens that does not form a "
                         f"{'grid of ' + 'x'.join(map(str, fixed)) if fixed else 'patch grid'}{hint}; "
                         "give grid=(h, w) and/or tokens=<number of prefix tokens>")
    return None


def to_nchw(t: torch.Tensor, lay: Layout) -> torch.Tensor:
    """``t`` in ``lay``'s layout as ``[N, C, h, w]`` (prefix tokens dropped); differentiable."""
    if lay.kind == "nchw":
        return t
    if lay.kind == "nhwc":
        return t.permute(0, 3, 1, 2)
    h, w = lay.grid
    return t[:, lay.prefix:].reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2)


def from_nchw(m: torch.Tensor, lay: Layout, like: torch.Tensor | None = None) -> torch.Tensor:
    """An ``[N, C, h, w]`` tensor back in ``lay``'s layout; prefix tokens are copied from ``like``
    (the original output) or zero."""
    if lay.kind == "nchw":
        return m
    if lay.kind == "nhwc":
        return m.permute(0, 2, 3, 1)
    seq = m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1])
    if not lay.prefix:
        return seq
    head = like[:, :lay.prefix] if like is not None else seq.new_zeros(m.shape[0], lay.prefix, m.shape[1])
    return torch.cat([head, seq], 1)


def spatial(t: torch.Tensor, size: Sequence[int] | None = None, *, layout: str | None = None,
            tokens: int | None = None, grid: Sequence[int] | int | None = None,
            layer: str = "layer", what: str = "this method") -> tuple[torch.Tensor, Layout]:
    """``(t as [N, C, h, w], its Layout)``; a clear :class:`LayerError` when ``t`` has no spatial reading."""
    lay = infer(t.shape, size, layout=layout, tokens=tokens, grid=grid, layer=layer)
    if lay is None:
        raise LayerError(f"layer: {layer!r} outputs {tuple(t.shape[1:])}, but {what} needs a spatial map "
                         "([N, C, h, w], [N, h, w, C] or [N, L, C] tokens); pick a convolutional stage or a "
                         "transformer block")
    return to_nchw(t, lay), lay


__all__ = ["Layout", "LAYOUTS", "infer", "to_nchw", "from_nchw", "spatial"]
