"""``explain``: several attribution methods on one batch, sharing the passes they have in common."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from ..core.errors import InputError
from ..core.hooks import frozen
from ..core.targets import Target
from .base import check_amp, fixed_target, prepare
from .cam import combine, gradcam_pp_weights, layer_gradients
from .gradient import saliency
from .registry import get
from .rules import guided_backprop

DEFAULT_METHODS = ("saliency", "guided_backprop", "gradcam")
SHARED_OPTIONS = ("layer", "batch_size", "seed", "progress", "amp", "tokens", "grid", "layout")


def _options(name: str, fn, shared: dict, per_method: dict) -> dict:
    accepted = inspect.signature(fn).parameters
    opts = {k: v for k, v in shared.items() if k in accepted}
    own = per_method.get(name, {})
    if not isinstance(own, dict):
        raise InputError(f"{name}: per-method options are a dict, e.g. {name}={{'batch_size': 16}}; got {own!r}")
    unknown = [k for k in own if k not in accepted or k in ("model", "inputs", "target")]
    if unknown:
        raise InputError(f"{name}: unknown option(s) {', '.join(unknown)}; it accepts "
                         f"{', '.join(k for k in accepted if k not in ('model', 'inputs', 'target'))}")
    return {**opts, **own}


def explain(model: nn.Module, inputs: torch.Tensor, methods: Sequence[str] = DEFAULT_METHODS,
            target: Target = None, **per_method_options) -> dict[str, torch.Tensor]:
    """Run several attribution methods on one batch and return ``{method: map}``.

    The target is fixed once on the clean inputs (one forward pass), so every method explains
    the same class. Passes are shared where methods have them in common: saliency and
    input x gradient use one gradient; Grad-CAM and Grad-CAM++ at the same layer one forward
    and backward; guided Grad-CAM reuses guided backprop and Grad-CAM when they were asked for.

    Options: ``layer``, ``batch_size``, ``seed``, ``progress``, ``amp`` (mixed precision, see
    :mod:`underhood.attribution.base`) and the layer reading ``tokens`` / ``grid`` / ``layout`` (see
    :mod:`underhood.core.layout`) go to every method that takes them; anything else per
    method, as a dict: ``smoothgrad={"n_samples": 20}``.

    Example:
        >>> maps = explain(model, x, ["saliency", "smoothgrad", "gradcam"], layer="features.14",
        ...                smoothgrad={"n_samples": 25})                       # doctest: +SKIP
    """

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    fns = {name: get(name) for name in methods}
    shared = {k: per_method_options.pop(k) for k in SHARED_OPTIONS if k in per_method_options}
    stray = [k for k in per_method_options if k not in fns]
    if stray:
        raise InputError(f"options: {', '.join(stray)} is not one of the methods asked for nor a shared option "
                         f"({', '.join(SHARED_OPTIONS)}); pass method options as method={{...}}")
    x, amp = prepare(model, inputs), check_amp(shared.get("amp", False))
    with frozen(model):
        fixed, _ = fixed_target(model, x, target, amp=amp)
    size, out, cache = tuple(x.shape[-2:]), {}, {}

    def cam_parts(opts):
        reading = {k: opts.get(k) for k in ("tokens", "grid", "layout")}
        key = ("layer", opts.get("layer"), *(str(v) for v in reading.values()))
        if key not in cache:
            cache[key] = layer_gradients(model, x, fixed, opts.get("layer"), amp=amp, **reading)[1:]
        return cache[key]

    for name, fn in fns.items():
        opts = _options(name, fn, shared, per_method_options)
        if name in ("saliency", "input_x_gradient"):
            if "grad" not in cache:
                cache["grad"] = saliency(model, x, fixed, amp=amp)
            out[name] = cache["grad"] if name == "saliency" else x * cache["grad"]
        elif name in ("gradcam", "gradcam_pp"):
            a, g = cam_parts(opts)
            weights = g.mean((2, 3)) if name == "gradcam" else gradcam_pp_weights(a, g)
            out[name] = combine(weights, a, size)
        elif name == "guided_gradcam":
            gb = out["guided_backprop"] if "guided_backprop" in out else guided_backprop(model, x, fixed)
            a, g = cam_parts(opts)
            out[name] = gb * combine(g.mean((2, 3)), a, size)
        else:
            out[name] = fn(model, x, fixed, **opts)
    return out
