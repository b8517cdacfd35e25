"""Attribution: which parts of the input made the decision, and which maps to trust.

Every method is ``method(model, inputs, target=None, **options) -> Tensor``. Pixel methods
(saliency, input_x_gradient, smoothgrad, integrated_gradients, deconvnet, guided_backprop,
guided_gradcam) return signed ``[N, C, H, W]``; map methods (cam, gradcam, gradcam_pp,
scorecam, occlusion, lime) return ``[N, 1, H, W]``. Nothing is normalised: drawing a map is
:mod:`underhood.viz`'s job. Metrics live in :mod:`underhood.attribution.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.errors import lookup
from . import metrics
from .cam import cam, gradcam, gradcam_pp, guided_gradcam, scorecam
from .explain import explain
from .gradient import input_x_gradient, integrated_gradients, saliency, smoothgrad
from .perturbation import lime, occlusion
from .rules import deconvnet, guided_backprop

METHODS: dict[str, Callable] = {
    "saliency": saliency, "input_x_gradient": input_x_gradient, "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients, "deconvnet": deconvnet, "guided_backprop": guided_backprop,
    "cam": cam, "gradcam": gradcam, "gradcam_pp": gradcam_pp, "scorecam": scorecam,
    "guided_gradcam": guided_gradcam, "occlusion": occlusion, "lime": lime,
}
PIXEL_METHODS = ("saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "deconvnet",
                 "guided_backprop", "guided_gradcam")


def get(name: str) -> Callable:
    """The method called ``name`` (see :data:`METHODS`); an unknown name lists the known ones."""
    return lookup(name, METHODS, "method", "attribution method")


__all__ = ["METHODS", "PIXEL_METHODS", "get", "explain", "metrics", *METHODS]
