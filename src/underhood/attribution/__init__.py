"""Attribution: which parts of the input made the decision, and which maps to trust.

Every method is ``method(model, inputs, target=None, **options) -> Tensor``. Pixel methods
(saliency, input_x_gradient, smoothgrad, integrated_gradients, deconvnet, guided_backprop,
guided_gradcam) return signed ``[N, C, H, W]``; map methods (cam, gradcam, gradcam_pp,
scorecam, occlusion, lime) return ``[N, 1, H, W]``. Nothing is normalised: drawing a map is
:mod:`underhood.viz`'s job. The methods and what each needs are listed in
:mod:`underhood.attribution.registry`; metrics live in :mod:`underhood.attribution.metrics`.
"""

from __future__ import annotations

from . import metrics
from .cam import TopCams, cam, gradcam, gradcam_pp, guided_gradcam, scorecam, top_cams
from .explain import explain
from .gradient import (
    SMOOTHGRAD_PRESETS,
    LineResult,
    gradient_along_line,
    input_x_gradient,
    integrated_gradients,
    saliency,
    smoothgrad,
    smoothgrad_options,
)
from .perturbation import LimeFit, lime, lime_fit, occlusion
from .registry import METHODS, PIXEL_METHODS, REGISTRY, MethodInfo, get, info, names
from .rules import deconvnet, guided_backprop

__all__ = [
    "METHODS", "PIXEL_METHODS", "REGISTRY", "MethodInfo", "get", "info", "names", "explain", "metrics",
    "saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "deconvnet", "guided_backprop",
    "cam", "gradcam", "gradcam_pp", "scorecam", "guided_gradcam", "occlusion", "lime", "lime_fit", "LimeFit",
    "SMOOTHGRAD_PRESETS", "smoothgrad_options", "gradient_along_line", "LineResult", "top_cams", "TopCams",
]
