"""The synthesis family: images made to excite a unit, dreams, pre-images, caricatures, style transfer."""

from . import objectives
from .facets import Multifaceted, centre_windows, multifaceted
from .objectives import Objective, batch, channel, class_logit, direction, diversity, layer, unit
from .param import Image, transform
from .priors import BINOMIAL, PENALTIES, Priors, alpha_norm, edge_energy, gaussian_blur, l2, total_variation
from .render import Inversion, RenderResult, caricature, deep_dream, invert, psnr, render
from .style import StyleResult, content_loss, gram, style_loss, style_transfer

__all__ = ["objectives", "Objective", "batch", "channel", "class_logit", "direction", "diversity", "layer", "unit",
           "Image", "transform", "PENALTIES", "Priors", "alpha_norm", "edge_energy", "gaussian_blur", "l2",
           "total_variation", "Inversion", "RenderResult", "caricature", "deep_dream", "invert", "psnr", "render",
           "StyleResult", "content_loss", "gram", "style_loss", "style_transfer", "Multifaceted", "centre_windows",
           "multifaceted", "BINOMIAL"]
