"""Report sections of the adversarial family: the three panels and their controls, the lecture's iteration
table and linear model, robustness curves of the standard and the adversarially trained model, a universal
perturbation and fooling images.

Settings are small by default so that the demo stays within its time budget; ``--full`` runs the
attacks at their usual sizes.
"""

from __future__ import annotations

import torch
from markupsafe import Markup

from ...core.device import model_device
from ...viz import figure_to_png
from ..base import Context, figure, paragraph, section, table

EPS = 8 / 255


def _device(ctx: Context) -> torch.device:
    return model_device(ctx.model)


def _names(ctx: Context) -> list[str]:
    return list(getattr(ctx.model, "classes", []) or [])


def _name(ctx: Context, k: int) -> str:
    names = _names(ctx)
    return names[k] if 0 <= k < len(names) else str(k)


def _held_out(ctx: Context, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = ctx.data.images[:n].to(_device(ctx)), ctx.data.labels[:n].to(_device(ctx))
    return x, y


def _budgeted(ctx: Context):
    """FGSM, PGD and noise at ``EPS`` on the report's images (cached: two sections use them)."""
    from ...adversarial import fgsm, noise, pgd

    if "adversarial" not in ctx.cache:
        full = bool(ctx.options.get("full"))
        x, y = _held_out(ctx, len(ctx.data) if full else 48)
        ctx.cache["adversarial"] = {
            "x": x, "y": y, "fgsm": fgsm(ctx.model, x, y, eps=EPS),
            "pgd": pgd(ctx.model, x, y, eps=EPS, steps=20, seed=ctx.seed),
            "noise": noise(ctx.model, x, y, eps=EPS, seed=ctx.seed)}
    return ctx.cache["adversarial"]


@section("adversarial-examples", "Adversarial examples: invisible changes that flip the decision", order=70)
def examples(ctx: Context) -> Markup:
    from ...adversarial import random_control
    from ...viz.adversarial import attack_figure

    full = bool(ctx.options.get("full"))
    runs = _budgeted(ctx)
    x, y, pgd_result = runs["x"], runs["y"], runs["pgd"]
    with torch.no_grad():
        clean = ctx.model(x).float()
    clean_acc = float((clean.argmax(1) == y).float().mean())
    shown = pgd_result.success.nonzero().squeeze(1)[:4].tolist() or list(range(min(4, len(x))))
    sub = _subset(pgd_result, shown)
    fig = attack_figure(x[shown], sub, classes=_names(ctx) or None, clean_probs=clean[shown].softmax(1),
                        title=f"PGD, 20 steps, L∞ ε = 8/255 on {ctx.spec}")
    body = figure(ctx, figure_to_png(fig, dpi=110), "adversarial-pgd",
                  "Left: a held-out image with its label and the model's probability for it. Middle: the PGD "
                  "perturbation (Madry et al. 2018), magnified around mid-grey so that it can be seen; every pixel "
                  "moves by at most 8 grey levels out of 255. Right: the sum, which looks the same to us and is "
                  "classified as another class, often with high confidence (red).", width="560px")
    rows = [["clean", "-", f"{clean_acc:.1%}", "-"]]
    for name, label in (("noise", "random signs (control)"), ("fgsm", "FGSM (one step)"),
                        ("pgd", "PGD (20 steps)")):
        r = runs[name]
        rows.append([label, "8/255", f"{r.accuracy:.1%}", f"{r.median_norm('l2'):.2f}" if r.success.any() else "-"])
    body += table(["inputs", "L∞ budget", "accuracy", "median L2 of successful perturbations"], rows,
                  numeric=(2, 3))
    n = 1000 if full else 200
    control = random_control(ctx.model, x[shown], sub.adversarial, n=n, seed=ctx.seed)
    body += paragraph(
        f"Accuracy on {len(x)} held-out images (true labels). Noise of the same L∞ size, random signs on every "
        f"pixel, leaves the accuracy at {runs['noise'].accuracy:.1%}: the size of the change is not what fools "
        f"the model, its direction is. The lecture's control makes the same point on the images above: "
        f"{n} random directions on the sphere of twice the adversarial L2 radius (clipped to the pixel range) "
        f"change the label in {control.share:.1%} of the draws"
        + (", never." if control.share == 0 else ".")
        + f" The random-sign noise lies at L2 {float(runs['noise'].norms['l2'].median()):.2f}, larger than "
          f"PGD's perturbations and harmless.")
    return body


def _subset(result, rows: list[int]):
    from ...adversarial.base import AttackResult

    pick = torch.tensor(rows, device=result.success.device, dtype=torch.long)
    return AttackResult(adversarial=result.adversarial[pick], perturbation=result.perturbation[pick],
                        success=result.success[pick], labels=result.labels[pick], predicted=result.predicted[pick],
                        confidence=result.confidence[pick], norms={k: v[pick] for k, v in result.norms.items()},
                        target=None if result.target is None else result.target[pick],
                        history=None if result.history is None else result.history[:, pick], info=result.info)


@section("adversarial-iterations", "How an image is pushed across the boundary, and why linear models fall",
         order=71)
def iterations(ctx: Context) -> Markup:
    from ...adversarial import gradient_ascent, linear_demo
    from ...viz.adversarial import linear_figure

    x, y = _held_out(ctx, 4)
    result = gradient_ascent(ctx.model, x, y, steps=15, optimizer="adam", lr=0.003)
    history = result.history.tolist()
    head = ["iteration"] + [f"image {i + 1} ({_name(ctx, int(c))})" for i, c in enumerate(y.tolist())]
    rows = [[k] + [_name(ctx, c) for c in row] for k, row in enumerate(history)]
    body = paragraph(
        "The EE-559 lecture's loop: an optimiser (here Adam, step 0.003) follows the gradient of the true class's "
        "cross-entropy with respect to the pixels, and we record the predicted class at every iteration. Row 0 "
        "is the clean image.")
    body += table(head, rows)
    flipped = [next((k for k, c in enumerate(col) if c != col[0]), None) for col in zip(*history)]
    linf = result.norms["linf"].tolist()
    body += paragraph("First iteration with another class: " + ", ".join(
        f"image {i + 1}: {'never' if k is None else k} (final L∞ {v * 255:.0f}/255)"
        for i, (k, v) in enumerate(zip(flipped, linf))) + ".")
    demo = linear_demo()
    body += figure(ctx, figure_to_png(linear_figure(demo), dpi=110), "adversarial-linear",
                   f"A logistic regression on {demo.image_shape[1]}×{demo.image_shape[2]} digits, {demo.classes[0]} "
                   f"against {demo.classes[1]} (held-out accuracy {demo.info['test_accuracy']:.1%}). The score "
                   f"w·x moves by up to ε‖w‖₁ = {demo.eps * float(demo.w.abs().sum()):.1f} for a step of ε = "
                   f"{demo.eps * 255:.0f}/255 per pixel along sign(w): small steps on many inputs add up "
                   f"(Goodfellow et al. 2015's linearity explanation). A confident {demo.classes[0]} "
                   f"(p({demo.classes[1]}) = {demo.prob:.3f}) becomes a {demo.classes[1]} "
                   f"(p = {demo.prob_adv:.3f}).", width="520px")
    return body


def _robust_model(ctx: Context):
    """The shipped adversarially trained model to compare with, when the report's model is a shapes one."""
    from ...models.loading import list_models, load_model

    meta = getattr(ctx.model, "meta", {}) or {}
    if meta.get("dataset") != "shapes" or "shapes-robust" not in list_models() or ctx.spec == "shapes-robust":
        return None
    return load_model("shapes-robust", device=_device(ctx))


@section("adversarial-robustness", "Robustness curves: accuracy against the attack budget", order=72)
def robustness(ctx: Context) -> Markup:
    from ...adversarial import robustness_curve
    from ...viz.adversarial import robustness_figure

    full = bool(ctx.options.get("full"))
    n, steps = (len(ctx.data), 20) if full else (32, 10)
    grid = [i / 255 for i in (0, 2, 4, 8, 12, 16)] if full else [i / 255 for i in (0, 2, 4, 8, 16)]
    data = (ctx.data.images[:n].to(_device(ctx)), ctx.data.labels[:n].to(_device(ctx)))
    models = {ctx.spec: ctx.model}
    robust = _robust_model(ctx)
    if robust is not None:
        models["shapes-robust (adversarially trained)"] = robust
    curves = {name: robustness_curve(m, data, "pgd", grid, steps=steps, seed=ctx.seed) for name, m in models.items()}
    chance = 1 / len(_names(ctx)) if _names(ctx) else None
    fig = robustness_figure(curves, title=f"PGD-{steps}, L∞, {n} held-out images", chance=chance)
    body = figure(ctx, figure_to_png(fig, dpi=110), "adversarial-robustness",
                  "Accuracy under a PGD attack of growing L∞ budget ε (in grey levels out of 255); ε = 0 is the "
                  "clean accuracy. A standard model collapses within a few grey levels"
                  + (". The adversarially trained model (underhood train --adversarial fgsm: fast FGSM with a "
                     "random start, Wong et al. 2020) gives up a little clean accuracy and holds on far longer; "
                     "it was trained at ε = 8/255." if robust is not None else "."), width="560px")
    head = ["model"] + [f"ε = {e * 255:.0f}/255" for e in grid]
    body += table(head, [[name] + [f"{a:.0%}" for a in c.accuracy.tolist()] for name, c in curves.items()],
                  numeric=tuple(range(1, len(grid) + 1)))
    if robust is not None:
        meta = robust.meta
        body += paragraph(f"shapes-robust's training run recorded clean accuracy {meta['test_accuracy']:.1%} and "
                          f"{meta['robust_accuracy']:.1%} under {meta['robust_eval']}.")
    return body


def _build_set(ctx: Context, n: int) -> torch.Tensor:
    """Images to build dataset-level attacks on, apart from the report's held-out images."""
    from ...data import digits, shapes

    dataset = (getattr(ctx.model, "meta", {}) or {}).get("dataset")
    size = tuple(ctx.data.images.shape[-2:])
    if dataset == "shapes" and size == (64, 64):
        return shapes(n, seed=1_000_003 + ctx.seed).images
    if dataset == "digits":
        return digits(split="train").images[:n]
    return ctx.data.images[len(ctx.data) // 2:]


@section("adversarial-universal", "One perturbation for every image: a universal adversarial perturbation",
         order=73)
def universal_section(ctx: Context) -> Markup:
    from ...adversarial import universal
    from ...viz.adversarial import universal_figure

    full = bool(ctx.options.get("full"))
    build = _build_set(ctx, 256 if full else 64).to(_device(ctx))
    held = ctx.data.images[:min(len(ctx.data), 64)].to(_device(ctx))
    eps = 24 / 255
    result = universal(ctx.model, build, eps=eps, passes=8, batch_size=16, method="sgd", held_out=held, seed=ctx.seed)
    r = result.result
    show = list(range(min(6, len(held))))
    fig = universal_figure(result.perturbation, held[show], r.labels[show].tolist(), r.predicted[show].tolist(),
                           classes=_names(ctx) or None, title=None)
    return figure(ctx, figure_to_png(fig, dpi=110), "adversarial-universal",
                  f"A single perturbation of L∞ size 24/255, built on {len(build)} images and added to held-out "
                  f"ones it never saw: it changes the model's decision on {result.held_out_fooling_rate:.0%} of "
                  f"{len(held)} held-out images ({result.fooling_rate:.0%} of those it was built on). Top row: the "
                  "images and the model's class; bottom row: the same images plus the perturbation (red: the "
                  "class changed). Built with the gradient variant of Shafahi et al. 2020 (sign steps on the mean "
                  "cross-entropy of mini-batches); the original DeepFool-based algorithm of Moosavi-Dezfooli et al. "
                  "2017 (universal(..., method='deepfool')) fools only a few percent of this model's images at this "
                  "size. Universal perturbations exist because the decision boundaries share a few directions.",
                  width="760px")


@section("adversarial-fooling", "Fooling images: made from nothing, classified with near certainty", order=74)
def fooling(ctx: Context) -> Markup:
    from ...adversarial import fooling_images
    from ...viz.adversarial import fooling_figure

    full = bool(ctx.options.get("full"))
    names = _names(ctx)
    classes = list(range(min(len(names) or 8, 10)))
    gradient = fooling_images(ctx.model, classes, method="gradient", seed=ctx.seed)
    body = figure(ctx, figure_to_png(fooling_figure(gradient, classes=names or None,
                                                    ncols=min(len(classes), 10)), dpi=110),
                  "adversarial-fooling-gradient",
                  f"Gradient variant (as in Nguyen et al. 2015): from uniform noise, gradient ascent on "
                  f"the log-probability of each class, pixels kept in [0, 1]. {int(gradient.success.sum())} of "
                  f"{len(classes)} images reach p ≥ 0.99 (red titles); none of them looks like its class to us.",
                  width="760px")
    if full:
        evolved = fooling_images(ctx.model, classes, method="evolution", seed=ctx.seed)
        body += figure(ctx, figure_to_png(fooling_figure(evolved, classes=names or None,
                                                         ncols=min(len(classes), 10)), dpi=110),
                       "adversarial-fooling-evolution",
                       f"Evolutionary variant (black box: the model's probabilities only; direct pixel encoding, "
                       f"one elite per class as in MAP-Elites): {int(evolved.success.sum())} of {len(classes)} "
                       f"reach p ≥ 0.99.", width="760px")
    return body
