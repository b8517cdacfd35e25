"""The one home of hooks: capture activations and gradients, and leave the model as it was found.

Every ``register_*hook`` call of underhood lives in this file. Hooks live inside a ``with``
block and are removed on exit, also when the block raises; ``training`` flags of every module
and ``requires_grad`` flags of every parameter are restored too (:mod:`underhood.core.state`).

- :func:`hooked`: forward hooks and pre-hooks ``{layer: fn}`` for a block (the general tool);
- :func:`capture`: record named layers' outputs (and gradients);
- :func:`layer_io`: record modules' inputs and the gradients w.r.t. their outputs (curvature factors);
- :func:`graph_from`: start the autograd graph at a layer;
- :func:`differentiable`: layer outputs inside an optimisation loop, stopping the forward early;
- :func:`trace`: one forward pass recording the order, call counts and outputs of every layer;
- :func:`preserved` / :func:`frozen` / :func:`evaluating`: the model left as it was found (flags
  restored), and its output read as logits for the block (:mod:`underhood.core.outputs`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import InputError, LayerError
from .names import first_tensor, named_layers, resolve
from .outputs import logits_of

__all__ = ["hooked", "capture", "Capture", "graph_from", "differentiable", "trace", "Trace", "StopForward",
           "preserved", "frozen", "evaluating", "positive_gradient", "layer_io", "LayerIO"]

ForwardHook = Callable[[nn.Module, tuple, object], object]
PreHook = Callable[[nn.Module, tuple], object]


def _logits_hook(module: nn.Module, args: tuple, output: object) -> torch.Tensor | None:
    """The root's output as logits (a tensor is left alone): see :mod:`underhood.core.outputs`."""
    return None if isinstance(output, torch.Tensor) else logits_of(output)


@contextlib.contextmanager
def _kept(model: nn.Module, *, eval: bool = False, freeze: bool = False) -> Iterator[nn.Module]:
    """The body of :func:`preserved`, :func:`frozen` and :func:`evaluating`, in one walk of the model.

    Every call of a method enters it, so it stays cheap (it is per-call overhead on a GPU): the
    modules and parameters are listed once, ``eval()`` runs only when some module is training, and
    on exit only the flags that differ are written back (``Module.__setattr__`` is slow).
    """
    modules = list(model.modules())
    modes = [(m, m.training) for m in modules]
    script = isinstance(model, torch.jit.ScriptModule)
    params = model.parameters() if script else \
        dict.fromkeys(p for m in modules for p in m._parameters.values() if p is not None)  # shared ones once
    flags = [(p, p.requires_grad) for p in params]
    handle = None if script else model.register_forward_hook(_logits_hook)
    try:
        if eval and any(training for _, training in modes):
            model.eval()
        if freeze:
            for p, requires_grad in flags:
                if requires_grad:
                    p.requires_grad_(False)
        yield model
    finally:
        if handle is not None:
            handle.remove()
        for m, training in modes:
            if m.training != training:
                m.training = training
        for p, requires_grad in flags:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's ``training`` flag and every parameter's ``requires_grad`` on exit.

    For the block, a model whose ``forward`` returns a tuple, list, dict or an object with
    ``.logits`` gives its logits instead (a forward hook on the root, removed on exit; see
    :func:`underhood.core.outputs.logits_of`), so every family reads ``[N, classes]`` tensors.
    """
    with _kept(model):
        yield model


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter for the block; both restored after
    (as :func:`preserved`). For methods that differentiate w.r.t. inputs or activations only:
    attribution, synthesis, attacks. Eval mode fixes BatchNorm statistics and turns dropout off,
    so the function studied is the deployed one."""
    with _kept(model, eval=True, freeze=True):
        yield model


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block (parameters keep their ``requires_grad``); restored after."""
    with _kept(model, eval=True):
        yield model


def _module(model: nn.Module, key: str | nn.Module) -> nn.Module:
    return key if isinstance(key, nn.Module) else resolve(model, key)


@contextlib.contextmanager
def hooked(model: nn.Module, forward: Mapping[str | nn.Module, ForwardHook] | None = None, *,
           pre: Mapping[str | nn.Module, PreHook] | None = None) -> Iterator[nn.Module]:
    """Forward hooks ``fn(module, inputs, output)`` and pre-hooks ``fn(module, inputs)`` on named layers
    (or modules) for the block.

    A forward hook may return a replacement output, a pre-hook replacement inputs, as in
    ``torch.nn.Module.register_forward_hook``. Every hook is removed on exit and every module's
    ``training`` and parameter's ``requires_grad`` flag restored, also when the block raises.
    Several hooks on one module run in the order given (pre-hooks before forward hooks).

    Example:
        >>> with hooked(model, {"features.3": lambda m, i, o: o * 0}):   # doctest: +SKIP
        ...     ablated = model(x)
    """
    targets = [(_module(model, k), fn, True) for k, fn in (pre or {}).items()]
    targets += [(_module(model, k), fn, False) for k, fn in (forward or {}).items()]
    handles = []
    with preserved(model):
        try:
            for module, fn, is_pre in targets:
                handles.append(module.register_forward_pre_hook(fn) if is_pre else module.register_forward_hook(fn))
            yield model
        finally:
            for h in handles:
                h.remove()


@dataclass
class Capture:
    """What :func:`capture` recorded.

    Attributes:
        activations: layer name -> detached copy of its output at the last call.
        gradients: layer name -> gradient of the backward pass w.r.t. that output (``grads=True``).
        calls: layer name -> detached outputs of every call (a module reused in ``forward``,
            such as torchvision's ResNet ``relu``, is called several times).
        live: layer name -> the output tensor itself, still in the autograd graph (it may be
            modified in place later in ``forward``; use it to differentiate, not to read).
    """

    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)
    calls: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    live: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_calls: dict[str, list[tuple[int, torch.Tensor]]] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget everything recorded so far (for reuse across batches)."""
        for d in (self.activations, self.gradients, self.calls, self.live, self.grad_calls):
            d.clear()


@contextlib.contextmanager
def capture(model: nn.Module, layers: str | Sequence[str], *, grads: bool = False,
            eval: bool | None = None, detach: bool = True) -> Iterator[Capture]:
    """Record the outputs (and, with ``grads=True``, their gradients) of named layers.

    Outputs are copied at the moment the layer returns, so a later in-place op (an in-place
    ReLU after a convolution) does not change what was recorded; gradients are those w.r.t.
    the layer's output before any such in-place op.

    Args:
        model: any module; layer names are dotted paths as in ``named_modules``.
        layers: one name or several.
        grads: also record gradients during backward passes inside the block.
        eval: ``True`` puts the model in eval mode for the block, ``False`` in train mode,
            ``None`` leaves it; it is restored on exit either way.
        detach: store detached copies (default) rather than references in ``activations``.

    Example:
        >>> with capture(model, ["features.0"]) as cap:   # doctest: +SKIP
        ...     model(x)
        >>> cap.activations["features.0"].shape           # doctest: +SKIP
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise InputError("layers: no layer named; give at least one layer name")
    modules = {name: resolve(model, name) for name in names}
    cap = Capture()

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            out = first_tensor(output)
            if out is None:
                return
            saved = out.detach().clone() if detach else out
            cap.activations[name] = saved
            cap.calls.setdefault(name, []).append(saved)
            cap.live[name] = out
            if grads and out.requires_grad:
                call = len(cap.calls[name]) - 1

                def grad_hook(grad: torch.Tensor) -> None:
                    lst = cap.grad_calls.setdefault(name, [])
                    lst.append((call, grad.detach().clone()))
                    # the last call's gradient is the one paired with `activations`
                    cap.gradients[name] = max(lst, key=lambda item: item[0])[1]

                out.register_hook(grad_hook)
        return hook

    with hooked(model, {modules[name]: make_hook(name) for name in names}):
        if eval is not None:
            model.train(not eval)
        yield cap


@dataclass
class LayerIO:
    """What :func:`layer_io` recorded, per module name and per call (a module reused in ``forward`` has several).

    Attributes:
        inputs: name -> detached copies of ``args[0]`` of each call.
        gradients: name -> gradient w.r.t. each call's output (same index as ``inputs``; ``None`` until a backward
            pass reaches it, and for an output outside the autograd graph).
    """

    inputs: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)
    gradients: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget everything recorded so far (for reuse across batches)."""
        self.inputs.clear()
        self.gradients.clear()


@contextlib.contextmanager
def layer_io(model: nn.Module, modules: Mapping[str, nn.Module]) -> Iterator[LayerIO]:
    """Record each module's input and, during backward passes in the block, the gradient w.r.t. its output.

    The gradient is that of the output as the module returned it (a tensor hook registered before any later
    in-place op such as an in-place ReLU or ``out += identity``). Hooks are removed and flags restored on exit,
    also when the block raises (as :func:`hooked`). For Kronecker-factored curvature (K-FAC, EKFAC).
    """
    io = LayerIO()

    def make_hook(name: str) -> ForwardHook:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            x, out = first_tensor(args), first_tensor(output)
            io.inputs.setdefault(name, []).append(x.detach().clone() if x is not None else None)
            grads = io.gradients.setdefault(name, [])
            grads.append(None)
            if out is not None and out.requires_grad:
                call = len(grads) - 1

                def grad_hook(grad: torch.Tensor) -> None:
                    grads[call] = grad.detach().clone()

                out.register_hook(grad_hook)
        return hook

    with hooked(model, {module: make_hook(name) for name, module in modules.items()}):
        yield io


def positive_gradient(t: torch.Tensor) -> None:
    """Clamp the gradient that reaches ``t`` in backward to ``>= 0`` (guided backprop at a ReLU's output:
    :mod:`underhood.core.rules`). A tensor hook: it belongs to this graph only and goes with it, so no
    module is touched; registered after an in-place op it sees the gradient of that op's result."""
    t.register_hook(_clamp_positive)


def _clamp_positive(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


@contextlib.contextmanager
def graph_from(model: nn.Module, layer: str) -> Iterator[list[torch.Tensor]]:
    """Start the autograd graph at ``layer``: each call's output is replaced by a leaf that requires grad.

    Backward passes inside the block stop at the layer (nothing before it is differentiated,
    and with parameters frozen nothing before it builds a graph at all). The yielded list
    receives one leaf per call of the layer; ``torch.autograd.grad(score, leaves[-1])`` is the
    gradient w.r.t. its last call's output. The forward values are unchanged; a later
    in-place op (an in-place ReLU) modifies a copy, not the leaf.
    """
    module = resolve(model, layer)
    leaves: list[torch.Tensor] = []

    def hook(mod: nn.Module, inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            raise InputError(f"layer: {layer!r} returns {type(output).__name__}, not a float tensor; "
                             "pick a layer whose output is a feature map")
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf.clone()

    with hooked(model, {module: hook}):
        yield leaves


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every needed layer has run."""


@contextlib.contextmanager
def differentiable(model: nn.Module, layers: Sequence[str], *, stop: bool = True,
                   counts: dict[str, int] | None = None) -> Iterator[Callable[[torch.Tensor], tuple[
                       dict[str, torch.Tensor], torch.Tensor | None]]]:
    """Hook ``layers`` and yield ``run(x) -> ({layer: output}, model output or None)`` for optimisation loops.

    Each output is a copy of the layer's last output still in the autograd graph (a later in-place
    op, such as an in-place ReLU, cannot change it). With ``stop``, the forward pass ends once every
    layer has run ``counts[layer]`` times (by default as often as in the first call, which runs the
    whole model), so nothing after the deepest layer is computed; the model output is then ``None``.
    Hooks are removed on exit; modes and flags are the caller's (see :func:`preserved`).
    """
    names = list(layers)
    modules = {name: resolve(model, name) for name in names}
    feats: dict[str, torch.Tensor] = {}
    seen: dict[str, int] = {}
    state = {"counts": dict(counts) if counts is not None else None}

    def make_hook(name: str):
        def hook(mod: nn.Module, inputs: object, output: object) -> None:
            out = first_tensor(output)
            if out is None or not out.is_floating_point():
                raise LayerError(f"layer: {name!r} gives no float tensor; pick a layer with a feature map")
            feats[name] = out.clone()
            seen[name] = seen.get(name, 0) + 1
            target = state["counts"]
            if stop and target is not None and all(seen.get(n, 0) >= target[n] for n in names):
                raise StopForward
        return hook

    def run(x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        feats.clear()
        seen.clear()
        output = None
        try:
            output = model(x)
        except StopForward:
            pass
        missing = [n for n in names if n not in feats]
        if missing:
            raise LayerError(f"layer: {missing[0]!r} did not run in forward; pick a layer that does")
        if state["counts"] is None:
            state["counts"] = dict(seen)
        return dict(feats), output

    with hooked(model, {modules[name]: make_hook(name) for name in names}):
        yield run


@dataclass
class Trace:
    """What one forward pass of :func:`trace` saw, per named layer (the root excluded).

    Attributes:
        entered: layer names in the order their ``forward`` was first entered (parents before children).
        returned: layer names in the order they first returned (children before parents).
        calls: layer name -> number of calls (a module reused in ``forward`` runs several times).
        outputs: layer name -> the first tensor of its last output.
        inputs: layer name -> the first tensor of its last input.
        output: the model's output.
    """

    entered: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    output: object = None

    def __repr__(self) -> str:
        return f"Trace({len(self.returned)} layers ran, {sum(self.calls.values())} calls)"


def trace(model: nn.Module, inputs: torch.Tensor, *, eval: bool = True, grad: bool = False) -> Trace:
    """Run ``model(inputs)`` once and record, for every named layer, the call order, the number of
    calls and its last input and output (not copied: an in-place op later in ``forward`` shows).

    ``eval=True`` runs in eval mode; the model's flags are restored after. Without ``grad`` the
    pass runs under ``torch.no_grad()``.
    """
    record = Trace()

    def enter(name: str) -> PreHook:
        def hook(module: nn.Module, args: tuple) -> None:
            if name not in record.calls:
                record.entered.append(name)
            t = first_tensor(args)
            if t is not None:
                record.inputs[name] = t
        return hook

    def leave(name: str) -> ForwardHook:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if name not in record.calls:
                record.returned.append(name)
            record.calls[name] = record.calls.get(name, 0) + 1
            t = first_tensor(output)
            if t is not None:
                record.outputs[name] = t
        return hook

    layers = named_layers(model)
    with hooked(model, {m: leave(n) for n, m in layers.items()}, pre={m: enter(n) for n, m in layers.items()}), \
            torch.set_grad_enabled(grad):
        if eval:
            model.eval()
        record.output = model(inputs)
    return record
