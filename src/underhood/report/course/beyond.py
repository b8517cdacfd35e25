"""Adversarial examples beyond neural networks (MAP583 and CMP784, "Not just for neural networks"; Goodfellow et
al. 2015's "excessive linearity"): softmax regression pushed from a 9 to every other digit, scikit-learn models
attacked and the transfer matrix between them and the CNN, and the logits along the FGSM direction."""

from __future__ import annotations

import torch
from markupsafe import Markup

from ...adversarial import craft, deepfool, linear_flip, logit_path, sklearn_models, softmax_regression, transfer_matrix
from ...viz.adversarial_linear import flip_grid_figure, linearity_figure
from ...viz.render import figure_to_png
from ..base import figure, paragraph, table
from .base import Lab, experiment

EPS = 0.3  # Papernot, McDaniel & Goodfellow 2016's L-inf budget on MNIST (pixels in [0, 1])


def _softmax(lab: Lab):
    """The course's softmax regression on the digits' training split (once per lab) and its test accuracy."""
    key = "beyond:softmax"
    if key not in lab.cache:
        steps = 40 if lab.quick else 100
        model = softmax_regression(lab.digits("train"), steps=steps, seed=lab.seed)
        test = lab.digits("test")
        with torch.no_grad():
            acc = float((model(test.images).argmax(1) == test.labels).float().mean())
        lab.cache[key] = (model, acc, steps)
    return lab.cache[key]


@experiment("beyond-nine-to-every-digit", "Softmax regression: a 9 turned into every other digit",
            decks=("map583", "cmp784"),
            lecture="'Not just for neural networks' (MAP583) and 'Attacking a linear model' (CMP784): softmax "
                    "regression on handwritten digits, one 9 perturbed into each of the nine other classes "
                    "(the misclassifications boxed in yellow); the lecture's 10-d logistic-regression example "
                    "shows why a small step along the weights is enough.",
            order=96)
def nine_to_every_digit(lab: Lab) -> Markup:
    model, acc, steps = _softmax(lab)
    test = lab.digits("test")
    with torch.no_grad():
        probs = model(test.images).softmax(1)
    nines = ((test.labels == 9) & (probs.argmax(1) == 9)).nonzero()[:, 0]
    i = int(nines[probs[nines, 9].argmax()])
    x = test.images[i:i + 1]
    r = linear_flip(model, x.expand(9, -1, -1, -1), target=list(range(9)))
    l2 = r.norms["l2"]
    rel = l2 / float(x.norm())
    png = figure_to_png(flip_grid_figure(x[0], r, classes=test.classes, clean_prob=float(probs[i, 9])), dpi=110)
    easiest, hardest = int(l2.argmin()), int(l2.argmax())
    caption = (f"Softmax regression (a linear layer on the 32x32 pixels, L-BFGS {steps} steps, weight decay 1e-3, "
               f"test accuracy {acc:.1%}) and its most confident test 9 (p = {float(probs[i, 9]):.3f}), pushed to "
               f"each other digit by the exact minimal L2 perturbation inside the pixel box (linear_flip, the "
               f"target ahead by 0.001 logits). All {int(r.success.sum())} of 9 targets reached; L2 norms "
               f"{float(l2.min()):.2f} ({easiest}) to {float(l2.max()):.2f} ({hardest}), i.e. "
               f"{float(rel.min()):.0%} to {float(rel.max()):.0%} of ||x||; L-inf up to "
               f"{float(r.norms['linf'].max()) * 255:.0f}/255. Bottom row: the perturbations, which look like "
               "strokes of the target digit: for a linear model they are combinations of its weight rows.")
    body = figure(lab, png, "beyond-nine-to-every-digit", caption)
    n = 10 if lab.quick else 100
    keep = (probs[:n].argmax(1) == test.labels[:n])
    xs, ys = test.images[:n][keep], test.labels[:n][keep]
    exact, df = linear_flip(model, xs, ys), deepfool(model, xs, ys)
    ours, theirs = exact.norms["l2"], df.norms["l2"]
    body += paragraph(
        f"Untargeted, on the first {n} test digits ({len(xs)} classified correctly): the exact minimal L2 "
        f"perturbation to the nearest other class has median {float(ours.median()):.2f} "
        f"(relative {float((ours / xs.flatten(1).norm(dim=1)).median()):.1%}); DeepFool, which linearises the "
        f"model, finds median {float(theirs.median()):.2f} (overshoot 0.02; per image DeepFool / exact from "
        f"{float((theirs / ours).min()):.3f} to {float((theirs / ours).max()):.3f}): on an affine model DeepFool's "
        "first step is already the step to the nearest boundary, but it ignores the box and the other classes.")
    return body


@experiment("beyond-sklearn-transfer", "Not just for neural networks: linear SVM, k-NN, decision tree, and transfer",
            decks=("map583", "cmp784"),
            lecture="'Not just for neural networks' (MAP583, CMP784): linear models, SVMs, decision trees and "
                    "nearest neighbours are fooled too; adversarial examples transfer between models "
                    "(Papernot, McDaniel & Goodfellow 2016's cross-technique matrix: rows the model crafted on, "
                    "columns the model fooled, FGSM at eps = 0.3 on MNIST).",
            order=97)
def sklearn_transfer(lab: Lab) -> Markup:
    train, test = lab.digits("train"), lab.digits("test")
    n_train = 300 if lab.quick else len(train)
    n = 48 if lab.quick else len(test)
    seeds = 50 if lab.quick else 150
    rounds, epochs = (2, 3) if lab.quick else (4, 10)
    softmax, _, _ = _softmax(lab)
    models = {"CNN": lab.model("digits"), "softmax regression": softmax,
              **sklearn_models((train.images[:n_train], train.labels[:n_train]), seed=lab.seed)}
    x, y = test.images[:n], test.labels[:n]
    m = transfer_matrix(models, (x, y), craft, eps=EPS, batch_size=n, seed=lab.seed,
                        substitute_inputs=train.images[-seeds:], rounds=rounds, epochs=epochs)
    png = figure_to_png(m.figure(value="fooling", title=f"FGSM, ε = {EPS}: fooling rate (%)"), dpi=110)
    fooling = m.fooling
    off = fooling[~torch.eye(len(fooling), dtype=torch.bool)]
    names = list(m.names)
    masked = torch.nan_to_num(fooling, nan=-1).masked_fill(torch.eye(len(names), dtype=torch.bool), -1)
    best = divmod(int(masked.argmax()), len(names))
    caption = (f"Rows: the model the adversarial examples were crafted on; columns: the model they were shown to; "
               f"cells: the share of the {n} test digits that column's model classifies correctly whose adversarial "
               f"version it misclassifies. FGSM with eps = {EPS} (L-inf), white-box on the CNN, the softmax "
               f"regression and the linear SVM (LinearSVC, C = 0.01; its decision function is linear, so it has a "
               f"gradient); k-NN (k = 5) and the decision tree have none, so their rows come from Papernot et al.'s "
               f"substitute attack: a small CNN trained on that model's labels of {seeds} held-out digits grown by "
               f"Jacobian augmentation ({rounds} rounds of {epochs} epochs), attacked with FGSM. scikit-learn models "
               f"fitted on {n_train} training digits. Our run: mean fooling rate off the diagonal "
               f"{float(off.nanmean()):.0%}; highest transfer {names[best[0]]} -> {names[best[1]]} "
               f"{float(fooling[best]):.0%}.")
    body = figure(lab, png, "beyond-sklearn-transfer", caption, width="560px")
    rows = [[name, f"{float(c):.1%}", f"{float(fooling[i, i]):.0%}",
             "substitute" if name in ("k-NN", "decision tree") else "white-box"]
            for i, (name, c) in enumerate(zip(names, m.clean))]
    body += table(["model", "clean accuracy", "fooled by its own row", "crafted"], rows, numeric=(1, 2))
    return body


@experiment("beyond-excessive-linearity", "Adversarial examples from excessive linearity (Goodfellow et al.)",
            decks=("cmp784",),
            lecture="'Adversarial examples from excessive linearity' and 'Modern deep nets are very piecewise "
                    "linear' (CMP784, from Goodfellow's talk): the logits of every class along the FGSM direction "
                    "x + eps sign(grad) are nearly straight lines, so one step far enough changes the class.",
            order=98)
def excessive_linearity(lab: Lab) -> Markup:
    softmax, _, _ = _softmax(lab)
    cnn = lab.model("digits")
    test = lab.digits("test")
    n = 8 if lab.quick else 100
    points = 61 if lab.quick else 201
    eps_max = 0.3
    x, y = test.images[:n], test.labels[:n]
    paths = {"CNN (digits)": logit_path(cnn, x, y, eps_max=eps_max, points=points),
             "softmax regression": logit_path(softmax, x, y, eps_max=eps_max, points=points)}
    with torch.no_grad():
        right = (cnn(x).argmax(1) == y) & (softmax(x).argmax(1) == y)
    i = int(right.nonzero()[0]) if right.any() else 0
    png = figure_to_png(linearity_figure(paths, index=i, classes=test.classes), dpi=110)
    r2 = {k: p.linearity() for k, p in paths.items()}
    eps = paths["CNN (digits)"].eps
    flips = {}
    for k, p in paths.items():  # the smallest positive eps at which the label is lost, per image
        lost = (p.predicted != p.labels[:, None]) & (eps[None] > 0)
        first = torch.where(lost, eps[None], torch.inf).amin(1)
        flips[k] = first[torch.isfinite(first)]
    cnn_r2, lin_r2 = r2["CNN (digits)"], r2["softmax regression"]
    caption = (f"Logits of the ten classes for test digit {i} (label {int(y[i])}) along x + eps * sign(grad_x CE), "
               f"eps from -{eps_max} to {eps_max} in {points} steps, inputs not clipped to the box (as in the paper); "
               f"the band above each panel gives the predicted class. R² of straight lines through the logits over "
               f"the first {n} test digits: CNN median {float(cnn_r2.median()):.3f} (min {float(cnn_r2.min()):.3f}), "
               f"softmax regression {float(lin_r2.min()):.6f} (exactly linear up to rounding).")
    body = figure(lab, png, "beyond-excessive-linearity", caption)
    rows = [[k, f"{float(r2[k].median()):.3f}", f"{len(flips[k])} / {n}",
             f"{float(flips[k].median()):.3f}" if len(flips[k]) else "-"] for k in paths]
    body += table(["model", "median R² (lines)", "label lost for eps ≤ " + str(eps_max), "median eps when lost"],
                  rows, numeric=(1, 2, 3))
    return body
