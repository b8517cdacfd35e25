"""Scoped hooks: capture activations and gradients, and leave the model as it was found.

Every hook lives inside a ``with`` block and is removed on exit, also when the block raises;
``training`` flags of every module and ``requires_grad`` flags of every parameter are
restored too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import InputError, LayerError
from .layers import first_tensor, resolve


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's ``training`` flag and every parameter's ``requires_grad`` on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter for the block; both restored after
    (inside :func:`preserved`). For methods that differentiate w.r.t. inputs or activations only:
    attribution, synthesis, attacks. Eval mode fixes BatchNorm statistics and turns dropout off,
    so the function studied is the deployed one."""
    with preserved(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model


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
    handles = []

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

    with preserved(model):
        if eval is not None:
            model.train(not eval)
        try:
            for name, module in modules.items():
                handles.append(module.register_forward_hook(make_hook(name)))
            yield cap
        finally:
            for h in handles:
                h.remove()


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

    handle = module.register_forward_hook(hook)
    try:
        yield leaves
    finally:
        handle.remove()


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every needed layer has run."""


def stream(model: nn.Module, layers: str | Sequence[str], images: torch.Tensor, batch_size: int, *,
           progress: bool = False, desc: str = "batches") -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
    """Run ``images`` through ``model`` in batches (eval mode, no gradients) and yield each batch's
    slice with the named layers' activations.

    The first batch runs the whole network and counts the calls of each layer; when every named
    layer runs exactly once, later batches stop the forward pass right after the last of them
    (nothing after it is computed), so a dataset scan at an early layer costs a fraction of a
    full forward pass. The model is left as it was found.
    """
    from tqdm.auto import tqdm

    from .batching import batches

    names = [layers] if isinstance(layers, str) else list(layers)
    device = next(iter(model.parameters()), torch.empty(0)).device
    state = {"stop": False}
    modules = {name: resolve(model, name) for name in names}
    seen: dict[str, int] = {}

    def stopper(mod: nn.Module, inputs: object, output: object) -> None:
        if state["stop"] and all(seen.get(n, 0) for n in names):
            raise StopForward

    def counter(name: str):
        def hook(mod: nn.Module, inputs: object, output: object) -> None:
            seen[name] = seen.get(name, 0) + 1
        return hook

    handles = []
    with capture(model, names, eval=True) as cap, torch.no_grad():
        try:
            for name, module in modules.items():
                handles.append(module.register_forward_hook(counter(name)))
                handles.append(module.register_forward_hook(stopper))
            for i, part in enumerate(tqdm(list(batches(len(images), batch_size)), desc=desc,
                                          disable=not progress, leave=False)):
                cap.clear()
                seen.clear()
                try:
                    model(images[part].to(device))
                except StopForward:
                    pass
                missing = [n for n in names if n not in cap.activations]
                if missing:
                    raise InputError(f"layer: {missing[0]!r} did not run in forward; pick a layer that does "
                                     "(see `underhood layers`)")
                if i == 0:
                    state["stop"] = all(seen.get(n) == 1 for n in names)
                yield part, {n: cap.activations[n] for n in names}
        finally:
            for h in handles:
                h.remove()


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

    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield run
    finally:
        for h in handles:
            h.remove()
