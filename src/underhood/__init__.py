"""underhood: open the black box of trained image models.

``import underhood`` is light: families and heavy libraries load on first use.

Example:
    >>> import underhood
    >>> model = underhood.load_model("shapes")            # doctest: +SKIP
    >>> data = underhood.datasets.shapes(8, seed=1)       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from .core.errors import UnderhoodError
from .core.version import __version__

_LAZY = {
    "load_model": ("underhood.models.loading", "load_model"),
    "list_models": ("underhood.models.loading", "list_models"),
    "load_image": ("underhood.data.images", "load_image"),
    "load_result": ("underhood.core.results", "load"),
    "ImageSet": ("underhood.data.imageset", "ImageSet"),
    "Unit": ("underhood.core.targets", "Unit"),
    "layers": ("underhood.core.layers", "layers"),
    "capture": ("underhood.core.hooks", "capture"),
    "datasets": ("underhood.data", None),
    "weights": ("underhood.weights", None),
    "activations": ("underhood.activations", None),
    "synthesis": ("underhood.synthesis", None),
    "attribution": ("underhood.attribution", None),
    "adversarial": ("underhood.adversarial", None),
    "influence": ("underhood.influence", None),
    "transfer": ("underhood.transfer", None),
    "hardware": ("underhood.hardware", None),
    "viz": ("underhood.viz", None),
    "report": ("underhood.report", None),
    "core": ("underhood.core", None),
    "models": ("underhood.models", None),
}

__all__ = ["UnderhoodError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'underhood' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
