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


def _shown(png: bytes, most: int = 1000) -> str:
    """The CSS width to show a PNG at: its own width in pixels (read from its header), so that its text keeps
    the size it was drawn at (8 pt at 110 dpi: 12 px), and at most ``most``."""
    return f"{min(most, int.from_bytes(png[16:20], 'big'))}px"


def _figure(ctx: Context, fig, name: str, caption: str) -> Markup:
    png = figure_to_png(fig, dpi=110)
    return figure(ctx, png, name, caption, width=_shown(png))


def _n(ctx: Context) -> int:
    """Held-out images of the budgeted attacks and the robustness curve: 32 (a curve point per 3%), all with
    ``--full``."""
    return len(ctx.data) if ctx.options.get("full") else min(32, len(ctx.data))


def _budgeted(ctx: Context):
    """FGSM, PGD and noise at ``EPS`` on the report's images (cached: two sections use them)."""
    from ...adversarial import fgsm, noise, pgd

    if "adversarial" not in ctx.cache:
        x, y = _held_out(ctx, _n(ctx))
        ctx.cache["adversarial"] = {
            "x": x, "y": y, "fgsm": fgsm(ctx.model, x, y, eps=EPS),
            "pgd": pgd(ctx.model, x, y, eps=EPS, steps=20, seed=ctx.seed),
            "noise": noise(ctx.model, x, y, eps=EPS, seed=ctx.seed)}
    return ctx.cache["adversarial"]


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f} to {hi:.2f}"


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
    fooled = sub.success.tolist()
    conf = [c for c, ok in zip(sub.confidence.tolist(), fooled) if ok]
    right = (f"Right: the sum, which looks the same to us; the model now answers another class (red title: the "
             f"decision changed), with p = {_span(conf)} for it." if all(fooled) else
             f"Right: the sum, which looks the same to us; red titles mark a changed decision ({sum(fooled)} of "
             f"{len(fooled)} here), green the ones the attack did not change.")
    body = _figure(ctx, fig, "adversarial-pgd",
                   "Left: a held-out image with its label and the model's probability for it. Middle: the PGD "
                   "perturbation (Madry et al. 2018), magnified around mid-grey so that it can be seen; every "
                   "pixel moves by at most 8 grey levels out of 255. " + right)
    rows = [["clean", "-", f"{clean_acc:.1%}", "-"]]
    for name, label in (("noise", "random signs (control)"), ("fgsm", "FGSM (one step)"),
                        ("pgd", "PGD (20 steps)")):
        r = runs[name]
        rows.append([label, "8/255", f"{r.accuracy:.1%}", f"{r.median_norm('l2'):.2f}" if r.success.any() else "-"])
    body += table(["inputs", "L∞ budget", "accuracy", "median L2 of successful perturbations"], rows,
                  numeric=(2, 3))
    n = 1000 if full else 100
    control = random_control(ctx.model, x[shown], sub.adversarial, n=n, seed=ctx.seed, batch_size=256)
    return body + paragraph(_control_text(len(x), clean_acc, runs, control, n))


def _control_text(count: int, clean_acc: float, runs: dict, control, n: int) -> str:
    """The paragraph on the controls, every comparison read from the numbers."""
    noise_acc, pgd_acc = runs["noise"].accuracy, runs["pgd"].accuracy
    noise_l2 = float(runs["noise"].norms["l2"].median())
    pgd_l2 = runs["pgd"].median_norm("l2")
    text = (f"Accuracy on {count} held-out images (true labels). Noise of the same L∞ size, random signs on every "
            f"pixel, leaves the accuracy at {noise_acc:.1%} (clean: {clean_acc:.1%}; PGD: {pgd_acc:.1%})")
    text += (": the size of the change is not what fools the model, its direction is. "
             if clean_acc - noise_acc <= 0.05 and noise_acc - pgd_acc >= 0.25 else ". ")
    text += (f"The lecture's control makes the same point on the images above: {n} random directions on the sphere "
             f"of twice the adversarial L2 radius (clipped to the pixel range) change the label in "
             f"{control.share:.1%} of the draws" + (" (none of them)." if control.share == 0 else "."))
    if pgd_l2 == pgd_l2:  # not nan: some PGD perturbation succeeded
        text += (f" The random-sign noise has median L2 {noise_l2:.2f}, "
                 + ("larger than" if noise_l2 > pgd_l2 else "no larger than")
                 + f" the successful PGD perturbations' {pgd_l2:.2f}.")
    return text


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
        f"image {i + 1}: {f'none in {len(history) - 1}' if k is None else k} (final L∞ {v * 255:.0f}/255)"
        for i, (k, v) in enumerate(zip(flipped, linf))) + ".")
    demo = linear_demo()
    body += _figure(ctx, linear_figure(demo), "adversarial-linear",
                   f"A logistic regression on {demo.image_shape[1]}×{demo.image_shape[2]} digits, {demo.classes[0]} "
                   f"against {demo.classes[1]} (held-out accuracy {demo.info['test_accuracy']:.1%}). The score "
                   f"w·x moves by up to ε‖w‖₁ = {demo.eps * float(demo.w.abs().sum()):.1f} for a step of ε = "
                   f"{demo.eps * 255:.0f}/255 per pixel along sign(w): small steps on many inputs add up "
                   f"(Goodfellow et al. 2015's linearity explanation). A confident {demo.classes[0]} "
                   f"(p({demo.classes[1]}) = {demo.prob:.3f}) becomes a {demo.classes[1]} "
                   f"(p = {demo.prob_adv:.3f}).")
    return body


def _robust_model(ctx: Context):
    """The shipped adversarially trained model to compare with, when the report's model is a shapes one
    (loaded once per report)."""
    from ...models.loading import list_models, load_model

    if "robust-model" not in ctx.cache:
        meta = getattr(ctx.model, "meta", {}) or {}
        wanted = meta.get("dataset") == "shapes" and "shapes-robust" in list_models() and ctx.spec != "shapes-robust"
        ctx.cache["robust-model"] = load_model("shapes-robust", device=_device(ctx)) if wanted else None
    return ctx.cache["robust-model"]


def _level(e: float) -> str:
    return f"{e * 255:.0f}/255"


def _robustness_text(spec: str, curves: dict, grid: list[float], robust_name: str | None) -> str:
    """The caption's claims, read from the curves: where the report's model falls, and how the robust one
    compares at the budget it was trained for."""
    acc = curves[spec].accuracy.tolist()
    text = (f"Accuracy under a PGD attack of growing L∞ budget ε (in grey levels out of 255); ε = 0 is the clean "
            f"accuracy. {spec}: {acc[0]:.0%} clean, " + ", ".join(
                f"{a:.0%} at {_level(e)}" for e, a in zip(grid[1:], acc[1:])) + ".")
    if robust_name is not None:
        rob = curves[robust_name].accuracy.tolist()
        at = min(range(len(grid)), key=lambda i: abs(grid[i] - EPS))
        clean_gap = acc[0] - rob[0]
        text += (f" The adversarially trained model (underhood train --adversarial fgsm: fast FGSM with a random "
                 f"start, Wong et al. 2020, trained at ε = 8/255) has clean accuracy {rob[0]:.0%} "
                 + (f"({clean_gap:.0%} below) " if clean_gap > 0.005 else "")
                 + f"and keeps {rob[at]:.0%} at {_level(grid[at])}, against {acc[at]:.0%} for {spec}.")
    return text


@section("adversarial-robustness", "Robustness curves: accuracy against the attack budget", order=72)
def robustness(ctx: Context) -> Markup:
    from ...adversarial import robustness_curve
    from ...viz.adversarial import robustness_figure

    full = bool(ctx.options.get("full"))
    n, steps = _n(ctx), (20 if full else 7)
    grid = [i / 255 for i in (0, 2, 4, 8, 12, 16)] if full else [i / 255 for i in (0, 2, 4, 8, 16)]
    data = (ctx.data.images[:n].to(_device(ctx)), ctx.data.labels[:n].to(_device(ctx)))
    models = {ctx.spec: ctx.model}
    robust = _robust_model(ctx)
    robust_name = "shapes-robust (adversarially trained)" if robust is not None else None
    if robust is not None:
        models[robust_name] = robust
    curves = {name: robustness_curve(m, data, "pgd", grid, steps=steps, seed=ctx.seed, batch_size=n)
              for name, m in models.items()}
    chance = 1 / len(_names(ctx)) if _names(ctx) else None
    fig = robustness_figure(curves, title=f"PGD-{steps}, L∞, {n} held-out images", chance=chance)
    body = _figure(ctx, fig, "adversarial-robustness", _robustness_text(ctx.spec, curves, grid, robust_name))
    head = ["model"] + [f"ε = {_level(e)}" for e in grid]
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
    # 5 passes at a step of eps / 3 fool more of the shapes model's held-out images than 8 passes at eps / 4
    passes, step = (8, eps / 4) if full else (5, eps / 3)
    result = universal(ctx.model, build, eps=eps, passes=passes, batch_size=16, method="sgd", step_size=step,
                       held_out=held, seed=ctx.seed)
    r = result.result
    show = list(range(min(6, len(held))))
    fig = universal_figure(result.perturbation, held[show], r.labels[show].tolist(), r.predicted[show].tolist(),
                           classes=_names(ctx) or None, title=None, cell=1.2)
    changed = sum(int(a) != int(b) for a, b in zip(r.labels[show].tolist(), r.predicted[show].tolist()))
    caption = (f"A single perturbation of L∞ size 24/255, built on {len(build)} images and added to held-out ones "
               f"it never saw: it changes the model's decision on {result.held_out_fooling_rate:.0%} of {len(held)} "
               f"held-out images ({result.fooling_rate:.0%} of those it was built on). Top row: the images and the "
               f"model's class; bottom row: the same images plus the perturbation (red: the class changed, "
               f"{changed} of {len(show)} here; green: unchanged). Built with the gradient variant of Shafahi et "
               f"al. 2020 ({passes} passes of sign steps on the mean cross-entropy of mini-batches of 16). ")
    if full:  # the paper's algorithm, measured on the same images for the comparison
        paper = universal(ctx.model, build, eps=eps, passes=passes, batch_size=32, method="deepfool",
                          held_out=held, seed=ctx.seed)
        caption += (f"The original DeepFool-based algorithm of Moosavi-Dezfooli et al. 2017 (universal(..., "
                    f"method='deepfool')), run on the same images, changes {paper.held_out_fooling_rate:.0%} of "
                    "the held-out decisions. ")
    else:
        caption += ("The original algorithm of Moosavi-Dezfooli et al. 2017 adds per-image DeepFool steps instead "
                    "(universal(..., method='deepfool'); the report measures it with --full). ")
    caption += "Their explanation: the decision boundaries near the data share a few directions."
    return _figure(ctx, fig, "adversarial-universal", caption)


@section("adversarial-fooling", "Fooling images: made from nothing, classified with near certainty", order=74)
def fooling(ctx: Context) -> Markup:
    from ...adversarial import fooling_images
    from ...viz.adversarial import fooling_figure

    full = bool(ctx.options.get("full"))
    names = _names(ctx)
    classes = list(range(min(len(names) or 8, 10)))
    ncols = min(len(classes), 10)
    cell = min(1.35, 8.8 / ncols)
    gradient = fooling_images(ctx.model, classes, method="gradient", seed=ctx.seed)
    body = _figure(ctx, fooling_figure(gradient, classes=names or None, ncols=ncols, cell=cell),
                   "adversarial-fooling-gradient",
                   f"Gradient variant (as in Nguyen et al. 2015): from uniform noise, gradient ascent on the "
                   f"log-probability of each class, pixels kept in [0, 1]. Above each image, the class it was made "
                   f"for and the model's probability of it: {_reached(gradient, len(classes))}")
    if full:
        evolved = fooling_images(ctx.model, classes, method="evolution", seed=ctx.seed)
        body += _figure(ctx, fooling_figure(evolved, classes=names or None, ncols=ncols, cell=cell),
                        "adversarial-fooling-evolution",
                        f"Evolutionary variant (black box: the model's probabilities only; direct pixel encoding, "
                        f"one elite per class as in MAP-Elites): {_reached(evolved, len(classes))}")
    return body


def _reached(result, count: int) -> str:
    """How many fooling images reach the confidence, read from the result; the titles' colours explained."""
    reached = int(result.success.sum())
    if reached == count:
        return (f"all {count} reach p ≥ 0.99 (the lowest: {float(result.confidence.min()):.3f}). "
                "To us they are noise.")
    return (f"{reached} of {count} reach p ≥ 0.99 (dark titles; grey: below it, or another class wins). "
            "To us they are noise.")
