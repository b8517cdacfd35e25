"""Report sections of the influence family: which training images helped and hurt two predictions (with the
loss change measured by retraining), the mislabel finder, and the estimators against leave-one-out retraining.

The convention everywhere: a score is the predicted change of the query's loss if that training image were
removed; positive = helpful. Sizes are small by default to fit the demo's time budget (one feature pass of
the training images, shared through ``ctx.cache``); ``--full`` uses larger ones.
"""

from __future__ import annotations

from typing import Any

import torch
from markupsafe import Markup

from ...core.device import model_device
from ...core.hooks import evaluating
from ...viz import figure_to_png
from ..base import Context, figure, paragraph, section, table

DAMPING = 0.01   # the head's damping in the helpful / harmful section (its retraining uses the same)
RETRAIN = 3      # helpful images per query whose removal is measured by retraining
N_TRAIN = {False: 300, True: 2000}      # training images of the helpful / harmful section (demo, --full)
N_MISLABEL = {False: 300, True: 1500}   # the mislabel finder's training set
N_CONVEX = {False: 300, True: 800}      # the convex leave-one-out's training set
CONVENTION = ("Score: the predicted change of the query's loss if that training image were removed from training, "
              "(1/n) g_q^T (H + damping I)^-1 g_i (Koh & Liang 2017); positive = the image helped the prediction.")


def _full(ctx: Context) -> bool:
    return bool(ctx.options.get("full"))


def _figure(ctx: Context, fig, name: str, caption: str) -> Markup:
    png = figure_to_png(fig, dpi=110)
    return figure(ctx, png, name, caption, width=f"{min(1000, int.from_bytes(png[16:20], 'big'))}px")


def _names(ctx: Context) -> list[str]:
    return list(getattr(ctx.model, "classes", []) or [])


def _training_images(ctx: Context, n: int):
    """The model's own training images: built-in shapes from the training seed 0 (what the built-in shapes models
    train on first) or the digits' training split; ``None`` for a model trained on something else."""
    from ...data import digits, shapes
    from ...data.shapes import CLASSES

    meta = getattr(ctx.model, "meta", {}) or {}
    size = getattr(ctx.model, "input_size", None)
    if meta.get("dataset") == "digits":
        data = digits(split="train")
        return data[:n]
    if _names(ctx) == CLASSES and size is not None and size[0] == 3:
        return shapes(n, seed=0, size=size[-1])
    return None


def _shared(ctx: Context) -> dict[str, Any] | None:
    """The training images, the head and its input features (one pass of the network, shared by the sections)."""
    if "influence" in ctx.cache:
        return ctx.cache["influence"]
    from ...influence.problem import head_layer

    head = head_layer(ctx.model, ctx.data.images[:1].to(model_device(ctx.model)))
    train = _training_images(ctx, N_TRAIN[_full(ctx)]) if head else None
    if train is None:
        ctx.cache["influence"] = None
        return None
    from ...influence import Problem

    device = model_device(ctx.model)
    with evaluating(ctx.model):
        problem = Problem(ctx.model, head)
        feats = problem.prepare(train.images.to(device))
    ctx.cache["influence"] = {"train": train, "head": head, "problem": problem,
                              "features": feats if problem.head else None}
    return ctx.cache["influence"]


def _queries(ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two held-out images: the first the model gets right and, when there is one among the first 64, the first it
    gets wrong (else the next of another class); their labels and predictions."""
    device = model_device(ctx.model)
    x, y = ctx.data.images[:64].to(device), ctx.data.labels[:64].to(device)
    with evaluating(ctx.model), torch.no_grad():
        pred = ctx.model(x).argmax(1)
    right = (pred == y).nonzero().flatten().tolist() or [0]
    wrong = (pred != y).nonzero().flatten().tolist()
    first = right[0]
    second = wrong[0] if wrong else next((i for i in right if int(y[i]) != int(y[first])), min(1, len(y) - 1))
    pick = [first, second]
    return x[pick], y[pick], pred[pick]


def _sign_text(pred: list[float], actual: list[float]) -> str:
    same = sum((p > 0) == (a > 0) for p, a in zip(pred, actual))
    ratio = sum(a / p for p, a in zip(pred, actual) if p != 0) / max(1, sum(p != 0 for p in pred))
    return f"same sign in {same} of {len(pred)}, actual / predicted {ratio:.2f} on average"


@section("influence-examples", "Influence: helpful and harmful training images", order=80)
def examples(ctx: Context) -> Markup | None:
    from ...influence import influence
    from ...influence.plots import influence_plot
    from ...influence.retrain import loo_change

    shared = _shared(ctx)
    if shared is None:
        return None
    train, head, problem = shared["train"], shared["head"], shared["problem"]
    images, labels, predicted = _queries(ctx)
    if shared["features"] is not None:   # the head alone on the shared features: the same numbers, one pass
        with evaluating(ctx.model):
            q_feats = problem.prepare(images)
        model, data, queries, params = problem.model, (shared["features"], train.labels), (q_feats, labels), None
    else:
        model, data, queries, params = ctx.model, train, (images, labels), head
    result = influence(model, data, queries, method="exact", params=params, damping=DAMPING, progress=False)
    tops = [result.helpful(q, RETRAIN).tolist() for q in range(2)]
    drop = sorted({i for top in tops for i in top})
    change = loo_change(model, data, queries, drop, params=params, damping=DAMPING)
    names = _names(ctx) or list(train.classes)
    body = Markup("")
    for q in range(2):
        actual = {p: float(change[drop.index(i), q]) for p, i in enumerate(tops[q])}
        label, pred = names[int(labels[q])], names[int(predicted[q])]
        fig = influence_plot(result, train, (images.cpu(), labels.cpu()), q=q, k=8, actual=actual,
                             predicted=int(predicted[q]), classes=names,
                             title=f"Held-out {label}, predicted {pred}: which training images made this prediction")
        helpful, harmful = result.helpful(q, 8).tolist(), result.harmful(q, 8).tolist()
        same_h = sum(int(result.train_labels[i]) == int(labels[q]) for i in helpful)
        same_b = sum(int(result.train_labels[i]) == int(labels[q]) for i in harmful)
        p = [float(result.scores[q, i]) for i in tops[q]]
        a = [actual[k] for k in range(len(tops[q]))]
        caption = (f"{'A correctly classified' if label == pred else 'A misclassified'} held-out {label} "
                   f"(predicted {pred}) and the training images with the largest scores either way. {CONVENTION} "
                   f"{same_h} of the 8 most helpful share its class, {same_b} of the 8 most harmful do. Retraining "
                   f"the head without each of the top {len(p)} (warm-started, the same damping {DAMPING:g}) changed "
                   f"the query's loss by {', '.join(f'{v:+.2e}' for v in a)} against predicted "
                   f"{', '.join(f'{v:+.2e}' for v in p)}: {_sign_text(p, a)}.")
        body += _figure(ctx, fig, f"influence-query-{q}", caption)
    frag = result.fragility
    body += paragraph(
        f"Exact influence over the head ({', '.join(result.params)}, {problem.n_params:,} parameters) on "
        f"{result.n_train} training images; the rest of the network is fixed. Fragility (Basu et al. 2021): the "
        f"top-10 helpful images stay {frag.get('overlap_0.1x', float('nan')):.0%} the same at a tenth of the damping "
        f"and {frag.get('overlap_10x', float('nan')):.0%} at ten times it. The actual change is measured on the "
        "same objective the score linearises (mean loss plus the damping as a pull towards the trained weights); "
        "where the head is not at that objective's optimum, or the loss is far from quadratic over the step, the "
        "two differ.")
    return body


def _validation_model(ctx: Context):
    """The report's model when it is a shapes classifier with a ``pool`` layer (the validation's features), else
    the built-in shapes model."""
    from ...core.names import named_layers
    from ...data.shapes import CLASSES

    if _names(ctx) == CLASSES and "pool" in named_layers(ctx.model):
        return ctx.model, "this model"
    from ...models import load_model

    return load_model("shapes", device=model_device(ctx.model)), "the built-in shapes model"


@section("influence-mislabel", "Mislabel finder", order=81)
def mislabels(ctx: Context) -> Markup:
    from ...influence.mislabel import mislabel

    model, which = _validation_model(ctx)
    n = N_MISLABEL[_full(ctx)]
    r = mislabel(model, n_train=n, progress=False)
    found = {k: r.recall_at[k] for k in r.rankings}
    caption = (f"{r.share:.0%} of {n} shapes training labels flipped at random; a logistic head on {which}'s pooled "
               f"features is fitted to the flipped labels, and each ranking orders the images to inspect. "
               f"Self-influence (an image's score on its own loss: how much its fit relies on itself) finds "
               f"{found['self_influence']:.0%} of the flipped labels in the first {r.fraction:.0%} inspected (ROC AUC "
               f"{r.auc['self_influence']:.3f}); the training loss finds {found['loss']:.0%} (ROC AUC "
               f"{r.auc['loss']:.3f}); random inspection {found['random']:.0%}. "
               + ("Both rankings find them equally well here." if r.auc["self_influence"] == r.auc["loss"] else
                  f"The better ranking here: {'self-influence' if r.winner == 'self_influence' else 'the loss'}."))
    return _figure(ctx, r.figure(), "influence-mislabel", caption)


@section("influence-validation", "Validation against leave-one-out", order=82)
def validation(ctx: Context) -> Markup:
    from ...influence.validation import convex_loo

    model, which = _validation_model(ctx)
    full = _full(ctx)
    methods = ("exact", "cg", "lissa", "arnoldi", "ekfac") if full else ("exact", "cg")
    r = convex_loo(model, n_train=N_CONVEX[full], n_queries=4 if full else 2, n_extreme=20 if full else 10,
                   methods=methods, progress=False)
    n, m = r.info["n_train"], r.indices.shape[1]
    caption = (f"A convex model where leave-one-out is exact: a logistic regression with L2 strength {r.lam:g} on "
               f"{which}'s pooled features of {n} training images, refitted (warm-started, to a gradient norm of "
               f"1e-11) without each of the {m // 2} most helpful and {m // 2} most harmful images of "
               f"{len(r.actual)} held-out queries. x: the score (the predicted change of the query's loss if the "
               "image were removed; positive = helpful), y: the change measured by refitting. "
               + "; ".join(f"{k}: Pearson {r.pearson[k]:.3f}, Spearman {r.spearman[k]:.3f}" for k in r.pearson)
               + ".")
    rows = [[k, f"{r.pearson[k]:.3f}", f"{r.spearman[k]:.3f}", f"{r.agreement[k]:.3f}"] for k in r.pearson]
    return _figure(ctx, r.figure(), "influence-validation", caption) + table(
        ["method", "Pearson vs refit", "Spearman vs refit", "Spearman with exact (all points)"], rows,
        numeric=(1, 2, 3), best={1: "max", 2: "max"})
