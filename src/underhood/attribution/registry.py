"""The one registry of attribution methods: each method's function and what it needs.

One :class:`MethodInfo` per method, in :data:`REGISTRY` (the order in which tables and figures
list them). Everything that picks methods or their options reads it: :func:`get`, ``explain``,
``evaluate`` (:func:`~underhood.attribution.evaluate.applicable_methods`,
:func:`~underhood.attribution.evaluate.method_options`), the report and the command line.
:data:`METHODS` (name -> function) and :data:`PIXEL_METHODS` are derived from it.

Example:
    >>> from underhood.attribution.registry import info, names
    >>> names(layer=True)
    ['cam', 'gradcam', 'gradcam_pp', 'scorecam', 'guided_gradcam']
    >>> info("lime").kind, info("lime").seeded
    ('map', True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ..core.errors import InputError, lookup
from .cam import cam, gradcam, gradcam_pp, guided_gradcam, scorecam
from .gradient import input_x_gradient, integrated_gradients, saliency, smoothgrad
from .perturbation import lime, occlusion
from .rules import deconvnet, guided_backprop

KINDS = ("pixel", "map")


@dataclass(frozen=True)
class MethodInfo:
    """One attribution method and its capabilities.

    Attributes:
        name: the method's name (``--methods``, ``explain``'s keys, :func:`get`).
        fn: ``fn(model, inputs, target=None, **options) -> Tensor``.
        kind: ``"pixel"``: signed ``[N, C, H, W]`` like the inputs; ``"map"``: ``[N, 1, H, W]``.
        layer: takes ``layer=`` (the feature map it reads; the CAM family).
        rule: needs the ReLU backward rules (:mod:`underhood.core.rules`): an eager model with
            ReLUs in its forward, not TorchScript.
        perturbation: evaluates many perturbed copies of the inputs (noisy copies, path points,
            occluded or masked images), batched: takes ``batch_size`` and ``progress``.
        seeded: random, with a ``seed`` option (the same seed gives the same maps).
        head: needs a global-average-pooling + linear head (CAM).
        units: explains a :class:`~underhood.core.targets.Unit` or callable target, not only a class.
        fast: options of the quick preset (the report, ``underhood evaluate``).
        full: options of the full preset (``--full``, ``underhood explain``).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    kind: str
    layer: bool = False
    rule: bool = False
    perturbation: bool = False
    seeded: bool = False
    head: bool = False
    units: bool = True
    fast: Mapping[str, object] = field(default_factory=dict)
    full: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options ``fn`` accepts (everything after ``model, inputs, target``)."""
        params = inspect.signature(self.fn).parameters
        return tuple(k for k in params if k not in ("model", "inputs", "target"))


# LIME hides superpixels with grey: a shapes object is one flat-coloured superpixel, so the lime
# package's default fill (each superpixel's mean colour) would leave it unchanged and hide nothing
_ENTRIES = (
    MethodInfo("saliency", saliency, "pixel"),
    MethodInfo("input_x_gradient", input_x_gradient, "pixel"),
    MethodInfo("smoothgrad", smoothgrad, "pixel", perturbation=True, seeded=True,
               fast={"n_samples": 16}, full={"n_samples": 50}),
    MethodInfo("integrated_gradients", integrated_gradients, "pixel", perturbation=True,
               fast={"steps": 16}, full={"steps": 50}),
    MethodInfo("deconvnet", deconvnet, "pixel", rule=True),
    MethodInfo("guided_backprop", guided_backprop, "pixel", rule=True),
    MethodInfo("cam", cam, "map", layer=True, head=True, units=False),
    MethodInfo("gradcam", gradcam, "map", layer=True),
    MethodInfo("gradcam_pp", gradcam_pp, "map", layer=True),
    MethodInfo("scorecam", scorecam, "map", layer=True, perturbation=True),
    MethodInfo("guided_gradcam", guided_gradcam, "pixel", layer=True, rule=True),
    MethodInfo("occlusion", occlusion, "map", perturbation=True,
               fast={"window": 8, "stride": 4}, full={"window": 8, "stride": 2}),
    MethodInfo("lime", lime, "map", perturbation=True, seeded=True,
               fast={"n_samples": 300, "baseline": 0.5}, full={"n_samples": 1000, "baseline": 0.5}),
)

REGISTRY: dict[str, MethodInfo] = {m.name: m for m in _ENTRIES}
METHODS: dict[str, Callable[..., torch.Tensor]] = {name: m.fn for name, m in REGISTRY.items()}
PIXEL_METHODS: tuple[str, ...] = tuple(name for name, m in REGISTRY.items() if m.kind == "pixel")


def get(name: str | Callable) -> Callable[..., torch.Tensor]:
    """The method called ``name`` (a callable is returned as it is); an unknown name lists the known ones."""
    return lookup(name, METHODS, "method", "attribution method")


def info(name: str) -> MethodInfo:
    """The registry entry of ``name``; an unknown name lists the known ones."""
    return lookup(str(name), REGISTRY, "method", "attribution method")


def names(**flags: object) -> list[str]:
    """The methods whose entry has every given value, in registry order: ``names(layer=True)``,
    ``names(kind="pixel")``, ``names(perturbation=True, seeded=False)``."""
    fields = {f for f in MethodInfo.__dataclass_fields__ if f not in ("name", "fn", "fast", "full")}
    unknown = sorted(set(flags) - fields)
    if unknown:
        raise InputError(f"flags: unknown {', '.join(unknown)}; choose from {', '.join(sorted(fields))}")
    return [name for name, m in REGISTRY.items() if all(getattr(m, k) == v for k, v in flags.items())]

