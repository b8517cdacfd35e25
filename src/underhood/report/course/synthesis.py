"""Synthetic images as the lectures make them: MAP583's maximum response samples, EE-559's edge-energy prior,
Simonyan's and Yosinski's class models, Nguyen et al.'s multifaceted visualisation, Deep Dream, inversion,
caricatures and style transfer, each with the lecture's settings on the built-in shapes model."""

from __future__ import annotations

import torch
from markupsafe import Markup

from ...data.samples import content_image, style_texture
from ...synthesis import (
    BINOMIAL,
    Priors,
    caricature,
    deep_dream,
    edge_energy,
    invert,
    multifaceted,
    render,
    style_transfer,
)
from ...synthesis import objectives as O
from ...viz.synthesis import class_images_figure, gallery_figure, inversion_figure, pairs_figure
from ..base import paragraph, table
from .base import Lab, experiment, show

REGISTERED: dict[str, str] = {}  # experiment id -> title, for the tests


def _register(id: str, title: str, **kw):
    REGISTERED[id] = title
    return experiment(id, title, **kw)


def _fleuret(x: torch.Tensor) -> torch.Tensor:
    """EE-559's display of a synthetic image: ``0.5 + 0.1 (x - mean) / std`` per image, clipped to ``[0, 1]``."""
    mean, std = x.mean((1, 2, 3), keepdim=True), x.std((1, 2, 3), keepdim=True).clamp_min(1e-8)
    return (0.5 + 0.1 * (x - mean) / std).clamp(0, 1)


def _classes(lab: Lab, model) -> tuple[list[str], list[int]]:
    """The model's class names and the classes a run draws: four in the quick lane, every one otherwise."""
    classes = model.classes if hasattr(model, "classes") else lab.shapes(8).classes
    return classes, [0, 2, 3, 5] if lab.quick else list(range(len(classes)))


def _class_images(lab: Lab, model, ids: list[int], start: torch.Tensor, priors: Priors | None, *, lr: float,
                  steps: int):
    """The lectures' class images: each class logit of ``ids`` maximised by Adam on the raw pixels from ``start``,
    with no transform and the regularisers ``priors``."""
    return render(model, [O.class_logit(k) for k in ids], param="raw", init=start, lr=lr, steps=steps,
                  transforms="none", priors=priors, seed=lab.seed)


def _probs(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images.clamp(0, 1)).softmax(1)


# ----------------------------------------------------------------------------- MAP583 / EE-559


@_register("map583-maximal-response", "Maximum response samples: ||h_l,d(x)||_2 by plain gradient ascent",
           decks=("map583", "ee559"),
           lecture="MAP583 'Maximum response samples' (figures credited to F. Fleuret, as in EE-559 slides 59-61): "
                   "L(x) = ||h_l,d(x)||_2 of the map of kernel d at layer l, x_0 ~ U[0,1]^{CxHxW}, "
                   "x_{t+1} = x_t + gamma grad L(x_t); deeper layers give larger, more structured patterns.",
           order=60)
def maximal_response(lab: Lab) -> Markup:
    model = lab.model("shapes")
    layers = ("features.4", "features.11", "features.14")  # the convolutions of blocks 2, 3 and 4
    k, steps, lr = (4, 15, 0.1) if lab.quick else (8, 150, 0.1)
    images, titles, rows = [], [], []
    for layer in layers:
        r = render(model, [O.channel(layer, c, reduce="l2") for c in range(k)], param="raw", init="uniform",
                   optimizer="sgd", lr=lr, steps=steps, transforms="none", seed=lab.seed)
        images.append(_fleuret(r.images))  # the raw pixels leave [0, 1]
        titles += [f"{layer}\nd={c}: {float(v):.0f}" for c, v in enumerate(r.final)]
        outside = float(((r.images < 0) | (r.images > 1)).float().mean())
        rows.append([layer, f"{float(r.start.mean()):.1f}", f"{float(r.final.mean()):.1f}",
                     f"{float((r.final / r.start).mean()):.1f}x", f"{outside:.0%}"])
    fig = gallery_figure(torch.cat(images), titles, ncols=k)
    caption = (f"MAP583's recipe on the shapes model: the L2 norm of the map of channels d = 0..{k - 1} of three "
               f"convolutions (before their BatchNorm and ReLU), from U[0, 1] noise (seed {lab.seed}), {steps} steps "
               f"of plain gradient ascent x <- x + {lr:g} grad on the raw pixels, no transform, no prior, no "
               "clipping. Each image is shown as the lecture's figures are, 0.5 + 0.1 (x - mean) / std; its title "
               "is the final ||h||_2.")
    return show(lab, fig, "map583-maximal-response", caption,
                table(["layer", "mean ||h||_2 at the start", "at the end", "mean gain", "pixels outside [0, 1]"],
                      rows, numeric=[1, 2, 3, 4]),
                paragraph("Without a prior the ascent is free to leave the image range and to use high frequencies. "
                          "At the first layer the norm grows with an oriented pattern repeated over the whole image; "
                          "deeper, a few small spots where the units respond strongly are enough, since the L2 norm "
                          "rewards peaks. A channel whose norm barely moves from its start is one the noise does not "
                          "reach (a dead or strongly inhibited unit)."))


@_register("ee559-edge-prior", "A 'realistic' prior: the multi-scale edge energy",
           decks=("ee559",),
           lecture="EE-559 slides 62-66: argmax_x f(x; w) - h(x) with h(x) = sum_s ||delta^s(x) - g * delta^s(x)||^2, "
                   "g the 5x5 binomial kernel, delta a factor-2 downscale, as many scales as the image allows; Adam "
                   "at lr 0.1 for 250 steps from N(0, 0.01) noise, shown as 0.5 + 0.1 (x - mean) / std.",
           order=62)
def edge_prior(lab: Lab) -> Markup:
    model = lab.model("shapes")
    classes, ids = _classes(lab, model)
    steps, lr, weight = (20, 0.1, 0.05) if lab.quick else (250, 0.1, 0.05)
    g = torch.Generator().manual_seed(lab.seed)
    start = 0.5 + 0.01 * torch.randn(len(ids), 3, 64, 64, generator=g)  # the lecture's N(0, 0.01) around grey
    runs = {}
    for name, priors in (("no prior", None), ("edge energy", Priors(edges=weight, edges_kernel="binomial"))):
        runs[name] = _class_images(lab, model, ids, start, priors, lr=lr, steps=steps)
    shown = [_fleuret(r.images) for r in runs.values()]
    energy = {n: edge_energy(r.images, None, kernel="binomial") for n, r in runs.items()}
    probs = {n: _logits(model, r.images).softmax(1) for n, r in runs.items()}  # of the optimised (raw) pixels
    titles = [f"{n}: {classes[k]}\nlogit {float(r.final[i]):.1f}" for n, r in runs.items() for i, k in enumerate(ids)]
    fig = gallery_figure(torch.cat(shown), titles, ncols=len(ids))
    ratio = float((energy["no prior"] / energy["edge energy"].clamp_min(1e-12)).mean())
    levels, side = [], start.shape[-1]
    while side > len(BINOMIAL):  # the lecture's `while x.size(2) > 5`: each level then downscales to H // 2 + 1
        levels.append(side)
        side = side // 2 + 1
    caption = (f"Class logits of the shapes model maximised on the raw pixels from 0.5 + N(0, 0.01) noise, Adam at "
               f"lr {lr:g} for {steps} steps, without a prior (top) and with {weight:g} h(x) (bottom), h the lecture's "
               "MultiScaleEdgeEnergy (5x5 binomial kernel, zero padding, 2x2 downscale, "
               f"{', '.join(map(str, levels[:-1]))} and {levels[-1]}-pixel levels). Displayed as the lecture does, "
               "0.5 + 0.1 (x - mean) / std. The prior lowers the edge "
               f"energy {ratio:.1f}x on average.")
    rows = [[classes[k]] + [f"{float(runs[n].final[i]):.1f}" for n in runs]
            + [f"{float(probs[n][i, k]):.2f}" for n in runs] + [f"{float(energy[n][i]):.0f}" for n in runs]
            for i, k in enumerate(ids)]
    return show(lab, fig, "ee559-edge-prior", caption,
                table(["class", "logit, no prior", "logit, prior", "p, no prior", "p, prior", "h(x), no prior",
                       "h(x), prior"], rows, numeric=[1, 2, 3, 4, 5, 6]))


# ----------------------------------------------------------------------------- class models


@_register("cmp784-class-model", "Class models: Simonyan's L2 prior, then Yosinski's blur and clipping",
           decks=("cmp784", "diy"),
           lecture="CMP784 'Visualizing CNN features: gradient ascent': start from a zero image, maximise the "
                   "pre-softmax score S_c(I) - lambda ||I||^2 (Simonyan et al. 2014); the better regulariser "
                   "also blurs the image and clips small pixels and small contributions to 0 during the "
                   "optimisation (Yosinski et al. 2015, also the DIY deck's 'Deep visualization').",
           order=64)
def class_model(lab: Lab) -> Markup:
    model = lab.model("shapes")
    classes, ids = _classes(lab, model)
    steps, lr, lam = (20, 0.05, 0.01) if lab.quick else (200, 0.05, 0.01)
    recipes = {"Simonyan": Priors(l2=lam),
               "Yosinski": Priors(l2=lam, blur_sigma=0.5, blur_every=4, clip_pixels=10, clip_contribution=10)}
    start = torch.full((1, 3, 64, 64), 0.5)  # the zero of a mean-subtracted image: mid-grey
    images, probs, rows = [], [], []
    for name, priors in recipes.items():
        r = _class_images(lab, model, ids, start, priors, lr=lr, steps=steps)
        x = r.images.clamp(0, 1)
        p = _probs(model, x)
        images.append(x)
        probs.append(p[:, ids].contiguous())
        hits = sum(int(p[i].argmax()) == k for i, k in enumerate(ids))
        rows.append([name, str(priors), f"{float(r.final.mean()):.1f}", f"{hits}/{len(ids)}"])
    names = [classes[k] for k in ids]
    fig = class_images_figure(torch.cat(images), torch.cat(probs), names, ids=list(range(len(ids))) * 2,
                              ncols=len(ids))
    caption = (f"Top row Simonyan et al.'s class models (lambda = {lam:g} on ||I - 0.5||^2), bottom row Yosinski et "
               f"al.'s (the same decay plus a Gaussian blur of 0.5 px every 4 steps and the 10% smallest pixels and "
               f"contributions set to grey after each step); both from a grey image, Adam at lr {lr:g}, {steps} "
               "steps on the raw pixels, no transform; shown clipped to [0, 1]. Titles: the model's probability of "
               "the class for the clipped image (green: its top class).")
    return show(lab, fig, "cmp784-class-model", caption,
                table(["recipe", "priors", "mean logit", "images classified as their class"], rows, numeric=[2]))


# ----------------------------------------------------------------------------- Nguyen et al. 2016


@_register("cmp784-multifaceted", "Multifaceted visualisation (Nguyen et al. 2016) beside diversity facets",
           decks=("cmp784",),
           lecture="CMP784 'Activation maximization': 'adding multi-faceted visualization gives even nicer results "
                   "(plus more careful regularization, center-bias)': the training images of a class are clustered, "
                   "one visualisation per cluster starts from its mean image (the 'grocery store' facets).",
           order=66)
def multifaceted_facets(lab: Lab) -> Markup:
    model = lab.model("shapes")
    data = lab.shapes(160 if lab.quick else 800, seed=1)
    target = data.classes.index("star")
    k, steps = (3, 12) if lab.quick else (4, 150)
    lr, blur, smallest, phases = 0.1, 2.0, 0.6, 3
    r = multifaceted(model, data, target, layer="pool", n_facets=k, steps=steps, lr=lr, phases=phases, blur=blur,
                     smallest=smallest, seed=lab.seed)
    fractions = ", ".join(f"{1 - p * (1 - smallest) / (phases - 1):.2g}" for p in range(phases))
    blurs = ", ".join(f"{blur * (phases - p) / phases:.2g}" for p in range(phases))
    div = render(model, O.class_logit(target) + 10.0 * O.diversity("features.16"), n=k, steps=steps, lr=0.05,
                 seed=lab.seed)
    div_logit = _logits(model, div.images)[:, target]
    p_facets, p_div = _probs(model, r.images)[:, target], _probs(model, div.images)[:, target]
    titles = ([f"cluster {i}: mean of {int(n)}\nlogit {float(v):.1f}" for i, (n, v) in enumerate(
              zip(r.sizes, r.start_logit))]
              + [f"facet {i}\nlogit {float(v):.1f}, p {float(p):.2f}" for i, (v, p) in enumerate(
                 zip(r.final_logit, p_facets))]
              + [f"diversity {i}\nlogit {float(v):.1f}, p {float(p):.2f}" for i, (v, p) in enumerate(
                 zip(div_logit, p_div))])
    fig = gallery_figure(torch.cat([r.starts, r.images, div.images]), titles, ncols=k)
    caption = (f"Class '{data.classes[target]}': its {len(r.assignment)} images among {len(data)} shapes images "
               f"(seed 1, not the held-out set) clustered by k-means (k = {k}, seed {lab.seed}) on the model's "
               f"pooled 64-d features (the last hidden layer, as the paper's fc7); top row the cluster means, middle "
               f"row the facets grown from them ({steps} Adam steps at lr {lr:g} on the pixels in {phases} centre-bias "
               f"phases updating centred windows of {fractions} of each side, blurred after each step by Gaussians "
               f"of {blurs} px). Bottom row: {k} images of one batch from the Fourier parametrisation with "
               f"Olah et al.'s diversity term (weight 10, Gram matrices at features.16, {steps} Adam steps at lr "
               "0.05), no data needed.")
    return show(lab, fig, "cmp784-multifaceted", caption, paragraph(
        f"The class logit rises from {float(r.start_logit.mean()):.1f} (cluster means) to "
        f"{float(r.final_logit.mean()):.1f} (facets; {int((r.final_logit > r.start_logit + 1).sum())} of {k} "
        f"gained more than 1); cluster sizes {r.sizes.tolist()}. Each facet keeps its cluster's colours and "
        "layout because it starts from the cluster's mean image, and the centre bias grows one object in the "
        "middle; a mean image that the class unit hardly responds to can stay where it started. The diversity "
        "batch has to find its differences from noise."))


def _logits(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


# ----------------------------------------------------------------------------- Deep Dream, inversion, caricature


@_register("csc413-deep-dream", "Deep Dream: rich get richer",
           decks=("csc413",),
           lecture="CSC413 'Deep Dream': start with an image, pick a layer, change the image so that units already "
                   "highly activated get activated even more strongly, and repeat: it accentuates whatever features "
                   "of the image already resemble what the layer detects.",
           order=68)
def dream(lab: Lab) -> Markup:
    model = lab.model("shapes")
    data = lab.shapes(8)
    image = data.images[:2]
    layers = ("features.9", "features.16")
    steps, octaves = (4, 2) if lab.quick else (20, 3)
    dreams = {layer: deep_dream(model, image, layer, octaves=octaves, steps=steps, lr=0.02, seed=lab.seed)
              for layer in layers}
    energy = {layer: (_energy(model, image, layer), _energy(model, d, layer)) for layer, d in dreams.items()}
    rows = [[image[i]] + [dreams[layer][i] for layer in layers] for i in range(len(image))]
    fig = pairs_figure(rows, ["original"] + [f"dreamed at {layer}" for layer in layers], cell=2.0)
    gains = ", ".join(f"{layer}: {float(a.mean()):.2f} -> {float(b.mean()):.2f}" for layer, (a, b) in energy.items())
    caption = (f"Deep Dream (Mordvintsev et al. 2015) on two held-out shapes images: gradient ascent on the mean "
               f"squared activation of the layer, {octaves} octaves of {steps} steps (scale 1.4, step 0.02 times the "
               f"normalised gradient, jitter 4 px). Mean squared activation before -> after: {gains}.")
    return show(lab, fig, "csc413-deep-dream", caption)


def _energy(model, images: torch.Tensor, layer: str) -> torch.Tensor:
    from ...synthesis.render import probe
    with probe(model, [layer], need_logits=False) as run, torch.no_grad():
        a = run(images)[0][layer]
    return a.pow(2).flatten(1).mean(1)


@_register("inversion-layers", "Inverting representations (Mahendran & Vedaldi 2015)",
           decks=("diy", "cmp784"),
           lecture="DIY 'Inverting deep image representations' and CMP784 'Understanding the model: pre-images': "
                   "from random noise, find x whose features Phi(x) match Phi_0 of an image, with TV and alpha-norm "
                   "priors; the reconstructions from deeper layers keep less of the pixels and more of the object.",
           order=70)
def inversion(lab: Lab) -> Markup:
    model = lab.model("shapes")
    image = lab.shapes(8).images[:1]
    layers = ("features.6", "features.13", "features.16")
    steps, seeds = (15, (0,)) if lab.quick else (200, (0, 1))
    results = [invert(model, image, layer, seeds=tuple(s + lab.seed for s in seeds), steps=steps, tv=0.1,
                      alpha=0.0) for layer in layers]
    fig = inversion_figure(image, results)
    rows = [[r.layer, f"{float((1 - r.distance_end / r.distance_start).mean()):.1%}", f"{float(r.psnr.mean()):.1f}"]
            for r in results]
    caption = (f"Pre-images of one held-out shapes image at three depths ({len(seeds)} random start(s) each, "
               f"{steps} Adam steps at lr 0.05 on the decorrelated Fourier parametrisation, loss ||Phi(x) - Phi_0||^2 "
               "/ ||Phi_0||^2 + 0.1 TV(x) per pixel). Right: PSNR to the original.")
    return show(lab, fig, "inversion-layers", caption,
                table(["layer", "feature distance removed", "PSNR (dB)"], rows, numeric=[1, 2]))


@_register("cmp784-caricature", "Caricatures: emphasising what a representation detects",
           decks=("cmp784",),
           lecture="CMP784 'Caricaturization' (Google Inceptionism 2015, Mahendran et al. 2015): min_x "
                   "-<Phi(x_0), Phi(x)> + R_TV(x) + R_alpha(x) starting from the image x_0 itself, so that "
                   "configurations of features are emphasised (VGG-M conv4 and fc8 in the slides).",
           order=72)
def caricatures(lab: Lab) -> Markup:
    model = lab.model("shapes")
    image = lab.shapes(8).images[:2]
    layers = ("features.9", "features.16")
    steps = 10 if lab.quick else 150
    h, w = image.shape[-2:]
    priors = Priors(tv=0.05 / (h * w), alpha=0.5 / (h * w))
    out = {layer: caricature(model, image, layer, steps=steps, lr=0.02, power=0.0, init="image", param="pixels",
                             transforms="none", priors=priors, seed=lab.seed) for layer in layers}
    gain = {layer: (_dot(model, image, image, layer), _dot(model, x, image, layer)) for layer, x in out.items()}
    rows = [[image[i]] + [out[layer][i] for layer in layers] for i in range(len(image))]
    fig = pairs_figure(rows, ["x_0"] + [f"caricature at {layer}" for layer in layers], cell=2.0)
    text = ", ".join(f"{layer} {float((b / a).mean()):.1f}x" for layer, (a, b) in gain.items())
    caption = (f"From each image itself, {steps} Adam steps at lr 0.02 on the pixels maximising <Phi(x), Phi(x_0)> "
               "/ ||Phi(x_0)|| - TV(x) - alpha-norm(x) (weights 0.05 and 0.5 per pixel, alpha 6), no transform. "
               f"<Phi(x), Phi(x_0)> grew over <Phi(x_0), Phi(x_0)>: {text}.")
    return show(lab, fig, "cmp784-caricature", caption)


def _dot(model, x: torch.Tensor, x0: torch.Tensor, layer: str) -> torch.Tensor:
    from ...synthesis.render import probe
    with probe(model, [layer], need_logits=False) as run, torch.no_grad():
        a, b = run(x)[0][layer].flatten(1), run(x0)[0][layer].flatten(1)
    return (a * b).sum(1)


@_register("cmp784-style-transfer", "Neural art: style transfer (Gatys et al. 2015)",
           decks=("cmp784",),
           lecture="CMP784 'Interlude: Neural Art': the filters of a discriminative network capture the 'style' of "
                   "an image, so an optimisation matching Gram matrices of features (Gatys et al.) transfers a "
                   "painting's style to any other image.",
           order=74)
def style(lab: Lab) -> Markup:
    model = lab.model("shapes")
    content, texture = content_image(64)[None], style_texture(64)[None]
    steps = 10 if lab.quick else 150
    r = style_transfer(model, content, texture, steps=steps, seed=lab.seed)
    fig = pairs_figure([[content[0], texture[0], r.image[0]]], ["content", "style", "result"], cell=2.2)
    total = r.trace["total"]  # [steps, N]
    first, last = float(total[0].sum()), float(total[-1].sum())
    caption = (f"Gatys et al.'s optimisation on the shapes model: content at {', '.join(r.layers['content'])}, style "
               f"(Gram matrices) at {', '.join(r.layers['style'])}, style weight 100, {steps} Adam steps from the "
               f"content image; the loss went from {first:.3g} to {last:.3g}. A network trained on eight shapes "
               "knows few textures, so the style it carries over is mostly colour and stroke scale.")
    return show(lab, fig, "cmp784-style-transfer", caption)
