"""On your model: the lectures' figures that apply to any image classifier, replayed on the model of
``underhood course --model SPEC`` (a torchvision or timm network, a file, a factory, a built-in name) and the
images it is shown (``--images``, or a built-in model's held-out images).

First-layer filters, class models by gradient ascent, the gradient beside SmoothGrad with EE-559's settings
and Grad-CAM, CAM of the top-5 classes, EE-559's gradient ascent on the loss beside FGSM, and Zeiler &
Fergus's invariance by layer. Each experiment says so, in one line, when the model lacks what it needs (a
convolution for the filters, a global-pooling-and-linear head for CAM), and the page shows the rest.
"""

from __future__ import annotations

import dataclasses

import torch
from markupsafe import Markup, escape

from ...activations.invariance import IDENTITY, change, default_amounts, invariance
from ...adversarial import fgsm, gradient_ascent
from ...attribution import gradcam, saliency, smoothgrad, top_cams
from ...attribution.metrics import spearman
from ...core.errors import UnderhoodError
from ...core.layers import conv_layers, last_hidden, stages
from ...data import ImageSet
from ...synthesis import objectives as O
from ...synthesis import render
from ...viz import attribution_figure, figure_to_png, filters_figure
from ...viz.activations_course import invariance_figure
from ...viz.adversarial import attack_figure
from ...viz.synthesis import class_images_figure
from ..base import figure, paragraph, table
from .base import Lab, experiment

ALL = ("map583", "ee559", "csc413", "diy", "cmp784")
BATCH = 16


def _classes(model, n: int) -> list[str]:
    names = list(getattr(model, "classes", None) or [])
    return names if len(names) == n else [str(i) for i in range(n)]


def _seen(lab: Lab) -> dict:
    """The subject's model, its images on its device, the classes explained (true ones for held-out images,
    else the predicted ones), the softmax and one title per image; once per lab."""
    key = "yours:seen"
    if key not in lab.cache:
        s = lab.subject
        device = next(iter(s.model.parameters()), torch.empty(0)).device
        x = s.images.to(device)
        with torch.no_grad():
            probs = torch.cat([s.model(x[i:i + BATCH]).softmax(1) for i in range(0, len(x), BATCH)]).cpu()
        pred = probs.argmax(1)
        classes = _classes(s.model, probs.shape[1])
        labels = pred if s.labels is None else torch.as_tensor(s.labels).long().cpu()
        titles = [f"{classes[c]} {float(probs[i, c]):.0%}" for i, c in enumerate(pred.tolist())]
        lab.cache[key] = {"model": s.model, "x": x, "cpu": s.images, "probs": probs, "pred": pred,
                          "labels": labels, "classes": classes, "titles": titles, "spec": s.spec, "names": s.names,
                          "which": "the true class" if s.labels is not None else "the predicted class"}
    return lab.cache[key]


def _not_here(what: str, exc: Exception) -> Markup:
    """One line saying why a figure does not apply to this model."""
    return paragraph(f"Not shown for this model: {what} ({str(exc).splitlines()[0]}).")


def _cpu(result):
    """An attack's result with its tensors on the CPU (for the figures)."""
    moved = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    moved = {k: v.cpu() if isinstance(v, torch.Tensor) else
             {n: t.cpu() for n, t in v.items()} if k == "norms" else v for k, v in moved.items()}
    return dataclasses.replace(result, **moved)


def _png(fig) -> bytes:
    return figure_to_png(fig, dpi=100)


@experiment("your-filters", "Your model's first-layer filters", decks=ALL, order=10, subject=True,
            lecture="Every deck opens the network with its first layer's kernels drawn as images (AlexNet's "
                    "Gabor-like, colour-opponent filters), and warns that deeper ones say less.")
def your_filters(lab: Lab) -> Markup:
    from ...weights import filters

    s = _seen(lab)
    convs = conv_layers(s["model"])
    if not convs:
        return paragraph(f"{s['spec']} has no Conv2d layer, so it has no first-layer kernels to draw.")
    w = filters(s["model"], convs[0]).detach().float().cpu()
    kind = "RGB images on one shared colour scale" if w.shape[1] == 3 else "grey-scale kernels, one per input channel"
    shown = min(64, w.shape[0])
    return figure(lab, figure_to_png(filters_figure(w, title=f"{convs[0]}: {w.shape[0]} filters "
                                                    f"{w.shape[2]}x{w.shape[3]}")), "your-filters",
                  f"The first {shown} of the {w.shape[0]} kernels of {convs[0]}, the first convolution of "
                  f"{s['spec']} (for a vision transformer, its patch embedding), as {kind} (mid-grey = 0). Weights "
                  f"span [{float(w.min()):.3g}, {float(w.max()):.3g}].", width="640px")


@experiment("your-class-model", "Class models of your model's predicted classes", decks=ALL, order=64,
            subject=True,
            lecture="Simonyan et al. 2014 (CMP784, CSC413, DIY, MAP583, EE-559): gradient ascent on the input "
                    "maximising the pre-softmax score of a class, with a regulariser that keeps the image "
                    "natural; the decks show ImageNet classes (goose, ostrich, dumbbell...).")
def your_class_model(lab: Lab) -> Markup:
    s = _seen(lab)
    model = s["model"]
    ids = list(dict.fromkeys(s["pred"].tolist()))[:4]
    steps = 8 if lab.quick else 128
    r = render(model, [O.class_logit(k) for k in ids], steps=steps, seed=lab.seed)
    x = r.images.detach().clamp(0, 1)
    with torch.no_grad():
        p = torch.cat([model(x[i:i + BATCH].to(s["x"].device)).softmax(1) for i in range(0, len(x), BATCH)]).cpu()
    names = [s["classes"][k] for k in ids]
    hits = sum(int(p[i].argmax()) == k for i, k in enumerate(ids))
    png = figure_to_png(class_images_figure(x.cpu(), p[:, ids].contiguous(), names, ids=list(range(len(ids))),
                                            ncols=len(ids)), dpi=110)
    caption = (f"The logit of each class {s['spec']} predicts for the images ({', '.join(names)}) maximised from "
               f"noise: underhood's default render ({steps} Adam steps at lr 0.1 on a decorrelated Fourier "
               f"parametrisation with jitter, scaling and rotation, seed {lab.seed}; Olah et al.'s regulariser by "
               f"transformations rather than Simonyan's L2). Titles: the model's probability of the class for the "
               f"image; {hits} of {len(ids)} images are classified as their class.")
    return figure(lab, png, "your-class-model", caption, width="640px")


@experiment("your-saliency", "The gradient, SmoothGrad with EE-559's settings, and Grad-CAM on your model",
            decks=ALL, order=78, subject=True,
            lecture="Simonyan et al.'s saliency (the gradient of the class score), SmoothGrad (EE-559 slides "
                    "98-102: N = 100 noisy copies, sigma = range / 4, sum over channels of |.|) and Grad-CAM "
                    "(the weighted feature maps of the last convolution), shown side by side for one image.")
def your_saliency(lab: Lab) -> Markup:
    s = _seen(lab)
    model, x, labels = s["model"], s["x"], s["labels"].to(s["x"].device)
    samples = 8 if lab.quick else 100
    maps = {"saliency": saliency(model, x, labels).detach().cpu(),
            "smoothgrad": smoothgrad(model, x, labels, preset="lecture", n_samples=samples, seed=lab.seed,
                                     batch_size=BATCH).detach().cpu()}
    note = Markup()
    try:
        maps["gradcam"] = gradcam(model, x, labels).detach().cpu()
    except UnderhoodError as exc:
        note = _not_here("Grad-CAM", exc)
    fig = attribution_figure(s["cpu"], maps, styles={"saliency": "magnitude-sum", "smoothgrad": "magnitude-sum"},
                             row_titles=s["titles"])
    rho = spearman(maps["saliency"].abs().sum(1), maps["smoothgrad"].abs().sum(1))

    def top_share(m: torch.Tensor) -> torch.Tensor:  # share of the map's mass in its 5% strongest pixels
        flat = m.abs().sum(1).flatten(1)
        k = max(1, flat.shape[1] // 20)
        return flat.topk(k, 1).values.sum(1) / flat.sum(1).clamp_min(1e-12)
    caption = (f"For {len(x)} image{'s' if len(x) != 1 else ''} ({', '.join(s['names'])}, top to bottom) and "
               f"{s['which']} of each (row titles: the prediction and its probability): the gradient of its "
               "logit and SmoothGrad (preset='lecture', N = "
               f"{samples}{', fewer than the lecture in this quick run' if lab.quick else ''}), both as sum over "
               "channels of |map|, white = large"
               + (", and Grad-CAM at the default layer over the image" if "gradcam" in maps else "") + ".")
    text = (f"The 5% strongest pixels hold {float(top_share(maps['saliency']).mean()):.0%} of the gradient's mass "
            f"and {float(top_share(maps['smoothgrad']).mean()):.0%} of SmoothGrad's; the two maps' rank correlation "
            f"(Spearman) is {', '.join(f'{float(v):.2f}' for v in rho)}.")
    return figure(lab, _png(fig), "your-saliency", caption) + paragraph(text) + note


@experiment("your-top5-cam", "Class activation maps of your model's top 5 predictions", decks=("cmp784",),
            order=78, subject=True,
            lecture="CMP784 'Class activation mapping' (Zhou et al. 2016): with global average pooling before the "
                    "last linear layer, M_c = sum_k w_kc f_k shows where class c is seen; the maps of the top 5 "
                    "predictions of one image.")
def your_top5_cam(lab: Lab) -> Markup:
    s = _seen(lab)
    n = min(len(s["x"]), 1 if lab.quick else 2)
    try:
        top = top_cams(s["model"], s["x"][:n], k=min(5, len(s["classes"])))
    except UnderhoodError as exc:
        return _not_here("CAM needs global average pooling followed by one linear layer", exc)
    out = Markup()
    for i in range(n):
        out += figure(lab, _png(top.figure(i, image=s["cpu"][i])), f"your-top5-cam-{i}",
                      f"{s['names'][i]}: CAM of the {top.maps.shape[1]} most probable classes of {s['spec']} "
                      f"(title: class and probability; each map min-max scaled in jet over the image). Top "
                      f"classes: {', '.join(top.titles(i))}.")
    return out


@experiment("your-gradient-ascent", "EE-559's gradient ascent on the loss, and FGSM, on your model", decks=ALL,
            order=86, subject=True,
            lecture="EE-559 slides 78-82: SGD at lr 0.1 for 15 iterations on the cross-entropy of the true class "
                    "changes AlexNet's prediction with relative norms ||x - x̌|| / ||x|| of 1.02% and 0.27%; "
                    "MAP583, CSC413 and CMP784: one step along the sign of the gradient (FGSM, Goodfellow et al.).")
def your_gradient_ascent(lab: Lab) -> Markup:
    s = _seen(lab)
    model, x, labels = s["model"], s["x"], s["labels"].to(s["x"].device)
    ga = gradient_ascent(model, x, labels, preset="lecture", seed=lab.seed)
    eps = 8 / 255
    fg = fgsm(model, x, labels, eps=eps)
    rows = list(range(min(len(x), 4)))
    fig = attack_figure(s["cpu"], _cpu(ga), classes=s["classes"], clean_probs=s["probs"], max_rows=len(rows),
                        title="EE-559's gradient ascent: SGD, lr = 0.1, 15 iterations")
    classes = s["classes"]
    table_rows = [[s["names"][i], classes[int(labels[i])], classes[int(ga.predicted[i])],
                   f"{float(ga.relative_norm[i]):.2%}", classes[int(fg.predicted[i])],
                   f"{float(fg.relative_norm[i]):.2%}"] for i in range(len(x))]
    caption = (f"gradient_ascent(preset='lecture') on {s['which']} of each image (pixels kept in [0, 1]); left, the "
               "image and its prediction, middle, the difference magnified, right, the adversarial image. "
               f"{int(ga.success.sum())} of {len(x)} change class; FGSM at L∞ {eps * 255:.0f}/255 changes "
               f"{int(fg.success.sum())}.")
    return (figure(lab, _png(fig), "your-gradient-ascent", caption)
            + table(["image", "explained class", "after gradient ascent", "relative norm", "after FGSM 8/255",
                     "relative norm"], table_rows, numeric=[3, 5]))


@experiment("your-invariance", "Invariance by layer on your model (Zeiler & Fergus, Fig. 5)",
            decks=("cmp784",), order=60, subject=True,
            lecture="CMP784 ('Invariance and Covariance', Zeiler & Fergus 2014 Fig. 5): images translated, "
                    "scaled and rotated; the Euclidean distance of layer 1's and layer 7's features to the "
                    "untransformed ones, and the probability of the true class.")
def your_invariance(lab: Lab) -> Markup:
    s = _seen(lab)
    model = s["model"]
    size = int(s["x"].shape[-1])
    try:
        layers = list(dict.fromkeys([stages(model, input_size=tuple(s["x"].shape[1:]))[0], last_hidden(model)]))
    except UnderhoodError as exc:
        return _not_here("invariance by layer needs the model's stages", exc)
    amounts = {t: default_amounts(t, size) for t in ("translate", "scale", "rotate")}
    if lab.quick:  # about five amounts per transformation, the identity among them
        amounts = {t: sorted({*a[::max(1, len(a) // 5)], IDENTITY[t]}) for t, a in amounts.items()}
    data = ImageSet(s["cpu"], s["labels"], s["classes"])
    results = [invariance(model, data, layers=layers, transform=t, amounts=a, batch_size=BATCH)
               for t, a in amounts.items()]
    fig = invariance_figure(results, layers=layers, relative=False, strips=[r.strip(s["cpu"][0]) for r in results],
                            classes=s["classes"])
    lines = []
    for r in results:
        far = int(change(r.transform, r.amounts).argmax())
        rel = ", ".join(f"{float(r.relative[n][far].mean()):.2f} at {escape(n)}" for n in layers)
        lines.append(f"at {r.transform} {float(r.amounts[far]):g} the mean relative distance is {rel}, the "
                     f"probability of the class {float(r.probability[far].mean()):.2f}")
    return figure(lab, _png(fig), "your-invariance",
                  f"{len(s['x'])} images shown to {s['spec']} and {s['which']} of each; layers {layers[0]} (the "
                  f"first stage) and {layers[-1]} (the classifier's input); zero padding, bilinear resampling, "
                  f"the paper's ranges scaled to {size}-pixel images. Our run: " + "; ".join(lines) + ".")
