"""Attribution as the lectures show it: occlusion sensitivity with the lecture's window, Simonyan's saliency, the
gradient of log p (CSC413), Smilkov et al.'s gradient along a line and SmoothGrad with EE-559's settings,
gradient / deconvolution / guided back-propagation of the maximally responding unit, CAM of the top-5 classes,
Grad-CAM and guided Grad-CAM, LIME for the top classes, and the sanity checks, all on the built-in shapes model
with the library's own functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from markupsafe import Markup

from ...activations import maps as activation_maps
from ...attribution import (
    SMOOTHGRAD_PRESETS,
    cam,
    deconvnet,
    get,
    gradcam,
    gradient_along_line,
    guided_backprop,
    guided_gradcam,
    lime_fit,
    occlusion,
    saliency,
    smoothgrad,
    top_cams,
)
from ...attribution.evaluate import reference_models
from ...attribution.metrics import energy_in_mask, model_randomization, pointing_game, similarities, spearman
from ...core.targets import Unit
from ...viz import attribution_figure, image_grid, strips_figure, top_cams_figure
from ...viz.attribution import CORRECT, WRONG
from ..base import paragraph, table
from .base import Lab, experiment, pick, show

LECTURE = SMOOTHGRAD_PRESETS["lecture"]
BATCH = 64  # copies per pass of the batching helper: fixed, so no experiment pays for measuring the fastest
DPI = 100  # the resolution of the map grids (the line plot keeps 110)


def _names(model) -> list[str]:
    return list(getattr(model, "classes", None) or [])


def _predict(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted class [N], softmax probabilities [N, K])``."""
    with torch.no_grad():
        p = model(x).softmax(1)
    return p.argmax(1), p


def _images(lab: Lab, k: int):
    """``(images [k, 3, 64, 64], labels [k], masks [k, 1, 64, 64])``: held-out shapes, one per class first."""
    data = lab.shapes(n=32)
    idx = pick(data.labels, k, spread=True)
    return data.images[idx], data.labels[idx], data.masks[idx]


def _maps_figure(model, x: torch.Tensor, labels: torch.Tensor, maps: dict[str, torch.Tensor], **options):
    """``attribution_figure`` of ``maps``, one row per image titled with its predicted class and probability,
    green when right and red when wrong."""
    pred, p = _predict(model, x)
    names = _names(model)
    titles = [f"{names[c]} {float(p[i, c]):.0%}" for i, c in enumerate(pred.tolist())]
    colors = [CORRECT if c == y else WRONG for c, y in zip(pred.tolist(), labels.tolist())]
    return attribution_figure(x, maps, row_titles=titles, row_colors=colors, **options)


def _pct(v: torch.Tensor | float) -> str:
    return f"{float(v):.0%}"


# ----------------------------------------------------------------------------- occlusion


@experiment("course-occlusion", "Occlusion sensitivity with the lecture's mask",
            decks=("map583", "ee559", "cmp784", "diy"),
            lecture="EE-559 slides 87-92 (and MAP583, 'Occlusion sensitivity'): the value of the maximally responding "
                    "output unit on the image minus its value with a part occluded, for a 32x32 mask moved with a "
                    "stride of 2 over 224-pixel images (AlexNet, VGG16, VGG19). CMP784 and the DIY deck show Zeiler & "
                    "Fergus' Fig. 7: the probability of the correct class as a function of the position of a square "
                    "of zeros.",
            order=75)
def occlusion_sensitivity(lab: Lab) -> Markup:
    model = lab.model("shapes")
    n, stride = (1, 4) if lab.quick else (4, 2)
    x, labels, masks = _images(lab, n)
    window = round(32 * x.shape[-1] / 224)  # the lecture's 32 of 224 pixels, at our image size
    drop = occlusion(model, x, window=window, stride=stride, baseline=0.0,
                     batch_size=BATCH)  # logit(x) - logit(occluded)
    pred, p = _predict(model, x)
    prob = []
    for i, y in enumerate(labels.tolist()):  # the probability of the correct class, as Zeiler & Fergus draw it
        d = occlusion(model, x[i:i + 1], lambda out, y=y: out.softmax(1)[:, y], window=window, stride=stride,
                      baseline=0.0, batch_size=BATCH)
        prob.append(p[i, y] - d[0])  # mean over the windows covering each pixel of p(correct | occluded)
    prob = torch.stack(prob)
    covered = drop[:, 0] != 0
    low = torch.stack([prob[i, 0][covered[i]].min() for i in range(n)])
    hits = pointing_game(drop, masks)
    fig = _maps_figure(model, x, labels, {"occlusion": drop, "p(correct) falls": -prob},
                       styles={"p(correct) falls": "overlay"})
    caption = (f"Occlusion of the shapes model on {n} held-out image{'s' if n > 1 else ''}: a {window}x{window} "
               "square of zeros (the "
               f"lecture's 32 of 224 pixels at our 64) moved with a stride of {stride}. Middle: logit(x) minus the "
               "logit of the same class with the square there, averaged over the squares covering each pixel (red: "
               "hiding it lowers the score). Right: the probability of the correct class with the square there, "
               "in jet as in Zeiler & Fergus but inverted so that red is where it falls (each map min-max scaled). "
               f"Lowest probability of the correct class: {', '.join(_pct(v) for v in low)} (clean: "
               f"{', '.join(_pct(p[i, y]) for i, y in enumerate(labels.tolist()))}).")
    text = (f"The largest drop lies on the object in {int(hits.sum())} of {n} images"
            + (": hiding the shape removes the evidence, hiding the clutter hardly does. " if 2 * int(hits.sum()) > n
               else ". ") + f"It cost {len(_positions(x.shape[-1], window, stride)) ** 2} "
            "forward passes per image, the cost the lecture warns about.")
    return show(lab, fig, "course-occlusion", caption, paragraph(text), dpi=DPI)


def _positions(size: int, window: int, stride: int) -> range:
    return range(0, size - window + 1, stride)


# ----------------------------------------------------------------------------- gradients


@experiment("cmp784-saliency", "Saliency maps: the gradient of the class score (Simonyan et al.)",
            decks=("cmp784", "ee559"),
            lecture="CMP784 'Saliency via backprop': compute the gradient of the (unnormalised) class score with "
                    "respect to the image pixels, take the absolute value and the max over RGB channels (Simonyan, "
                    "Vedaldi & Zisserman 2014). EE-559 slides 94-96: the gradient of the output unit w.r.t. the input; "
                    "'the resulting maps are quite noisy'.",
            order=76)
def saliency_maps(lab: Lab) -> Markup:
    model = lab.model("shapes")
    n = 4 if lab.quick else 8
    x, labels, masks = _images(lab, n)
    grad = saliency(model, x)  # the predicted class's logit
    hits, energy = pointing_game(grad, masks), energy_in_mask(grad, masks)
    area = masks.float().mean((1, 2, 3))
    fig = _maps_figure(model, x[:4], labels[:4], {"saliency": grad[:4]})
    caption = ("Simonyan et al.'s saliency map of the predicted class on held-out shapes: |d S_c / d x|, the max "
               "over R, G and B, white = large (clipped at the 99th percentile). Green title: a right prediction.")
    text = (f"On {n} images the map's strongest pixel is on the object in {int(hits.sum())} of them, and "
            f"{_pct(energy.mean())} of its mass (sum over channels of |gradient|) lies on the object, which covers "
            f"{_pct(area.mean())} of the image" + (": the map is noisy, yet it does find the shape."
                                                    if energy.mean() > area.mean() else "."))
    return show(lab, fig, "cmp784-saliency", caption, paragraph(text), dpi=DPI)


def _log_p(c: int):
    return lambda out: out.log_softmax(1)[:, c]


@experiment("csc413-input-gradients", "Input gradients of log p, and two ways to smooth them",
            decks=("csc413",),
            lecture="CSC413 'The problem with input gradients': the gradient of log p(y = 'deer' | x) w.r.t. the "
                    "input is noisy and hard to interpret; 'Smoothing the input gradients': guided backprop "
                    "(accumulate only positive gradients) and SmoothGrad (the backward pass on a few noisy versions "
                    "of the input, averaged).",
            order=76)
def input_gradients(lab: Lab) -> Markup:
    model = lab.model("shapes")
    n, samples = (2, 10) if lab.quick else (4, LECTURE["n_samples"])
    x, labels, masks = _images(lab, n)
    pred, _ = _predict(model, x)
    rows = {"d log p / dx": [], "guided_backprop": [], "smoothgrad": []}
    for i, c in enumerate(pred.tolist()):  # one class per call: a callable target reads every row the same way
        xi = x[i:i + 1]
        rows["d log p / dx"].append(saliency(model, xi, _log_p(c)))
        rows["guided_backprop"].append(guided_backprop(model, xi, _log_p(c)))
        rows["smoothgrad"].append(smoothgrad(model, xi, _log_p(c), preset="lecture", n_samples=samples,
                                             seed=lab.seed, batch_size=BATCH))
    maps = {k: torch.cat(v) for k, v in rows.items()}
    energy = {k: energy_in_mask(v, masks) for k, v in maps.items()}
    fig = _maps_figure(model, x, labels, maps, styles={"d log p / dx": "magnitude", "smoothgrad": "magnitude-sum"})
    caption = (f"The gradient of log p(predicted class | x) on {n} held-out images (max over channels of |.|), guided "
               "backprop of the same log-probability (signed, around grey), and SmoothGrad of it with "
               f"N = {samples} noisy copies at sigma = {LECTURE['noise_std']:g} (max - min), drawn as the sum over "
               "channels of |.|.")
    rows_ = [[k if k != "guided_backprop" else "guided backprop", _pct(v.mean())] for k, v in energy.items()]
    return show(lab, fig, "csc413-input-gradients", caption,
                table(["map", "share of its mass on the object"], rows_, numeric=[1], best={1: "max"}),
                paragraph(_smoothing_text(energy)), dpi=DPI)


def _smoothing_text(energy: dict[str, torch.Tensor]) -> str:
    """Which smoothing moved the map's mass onto the object, read from the measured shares."""
    base = float(energy["d log p / dx"].mean())
    said = []
    for name, label in (("guided_backprop", "Guided backprop"), ("smoothgrad", "SmoothGrad")):
        v = float(energy[name].mean())
        said.append(f"{label} {'raises' if v > base else 'lowers'} the share on the object from {base:.0%} to {v:.0%}")
    return ("; ".join(said) + ". A sharper picture is not yet a truer one: the sanity checks (Adebayo et al., the "
            "'cautionary tale') test whether the maps depend on the model at all.")


@experiment("ee559-smilkov-line", "The gradient along a line (Smilkov et al. 2017, Fig. 2)",
            decks=("ee559",),
            lecture="EE-559 slide 97: 'the partial derivative of S_c with respect to the RGB values of a single pixel "
                    "[...] as one slowly moves away from a baseline image x to a fixed location x + eps', eps one "
                    "sample of N(0, 0.01^2): the gradient is noisy 'due to the local irregularity of the network's "
                    "response as a function of the input', which motivates SmoothGrad.",
            order=77)
def smilkov_line(lab: Lab) -> Markup:
    model = lab.model("shapes")
    steps, samples = (11, 8) if lab.quick else (51, LECTURE["n_samples"])
    x, labels, _ = _images(lab, 1)
    line = gradient_along_line(model, x, eps=0.01, steps=steps, preset="lecture", n_samples=samples, seed=lab.seed,
                               batch_size=BATCH)
    raw, smooth = line.variation()
    jumps = int((line.raw[0].diff(dim=0).abs() > 1e-6).any(2).sum())  # steps where some channel's derivative moved
    y, xx = line.pixels[0, 0].tolist()
    names = _names(model)
    pred, p = _predict(model, x)
    fig = line.figure(0, title=f"{names[int(pred[0])]} ({float(p[0, pred[0]]):.0%}), pixel (y={y}, x={xx})")
    caption = (f"d S_c / d x_i of the three colour values of one pixel (the one with the largest gradient, ringed) "
               f"at {steps} points from x to x + eps d, d ~ N(0, I), eps = 0.01 (in [0, 1] pixel units, as the "
               f"lecture's N(0, 0.01^2)), for the class predicted at x; right: SmoothGrad at the same points "
               f"(N = {line.n_samples}, sigma = {line.noise_std:g} (max - min), the lecture's settings"
               + (", fewer samples in this quick run" if lab.quick else "") + "). Same vertical scale.")
    ratio = float(raw.mean() / smooth.mean().clamp_min(1e-12))
    reach = float((line.end - line.start).abs().max())
    text = (f"Along a segment whose end image differs from x by at most {reach:.3f} "
            f"per pixel, the raw derivative changes at {jumps} of {steps - 1} steps (its total variation, summed over "
            f"R, G and B: {float(raw.sum()):.3f}), the smoothed one moves {ratio:.0f}x less "
            f"({float(smooth.sum()):.3f}): a ReLU network's gradient is piecewise constant and jumps at every "
            "activation pattern crossed, while the average over noise varies smoothly.")
    return show(lab, fig, "ee559-smilkov-line", caption, paragraph(text), dpi=110)


@experiment("ee559-smoothgrad", "SmoothGrad as the lecture computes it: sigma = range / 4, N = 100, sum of |.|",
            decks=("ee559", "csc413"),
            lecture="EE-559 slides 98-102: the gradient averaged over N = 100 copies x + eps_n, "
                    "eps_n ~ N(0, sigma^2 I) with sigma = Delta / 4 (Delta the gap between the largest and smallest "
                    "pixel values), shown as acc_grad.abs().sum(1), beside the plain gradient, for AlexNet, VGG16 "
                    "and VGG19. CSC413: 'do the backward pass on a few noisy versions of the input image, then "
                    "average'.",
            order=78)
def smoothgrad_lecture(lab: Lab) -> Markup:
    model = lab.model("shapes")
    n, samples = (2, 10) if lab.quick else (6, LECTURE["n_samples"])
    x, labels, masks = _images(lab, n)
    grad = saliency(model, x, labels)  # 'we use here the correct unit, not the maximum response one'
    sg = smoothgrad(model, x, labels, preset="lecture", n_samples=samples, seed=lab.seed, batch_size=BATCH)
    fig = _maps_figure(model, x, labels, {"saliency": grad, "smoothgrad": sg},
                       styles={"saliency": "magnitude-sum", "smoothgrad": "magnitude-sum"})
    e_grad, e_sg = energy_in_mask(grad, masks).mean(), energy_in_mask(sg, masks).mean()
    h_grad, h_sg = pointing_game(grad, masks).sum(), pointing_game(sg, masks).sum()
    preset = "preset='lecture'" + (f" with n_samples={samples} (quick run)" if samples != LECTURE["n_samples"] else "")
    caption = (f"The gradient of the correct class's logit and SmoothGrad ({preset}: N = {samples}, sigma = "
               f"{LECTURE['noise_std']:g} (max - min) per image) on {n} held-out images, both drawn as the lecture "
               "does, sum over R, G, B of |map| (viz reduction 'abs-sum'), white = large.")
    text = (f"SmoothGrad puts {_pct(e_sg)} of its mass on the object against {_pct(e_grad)} for the gradient, and its "
            f"strongest pixel lies on the object in {int(h_sg)} of {n} images (gradient: {int(h_grad)}).")
    return show(lab, fig, "ee559-smoothgrad", caption, paragraph(text), dpi=DPI)


# ----------------------------------------------------------------------------- ReLU rules


def _max_unit(model, x: torch.Tensor, layer: str) -> Unit:
    """The maximally responding unit of ``layer`` on one image (EE-559's ``output.max()`` of ``model.features``)."""
    a = activation_maps(model, x, layer)[layer][0]
    c, y, xx = (int(v) for v in torch.unravel_index(a.argmax(), a.shape))
    return Unit(layer, c, y=y, x=xx)


@experiment("ee559-relu-rules", "Gradient, deconvolution and guided back-propagation of the strongest unit",
            decks=("ee559", "cmp784", "diy"),
            lecture="EE-559 slides 103-126: the three methods differ only in what passes back through a ReLU "
                    "(1{s>0} g, 1{g>0} g, 1{s>0} 1{g>0} g), shown for the max feature response of model.features "
                    "as result / result.max() + 0.5. CMP784 'Intermediate features via (guided) backprop' and the DIY "
                    "deck's guided backpropagation: pick one neuron of a conv feature map, backpropagate its value.",
            order=79)
def relu_rules(lab: Lab) -> Markup:
    model = lab.model("shapes")
    n = 2 if lab.quick else 4
    x, labels, masks = _images(lab, n)
    layer = "features.17"  # the output of model.features, as in the lecture's code
    units = [_max_unit(model, x[i:i + 1], layer) for i in range(n)]
    maps = {"Gradient": [], "deconvnet": [], "guided_backprop": []}
    for i, u in enumerate(units):
        for name, fn in (("Gradient", saliency), ("deconvnet", deconvnet), ("guided_backprop", guided_backprop)):
            maps[name].append(fn(model, x[i:i + 1], u))
    maps = {k: torch.cat(v) for k, v in maps.items()}
    titles = [f"ch {u.channel} at ({u.y}, {u.x})" for u in units]
    fig = attribution_figure(x, maps, styles={k: "rgb" for k in maps}, row_titles=titles)
    energy = {k: energy_in_mask(v, masks).mean() for k, v in maps.items()}
    nonzero = {k: (v.abs().sum(1) > 0).float().mean() for k, v in maps.items()}
    caption = (f"For each of {n} held-out images, the strongest unit of {layer} (the end of model.features: channel "
               "and position on its 8x8 grid on the left) backpropagated to the pixels with the plain gradient, "
               "deconvolution and guided backprop, drawn signed around grey as the lecture's "
               "result / max + 0.5 (scaled by the 99th percentile of |map| instead of the max).")
    label = {"Gradient": "gradient", "deconvnet": "deconvolution", "guided_backprop": "guided backprop"}
    rows = [[label[k], _pct(energy[k]), _pct(nonzero[k])] for k in maps]
    best = max(energy, key=energy.get)
    text = (f"{label[best].capitalize()} puts the largest share of its mass on the object ({_pct(energy[best])}). "
            "The three differ only at the ReLUs: the gradient keeps the forward gate 1{s>0}, deconvolution the "
            "backward one 1{g>0}, guided backprop both.")
    if len({round(float(v), 4) for v in nonzero.values()}) == 1:
        text += (f" All three reach the same {_pct(nonzero[best])} of the pixels: the unit's receptive field, which "
                 "no backward rule can leave.")
    return show(lab, fig, "ee559-relu-rules", caption,
                table(["rule", "mass on the object", "pixels reached"], rows, numeric=[1, 2]), paragraph(text), dpi=DPI)


# ----------------------------------------------------------------------------- CAM family


@experiment("cmp784-top5-cam", "Class activation maps of the top 5 predictions",
            decks=("cmp784",),
            lecture="CMP784 'Class activation mapping' (Zhou et al. 2016): F_k = (1/HW) sum_hw f_hwk, S_c = sum_k "
                    "w_kc F_k, so M_c = sum_k w_kc f_k shows where class c is seen; 'class activation maps of top 5 "
                    "predictions' of one image, and 'class activation maps for one object class' across images.",
            order=78)
def top5_cam(lab: Lab) -> Markup:
    model = lab.model("shapes")
    x, labels, masks = _images(lab, 1 if lab.quick else 2)
    top = top_cams(model, x, k=5)
    out = Markup()
    for i in range(len(x)):
        fig = top.figure(i, image=x[i])
        hits = pointing_game(top.maps[i][:, None], masks[i:i + 1].expand(5, -1, -1, -1))
        caption = (f"CAM of the 5 most probable classes of one held-out image (title: class and softmax probability; "
                   f"each map min-max scaled in jet over the image, as Zhou et al.). The maps of "
                   f"{int(hits.sum())} of the 5 classes peak on the object.")
        out += show(lab, fig, f"cmp784-top5-cam-{i}", caption, dpi=DPI)
    data = lab.shapes(n=32)
    c = int(labels[0])
    same = pick(data.labels, 5, of=c)
    maps = cam(model, data.images[same], c)
    hit = pointing_game(maps, data.masks[same])
    fig = top_cams_figure(data.images[same], maps, [f"{_names(model)[c]} #{j}" for j in same])
    out += show(lab, fig, "cmp784-one-class-cam",
                f"CAM of the class '{_names(model)[c]}' on {len(same)} held-out images of it, each over its image: "
                f"the map peaks on the object in {int(hit.sum())} of {len(same)}.", dpi=DPI)
    return out + paragraph(f"Top-5 probabilities of the first image: {', '.join(top.titles(0))}.")


@experiment("cmp784-gradcam", "Grad-CAM, guided Grad-CAM and occlusion for two classes of one image",
            decks=("cmp784", "map583"),
            lecture="CMP784 'Grad-CAM': pick any layer with activations A, alpha_k = (1/HW) sum_hw dS_c/dA_hwk, "
                    "M^c = ReLU(sum_k alpha_k A_k); Selvaraju et al.'s Fig. 1 (also in MAP583): guided backprop, "
                    "Grad-CAM, guided Grad-CAM and the occlusion map for two classes ('Cat', 'Dog') of one image.",
            order=79)
def gradcam_classes(lab: Lab) -> Markup:
    model = lab.model("shapes")
    x, labels, masks = _images(lab, 1)
    _, p = _predict(model, x)
    two = p[0].topk(2).indices.tolist()
    xx = x.expand(2, -1, -1, -1)
    cls = torch.tensor(two)
    stride = 8 if lab.quick else 2
    maps = {"guided_backprop": guided_backprop(model, xx, cls), "gradcam": gradcam(model, xx, cls),
            "guided_gradcam": guided_gradcam(model, xx, cls),
            "occlusion": occlusion(model, xx, cls, window=9, stride=stride, baseline=0.0, batch_size=BATCH)}
    names = _names(model)
    fig = attribution_figure(xx, maps, row_titles=[f"{names[c]} {float(p[0, c]):.0%}" for c in two])
    layers = ["features.4", "features.7", "features.11", "features.14"]
    by_layer = {f"Grad-CAM {name}": gradcam(model, x, two[0], layer=name) for name in layers}
    fig2 = attribution_figure(x, by_layer, styles={k: "overlay" for k in by_layer}, row_titles=[names[two[0]]])
    # Grad-CAM at the layer CAM reads equals relu(CAM) / (h w): the closed form, checked on this run
    last = gradcam(model, x, two[0], layer="features.17")
    ref = cam(model, x, two[0]).clamp(min=0) / (8 * 8)
    gap = float((last - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    hits = pointing_game(torch.cat(list(by_layer.values())), masks.expand(len(layers), -1, -1, -1))
    text = (f"At features.17 (the 8 x 8 map the classifier averages) Grad-CAM equals relu(CAM) / (8 x 8) "
            f"up to {gap:.1e} of its largest value; at the earlier layers the map peaks on the object at "
            f"{int(hits.sum())} of {len(layers)} layers.")
    return (show(lab, fig, "cmp784-gradcam",
                 "The two most probable classes of one held-out image (rows), explained as Selvaraju et al.'s "
                 f"Fig. 1: guided backprop, Grad-CAM at the last convolution, guided Grad-CAM (their product) and "
                 f"occlusion (a 9x9 square of zeros, stride {stride}); for the second class the maps show what "
                 "little evidence there is for it.", dpi=DPI)
            + show(lab, fig2, "cmp784-gradcam-layers",
                   f"'Pick any layer': Grad-CAM of '{names[two[0]]}' at four convolutions (each min-max scaled); "
                   "the earlier the layer, the finer its grid.", paragraph(text), dpi=DPI))


# ----------------------------------------------------------------------------- LIME and sanity checks


@experiment("diy-lime", "LIME: the superpixels behind each of the top classes",
            decks=("diy",),
            lecture="DIY 'Localizing content with LIME' (Ribeiro et al. 2016, Fig. 4): a local linear surrogate over "
                    "superpixels explains each of the top predicted classes ('electric guitar', 'acoustic guitar', "
                    "'Labrador') by the superpixels that support it, the rest greyed out.",
            order=77)
def lime_top(lab: Lab) -> Markup:
    model = lab.model("shapes")
    samples, k, keep = (100, 2, 5) if lab.quick else (1000, 3, 5)
    x, labels, masks = _images(lab, 1)
    _, p = _predict(model, x)
    classes = p[0].topk(k).indices.tolist()
    names = _names(model)
    shown, titles, rows = [x[0]], ["input"], []
    for c in classes:
        fit = lime_fit(model, x, c, n_samples=samples, n_segments=50, baseline=0.5, seed=lab.seed,
                       batch_size=BATCH)
        coef, seg = fit.coefficients[0], fit.segments[0]
        best = [int(s) for s in coef.argsort(descending=True)[:keep] if coef[s] > 0]
        region = torch.isin(seg, torch.tensor(best, dtype=seg.dtype))
        shown.append(torch.where(region[None], x[0], torch.full_like(x[0], 0.5)))
        titles.append(f"{names[c]} {float(p[0, c]):.0%}")
        on_object = float((region & masks[0, 0]).sum() / region.sum().clamp_min(1)) if best else 0.0
        rows.append([names[c], f"{float(p[0, c]):.2f}", len(best), _pct(on_object), f"{float(fit.r2[0]):.2f}"])
    fig = image_grid(torch.stack(shown), titles=titles, ncols=len(shown), cell=1.6)
    caption = (f"LIME on one held-out image for its {k} most probable classes: {samples} perturbed copies with "
               "superpixels (SLIC, about 50) replaced by grey, a weighted linear surrogate per class, and the "
               f"(up to) {keep} superpixels with the largest positive weights kept, the rest grey, as Ribeiro et al. "
               "show it.")
    return show(lab, fig, "diy-lime", caption,
                table(["class", "probability", "superpixels kept", "kept area on the object", "surrogate R^2"], rows,
                      numeric=[1, 2, 3, 4]), dpi=DPI)


def _edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image ``[N, 1, H, W]``: the edge detector Adebayo et al. compare with."""
    grey = x.mean(1, keepdim=True)
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    kernel = torch.stack([k, k.t()])[:, None]
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernel)
    return g.pow(2).sum(1, keepdim=True).sqrt()


@experiment("diy-sanity-checks", "Exercise caution: sanity checks for saliency maps",
            decks=("diy", "csc413"),
            lecture="DIY 'Exercise caution' (Adebayo et al. 2018, 'Sanity checks for saliency maps'): the maps also "
                    "appear with randomly initialised networks, because salient content is where the edges are; an "
                    "edge detector gives similar pictures. CSC413 'Cautionary tale of image gradients' cites the "
                    "same paper.",
            order=79)
def sanity_checks(lab: Lab) -> Markup:
    model = lab.model("shapes")
    x, labels, _ = _images(lab, 1)
    methods = ("saliency", "guided_backprop", "gradcam") if lab.quick else ("saliency", "guided_backprop",
                                                                            "smoothgrad", "gradcam")
    options = {"smoothgrad": {"preset": "lecture", "n_samples": 25, "batch_size": BATCH}}
    refs = {} if lab.quick else reference_models(model, n=4)
    random_labels = refs.get("random_model")
    pred, _ = _predict(model, x)
    edge = _edges(x)
    rows, notes, first, last, to_edges, stages = {}, {}, {}, {}, {}, []
    for name in methods:
        res = model_randomization(model, x, name, seed=lab.seed, by="block", **options.get(name, {}))
        rows[name] = [m[0] for m in res.maps]
        notes[name] = [""] + [f"ρ {float(r[0]):.2f}" for r in res.spearman[1:]]
        first[name], last[name] = float(res.spearman[1, 0]), float(res.spearman[-1, 0])
        to_edges[name] = float(spearman(res.maps[0].abs().sum(1, keepdim=True), edge)[0])
        stages = ["trained"] + [f"+ {s}" for s in res.stages[1:]]
        if random_labels is not None:
            other = get(name)(random_labels, x, pred, **options.get(name, {})).detach().float().cpu()
            rows[name].append(other[0])
            notes[name].append(f"ρ {float(similarities(res.maps[0], other)[0][0]):.2f}")
    if random_labels is not None:
        stages.append("random labels")
    fig = strips_figure(x[0], rows, stages, cell=1.1, notes=notes)
    edge_fig = image_grid(torch.cat([x, (edge / edge.max()).expand(-1, 3, -1, -1)]), titles=["input", "Sobel edges"],
                          ncols=2, cell=1.4)
    caption = ("Cascading randomisation on one held-out image: from left to right the blocks (a convolution with its "
               "batch norm) are re-initialised from the output down, cumulatively"
               + ("; last column: a copy trained on permuted labels" if random_labels is not None else "")
               + ". Under each map, ρ: its Spearman rank correlation with the trained model's map (1 = unchanged).")
    label = {"saliency": "gradient", "guided_backprop": "guided backprop", "smoothgrad": "SmoothGrad",
             "gradcam": "Grad-CAM"}
    rows_ = [[label[m], f"{first[m]:.2f}", f"{last[m]:.2f}", f"{to_edges[m]:.2f}"] for m in methods]
    keep = max(first, key=first.get)
    text = (f"With only the classifier re-initialised, {label[keep]} keeps the most of its trained look "
            f"(ρ {first[keep]:.2f})" + (": a map that barely changes when the weights it should explain are "
                                        "destroyed does not explain them. " if first[keep] >= 0.5 else ". "))
    text += ("With every block re-initialised, ρ falls to " + ", ".join(f"{last[m]:.2f} ({label[m]})" for m in methods)
             + ". The trained maps' rank correlation with the Sobel edge map is "
             + ", ".join(f"{to_edges[m]:.2f} ({label[m]})" for m in methods)
             + (": on these images the maps are not edge detectors." if max(to_edges.values()) < 0.3
                else ": part of what the maps show is the image's edges."))
    return (show(lab, fig, "diy-sanity-checks", caption, dpi=DPI)
            + show(lab, edge_fig, "diy-sanity-edges",
                   "The edge detector Adebayo et al. compare the maps with: the Sobel gradient magnitude of the "
                   "grey image.",
                   table(["method", "ρ, classifier randomised", "ρ, all blocks randomised", "ρ with the edge map"],
                         rows_, numeric=[1, 2, 3]),
                   paragraph(text), dpi=DPI))
