"""Report sections of the activations family: feature maps, embeddings, neighbours, top patches, ablation."""

from __future__ import annotations

import torch
from markupsafe import Markup

from ...activations.embed import INPUT
from ...activations.maps import embedding_layers, feature_view, maps
from ...core.batching import batches
from ...core.device import model_device
from ...core.hooks import capture
from ...core.layers import last_hidden, stages
from ...core.outputs import logits_of
from ...viz import feature_maps_figure, figure_to_png
from ..base import Context, figure, section, table

POPULATION = 512      # held-out images the dataset-scale sections share (2,000 with --full)
TSNE_STEPS = 300      # t-SNE steps of the embeddings figure (openTSNE's 750 with --full)


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
                  "each scaled to its own range (viridis: dark = low, yellow = high). Early stages respond to "
                  "edges and colours at full resolution; later ones to parts of the shape, coarser and more "
                  "selective.")


def population(ctx: Context):
    """The held-out images the dataset-scale sections share (512; 2,000 with ``--full``), made once."""
    if "population" not in ctx.cache:
        from ...core.errors import InputError
        from ...data.splits import test_set

        n = 2000 if ctx.options.get("full") else POPULATION
        dataset = (getattr(ctx.model, "meta", {}) or {}).get("dataset", "shapes")
        if len(ctx.data) >= n:
            data = ctx.data[:n]
        else:
            try:
                data = test_set(dataset, n)  # only the first n are made
            except InputError:
                try:
                    data = test_set(dataset)  # a held-out set smaller than n (digits)
                except InputError:  # a model trained elsewhere: the report's own sample
                    data = ctx.data
        ctx.cache["population"] = data
    return ctx.cache["population"]


def batch_size(ctx: Context) -> int:
    """Images per forward pass of the sections' dataset passes: 64, fewer where one image's activations
    are large (a fixed size: measuring the fastest one, as ``batch_size=None`` does, costs more CPU
    time than the report's passes themselves)."""
    if "batch-size" not in ctx.cache:
        from ...core.batching import memory_bound, per_sample_bytes
        from ...core.state import evaluating

        device = model_device(ctx.model)
        with evaluating(ctx.model), torch.no_grad():
            one = per_sample_bytes(ctx.model, tuple(ctx.data.images.shape[1:]), device, False)
        ctx.cache["batch-size"] = int(max(1, min(64, memory_bound(device) // max(one, 1))))
    return ctx.cache["batch-size"]


@torch.no_grad()
def population_pass(ctx: Context) -> dict:
    """One forward pass over :func:`population`, shared by the dataset-scale sections.

    For every stage, embedding layer and the last hidden layer: ``mean[layer]`` the channel means
    ``[N, C]`` (the features of embeddings and neighbours, as ``features(pool="avg")`` gives them),
    ``max[layer]`` the channel maxima over positions ``[N, C]`` and ``where[layer]`` their first
    ``(y, x)`` ``[N, C, 2]`` (the scan of top patches); ``logits`` ``[N, K]``. A token or channels-last
    layer is read as ``[N, C, h, w]`` (:func:`~underhood.activations.maps.feature_view`, class token left
    out), so its channels are ``C``, not the sequence positions.
    """
    if "population-pass" in ctx.cache:
        return ctx.cache["population-pass"]
    model, data = ctx.model, population(ctx)
    names = list(dict.fromkeys([*stages(model), *(n for n in embedding_layers(model) if n != INPUT),
                                last_hidden(model)]))
    device = model_device(model)
    size, hw = batch_size(ctx), tuple(data.images.shape[-2:])
    parts: dict[str, list] = {"logits": []}
    with capture(model, names, eval=True) as cap:
        for rows in batches(len(data), size):
            cap.clear()
            parts["logits"].append(logits_of(model(data.images[rows].to(device))).float().cpu())
            for name in names:
                a = feature_view(cap.activations[name], hw, name)[0].float()
                flat = a.flatten(2) if a.ndim > 2 else a[:, :, None]
                best, at = flat.max(2)
                width = a.shape[-1] if a.ndim == 4 else 1
                where = torch.stack([at // width, at % width], -1) if a.ndim == 4 else torch.zeros_like(at)[..., None]\
                    .expand(-1, -1, 2)
                for key, value in (("mean", flat.mean(2)), ("max", best), ("where", where)):
                    parts.setdefault(f"{key}:{name}", []).append(value.cpu())
    out: dict = {"mean": {}, "max": {}, "where": {}, "logits": torch.cat(parts.pop("logits"))}
    for key, chunks in parts.items():
        kind, name = key.split(":", 1)
        out[kind][name] = torch.cat(chunks)
    ctx.cache["population-pass"] = out
    return out


def population_features(ctx: Context, layers) -> dict[str, torch.Tensor]:
    """``{layer: [N, D]}`` features of the population as :func:`underhood.activations.embed.features`
    gives them (channel means; ``"input"``: the flattened pixels), from the shared pass."""
    data, cached = population(ctx), population_pass(ctx)["mean"]
    return {name: data.images.flatten(1) if name == INPUT else cached[name] for name in layers}


def _trend(layers, knn) -> str:
    """What the k-NN accuracies say across the layers shown, true of every step, not only the ends."""
    values = [knn[n] for n in layers]
    steps = " -> ".join(f"{n} {v:.0%}" for n, v in zip(layers, values))
    drops = [(a, b) for a, b in zip(layers, layers[1:]) if knn[b] < knn[a]]
    if values[-1] <= values[0]:
        return (f"Here the 2-D neighbourhoods are no purer at {layers[-1]} ({values[-1]:.0%}) than in pixel space "
                f"({values[0]:.0%}): {steps}.")
    if not drops:
        return f"The classes come apart with depth, layer after layer: a point's {len(layers)} layouts give {steps}."
    dips = "; ".join(f"{b} ({knn[b]:.0%}) is below {a} ({knn[a]:.0%})" for a, b in drops)
    return (f"From the pixels to {layers[-1]} the classes come apart ({steps}), but not at every step: {dips} "
            "(the early features respond to colour and edges, which the classes share).")


@section("embeddings", "Layer by layer: how the classes come apart", order=42)
def embeddings(ctx: Context) -> Markup:
    from ...activations.embed import embed_features
    from ...viz.embedding import embedding_figure

    full = bool(ctx.options.get("full"))
    data = population(ctx)
    layers = embedding_layers(ctx.model)
    emb = embed_features(population_features(ctx, layers), "tsne", labels=data.labels, seed=ctx.seed,
                         steps=None if full else TSNE_STEPS)
    fig = embedding_figure(emb, classes=data.classes, images=data.images, thumbnails=0, panel=4.4, ncols=2)
    rows = [[n_, f"{emb.knn_accuracy[n_]:.1%}", f"{emb.trustworthiness[n_]:.3f}"] for n_ in layers]
    return (figure(ctx, figure_to_png(fig, dpi=100), "embeddings",
                   f"The same {len(data)} held-out images embedded in 2-D with t-SNE (openTSNE, after PCA to 50 "
                   f"dimensions, {TSNE_STEPS if not full else 750} steps) from the pixels and from the activations of "
                   "an early, a middle and the last hidden layer (maps averaged over positions), one colour per "
                   f"true class. Each panel's k-NN accuracy is how often a point's {emb.k} nearest 2-D neighbours "
                   "mostly share its class. " + _trend(layers, emb.knn_accuracy) + " Trustworthiness near 1 means "
                   "points close in 2-D are close in the layer's own features too.")
            + table(["layer", f"kNN accuracy in 2-D (k={emb.k})", f"trustworthiness (k={emb.k})"], rows,
                    numeric=(1, 2)))


@section("neighbors", "Nearest neighbours: pixel space against feature space", order=43)
def nearest(ctx: Context) -> Markup:
    from ...activations.neighbors import neighbors_of_features
    from ...viz.embedding import neighbors_figure

    everyone = population(ctx)
    n = len(everyone)
    picks = [n - 1 - i for i in range(4)]
    data, queries = everyone[: n - 4], everyone[picks]  # the queries are not among the candidates
    layer = last_hidden(ctx.model)
    feats = population_features(ctx, [INPUT, layer])
    result = neighbors_of_features({k: v[picks] for k, v in feats.items()}, {k: v[: n - 4] for k, v in feats.items()},
                                   layer, k=5)
    fig = neighbors_figure(queries.images, data.images, result, classes=data.classes, labels=data.labels,
                           query_labels=queries.labels)
    same = [int((data.labels[index] == queries.labels[:, None]).sum()) for index in (result.pixel_index,
                                                                                     result.feature_index)]
    total = result.pixel_index.numel()
    return figure(ctx, figure_to_png(fig, dpi=100), "neighbors",
                  f"For each query (left), its 5 nearest images among {len(data)} held-out ones by Euclidean "
                  f"distance between pixels, then between the activations at {layer} (class name green when it "
                  f"matches the query's, red when not; distance below). {same[0]} of the {total} pixel-space "
                  f"neighbours share their query's class, {same[1]} of the {total} feature-space ones"
                  + (": pixel neighbours look alike pixel by pixel (colours, background, position), feature "
                     "neighbours are what the network treats alike." if same[1] > same[0] else "."))


def top_state(ctx: Context, layer: str, channels: torch.Tensor, k: int):
    """The streaming top-``k`` state of :func:`underhood.activations.patches.scan` over the population,
    read off the shared pass: each channel's ``k`` highest maxima, ties to the lower index."""
    from ...activations.patches import Partial, merge

    cached = population_pass(ctx)
    values, where = cached["max"][layer][:, channels].T, cached["where"][layer][:, channels].transpose(0, 1)
    index = torch.arange(len(values[0]))[None].expand(len(channels), -1)
    return merge([Partial(values, index, where, channels)], k)


@section("top-patches", "What excites a unit: top-9 patches", order=44)
def patches(ctx: Context) -> Markup:
    from ...activations.patches import finish
    from ...viz.units import top_patches_figure

    data = population(ctx)
    names = stages(ctx.model)
    picks = list(dict.fromkeys([names[len(names) // 2], names[-1]]))
    body = Markup()
    for layer in picks:
        ids = torch.arange(min(8, population_pass(ctx)["max"][layer].shape[1]))
        state = top_state(ctx, layer, ids, 9)
        tp = finish(ctx.model, data.images, layer, state, pattern="guided", batch_size=state.index.numel())
        fig = top_patches_figure(tp, ncols=2)
        pattern = ("guided-backprop pattern" if tp.rule == "guided" else
                   "gradient (the guided-backprop rule acts at ReLUs, and this model runs none)")
        cell = tp.box[0, 0, 2:] - tp.box[0, 0, :2]
        where = (f"cut to the receptive field of the winning unit ({tp.field[0]}x{tp.field[1]} pixels; grey beyond "
                 "the image border)" if tp.field else
                 f"cut to the winning position's own {int(cell[0])}x{int(cell[1])}-pixel patch of the "
                 f"{tp.info['layout']} (attention lets the unit see the whole image; the patch is where it sits)"
                 if tp.info.get("box") == "cell" else None)
        body += figure(ctx, figure_to_png(fig, dpi=100), f"top-patches-{layer}",
                       f"Channels 0-{len(ids) - 1} of {layer}: for each, the 9 of {len(data)} held-out images on "
                       f"which the channel's maximum is highest, {where} and, on the right, the unit's {pattern} in "
                       "each patch (grey = 0)." if where else
                       f"Channels 0-{len(ids) - 1} of {layer} (units that see the whole image).")
    return body


def _finding(result) -> str:
    """Which order of zeroing costs the most, from the curves' mean accuracies (a tie says so)."""
    area = {o: float(c.mean()) for o, c in result.curves.items()}
    ranked = sorted(area, key=area.get)
    if len(ranked) < 2 or area[ranked[1]] - area[ranked[0]] < 0.01:
        return "No order of zeroing hurts clearly more than another here."
    return {"selectivity": "Here zeroing the most class-selective units first costs the most accuracy (Morcos et "
                           "al. found the opposite on their networks, so this is a property of the model, not a "
                           "law).",
            "selectivity-low": "Here zeroing the least class-selective units first costs the most accuracy: the "
                               "network relies on its broadly tuned units, as Morcos et al. found.",
            "random": "Here a random order hurts more than either selectivity order."}.get(ranked[0], "")


@section("ablation", "Ablation: which units the decision needs", order=46)
def ablation(ctx: Context) -> Markup:
    from ...activations.ablate import ablate
    from ...viz.ablation import ablation_figure

    data = population(ctx)
    data = data if ctx.options.get("full") else data[:256]  # 256 measure the probability drops to 0.1 point
    layer = stages(ctx.model)[-1]
    result = ablate(ctx.model, data, layer, seed=ctx.seed, batch_size=batch_size(ctx))
    fig = ablation_figure(result)
    changed = int(round(float((result.baseline - result.single).abs().max()) * result.n))
    text = (f"Left: accuracy on {result.n} held-out images as the {len(result.units)} channels of {layer} are set "
            "to zero one after another, in random order and by class selectivity (Morcos et al. 2018). "
            f"{_finding(result)} Right: zeroing any one channel alone changes "
            + (f"at most {changed}" if changed else "none") + f" of the {result.n} decisions")
    if result.single_probability is not None:
        drop = (result.baseline_probability - result.single_probability).double()
        top = int(drop.argmax())
        selectivity = result.selectivity[result.units].double()
        r = float(torch.corrcoef(torch.stack([selectivity, drop]))[0, 1]) if drop.std() > 0 else 0.0
        link = ("the drop is hardly related to selectivity" if abs(r) < 0.2 else
                f"the more class-selective channels tend to matter {'slightly ' if abs(r) < 0.5 else ''}"
                f"{'more' if r > 0 else 'less'}")
        text += (", so the right panel plots what does move: the drop in the true class's mean softmax probability "
                 f"(intact {result.baseline_probability:.1%}) when the channel is zeroed, against its class "
                 f"selectivity index. The largest is {float(drop[top]) * 100:.1f} points (channel "
                 f"{int(result.units[top])}); {link} (r = {r:.2f}).")
    else:
        text += "."
    sel = result.selectivity[result.units]
    if bool(((sel < 0) | (sel > 1)).any()):  # negative class means: no ReLU after the layer (a transformer block)
        text += (f" Some channels of {layer} respond negatively on average (no ReLU follows it), so their "
                 "selectivity index leaves [0, 1] and the two selectivity orders are only indicative here.")
    return figure(ctx, figure_to_png(fig, dpi=110), "ablation", text)
