"""Layers by dotted name, the architecture table, and analytic receptive fields.

Receptive fields are computed by tracing one forward pass under a torch function mode that
follows every tensor: each spatial tensor carries, per axis, the receptive field size ``r``,
the jump ``j`` (input pixels between neighbouring units) and the centre ``c`` of unit 0 in
input pixels. A convolution or pooling with kernel ``k``, stride ``s``, padding ``p`` and
dilation ``d`` maps ``(r, j, c)`` to ``(r + (d(k-1)) j, j s, c + (d(k-1)/2 - p) j)``; an op
combining several tensors (a residual ``+``, a concatenation) takes the union of their
fields; an op that leaves the spatial grid (global pooling, flatten, linear) sees the whole
input. The two spatial axes are followed through ``permute``/``transpose``, so a channels-last
``[N, h, w, C]`` map (Swin stages, ConvNeXt blocks) keeps its field through ops that act on the
channel axis only (``linear``, ``layer_norm`` over ``C``, elementwise ops); anything the tracer
cannot follow (attention, a token sequence, a reshape that splits or merges the grid, ``roll``)
is marked global, conservatively.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import InputError, LayerError
from .hooks import evaluating, hooked, trace
from .layout import Layout, infer
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


_TRANSFORMER_PARTS = (nn.LayerNorm, nn.MultiheadAttention)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or \
        "Norm" in type(module).__name__


def default_layer(model: nn.Module, inputs: torch.Tensor) -> str:
    """The layer CAM-style methods use when none is named.

    A convolutional network (no ``LayerNorm`` / ``MultiheadAttention`` after its last ``Conv2d``)
    gets its last ``Conv2d``, found without running the model. Otherwise (vision transformers,
    Swin, ConvNeXt) one forward pass of the first sample picks the last block before the final
    norm: the last layer, in call order, whose output has a spatial reading on a grid larger than
    1x1 (:func:`underhood.core.layout.infer`) and which returns before the model's final norm
    (a norm layer whose enclosing layers all return its very output: ``norm`` of a ViT, not
    ``blocks.0.norm1``); norm layers themselves are skipped, and of layers returning the same
    tensor the outermost that is not an ``nn.Sequential`` is named (``blocks.1``, not ``blocks``;
    torchvision's ConvNeXt ``features.7.2``, not its ``stochastic_depth`` whose output the block
    adds to in place). When that layer is a token sequence with a class token whose patch tokens the
    outputs do not depend on (a ViT head reading only the class token: Grad-CAM there is blank), the
    block before it is named instead (``blocks.10`` of twelve; one extra forward and backward pass).

    Example:
        >>> default_layer(tiny_vit, x)       # doctest: +SKIP
        'blocks.0'
    """
    mods = named_layers(model)
    convs = conv_layers(model)
    after = list(mods)[list(mods).index(convs[-1]) + 1:] if convs else list(mods)
    if convs and not any(isinstance(mods[n], _TRANSFORMER_PARTS) for n in after):
        return convs[-1]
    order, outs = _returned(model, inputs[:1])
    spatial = {n for n in order if (lay := _layout_of(outs[n][0], inputs.shape[-2:])) is not None
               and lay.grid[0] * lay.grid[1] > 1}

    def same(a: str, b: str) -> bool:  # the same tensor, not modified in place in between
        return outs[a][0] is outs[b][0] and outs[a][1] == outs[b][1]

    def final(n: str) -> bool:  # a norm whose enclosing layers all return its output
        return all(same(p, n) for p in order if n.startswith(p + "."))

    norms = [i for i, n in enumerate(order) if n in spatial and _is_norm(mods[n]) and final(n)]
    stop = norms[-1] if norms else len(order)
    candidates = [n for n in order[:stop] if n in spatial and not _is_norm(mods[n])
                  and not any(same(order[i], n) for i in norms)]
    if not candidates:
        if convs:
            return convs[-1]
        raise LayerError("layer: the model has no Conv2d layer and no layer with a spatial output "
                         "([N, C, h, w], [N, h, w, C] or [N, L, C] tokens); name a layer explicitly")
    group = [n for n in candidates if same(n, candidates[-1])]   # children before parents
    blocks = [n for n in group if not isinstance(mods[n], (nn.Sequential, nn.ModuleList))]
    chosen = blocks[-1] if blocks else group[0]
    lay = _layout_of(outs[chosen][0], inputs.shape[-2:])
    numbered = re.fullmatch(r"(.*?)(\d+)", chosen)
    if lay is not None and lay.kind == "tokens" and lay.prefix and numbered and int(numbered[2]) > 0:
        before = f"{numbered[1]}{int(numbered[2]) - 1}"
        if before in mods and _patches_unused(model, inputs[:1], chosen, lay.prefix):
            return before  # a class-token head reads only the prefix of the last block: its patches get no gradient
    return chosen


def _patches_unused(model: nn.Module, x: torch.Tensor, layer: str, prefix: int) -> bool:
    """Whether the model's outputs do not depend on the patch tokens of ``layer`` (after its ``prefix`` tokens):
    true of the last block of a ViT whose head reads the class token, where Grad-CAM would be blank."""
    from .hooks import capture, frozen
    from .outputs import logits_of

    with frozen(model), torch.enable_grad(), capture(model, layer, detach=False) as cap:
        out = logits_of(model(x.detach().clone().requires_grad_(True)))
        a = cap.live.get(layer)
        if a is None or not a.requires_grad:
            return False
        (g,) = torch.autograd.grad(out.sum(), a, allow_unused=True)
    return g is None or not bool(g[:, prefix:].any())


@torch.no_grad()
def _returned(model: nn.Module, x: torch.Tensor) -> tuple[list[str], dict[str, tuple[torch.Tensor, int]]]:
    """One eval forward: layer names in first-return order, and each one's last output with its version
    counter at return time (a tensor modified in place later, ``r += x``, counts as a different output)."""
    order: list[str] = []
    outs: dict[str, tuple[torch.Tensor, int]] = {}

    def make(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            t = first_tensor(output)
            if t is None:
                return
            if name not in outs:
                order.append(name)
            outs[name] = (t, t._version)
        return hook

    with evaluating(model), hooked(model, {m: make(n) for n, m in named_layers(model).items()}):
        model(x)
    return order, outs


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
# shape-preserving ops that mix positions: the tracer does not follow them
_MIXING = frozenset({"roll", "flip", "fliplr", "flipud", "rot90", "sort", "argsort", "matmul", "__matmul__", "bmm",
                     "einsum", "scaled_dot_product_attention", "multi_head_attention_forward"})
# ops along one `dim`: local when that axis is not spatial
_ALONG_DIM = frozenset({"softmax", "log_softmax", "cumsum", "cumprod", "normalize"})
# ops that read the last two axes as the grid
_NCHW_OPS = frozenset({"conv2d", "conv_transpose2d", "pixel_shuffle", "pixel_unshuffle", "pad", "interpolate"})


def _pair(v: object) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))  # type: ignore[arg-type]


def _pair_or_list(v: object) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list, torch.Size)) else (v,)


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
        if out_t is None or out_t.ndim != 4 or any(f[2] != fields[0][2] for f in fields):  # type: ignore[index]
            return GLOBAL
        x, axes = inputs[0], fields[0][2]  # type: ignore[index]
        if name in _MIXING:
            return GLOBAL
        if name in ("permute", "transpose", "swapaxes", "swapdims"):
            return self._moved(fields[0], name, args, kwargs, x.ndim)
        if name == "linear" or name == "layer_norm":
            # acts on the last axis (layer_norm: on the last len(normalized_shape) axes)
            k = 1 if name == "linear" else len(_pair_or_list(_arg(args, kwargs, 1, "normalized_shape", ())))
            return fields[0] if max(axes) < x.ndim - k and out_t.shape[:-1] == x.shape[:-1] else GLOBAL
        if name in _ALONG_DIM:
            dim = _arg(args, kwargs, 1, "dim", None)
            return GLOBAL if dim is None or int(dim) % x.ndim in axes else fields[0]
        if axes != (2, 3) and (name in _NCHW_OPS or "pool" in name):
            return GLOBAL
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
        if x.ndim != 4 or any(out_t.shape[a] != x.shape[a] for a in axes):
            return GLOBAL  # an op we cannot follow: be conservative
        if name in ("reshape", "view", "flatten", "unflatten") and out_t.shape != x.shape:
            return GLOBAL
        merged = fields[0]
        for f in fields[1:]:
            merged = (merged[0].union(f[0]), merged[1].union(f[1]), axes)  # type: ignore[index]
        return merged

    @staticmethod
    def _moved(field: object, name: str, args: tuple, kwargs: dict, ndim: int) -> object:
        """The field after ``permute`` / ``transpose``: the same field on the axes' new positions."""
        fy, fx, (ay, ax) = field  # type: ignore[misc]
        if name == "permute":
            dims = args[1:] if len(args) > 2 else _arg(args, kwargs, 1, "dims", ())
            order = [int(d) % ndim for d in dims]  # type: ignore[union-attr]
        else:
            a, b = (int(_arg(args, kwargs, i, n, 0)) % ndim for i, n in ((1, "dim0"), (2, "dim1")))
            order = list(range(ndim))
            order[a], order[b] = order[b], order[a]
        if sorted(order) != list(range(ndim)):
            return GLOBAL
        ny, nx = order.index(ay), order.index(ax)
        return (fy, fx, (ny, nx)) if ny < nx else GLOBAL  # a transposed grid: not followed

    @staticmethod
    def _through(field: object, k: tuple, s: tuple, p: tuple, d: tuple) -> object:
        fy, fx, axes = field  # type: ignore[misc]
        return (fy.through(k[0], s[0], p[0], d[0]), fx.through(k[1], s[1], p[1], d[1]), axes)


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
    layout: str | None = None             # "nchw", "nhwc", "tokens" (see core.layout); None: not spatial
    grid: tuple[int, int] | None = None   # the (h, w) grid of the spatial reading
    prefix: int = 0                       # prefix tokens (class, register) before the patch tokens

    @property
    def output(self) -> str:
        """The output shape, with its spatial reading when it is not plain NCHW: ``17x32 (tokens 4x4+1)``."""
        text = "x".join(map(str, self.output_shape or ()))
        if self.layout in ("nhwc", "tokens") and self.grid is not None:
            extra = f"+{self.prefix}" if self.prefix else ""
            text += f" ({self.layout} {self.grid[0]}x{self.grid[1]}{extra})"
        return text

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
        count, receptive field size and jump (``None`` for layers that see the whole input), and
        the output's spatial ``layout`` (``"nchw"``, ``"nhwc"``, ``"tokens"`` with its ``grid`` and
        ``prefix`` tokens, as :func:`underhood.core.layout.infer` reads it; ``None`` for vectors).
        Token sequences after attention, and what follows a reshape of the grid, are marked global.

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
            tracer.set(x, (Field(1.0, 1.0, 0.0), Field(1.0, 1.0, 0.0), (2, 3)))
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
        lay = _layout_of(t, input_size[-2:])
        rows.append(LayerInfo(
            name=name, type=type(mods[name]).__name__,
            output_shape=tuple(t.shape[1:]) if t is not None else None,
            params=sum(p.numel() for p in mods[name].parameters()),
            rf=(field[0].r, field[1].r) if spatial else None,
            jump=(field[0].j, field[1].j) if spatial else None,
            start=(field[0].c, field[1].c) if spatial else None,
            calls=calls[name], layout=lay.kind if lay else None, grid=lay.grid if lay else None,
            prefix=lay.prefix if lay else 0))
    return rows


def _layout_of(t: torch.Tensor | None, size: Sequence[int]) -> Layout | None:
    """The spatial reading of an output (``None`` when it has none, e.g. a sequence that forms no grid)."""
    if t is None:
        return None
    try:
        return infer(t.shape, size)
    except LayerError:
        return None


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of a model (the normalisation wrapper has none)."""
    return sum(p.numel() for p in model.parameters())


def format_table(rows: list[LayerInfo]) -> str:
    """The architecture table as aligned text, for the terminal."""
    head = ("layer", "type", "output", "params", "rf", "jump")
    body = [(r.name, r.type, r.output, f"{r.params:,}", r.rf_size,
             "-" if r.jump is None else f"{r.jump[0]:g}") for r in rows]
    widths = [max(len(str(v)) for v in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def stages(model: nn.Module, *, input_size: Sequence[int] | None = None) -> list[str]:
    """One layer per stage of the network, in call order.

    A convolutional network: the output of each pooling layer or residual block, else every
    convolution's activation (the module after it when that is a ReLU).

    A transformer-style network (``LayerNorm`` or ``MultiheadAttention`` after its last ``Conv2d``,
    as :func:`default_layer` tells them apart: ViT, Swin, ConvNeXt): its blocks, found by one forward
    pass of a blank ``input_size`` image (default ``model.input_size``). The blocks are the children of
    the outermost ``nn.Sequential`` / ``nn.ModuleList`` containers (those inside no other container;
    the model itself when it is one) whose outputs have a spatial reading on a grid larger than 1x1
    (:func:`underhood.core.layout.infer`: ``[N, L, C]`` tokens, ``[N, h, w, C]`` or ``[N, C, h, w]``),
    less the child holding the model's first ``Conv2d`` (the patch embedding or stem): ``blocks.0,
    blocks.1`` of a ViT, ``encoder.layers.encoder_layer_0 ...`` of torchvision's, ``stage1.0,
    stage1.1, stage2.0`` of a Swin with two stages. When no such child exists, the convolutional rule.
    """
    blocks = _transformer_blocks(model, input_size)
    if blocks:
        return blocks
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


def _transformer_blocks(model: nn.Module, input_size: Sequence[int] | None) -> list[str]:
    """The blocks :func:`stages` names for a transformer-style model; ``[]`` for a convolutional one."""
    from .device import model_device

    mods = named_layers(model)
    convs = conv_layers(model)
    after = list(mods)[list(mods).index(convs[-1]) + 1:] if convs else list(mods)
    if not any(isinstance(mods[n], _TRANSFORMER_PARTS) for n in after):
        return []
    size = input_size if input_size is not None else getattr(model, "input_size", None)
    if size is None or len(size) != 3:
        raise InputError(f"input_size: the stages of a transformer-style {type(inner(model)).__name__} are found "
                         f"by running it, which needs (C, H, W); got {size!r}: pass input_size=(C, H, W)")
    containers = (nn.Sequential, nn.ModuleList)
    outer = [""] if isinstance(inner(model), containers) else \
        [n for n, m in mods.items() if isinstance(m, containers)
         and not any(isinstance(mods.get(n[:i]), containers) for i, c in enumerate(n) if c == ".")]
    children = {f"{p}.{c}" if p else c for p in outer
                for c, _ in (inner(model) if not p else mods[p]).named_children()}
    stem = next((c for c in children if convs and (convs[0] == c or convs[0].startswith(c + "."))), None)
    x = torch.zeros(1, *size, device=model_device(model))
    order, outs = _returned(model, x)
    found = []
    for n in order:
        if n in children and n != stem:
            lay = _layout_of(outs[n][0], size[-2:])
            if lay is not None and lay.grid[0] * lay.grid[1] > 1:
                found.append(n)
    return found


def last_hidden(model: nn.Module) -> str:
    """The input of the classifier: the last hidden linear layer, else the global pooling, else the last stage.

    A transformer-style model (see :func:`stages`) gets its last block: a ViT's classifier reads the
    class token after the final norm, which is no layer's output by itself, so the last block's
    tokens (or channels-last map) stand in, averaged over the patch positions wherever features are
    pooled (:func:`underhood.activations.maps.feature_view`).
    """
    blocks = _transformer_blocks(model, None)
    if blocks:
        return blocks[-1]
    layers = named_layers(model)
    linear = [n for n, m in layers.items() if isinstance(m, nn.Linear)]
    if len(linear) >= 2:
        return linear[-2]
    pools = [n for n, m in layers.items() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]
    return pools[-1] if pools else stages(model)[-1]


__all__ = ["Wrapper", "inner", "named_layers", "resolve", "first_tensor", "conv_layers", "last_conv", "default_layer",
           "stages", "last_hidden", "layers", "LayerInfo", "Field", "format_table", "parameter_count"]
