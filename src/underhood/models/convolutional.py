"""Fully connected layers as convolutions: one network, any input size, a dense output map.

A linear layer reading a flattened ``C x h x w`` map is a convolution with ``h x w`` kernels and no padding
(CSC413, lecture 7: "an FC layer with 4096 output units looking at an input volume of 7 x 7 x 512 is equivalent
to a CONV layer with kernel size 7, stride 1, and 4096 filters"); the linear layers after it are 1x1
convolutions. On the training size the converted network computes the same numbers; on a larger image it
slides the classifier over every window with the stride of the last feature map (Sermanet et al. 2014,
OverFeat; Long et al. 2015, FCN), giving one score map per class.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import InputError
from ..core.names import Wrapper

POOLINGS = ("global", "window")


def fully_convolutional(model: nn.Module, input_size: Sequence[int] | None = None, *,
                        pooling: str = "global") -> nn.Module:
    """A copy of ``model`` whose linear layers are convolutions: it takes any input size and returns score maps.

    The network is traced with ``torch.fx`` and run once on a blank ``input_size`` image. Each flatten of a
    ``[N, C, h, w]`` map into ``[N, C h w]`` (``torch.flatten``, ``nn.Flatten``, ``x.view(N, -1)``) is
    removed; the first ``nn.Linear`` after it becomes an ``nn.Conv2d`` with ``h x w`` kernels (its weight row
    reshaped to ``[C, h, w]``, the flatten's order), later ones 1x1 convolutions. The output is
    ``[N, classes, H', W']``: ``1 x 1`` on ``input_size``, equal to the original logits there, and one score
    per window of that size on a larger image.

    Args:
        model: a network (a :class:`~underhood.models.Normalized` wrapper is kept around the converted network).
            It is not modified.
        input_size: ``(C, H, W)`` the linear layers were built for; default ``model.input_size``.
        pooling: ``"global"`` keeps adaptive poolings as they are (a global average pooling still averages
            the whole map: one score per image at any size); ``"window"`` replaces each adaptive pooling by a
            fixed one whose window is what it pooled on ``input_size`` (a global pooling becomes a sliding
            average of the training-size window, stride 1), so the output is a dense map.

    Returns:
        a new module in the model's mode (the outputs at ``input_size`` equal the original's, flattened).

    Example:
        >>> fcn = fully_convolutional(load_model("digits"))      # doctest: +SKIP
        >>> fcn(torch.rand(1, 1, 64, 96)).shape                   # doctest: +SKIP
        torch.Size([1, 10, 9, 17])
    """
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    if pooling not in POOLINGS:
        raise InputError(f"pooling: expected one of {', '.join(map(repr, POOLINGS))}, got {pooling!r}")
    size = tuple(input_size) if input_size is not None else getattr(model, "input_size", None)
    if size is None or len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
        raise InputError(f"input_size: expected (C, H, W) positive ints, got {size!r}; pass the training size")
    outer = copy.deepcopy(model)
    net = outer.net if isinstance(outer, Wrapper) else outer
    x = torch.zeros(1, *size, device=next(iter(net.parameters()), torch.zeros(())).device)
    if isinstance(outer, Wrapper) and hasattr(outer, "mean"):
        x = (x - outer.mean) / outer.std
    try:
        graph_module = fx.symbolic_trace(net)
    except Exception as exc:  # noqa: BLE001 - any tracing failure has the same fix
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"model: torch.fx cannot trace {type(net).__name__}.forward ({reason}); write the "
                         "classifier with nn.Flatten and nn.Linear modules, or convert it by hand") from exc
    training = graph_module.training
    graph_module.eval()
    with torch.no_grad():
        ShapeProp(graph_module).propagate(x)
        reference = net.eval()(x)
    if not isinstance(reference, torch.Tensor) or reference.ndim != 2:
        shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
        raise InputError(f"model: expected logits [N, classes] from {type(net).__name__}, got {shape}; "
                         "give a classifier that ends in linear layers")
    _convert(graph_module, pooling)
    graph_module.train(training)
    try:
        with torch.no_grad():
            converted = graph_module.eval()(x)
    except RuntimeError:  # an op after the flatten that needs the flat vector
        converted = None
    graph_module.train(training)
    if not isinstance(converted, torch.Tensor) or converted.ndim != 4 or converted.shape[2:] != (1, 1) or \
            not torch.allclose(converted.flatten(1), reference, rtol=1e-4, atol=1e-5):
        raise InputError(f"model: {type(net).__name__} has operations after its flatten that a convolution cannot "
                         "replace (only nn.Linear modules and element-wise ops can follow it); convert it by hand")
    if isinstance(outer, Wrapper):
        outer.net = graph_module
        return outer
    return graph_module


def _shape(node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


def _convert(gm, pooling: str) -> None:
    """Rewrite ``gm``'s graph in place: flatten removed, linear layers as convolutions (see the caller)."""
    modules = dict(gm.named_modules())
    spatial: dict = {}  # node -> (h, w) of the map that the flattened features came from
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and pooling == "window" and \
                isinstance(modules[node.target], (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            _window(gm, node, modules[node.target])
            continue
        args = [a for a in node.all_input_nodes]
        before = _shape(args[0]) if args else None
        after = _shape(node)
        if before is not None and after is not None and len(before) == 4 and len(after) == 2 and \
                after[1] == before[1] * before[2] * before[3] and not (
                    node.op == "call_module" and isinstance(modules[node.target], nn.Linear)):
            node.replace_all_uses_with(args[0])  # a flatten: the map flows on, unflattened
            spatial[args[0]] = (before[2], before[3])
            gm.graph.erase_node(node)
            continue
        source = next((spatial[a] for a in args if a in spatial), None)
        if source is None:
            continue
        if node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
            _linear_to_conv(gm, node.target, modules[node.target], source, before)
            spatial[node] = (1, 1)
        elif node.op != "output":
            spatial[node] = (1, 1) if source == (1, 1) else source
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()


def _linear_to_conv(gm, target: str, linear: nn.Linear, hw: tuple[int, int], before) -> None:
    h, w = hw
    cin = linear.in_features // (h * w)
    if cin * h * w != linear.in_features:
        raise InputError(f"model: {target} reads {linear.in_features} features, not a flattened map of {h}x{w}; "
                         "convert it by hand")
    conv = nn.Conv2d(cin, linear.out_features, (h, w), bias=linear.bias is not None).to(linear.weight)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(linear.out_features, cin, h, w))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    conv.train(linear.training)
    _set(gm, target, conv)


def _window(gm, node, pool: nn.Module) -> None:
    """An adaptive pooling replaced by a fixed one with the window it used on the traced size."""
    before, after = _shape(node.all_input_nodes[0]), _shape(node)
    (h, w), (oh, ow) = before[2:], after[2:]
    if (oh, ow) == (1, 1):
        kernel, stride = (h, w), 1
    elif h % oh == 0 and w % ow == 0:
        kernel = stride = (h // oh, w // ow)
    else:
        raise InputError(f"pooling: {node.target} pools {h}x{w} into {oh}x{ow}, not a whole window; "
                         "use pooling='global'")
    fixed = nn.AvgPool2d(kernel, stride) if isinstance(pool, nn.AdaptiveAvgPool2d) else nn.MaxPool2d(kernel, stride)
    _set(gm, node.target, fixed)


def _set(gm, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


__all__ = ["fully_convolutional", "POOLINGS"]
