"""The lectures' activation experiments: feature maps, maximum-response patches, neighbours, embeddings
(t-SNE of layers, the swiss roll, the t-SNE grid), ablation, invariance by layer and features over training."""

from __future__ import annotations

import contextlib
import io

import torch
from markupsafe import Markup

from ...activations.ablate import ablate
from ...activations.embed import INPUT, embed, embed_features, grid_cells, swiss_roll, trustworthiness
from ...activations.evolution import evolution
from ...activations.invariance import change, invariance
from ...activations.maps import maps
from ...activations.neighbors import neighbors
from ...activations.patches import top_patches
from ...core.layers import last_hidden, stages
from ...viz import figure_to_png
from ...viz.ablation import ablation_figure
from ...viz.activations_course import evolution_figure, invariance_figure, swiss_roll_figure, tsne_grid_figure
from ...viz.embedding import embedding_figure, neighbors_figure
from ...viz.figures import feature_maps_figure
from ...viz.units import top_patches_figure
from ..base import figure, paragraph
from .base import Lab, experiment

BATCH = 64  # images per forward pass: a fixed size (measuring one costs more than these small passes)


def _pick(lab: Lab, n: int, high: int, salt: int = 0) -> list[int]:
    """``n`` distinct channels of ``high``, drawn with the lab's seed, in channel order."""
    g = torch.Generator().manual_seed(lab.seed + salt)
    return sorted(torch.randperm(high, generator=g)[:n].tolist())


@experiment("activations-feature-maps", "Feature maps of one image, layer by layer",
            decks=("ee559", "map583", "diy"),
            lecture="EE-559 (slides 14-16) shows a MNIST character through LeNet and an RGB image through AlexNet, "
                    "each layer's activation maps drawn as images for a few channels 'picked at random' (MAP583 "
                    "replays Fleuret's AlexNet figure; the DIY deck's 'Activation maps').", order=20)
def feature_maps(lab: Lab) -> Markup:
    body = Markup()
    stand_in = {"digits": "LeNet, for the lecture's LeNet on MNIST", "shapes": "a small VGG, for its AlexNet"}
    for spec, data in (("digits", lab.digits("test")), ("shapes", lab.shapes(n=8))):
        model = lab.model(spec)
        names = stages(model)
        x = data.images[:1]
        acts = maps(model, x, names)
        k = 6 if spec == "digits" else 8
        fig = feature_maps_figure([(n, acts[n][0]) for n in names], x[0], k=k, select="random", seed=lab.seed)
        cls = data.classes[int(data.labels[0])]
        sizes = ", ".join(f"{n} {'x'.join(map(str, acts[n].shape[1:]))}" for n in names)
        live = {n: float((acts[n][0] > 0).float().mean()) for n in names}
        body += figure(lab, figure_to_png(fig, dpi=100), f"activations-feature-maps-{spec}",
                       f"Settings: the built-in {spec} model ({stand_in[spec]}) "
                       f"on one held-out image (a {cls}); {k} channels per layer drawn at random (seed {lab.seed}), "
                       f"each map scaled to its own range (viridis). Layers: {sizes}. Our run: the share of "
                       "positive activations falls from "
                       + " to ".join(f"{live[n]:.0%} ({n})" for n in names) + ".")
    return body + paragraph("As the lecture warns, single channels rarely carry a clear meaning: the code is "
                            "distributed across many of them.")


@experiment("activations-top-patches", "Maximum-response patches: what excites a unit",
            decks=("cmp784", "csc413", "ee559"),
            lecture="CMP784 (Girshick et al.'s top regions of pool5 units; 'maximally activating patches' with "
                    "guided backprop), CSC413 ('pick the images in the training set which activate a unit most "
                    "strongly', layers 1 to 4) and EE-559 (slide 57: the top-9 activations of randomly picked "
                    "channels of an AlexNet-like network with their deconvolution, Zeiler & Fergus).", order=30)
def patches(lab: Lab) -> Markup:
    model = lab.model("shapes")
    n = 128 if lab.quick else 1000
    data = lab.shapes(n=n)
    body = Markup()
    for depth, layer in enumerate(stages(model)):
        width = int(maps(model, data.images[:1], layer)[layer].shape[1])
        ids = _pick(lab, 2 if lab.quick else 4, width, depth)
        tp = top_patches(model, data, layer, 9, channels=ids, pattern="guided", batch_size=BATCH)
        fig = top_patches_figure(tp, ncols=len(ids))
        body += figure(lab, figure_to_png(fig, dpi=90), f"activations-top-patches-{layer}",
                       f"Settings: {layer} of the built-in shapes model, channels {ids} (drawn at random, seed "
                       f"{lab.seed}), the top 9 of {n} held-out images by the channel's maximum over positions, cut "
                       f"to the winning unit's {tp.field[0]}x{tp.field[1]}-pixel receptive field, with its "
                       "guided-backprop pattern beside each. Our run: the strongest responses are "
                       + ", ".join(f"{float(v):.2f}" for v in tp.values[:, 0]) + ".")
    return body + paragraph("The receptive field grows with depth, and with it what a unit responds to: edges and "
                            "colours first, then parts of the shapes.")


@experiment("activations-neighbors", "Nearest neighbours: pixel space against the last layer",
            decks=("cmp784",),
            lecture="CMP784 ('Last layer: nearest neighbors'): for test images, their L2 nearest neighbours in "
                    "pixel space, against those in the 4096-d fc7 feature space of AlexNet (Krizhevsky et al. 2012, "
                    "Fig. 4).", order=40)
def nearest(lab: Lab) -> Markup:
    model = lab.model("shapes")
    n = 200 if lab.quick else 1000
    everyone = lab.shapes(n=n + 4)
    data, queries = everyone[:n], everyone[n:]
    layer = last_hidden(model)
    nb = neighbors(model, queries.images, data, layer, k=5, batch_size=BATCH)
    fig = neighbors_figure(queries.images, data, nb, query_labels=queries.labels)
    same = [int((data.labels[index] == queries.labels[:, None]).sum()) for index in (nb.pixel_index,
                                                                                   nb.feature_index)]
    total = nb.pixel_index.numel()
    return figure(lab, figure_to_png(fig, dpi=90), "activations-neighbors",
                  f"Settings: 4 held-out queries, their 5 nearest among {n} other held-out images by Euclidean "
                  f"distance between pixels, then between the {layer} features of the built-in shapes model "
                  f"(our fc7: the last hidden layer). Our run: {same[0]} of {total} pixel-space neighbours share "
                  f"their query's class, {same[1]} of {total} feature-space ones.")


@experiment("activations-embeddings", "t-SNE of each layer: LeNet on digits",
            decks=("ee559", "diy", "cmp784", "map583"),
            lecture="EE-559 (slides 32-33: 't-SNE for LeNet on MNIST', the input then each layer, with "
                    "scikit-learn's TSNE at perplexity 50); the DIY deck and CMP784 run t-SNE on the last "
                    "activations; MAP583 embeds AlexNet's 4096-d code.", order=50)
def embeddings(lab: Lab) -> Markup:
    model = lab.model("digits")
    data = lab.digits("test")
    data = data[:120] if lab.quick else data
    layers = [INPUT, "pool1", "pool2", "fc1", "fc2"]
    steps = 150 if lab.quick else None
    emb = embed(model, data, layers, "tsne", perplexity=50, seed=lab.seed, batch_size=BATCH, steps=steps)
    fig = embedding_figure(emb, classes=data.classes, ncols=5, panel=3.0)
    knn = ", ".join(f"{n} {emb.knn_accuracy[n]:.0%}" for n in layers)
    return figure(lab, figure_to_png(fig, dpi=90), "activations-embeddings",
                  f"Settings: the built-in LeNet on {len(data)} held-out digits (our MNIST), t-SNE (openTSNE, "
                  f"perplexity 50 as the lecture, PCA to 50 dimensions first, {steps or 750} steps, seed {lab.seed}) "
                  f"of the pixels and of each layer's output (maps averaged over positions). Our run, the "
                  f"leave-one-out {emb.k}-NN accuracy in each 2-D layout: {knn}.")


@experiment("activations-swiss-roll", "t-SNE unrolls the swiss roll",
            decks=("ee559",),
            lecture="EE-559 (slide 31): 't-SNE unrolling of the swiss roll (with one noise dimension)', after "
                    "noting that PCA poorly conveys a smooth non-flat manifold; scikit-learn's TSNE, perplexity "
                    "50.", order=45)
def roll(lab: Lab) -> Markup:
    n = 300 if lab.quick else 1500
    points, t = swiss_roll(n, noise_dims=1, seed=lab.seed)
    steps = 200 if lab.quick else None
    emb = embed_features({"PCA": points, "t-SNE": points}, "pca", pca_dims=None, scores=False, seed=lab.seed)
    tsne = embed_features({"t-SNE": points}, "tsne", pca_dims=None, perplexity=50, seed=lab.seed, scores=False,
                          steps=steps)
    layouts = {"PCA": emb.coords["PCA"], "t-SNE": tsne.coords["t-SNE"]}
    sheet = torch.stack([t, points[:, 2]], 1)  # where each point is on the unrolled sheet
    k = 10
    trust = {name: trustworthiness(sheet, xy, k) for name, xy in layouts.items()}
    fig = swiss_roll_figure(points, t, layouts, scores={m: f"trust. to the sheet {v:.3f}" for m, v in trust.items()})
    return figure(lab, figure_to_png(fig, dpi=100), "activations-swiss-roll",
                  f"Settings: {n} points of a swiss roll, (t cos t, t sin t) with t uniform in [1.5 pi, 4.5 pi], "
                  f"plus one uniform noise dimension (the roll's width); its first two principal components "
                  f"against t-SNE (openTSNE, perplexity 50, {steps or 750} steps, seed {lab.seed}), coloured by t. "
                  f"Our run: trustworthiness (k = {k}) of each layout with respect to the unrolled sheet (t, "
                  f"width): PCA {trust['PCA']:.3f}, t-SNE {trust['t-SNE']:.3f} (1: every 2-D neighbourhood is a "
                  "neighbourhood on the sheet).")


@experiment("activations-tsne-grid", "The t-SNE grid of thumbnails",
            decks=("cmp784", "map583", "diy"),
            lecture="CMP784 and MAP583 show Karpathy's t-SNE of AlexNet fc7 codes ('two images are placed nearby "
                    "if their CNN codes are close'), with every image snapped to a cell of a regular grid; the DIY "
                    "deck shows the same CS231n figure.", order=55)
def tsne_grid(lab: Lab) -> Markup:
    model = lab.model("shapes")
    side = 10 if lab.quick else 24
    data = lab.shapes(n=side * side)
    layer = last_hidden(model)
    steps = 200 if lab.quick else None
    emb = embed(model, data, layer, "tsne", seed=lab.seed, batch_size=BATCH, steps=steps)
    cells = grid_cells(emb.coords[layer], shape=(side, side))
    fig = tsne_grid_figure(data.images, cells, (side, side), labels=data.labels, classes=data.classes,
                           inches=6.0 if lab.quick else 9.0)
    same = _grid_agreement(cells, data.labels, side)
    return figure(lab, figure_to_png(fig, dpi=100), "activations-tsne-grid",
                  f"Settings: {len(data)} held-out shapes images, t-SNE (openTSNE, perplexity 30, {steps or 750} "
                  f"steps, seed {lab.seed}) of their {layer} features (the built-in model's fc7), each image then "
                  f"assigned to its own cell of a {side}x{side} grid by an exact linear assignment minimising the "
                  f"squared distances (frames in class colours). Our run: {same:.0%} of horizontally or vertically "
                  f"adjacent images share their class (k-NN accuracy of the layout {emb.knn_accuracy[layer]:.0%}).")


def _grid_agreement(cells: torch.Tensor, labels: torch.Tensor, side: int) -> float:
    """Share of adjacent filled grid cells (right or below) whose images share their class."""
    board = torch.full((side, side), -1, dtype=torch.long)
    board[cells[:, 0], cells[:, 1]] = torch.as_tensor(labels).long()
    pairs = [(board[:, :-1], board[:, 1:]), (board[:-1], board[1:])]
    both = sum(int(((a >= 0) & (b >= 0)).sum()) for a, b in pairs)
    same = sum(int(((a >= 0) & (a == b)).sum()) for a, b in pairs)
    return same / max(both, 1)


@experiment("activations-ablation", "Ablating units: do the selective ones matter?",
            decks=("map583",),
            lecture="MAP583 ('Some words of caution', Morcos et al. ICLR 2018): units firing on specific classes "
                    "suggest understanding, yet removing them hardly lowers the network's performance.", order=70)
def ablation(lab: Lab) -> Markup:
    model = lab.model("shapes")
    data = lab.shapes(n=96 if lab.quick else 512)
    layer = stages(model)[-1]
    result = ablate(model, data, layer, seed=lab.seed, batch_size=BATCH, points=8 if lab.quick else None)
    fig = ablation_figure(result)
    half = len(result.counts) // 2
    at = {o: float(c[half]) for o, c in result.curves.items()}
    return figure(lab, figure_to_png(fig, dpi=100), "activations-ablation",
                  f"Settings: the {len(result.units)} channels of {layer} (the shapes model's last stage) zeroed "
                  f"one after another at random and by class selectivity (most and least selective first), "
                  f"accuracy on {result.n} held-out images; right, each channel zeroed alone. Our run: intact "
                  f"accuracy {result.baseline:.1%}; with {int(result.counts[half])} channels zeroed, "
                  + ", ".join(f"{o} {v:.1%}" for o, v in at.items()) + f"; the worst single channel costs "
                  f"{float(result.baseline - result.single.min()):.1%}.")


@experiment("activations-invariance", "Invariance by layer (Zeiler & Fergus, Fig. 5)",
            decks=("cmp784",),
            lecture="CMP784 ('Invariance and Covariance', Zeiler & Fergus 2014 Fig. 5): five images translated "
                    "vertically (-60 to 60 pixels), scaled (ratio 1 to 1.8) and rotated (0 to 350 degrees); the "
                    "Euclidean distance of layer 1's and layer 7's features to the untransformed ones, and the "
                    "probability of the true class.", order=60)
def invariance_by_layer(lab: Lab) -> Markup:
    model = lab.model("shapes")
    data = lab.shapes(n=5)
    amounts = {"translate": [-16, -8, -4, 0, 4, 8, 16], "scale": [1.0, 1.2, 1.4, 1.6, 1.8],
               "rotate": list(range(0, 360, 45))} if lab.quick else {
        "translate": list(range(-16, 17, 2)), "scale": [round(1 + 0.1 * i, 1) for i in range(9)],
        "rotate": list(range(0, 360, 10))}
    layers = list(dict.fromkeys([*stages(model), last_hidden(model)]))
    results = [invariance(model, data, layers=layers, transform=t, amounts=a, batch_size=BATCH)
               for t, a in amounts.items()]
    shown = [layers[0], layers[-1]]
    strips = [r.strip(data.images[0]) for r in results]
    fig = invariance_figure(results, layers=shown, relative=False, strips=strips, classes=data.classes)
    lines = []
    for r in results:
        far = int(change(r.transform, r.amounts).argmax())
        rel = {n: float(r.relative[n][far].mean()) for n in shown}
        lines.append(f"at {r.transform} {float(r.amounts[far]):g} the mean relative distance is "
                     f"{rel[shown[0]]:.2f} at {shown[0]} and {rel[shown[1]]:.2f} at {shown[1]}, the true-class "
                     f"probability {float(r.probability[far].mean()):.2f}")
    return figure(lab, figure_to_png(fig, dpi=100), "activations-invariance",
                  f"Settings: 5 held-out shapes images (64 pixels, so shifts of up to 16 pixels stand for the "
                  f"paper's 60 of 256), zero padding, bilinear resampling; Euclidean distance of the flattened "
                  f"features of {shown[0]} (our layer 1) and {shown[1]} (our layer 7) to the untransformed ones "
                  f"(unnormalised, as the paper draws it), and the softmax probability of the true class. Our run: "
                  + "; ".join(lines) + ". Lowest mean true-class probability over each range: "
                  + ", ".join(f"{r.transform} {float(r.probability.mean(1).min()):.2f} (at "
                              f"{float(r.amounts[int(r.probability.mean(1).argmin())]):g})" for r in results) + ".")


@experiment("activations-features-over-training", "Features over training (Zeiler & Fergus, Fig. 4)",
            decks=("map583",),
            lecture="MAP583 ('Feature evolution during training'): for a few units, the strongest activation over "
                    "the training set projected to pixels, at epochs 1, 2, 5, 10, 20, 30, 40 and 64 of AlexNet's "
                    "training (Zeiler & Fergus 2014, Fig. 4).", order=40)
def features_over_training(lab: Lab) -> Markup:
    from ...models.training import train

    epochs, n_train = (1, 64) if lab.quick else (5, 1200)
    folder = lab.out / "checkpoints" / "activations-features-over-training"
    with contextlib.redirect_stdout(io.StringIO()):  # train writes a line per epoch even without progress bars
        run = train("shapes", epochs=epochs, n_train=n_train, seed=lab.seed, checkpoint_every=1, checkpoints=folder,
                    progress=False, n_test=64 if lab.quick else 500, device="cpu")
    data = lab.shapes(n=64 if lab.quick else 500)
    body = Markup()
    for depth, layer in ((1, "features.10"),) if lab.quick else ((0, "features.3"), (2, "features.17")):
        model = run.model
        width = int(maps(model, data.images[:1], layer)[layer].shape[1])
        units = _pick(lab, 3 if lab.quick else 5, width, 10 + depth)
        ev = evolution(folder, data, layer=layer, units=units, k=1, pattern="deconvnet", batch_size=BATCH)
        changed = [int((ev.index[i + 1, :, 0] != ev.index[i, :, 0]).sum()) for i in range(len(ev.epochs) - 1)]
        fig = evolution_figure(ev)
        body += figure(lab, figure_to_png(fig, dpi=100), f"activations-features-over-training-{layer}",
                       f"Settings: the shapes architecture trained here from scratch ({epochs} epochs of {n_train} "
                       f"fresh images, seed {lab.seed}), a snapshot after every epoch (epoch 0: the initialisation); "
                       f"units {units} of {layer}, each one's strongest patch among {len(data)} held-out images and "
                       f"its deconvnet projection. Our run: held-out accuracy "
                       + " -> ".join(f"{float(a):.0%}" for a in ev.accuracy) + "; the strongest image changed "
                       "for " + ", ".join(str(c) for c in changed) + f" of the {len(units)} units between "
                       "consecutive snapshots.")
    return body
