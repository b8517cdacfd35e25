"""Layers by dotted name, the architecture table, and analytic receptive fields.

Receptive fields are computed by tracing one forward pass under a torch function mode that
follows every tensor: each spatial tensor carries, per axis, the receptive field size ``r``,
the jump ``j`` (input pixels between neighbouring units) and the centre ``c`` of unit 0 in
input pixels. A convolution or pooling with kernel ``k``, stride ``s``, padding ``p`` and
dilation ``d`` maps ``(r, j, c)`` to ``(r + (d(k-1)) j, j s, c + (d(k-1)/2 - p) j)``; an op
combining several tensors (a residual ``+``, a concatenation) takes the union of their
fields; an op that leaves the spatial grid (global pooling, flatten, linear) sees the whole
input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import InputError, LayerError
from .hooks import trace
from .names import Wrapper, first_tensor, inner, named_layers, resolve, tensors


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the 2-D convolutional layers, in definition order."""
    return [n for n, m in named_layers(model).items() if isinstance(m, nn.Conv2d)]


def last_conv(model: nn.Module) -> str:
    """Name of the last 2-D convolution (the default layer of CAM-style methods)."""
    convs = conv_layers(model)
    if not convs:
        raise LayerError("layer: the model has no Conv2d layer; name a layer with spatial output explicitly")
    return convs[-1]


@dataclass(frozen=True)
class Field:
    """Receptive field along one axis: size ``r``, jump ``j``, centre ``c`` of unit 0 (input pixels)."""

    r: float
    j: float
    c: float

    def through(self, k: int, s: int, p: int, d: int) -> Field:
        span = d * (k - 1)
        return Field(self.r + span * self.j, self.j * s, self.c + (span / 2 - p) * self.j)

    def union(self, other: Field) -> Field:
        lo = min(self.c - (self.r - 1) / 2, other.c - (other.r - 1) / 2)
        hi = max(self.c + (self.r - 1) / 2, other.c + (other.r - 1) / 2)
        return Field(hi - lo + 1, max(self.j, other.j), (lo + hi) / 2)


GLOBAL = "global"


def _pair(v: object) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))  # type: ignore[arg-type]


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: object) -> object:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


class _FieldTracer(TorchFunctionMode):
    """Follows every tensor of one forward pass and attaches its receptive field."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[int, tuple[torch.Tensor, object]] = {}  # id -> (tensor kept alive, field)

    def get(self, t: torch.Tensor) -> object:
        entry = self.fields.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def set(self, t: torch.Tensor, value: object) -> None:
        self.fields[id(t)] = (t, value)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tensors((args, kwargs)) if self.get(t) is not None]
        if not inputs:
            return out
        name = getattr(func, "__name__", "")
        result = self._rule(name, args, kwargs, inputs, out)
        for t in tensors(out):
            self.set(t, result)
        return out

    def _rule(self, name: str, args: tuple, kwargs: dict, inputs: list, out: object) -> object:
        fields = [self.get(t) for t in inputs]
        if any(f == GLOBAL for f in fields):
            return GLOBAL
        out_t = out if isinstance(out, torch.Tensor) else next(iter(tensors(out)), None)
        if out_t is None or out_t.ndim != 4:
            return GLOBAL
        x = inputs[0]
        if name == "conv2d":
            w = _arg(args, kwargs, 1, "weight", None)
            k = tuple(w.shape[-2:])  # type: ignore[union-attr]
            s, p, d = (_pair(_arg(args, kwargs, i, n, dv)) for i, n, dv in ((3, "stride", 1), (4, "padding", 0),
                                                                             (5, "dilation", 1)))
            if isinstance(_arg(args, kwargs, 4, "padding", 0), str):
                pad = _arg(args, kwargs, 4, "padding", 0)
                p = (0, 0) if pad == "valid" else tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
            return self._through(fields[0], k, s, p, d)
        if "adaptive" in name or "interpolate" in name or "upsample" in name:
            return GLOBAL
        if "max_pool2d" in name or "avg_pool2d" in name or "lp_pool2d" in name:
            offset = 1 if "lp_pool" in name else 0
            k = _pair(_arg(args, kwargs, 1 + offset, "kernel_size", 1))
            stride = _arg(args, kwargs, 2 + offset, "stride", None)
            s = k if stride is None or stride == [] or stride == () else _pair(stride)
            p = _pair(_arg(args, kwargs, 3 + offset, "padding", 0)) if "lp_pool" not in name else (0, 0)
            d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if "max_pool" in name else (1, 1)
            return self._through(fields[0], k, s, p, d)
        if out_t.shape[-2:] != x.shape[-2:]:
            return GLOBAL  # an op we cannot follow: be conservative
        merged = fields[0]
        for f in fields[1:]:
            merged = (merged[0].union(f[0]), merged[1].union(f[1]))  # type: ignore[index]
        return merged

    @staticmethod
    def _through(field: object, k: tuple, s: tuple, p: tuple, d: tuple) -> object:
        fy, fx = field  # type: ignore[misc]
        return (fy.through(k[0], s[0], p[0], d[0]), fx.through(k[1], s[1], p[1], d[1]))


@dataclass
class LayerInfo:
    """One row of the architecture table."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    rf: tuple[float, float] | None        # receptive field size (height, width); None: whole input
    jump: tuple[float, float] | None      # input pixels between neighbouring units
    start: tuple[float, float] | None     # centre of unit (0, 0) in input pixel coordinates
    calls: int

    @property
    def rf_size(self) -> str:
        if self.rf is None:
            return "global"
        return "x".join(f"{v:g}" for v in self.rf) if self.rf[0] != self.rf[1] else f"{self.rf[0]:g}"


def layers(model: nn.Module, *, input_size: Sequence[int] | None = None,
           device: str | torch.device | None = None) -> list[LayerInfo]:
    """The architecture table: every named layer that runs, in call order.

    Args:
        model: any module taking ``[N, C, H, W]``.
        input_size: ``(C, H, W)``; defaults to ``model.input_size`` when the model carries one.

    Returns:
        One :class:`LayerInfo` per layer: name, type, output shape (batch of one), parameter
        count, receptive field size and jump (``None`` for layers that see the whole input).

    Example:
        >>> rows = layers(load_model("shapes"))          # doctest: +SKIP
        >>> rows[0].name, rows[0].rf                     # doctest: +SKIP
        ('features.0', (3.0, 3.0))
    """
    from .device import model_device

    if input_size is None:
        input_size = getattr(model, "input_size", None)
    if input_size is None or len(input_size) != 3 or not all(isinstance(v, int) and v > 0 for v in input_size):
        raise InputError(f"input_size: expected (C, H, W) positive ints, got {input_size!r}")
    dev = torch.device(device) if device is not None else model_device(model)
    mods = named_layers(model)
    tracer = _FieldTracer()
    x = torch.zeros(1, *input_size, device=dev)
    try:
        with tracer:
            tracer.set(x, (Field(1.0, 1.0, 0.0), Field(1.0, 1.0, 0.0)))
            record = trace(model, x)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise InputError(f"input_size: the model cannot run on {tuple(input_size)} ({reason})") from exc
    order, outputs, calls = record.returned, record.outputs, record.calls
    rows = []
    for name in order:
        t = outputs.get(name)
        field = tracer.get(t) if t is not None else None
        spatial = isinstance(field, tuple)
        rows.append(LayerInfo(
            name=name, type=type(mods[name]).__name__,
            output_shape=tuple(t.shape[1:]) if t is not None else None,
            params=sum(p.numel() for p in mods[name].parameters()),
            rf=(field[0].r, field[1].r) if spatial else None,
            jump=(field[0].j, field[1].j) if spatial else None,
            start=(field[0].c, field[1].c) if spatial else None,
            calls=calls[name]))
    return rows


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of a model (the normalisation wrapper has none)."""
    return sum(p.numel() for p in model.parameters())


def format_table(rows: list[LayerInfo]) -> str:
    """The architecture table as aligned text, for the terminal."""
    head = ("layer", "type", "output", "params", "rf", "jump")
    body = [(r.name, r.type, "x".join(map(str, r.output_shape or ())), f"{r.params:,}", r.rf_size,
             "-" if r.jump is None else f"{r.jump[0]:g}") for r in rows]
    widths = [max(len(str(v)) for v in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def stages(model: nn.Module) -> list[str]:
    """One layer per convolutional stage: the output of each pooling layer or residual block,
    else every convolution's activation (the module after it when that is a ReLU)."""
    layers = named_layers(model)
    names = list(layers)
    pools = [n for n, m in layers.items() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    blocks = [n for n in names if n.count(".") == 1 and n.split(".")[0].startswith("layer")
              and n.split(".")[1].isdigit()]
    if blocks:
        return blocks
    if len(pools) >= 2:
        return pools
    return [n for n, m in layers.items() if isinstance(m, nn.Conv2d)]


def last_hidden(model: nn.Module) -> str:
    """The input of the classifier: the last hidden linear layer, else the global pooling, else the last stage."""
    layers = named_layers(model)
    linear = [n for n, m in layers.items() if isinstance(m, nn.Linear)]
    if len(linear) >= 2:
        return linear[-2]
    pools = [n for n, m in layers.items() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]
    return pools[-1] if pools else stages(model)[-1]


__all__ = ["Wrapper", "inner", "named_layers", "resolve", "first_tensor", "conv_layers", "last_conv", "stages",
           "last_hidden", "layers", "LayerInfo", "Field", "format_table", "parameter_count"]
