"""Report section of the activations family: feature maps of one image at every stage."""

from __future__ import annotations

from markupsafe import Markup

from ..core.layers import named_layers
from ..report import Context, figure, section
from ..viz import feature_maps_figure, figure_to_png
from .maps import maps


def stages(model) -> list[str]:
    """One layer per convolutional stage: the output of each pooling layer or residual block,
    else every convolution's activation (the module after it when that is a ReLU)."""
    from torch import nn

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


@section("feature-maps", "Feature maps at every stage", order=40)
def feature_maps(ctx: Context) -> Markup:
    names = stages(ctx.model)
    x = ctx.data.images[:1].to(next(ctx.model.parameters()).device)
    acts = maps(ctx.model, x, names)
    k = int(ctx.options.get("k_maps", 8))
    fig = feature_maps_figure([(n, acts[n][0]) for n in names], x[0].cpu(), k=k)
    cls = ctx.data.classes[int(ctx.data.labels[0])]
    return figure(ctx, figure_to_png(fig), "feature-maps",
                  f"One image (a {cls}) and, for each stage, the {k} channels with the highest mean activation, "
                  "each scaled to its own range (yellow = high). Early stages respond to edges and colours at "
                  "full resolution; later ones to parts of the shape, coarser and more selective.")
