"""Report section of the weights family: first-layer filters."""

from __future__ import annotations

from markupsafe import Markup

from ..core.layers import conv_layers
from ..report import Context, figure, paragraph, section
from ..viz import figure_to_png, filters_figure
from .filters import filters


@section("filters", "First-layer filters", order=30)
def first_layer_filters(ctx: Context) -> Markup:
    convs = conv_layers(ctx.model)
    if not convs:
        return paragraph("The model has no convolutional layer.")
    w = filters(ctx.model, convs[0])
    kind = "RGB images (one colour scale shared by all filters)" if w.shape[1] == 3 else \
        "grey-scale kernels, one row per filter and one column per input channel"
    return figure(ctx, figure_to_png(filters_figure(w, title=f"{convs[0]}: {w.shape[0]} filters "
                                                     f"{w.shape[2]}x{w.shape[3]}")),
                  "filters", f"The {w.shape[0]} kernels of {convs[0]} drawn as {kind}: mid-grey is 0, "
                  "bright and dark are the weights that excite or inhibit the unit. First layers "
                  "typically learn oriented edges and colour blobs.", width="640px")
