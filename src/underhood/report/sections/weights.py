"""Report sections of the weights family: filters of the first and a deeper layer; the 2-D toy network."""

from __future__ import annotations

from markupsafe import Markup

from ...core.layers import conv_layers
from ...viz import figure_to_png, filters_figure
from ...weights.filters import filters
from ...weights.toy2d import toy2d, toy2d_strip
from ..base import Context, figure, paragraph, section


@section("filters", "Filters: what the convolutions look for", order=30)
def layer_filters(ctx: Context) -> Markup:
    convs = conv_layers(ctx.model)
    if not convs:
        return paragraph("The model has no convolutional layer.")
    w = filters(ctx.model, convs[0]).cpu()
    kind = "RGB images (one colour scale shared by all filters)" if w.shape[1] == 3 else \
        "grey-scale kernels, one row per filter and one column per input channel"
    body = figure(ctx, figure_to_png(filters_figure(w, title=f"{convs[0]}: {w.shape[0]} filters "
                                                   f"{w.shape[2]}x{w.shape[3]}")),
                  "filters", f"The {w.shape[0]} kernels of {convs[0]} drawn as {kind}: mid-grey is 0, "
                  "bright and dark are the weights that excite or inhibit the unit. First layers "
                  "typically learn oriented edges and colour blobs.", width="640px")
    if len(convs) > 1:
        deep = convs[min(len(convs) - 1, max(1, len(convs) // 2))]
        d = filters(ctx.model, deep).cpu()
        rows, cols = min(20, d.shape[0]), min(15, d.shape[1])
        body += figure(ctx, figure_to_png(filters_figure(d, title=f"{deep}: first {cols} input channels "
                                                         f"(columns) of the first {rows} filters (rows)")),
                       "filters-deep", f"Deeper in ({deep}), a filter has one {d.shape[2]}x{d.shape[3]} kernel per "
                       f"input channel ({d.shape[1]} of them); each kernel is scaled on its own. Its meaning "
                       "depends on what those input channels detect, so these pictures say less than the first "
                       "layer's: the patches that excite a unit (below) say more.", width="640px")
    return body


@section("toy2d", "A network you can see whole: 20 hidden units in the plane", order=35)
def toy_network(ctx: Context) -> Markup:
    full = bool(ctx.options.get("full"))
    steps = 5000 if full else 1000  # the moons are fitted (100% training accuracy) well before 1,000 steps
    result = ctx.cache.get("toy2d") or toy2d("moons", hidden=20, steps=steps, seed=ctx.seed)
    fig = toy2d_strip(result, k=8 if full else 6, ncols=4 if full else 3)  # two rows: titles readable
    return figure(ctx, figure_to_png(fig, dpi=100), "toy2d",
                  "A one-hidden-layer MLP from R^2 to 2 classes (20 ReLU units) learning the two moons, drawn at "
                  f"log-spaced moments of {steps:,} full-batch Adam steps. Each grey line is one hidden unit's line "
                  "{x : w.x + b = 0}, where it switches on; the black curve is the decision boundary, the dots the "
                  "two classes (orange and blue) and the background the class probability. The boundary is pieced "
                  "together from these lines: as training goes on, units rotate and move to where the classes meet. "
                  f"Training accuracy at the end: {result.final_accuracy:.1%}. "
                  "`underhood toy2d` writes the animated GIF.")
