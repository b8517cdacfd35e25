"""Report sections of the activations family: feature maps, embeddings, neighbours, top patches, ablation."""

from __future__ import annotations

from markupsafe import Markup

from ...activations.maps import embedding_layers, maps
from ...core.device import model_device
from ...core.layers import last_hidden, stages
from ...viz import feature_maps_figure, figure_to_png
from ..base import Context, figure, section, table


@section("feature-maps", "Feature maps at every stage", order=40)
def feature_maps(ctx: Context) -> Markup:
    names = stages(ctx.model)
    x = ctx.data.images[:1].to(model_device(ctx.model))
    acts = maps(ctx.model, x, names)
    k = int(ctx.options.get("k_maps", 8))
    fig = feature_maps_figure([(n, acts[n][0]) for n in names], x[0].cpu(), k=k)
    cls = ctx.data.classes[int(ctx.data.labels[0])]
    return figure(ctx, figure_to_png(fig), "feature-maps",
                  f"One image (a {cls}) and, for each stage, the {k} channels with the highest mean activation, "
                  "each scaled to its own range (yellow = high). Early stages respond to edges and colours at "
                  "full resolution; later ones to parts of the shape, coarser and more selective.")


def population(ctx: Context):
    """The held-out images the dataset-scale sections share (1,000; 2,000 with ``--full``)."""
    if "population" not in ctx.cache:
        from ...data.splits import test_set

        dataset = (getattr(ctx.model, "meta", {}) or {}).get("dataset", "shapes")
        try:
            data = test_set(dataset)
        except Exception:  # a model trained elsewhere: the report's own sample
            data = ctx.data
        ctx.cache["population"] = data[: 2000 if ctx.options.get("full") else 1000]
    return ctx.cache["population"]


@section("embeddings", "Layer by layer: how the classes come apart", order=42)
def embeddings(ctx: Context) -> Markup:
    from ...activations.embed import embed
    from ...viz.embedding import embedding_figure

    data = population(ctx)
    n = len(data) if ctx.options.get("full") else min(len(data), 600)
    data = data[:n]
    layers = embedding_layers(ctx.model)
    emb = embed(ctx.model, data, layers, method="tsne", seed=ctx.seed)
    fig = embedding_figure(emb, classes=data.classes, images=data.images, thumbnails=0)
    rows = [[n_, f"{emb.knn_accuracy[n_]:.1%}", f"{emb.trustworthiness[n_]:.3f}"] for n_ in layers]
    first, last = emb.knn_accuracy[layers[0]], emb.knn_accuracy[layers[-1]]
    trend = (f"Where the eye looks, the classes separate as depth grows: a point's 10 nearest 2-D neighbours share "
             f"its class {first:.0%} of the time in pixel space and {last:.0%} at {layers[-1]}."
             if last > first else
             f"Here the 2-D neighbourhoods are no purer at {layers[-1]} ({last:.0%}) than in pixel space "
             f"({first:.0%}).")
    return (figure(ctx, figure_to_png(fig, dpi=110), "embeddings",
                   f"The same {n} held-out images embedded in 2-D with t-SNE (openTSNE, after PCA to 50 dimensions) "
                   "from the pixels and from the activations of an early, a middle and the last hidden layer "
                   "(maps averaged over positions), coloured by true class. " + trend + " Trustworthiness near 1 "
                   "means points close in 2-D are close in the layer's own features too.")
            + table(["layer", "kNN accuracy in 2-D (k=10)", "trustworthiness (k=10)"], rows, numeric=(1, 2)))


@section("neighbors", "Nearest neighbours: pixel space against feature space", order=43)
def nearest(ctx: Context) -> Markup:
    from ...activations.neighbors import neighbors
    from ...viz.embedding import neighbors_figure

    everyone = population(ctx)
    picks = [len(everyone) - 1 - i for i in range(4)]
    data, queries = everyone[: len(everyone) - 4], everyone[picks]  # the queries are not among the candidates
    layer = last_hidden(ctx.model)
    result = neighbors(ctx.model, queries.images, data, layer, k=5)
    fig = neighbors_figure(queries.images, data.images, result, classes=data.classes, labels=data.labels,
                           query_labels=queries.labels)
    same = [int((data.labels[index] == queries.labels[:, None]).sum()) for index in (result.pixel_index,
                                                                                     result.feature_index)]
    total = result.pixel_index.numel()
    return figure(ctx, figure_to_png(fig, dpi=110), "neighbors",
                  f"For each query (left), its 5 nearest images among {len(data)} held-out ones by Euclidean "
                  f"distance between pixels, then between the activations at {layer} (class name green when it "
                  f"matches the query's, distance below). {same[0]} of the {total} pixel-space neighbours share "
                  f"their query's class, {same[1]} of the {total} feature-space ones: pixel neighbours look alike "
                  "pixel by pixel (colours, background, position), feature neighbours are what the network "
                  "treats alike.")


@section("top-patches", "What excites a unit: top-9 patches", order=44)
def patches(ctx: Context) -> Markup:
    from ...activations.patches import top_patches
    from ...viz.units import top_patches_figure

    data = population(ctx)
    names = stages(ctx.model)
    picks = list(dict.fromkeys([names[len(names) // 2], names[-1]]))
    body = Markup()
    for layer in picks:
        tp = top_patches(ctx.model, data, layer, k=9, channels=range(8), pattern="guided")
        fig = top_patches_figure(tp, ncols=4)
        body += figure(ctx, figure_to_png(fig, dpi=100), f"top-patches-{layer}",
                       f"Channels 0-7 of {layer}: for each, the 9 of {len(data)} held-out images on which the "
                       f"channel's maximum is highest, cut to the receptive field of the winning unit ({tp.field[0]}x"
                       f"{tp.field[1]} pixels; grey beyond the image border) and, on the right, the unit's "
                       "guided-backprop pattern in each patch (grey = 0)." if tp.field else
                       f"Channels 0-7 of {layer} (units that see the whole image).")
    return body


@section("ablation", "Ablation: which units the decision needs", order=46)
def ablation(ctx: Context) -> Markup:
    from ...activations.ablate import ablate
    from ...viz.ablation import ablation_figure

    full = bool(ctx.options.get("full"))
    data = population(ctx)[: 400 if full else 160]
    layer = stages(ctx.model)[-1]
    result = ablate(ctx.model, data, layer, seed=ctx.seed, points=None if full else 9)
    fig = ablation_figure(result)
    area = {o: float(c.mean()) for o, c in result.curves.items()}
    worst = min(area, key=area.get)
    finding = {"selectivity": "Here the most class-selective units are the ones the network needs most: zeroing "
                              "them first costs the most accuracy (Morcos et al. found the opposite on their "
                              "networks, so this is a property of the model, not a law).",
               "selectivity-low": "Here zeroing the least class-selective units first costs the most accuracy: the "
                                  "network relies on its broadly tuned units, as Morcos et al. found.",
               "random": "Here neither selectivity order hurts more than a random one: selectivity does not tell "
                         "which units the network needs."}.get(worst, "")
    return figure(ctx, figure_to_png(fig, dpi=110), "ablation",
                  f"Left: held-out accuracy on {len(data)} images as the {len(result.units)} channels of {layer} are "
                  "set to zero one after another, in random order and by class selectivity (Morcos et al. 2018)"
                  + ("" if result.counts is None or len(result.counts) == len(result.units) + 1 else
                     f", measured at {len(result.counts)} counts") + ". Right: the accuracy lost when each channel "
                  "alone is zeroed, against its class-selectivity index. " + finding)
