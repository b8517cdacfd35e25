"""The lectures' experiments on a model's training data and what it carries over: transfer learning (a
pre-trained network's frozen features read by a new classifier, layer by layer) and influence functions
(which training images made a prediction, checked by retraining without them)."""

from __future__ import annotations

import numpy as np
import torch
from markupsafe import Markup

from ...core.hooks import evaluating
from ...data import ImageSet
from ...viz import figure_to_png
from ..base import figure, paragraph
from ..sections.transfer import reading
from .base import Lab, experiment

BATCH = 64
DAMPING = 0.01   # the influence head's damping, and the retraining's proximal term (the same objective)


def _rgb(data: ImageSet, n: int) -> ImageSet:
    """The first ``n`` grey images as RGB (the channel repeated), for a model that takes colour."""
    d = data[:n]
    return ImageSet(d.images.repeat(1, 3, 1, 1), d.labels, d.classes, info={**d.info, "rgb": True})


@experiment("transfer-features", "Transfer learning: a pre-trained network's features on a new task",
            decks=("csc413", "cmp784"),
            lecture="CSC413 ('Transfer Learning with CNN'): take a pre-trained CNN and 'use its features network to "
                    "compute image features, which we then use to classify our own images'. CMP784: 'keep layers "
                    "1-7 of our ImageNet-trained model fixed, train a new softmax classifier on top'; 'the first "
                    "several layers in most CNNs are generic'.", order=85)
def transfer_features(lab: Lab) -> Markup:
    from ...transfer import probe

    model = lab.model("shapes")
    n_train, n_test = (100, 100) if lab.quick else (1437, 360)
    train = _rgb(lab.digits("train", size=64), n_train)
    test = _rgb(lab.digits("test", size=64), n_test)
    r = probe(model, train, test, seed=lab.seed, batch_size=BATCH)
    fig = r.figure(title=f"The shapes model's frozen features on digits: {r.n_train} training / {r.n_test} "
                         "held-out images")
    first, last = r.layers[0], r.layers[-1]
    gain = {n: r.accuracy[n] - r.random[n] for n in r.layers}
    best = max(r.layers, key=lambda n: r.accuracy[n])
    caption = (f"Settings: the built-in shapes model (trained on the 8 shape classes) is the pre-trained network; "
               f"the new task is the bundled digits (10 classes), grey repeated to RGB at 64 px. For the raw pixels "
               f"(averaged to 8x8) and each stage, a new multinomial logistic regression (the 'new softmax "
               f"classifier') is fitted on the frozen, {r.pool}-pooled features of {r.n_train} digits and scored on "
               f"{r.n_test} held-out ones; grey: the same on a randomly re-initialised copy. Our run: "
               + reading(r))
    return figure(lab, figure_to_png(fig, dpi=100), "transfer-features", caption) + paragraph(
        f"The pre-trained weights are worth {gain[first] * 100:+.1f} points over random ones at {first} and "
        f"{gain[last] * 100:+.1f} at {last}: "
        + ("the early layers carry more of the pre-training to the new task than the last one, Yosinski et al.'s "
           "'general to specific'." if gain[first] > gain[last] else
           "here the deepest layer carries at least as much of the pre-training as the first.")
        + f" The pixel probe ({r.pixels:.1%}) reads the digits' original 8x8 scans almost as they are, and "
        + (f"no frozen layer beats it here (best: {best} at {r.accuracy[best]:.1%}): a linear model on such "
           "small, centred scans is hard to beat, so the layers are compared with each other and with their random "
           "copy rather than with the pixels." if r.accuracy[best] <= r.pixels else
           f"the best layer ({best}, {r.accuracy[best]:.1%}) still beats it."))


def _hardest(model, data: ImageSet) -> int:
    """The held-out image with the smallest margin of its true logit over the best other one."""
    with evaluating(model), torch.no_grad():
        logits = model(data.images)
    true = logits.gather(1, data.labels[:, None])[:, 0]
    other = logits.scatter(1, data.labels[:, None], float("-inf")).amax(1)
    return int((true - other).argmin())


@experiment("influence-training-images", "Influence functions: the training images behind one prediction",
            decks=("csc413", "diy"),
            lecture="CSC413 ('Influence Functions'): upweighting a training point by eps moves the optimum by "
                    "-H^-1 grad L(z) eps; removing it is eps = -1/N, so its effect is computed 'without re-running "
                    "the entire optimization'. DIY ('Understanding influence'): Koh & Liang's I_up,loss(z, z_test) = "
                    "-grad L(z_test)^T H^-1 grad L(z), the influence of a training image on a test decision.",
            order=95)
def training_images(lab: Lab) -> Markup:
    from ...influence import Problem, influence
    from ...influence.plots import influence_plot
    from ...influence.problem import head_layer
    from ...influence.retrain import loo_change

    model = lab.model("shapes")
    n, k = (120, 3) if lab.quick else (2000, 5)
    train = lab.shapes(n=n, seed=0)            # the built-in model's own training images (its training seed)
    held = lab.shapes(n=64)
    q = _hardest(model, held)
    query, label = held.images[q:q + 1], held.labels[q:q + 1]
    head = head_layer(model, query)
    with evaluating(model):
        problem = Problem(model, head)
        feats, q_feats = problem.prepare(train.images), problem.prepare(query)
    with torch.no_grad():
        predicted = int(problem.model(q_feats).argmax(1))
    data, queries = (feats, train.labels), (q_feats, label)
    r = influence(problem.model, data, queries, method="exact", damping=DAMPING, progress=False, fragility=False)
    helpful, harmful = r.helpful(0, k).tolist(), r.harmful(0, k).tolist()
    actual = loo_change(problem.model, data, queries, helpful + harmful, damping=DAMPING)[:, 0].tolist()
    predicted_change = [float(r.scores[0, i]) for i in helpful + harmful]
    names = held.classes
    fig = influence_plot(r, train, (query, label), q=0, k=6, predicted=predicted, classes=names,
                         actual=dict(enumerate(actual[:k])), actual_harmful=dict(enumerate(actual[k:])),
                         title=f"A held-out {names[int(label)]}, predicted {names[predicted]}: its most helpful and "
                               "harmful training images")
    same = sum(int(train.labels[i]) == int(label) for i in helpful)
    other = sum(int(train.labels[i]) != int(label) for i in harmful)
    sign = sum((p > 0) == (a > 0) for p, a in zip(predicted_change, actual))
    pearson = float(np.corrcoef(predicted_change, actual)[0, 1])
    caption = (f"Settings: the built-in shapes model; its head ({head}, {problem.n_params:,} parameters) on the "
               f"frozen features of {n} of its training images, exact Hessian with damping {DAMPING:g}; the query is "
               f"the held-out image (of 64) the model is least sure of (true logit minus the best other). Score: the "
               f"predicted change of the query's loss if the image were removed, (1/n) g_q^T (H + damping I)^-1 g_i "
               f"= -(1/n) I_up,loss in Koh & Liang's notation (the lecture's eps = -1/N); positive = helpful. Our run: "
               f"{same} of the {k} most helpful are {names[int(label)]}s, {other} of the {k} most harmful are other "
               f"classes. Retraining the head without each of those {2 * k} images (the same damped objective, to "
               f"convergence) changed the query's loss with the predicted sign {sign} times of {2 * k}, Pearson "
               f"{pearson:.3f} between predicted and actual ('actual' under the first images).")
    return figure(lab, figure_to_png(fig, dpi=100), "influence-training-images", caption) + paragraph(
        "The score needs one Hessian solve per query instead of one retraining per training image; on this convex "
        "head the retraining confirms it. On a whole deep network the Hessian is approximated (cg, LiSSA, Arnoldi, "
        "EK-FAC in underhood.influence) and the agreement is weaker, as Basu et al. (2021) found.")
