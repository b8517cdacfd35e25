"""Adversarial examples as the decks show them: EE-559's gradient ascent on the loss (its figure with relative
norms, its class-per-iteration table, its random-direction control), Szegedy et al.'s box-constrained L-BFGS,
FGSM against PGD and noise, targeted attacks, fooling images, the one-pixel attack, universal perturbations,
adversarial patches, transfer to other networks and adversarial training; all on the built-in models."""

from __future__ import annotations

import torch
from markupsafe import Markup

from ...adversarial import (
    deepfool,
    fgsm,
    fooling_images,
    gradient_ascent,
    lbfgs,
    one_pixel,
    patch,
    pgd,
    random_control,
    robustness_curve,
    transfer_matrix,
    universal,
)
from ...adversarial.base import AttackResult
from ...viz.adversarial import attack_figure, fooling_figure, robustness_figure, universal_figure
from ...viz.adversarial_linear import flip_grid_figure
from ..base import paragraph, table
from .base import Lab, experiment, pick, show

EPS = 8 / 255  # the usual L-inf budget (Madry et al.), 8 grey levels out of 255
WIDEST = 900  # px: figures are shown at their own pixel width up to this, so their 8-pt text stays 12 px


def _rows(result: AttackResult, rows: list[int]) -> AttackResult:
    """The samples ``rows`` of an attack's result (history columns too)."""
    index = torch.tensor(rows, dtype=torch.long, device=result.success.device)
    return AttackResult(adversarial=result.adversarial[index], perturbation=result.perturbation[index],
                        success=result.success[index], labels=result.labels[index], predicted=result.predicted[index],
                        confidence=result.confidence[index], norms={k: v[index] for k, v in result.norms.items()},
                        target=None if result.target is None else result.target[index],
                        history=None if result.history is None else result.history[:, index], info=result.info)


def _attack_figure(model, x: torch.Tensor, result: AttackResult, rows: list[int], title: str, **options):
    """``attack_figure`` of the images ``rows`` of ``x``: each clean (with its probabilities), the perturbation and
    the adversarial image ``result`` made of it."""
    with torch.no_grad():
        clean = model(x[rows]).softmax(1)
    return attack_figure(x[rows], _rows(result, rows), classes=model.classes, clean_probs=clean, title=title,
                         **options)


def _pct(values: torch.Tensor) -> str:
    return ", ".join(f"{float(v):.2%}" for v in values)


def _span(values: torch.Tensor, fmt: str = "{:.2f}") -> str:
    lo, hi = fmt.format(float(values.min())), fmt.format(float(values.max()))
    return lo if lo == hi else f"{lo} to {hi}"


# ---------------------------------------------------------------------------- EE-559: gradient ascent on the loss


def _lecture_run(lab: Lab):
    """EE-559's gradient ascent (``preset="lecture"``) on held-out shapes, once per lab: images, labels, result."""
    key = "adversarial:ee559"
    if key not in lab.cache:
        model = lab.model("shapes")
        data = lab.shapes(16)
        n = 4 if lab.quick else 16
        x, y = data.images[:n], data.labels[:n]
        lab.cache[key] = (x, y, gradient_ascent(model, x, y, preset="lecture", seed=lab.seed))
    return lab.cache[key]


def _shown(result: AttackResult, most: int) -> list[int]:
    """The images the figures show: those the attack flipped first (the lecture shows two that flipped)."""
    flipped = result.success.nonzero()[:, 0].tolist()
    rest = [i for i in range(len(result)) if i not in flipped]
    return (flipped + rest)[:most]


@experiment("ee559-gradient-ascent", "Gradient ascent on the loss: original, adversarial, difference",
            decks=("ee559",),
            lecture="EE-559 slides 78-80/89: x_{k+1} = x_k + eta grad_x L(f(x_k), y) with the cross-entropy, in the "
                    "lecture's code optim.SGD with lr = 0.1 for 15 iterations on AlexNet; two images shown as "
                    "original, adversarial and magnified difference, with the relative norms ||x - x̌|| / ||x|| of "
                    "1.02% and 0.27%: 'indistinguishable from the original ones to a human eye'.",
            order=83)
def ee559_gradient_ascent(lab: Lab) -> Markup:
    model = lab.model("shapes")
    x, y, r = _lecture_run(lab)
    rows = _shown(r, 2 if lab.quick else 4)
    sub = _rows(r, rows)
    with torch.no_grad():
        clean = model(x[rows]).softmax(1)
    fig = attack_figure(x[rows], sub, classes=model.classes, clean_probs=clean,
                        title="EE-559's gradient ascent: SGD, lr = 0.1, 15 iterations")
    rel, ok = r.relative_norm, r.success
    caption = (f"The lecture's settings (gradient_ascent(..., preset='lecture'): SGD on -CE(f(x), y), lr = 0.1, 15 "
               f"iterations, no budget; pixels kept in [0, 1], which the lecture's normalised inputs did not need) on "
               f"{len(x)} held-out shapes images with the built-in shapes model. {int(ok.sum())} of {len(x)} change "
               f"class. Middle column: the difference, magnified, with its L∞ and L2 norms and the lecture's relative "
               f"norm ||x - x̌|| / ||x||.")
    if ok.any():
        caption += (f" Relative norms of the flipped images: {_span(rel[ok], '{:.2%}')} (median "
                    f"{float(rel[ok].median()):.2%}; the lecture's AlexNet: 1.02% and 0.27%); L∞ "
                    f"{_span(r.norms['linf'][ok] * 255, '{:.0f}')}/255.")
    body = show(lab, fig, "ee559-gradient-ascent", caption, most=WIDEST)
    body += paragraph(
        "Why some images need large steps here: the cross-entropy's gradient is (1 - p_y) times the logits' "
        f"gradient, tiny on a confident model (clean p_y {_span(clean.max(1).values)} on the images shown), so "
        "plain SGD with a fixed rate idles for several iterations and then leaps across the boundary, overshooting. "
        "The lecture's AlexNet on ImageNet is far less confident and has many more classes nearby.")
    return body


@experiment("ee559-predicted-classes", "The predicted class at every iteration",
            decks=("ee559",),
            lecture="EE-559 slide 81/89, 'Predicted classes': for two images, the class AlexNet predicts after each "
                    "of the 15 iterations of gradient ascent (Weimaraner, Labrador retriever, brush kangaroo, "
                    "sundial; desktop computer, then desk).",
            order=84)
def ee559_predicted_classes(lab: Lab) -> Markup:
    model = lab.model("shapes")
    x, y, r = _lecture_run(lab)
    rows = _shown(r, 2 if lab.quick else 4)
    head, body_rows = _rows(r, rows).history_table(classes=model.classes)
    head = ["iteration"] + [f"image #{i + 1} ({model.classes[int(y[j])]})" for i, j in enumerate(rows)]
    body = table(head, body_rows, numeric=(0,))
    hist = r.history
    first = [next((k for k, c in enumerate(col) if c != col[0]), None) for col in hist.T.tolist()]
    changes = [sum(a != b for a, b in zip(col, col[1:])) for col in hist.T.tolist()]
    flipped = [k for k in first if k is not None]
    text = (f"Row 0 is the clean image; row k the class after k SGD steps (lr = 0.1), read from AttackResult.history "
            f"(the logits of each iterate). Over all {len(x)} images attacked: {len(flipped)} leave their class, ")
    if flipped:
        text += (f"first at iteration {min(flipped)} to {max(flipped)} (median "
                 f"{sorted(flipped)[len(flipped) // 2]}); ")
    text += (f"{sum(c > 1 for c in changes)} pass through more than one other class on the way, as the lecture's "
             "Weimaraner does.")
    return body + paragraph(text)


@experiment("ee559-random-control", "Random directions at twice the adversarial distance",
            decks=("ee559",),
            lecture="EE-559 slide 82/89: 'if we sample 1,000 images on the sphere centered on x of radius "
                    "2||x - x̌||, we do not observe any change of label': adversarial directions are special, "
                    "not merely large.",
            order=85)
def ee559_random_control(lab: Lab) -> Markup:
    model = lab.model("shapes")
    x, y, r = _lecture_run(lab)
    draws = 64 if lab.quick else 1000
    rows = r.success.nonzero()[:, 0].tolist()[:2 if lab.quick else 8] or [0]
    xs = x[rows]
    minimal = deepfool(model, xs, y[rows])
    runs = {"gradient ascent (lecture)": r.adversarial[rows], "DeepFool (minimal L2)": minimal.adversarial}
    table_rows, shares = [], {}
    for name, adv in runs.items():
        c = random_control(model, xs, adv, n=draws, factor=2.0, seed=lab.seed, clip=False, batch_size=256)
        shares[name] = c
        for i, j in enumerate(rows):
            table_rows.append([f"#{j + 1} ({model.classes[int(y[j])]})", name,
                               f"{float((adv[i] - xs[i]).norm()):.2f}", f"{float(c.radius[i]):.2f}",
                               f"{int(c.counts[i])} / {draws}"])
    body = table(["image", "adversarial from", "||x - x̌||", "sphere radius 2||x - x̌||", "draws that change the label"],
                 table_rows, numeric=(2, 3, 4))
    ga, df = shares["gradient ascent (lecture)"], shares["DeepFool (minimal L2)"]
    body += paragraph(
        f"random_control(model, x, x_adv, n={draws}, factor=2.0, clip=False): for each image, {draws} points x + 2"
        f"||x - x̌|| u with u uniform on the unit L2 sphere (seeded; not clipped to the pixel box, so every point "
        f"lies exactly on the lecture's sphere). At twice the distance of the minimal perturbation DeepFool finds, "
        f"{int(df.counts.sum())} of {draws * len(rows)} draws change the label; at twice the distance of the "
        f"lecture's gradient ascent, which overshoots on this model, {int(ga.counts.sum())} of {draws * len(rows)} "
        "do.")
    if int(df.counts.sum()) == 0:
        body += paragraph("As in the lecture, no random direction at twice the minimal adversarial distance changes "
                          "the label: the adversarial direction is special, not merely long.")
    if int(ga.counts.sum()) > 0:
        body += paragraph("Where plain SGD overshot far past the boundary, twice that distance is large in every "
                          "direction, and random points leave the class too: the control speaks about small "
                          "perturbations, as the lecture's were (0.27% and 1.02% of ||x||).")
    return body


# ---------------------------------------------------------------------------- the attacks of the other decks


@experiment("adversarial-szegedy", "Szegedy et al.: the smallest perturbation that makes every image one class",
            decks=("map583", "csc413", "diy", "cmp784"),
            lecture="MAP583 'Adversarial attacks' (and the first adversarial slide of CSC413, DIY and CMP784): "
                    "min ||r||_2 s.t. f(x + r) = y', x + r in [0, 1]^p, solved by box-constrained L-BFGS; "
                    "original images, noise r and modified images, 'all classified as Ostrich' (Szegedy et al. "
                    "2014).",
            order=86)
def szegedy(lab: Lab) -> Markup:
    model = lab.model("shapes")
    data = lab.shapes(16)
    target = model.classes.index("star")
    keep = pick(data.labels, 3 if lab.quick else 8, besides=target)
    x, y = data.images[keep], data.labels[keep]
    opts = {"search_steps": 3, "steps": 20} if lab.quick else {"search_steps": 6, "steps": 50}
    r = lbfgs(model, x, y, target=target, seed=lab.seed, **opts)
    fig = _attack_figure(model, x, r, list(range(min(3, len(x)))), "Box-constrained L-BFGS, every image to 'star'")
    caption = (f"lbfgs(model, x, target='star', search_steps={opts['search_steps']}, steps={opts['steps']}): "
               f"minimises c ||r||_2 + CE(f(x + r), star) in the pixel box, searching the largest c that still "
               f"succeeds, on {len(x)} held-out shapes images of other classes. {int(r.success.sum())} of {len(x)} "
               f"become a 'star'; L2 norms {_span(r.norms['l2'][r.success]) if r.success.any() else '-'}, relative "
               f"norms {_span(r.relative_norm[r.success], '{:.2%}') if r.success.any() else '-'}.")
    return show(lab, fig, "adversarial-szegedy", caption, most=WIDEST)


@experiment("adversarial-fgsm", "FGSM: one step along the sign of the gradient, against PGD and noise",
            decks=("map583", "cmp784", "csc413"),
            lecture="MAP583: 'even simpler, take a step along the direction of the sign of the gradient at each "
                    "pixel: r = eps sign(grad_x l(y', f(x)))'; the panda classified as a gibbon (Goodfellow et al. "
                    "2015). CSC413's demo: an attack that lowers the probability of the correct class.",
            order=87)
def fgsm_experiment(lab: Lab) -> Markup:
    model = lab.model("shapes")
    data = lab.shapes(16 if lab.quick else 64)
    x, y = data.images, data.labels
    r = fgsm(model, x, y, eps=EPS, seed=lab.seed)
    body = show(lab, _attack_figure(model, x, r, _shown(r, 3), "FGSM, ε = 8/255"), "adversarial-fgsm",
                f"fgsm(model, x, y, eps=8/255): x + ε sign(grad_x CE(f(x), y)), one gradient, every pixel moved by "
                f"exactly 8 grey levels (L∞ = ε); on {len(x)} held-out shapes images it leaves {r.accuracy:.0%} "
                f"correct (relative norm {float(r.relative_norm.median()):.2%} median).", most=WIDEST)
    grid = [e / 255 for e in (0, 2, 4, 8, 16)]
    steps = 5 if lab.quick else 20
    curves = {"noise (random signs)": robustness_curve(model, (x, y), "noise", grid, seed=lab.seed, batch_size=64),
              "FGSM": robustness_curve(model, (x, y), "fgsm", grid, seed=lab.seed, batch_size=64),
              f"PGD-{steps}": robustness_curve(model, (x, y), "pgd", grid, steps=steps, seed=lab.seed,
                                               batch_size=64)}
    fig = robustness_figure(curves, title=f"shapes model, {len(x)} held-out images, L∞", chance=1 / 8)
    acc = {k: c.accuracy.tolist() for k, c in curves.items()}
    at8 = grid.index(EPS)
    body += show(lab, fig, "adversarial-fgsm-curves",
                 f"Accuracy against the L∞ budget: noise of the same size (random signs, the control), FGSM (one "
                 f"step) and PGD ({steps} steps, Madry et al.). At ε = 8/255: noise "
                 f"{acc['noise (random signs)'][at8]:.0%}, "
                 f"FGSM {acc['FGSM'][at8]:.0%}, PGD {acc[f'PGD-{steps}'][at8]:.0%}."
                 + (" Noise of the same size barely matters, the gradient's direction does"
                    if acc['noise (random signs)'][at8] - acc['FGSM'][at8] >= 0.25 else "")
                 + ("; iterating finds what one linear step misses." if acc['FGSM'][at8] - acc[f'PGD-{steps}'][at8]
                    >= 0.1 else "."), most=WIDEST)
    return body


@experiment("adversarial-targeted", "Targeted attacks: one image pushed to every other class",
            decks=("csc413", "cmp784", "diy"),
            lecture="CSC413 'Targeted / non-targeted attack': maximise the probability of a chosen wrong class, or "
                    "minimise that of the correct one; CMP784: start from an image, pick a category, modify the "
                    "image by gradient ascent on its score, stop when fooled (elephant -> koala, schooner -> iPod, "
                    "with the 10x difference); DIY: minimise the response Phi(x + z) . h_target.",
            order=88)
def targeted(lab: Lab) -> Markup:
    model = lab.model("shapes")
    data = lab.shapes(16)
    with torch.no_grad():
        probs = model(data.images).softmax(1)
    i = int(probs.max(1).values.argmax())
    label = int(data.labels[i])
    others = [k for k in range(len(model.classes)) if k != label]
    x = data.images[i:i + 1]
    steps = 10 if lab.quick else 40
    r = pgd(model, x.expand(len(others), -1, -1, -1), label, target=others, eps=16 / 255, steps=steps,
            loss="margin", random_start=False, seed=lab.seed)
    untargeted = pgd(model, x, label, eps=16 / 255, steps=steps, loss="margin", random_start=False, seed=lab.seed)
    fig = flip_grid_figure(x[0], r, classes=model.classes, clean_prob=float(probs[i, label]), cell=1.55)
    caption = (f"pgd(model, x, target=k, eps=16/255, steps={steps}, loss='margin', random_start=False): gradient "
               f"ascent on the score of class k over the best other score, starting from the image itself, in the "
               f"L∞ ball of 16/255, one run per target, from the "
               f"held-out image the model is surest of ('{model.classes[label]}', p = {float(probs[i, label]):.3f}). "
               f"{int(r.success.sum())} of {len(others)} targets reached; L2 norms {_span(r.norms['l2'])}, relative "
               f"{_span(r.relative_norm, '{:.1%}')}. Bottom row: the perturbations at one shared magnification. The "
               f"untargeted attack (minimise the margin of the correct class) ends in "
               f"'{model.classes[int(untargeted.predicted[0])]}' with L2 {float(untargeted.norms['l2'][0]):.2f}.")
    return show(lab, fig, "adversarial-targeted", caption, most=WIDEST)


@experiment("adversarial-fooling-images", "Fooling images: noise classified with near certainty (Nguyen et al.)",
            decks=("ee559", "map583", "cmp784"),
            lecture="EE-559 slide 83/89 and MAP583 'Fooling neural networks': images optimised from scratch, with "
                    "a genetic algorithm or by gradient ascent, that the network classifies with > 99.6% confidence "
                    "but mean nothing to us (Nguyen, Yosinski & Clune 2015).",
            order=89)
def fooling(lab: Lab) -> Markup:
    model = lab.model("shapes")
    names = model.classes
    g = fooling_images(model, method="gradient", seed=lab.seed)
    body = show(lab, fooling_figure(g, classes=names, ncols=8, cell=1.1), "adversarial-fooling-gradient",
                f"fooling_images(model, method='gradient'): from uniform noise, L2-normalised gradient steps on "
                f"log p(class), pixels in [0, 1], until p ≥ 0.99. {int(g.success.sum())} of {len(g)} classes reach "
                f"it (lowest p {float(g.confidence.min()):.3f}) after {g.info.get('iterations', '?')} steps at "
                f"most.", most=WIDEST)
    if not lab.quick:
        e = fooling_images(model, method="evolution", seed=lab.seed)
        body += show(lab, fooling_figure(e, classes=names, ncols=8, cell=1.1), "adversarial-fooling-evolution",
                     f"fooling_images(model, method='evolution'): the paper's directly encoded evolutionary "
                     f"algorithm (MAP-Elites, black box: probabilities only), {e.info.get('steps')} generations at "
                     f"most: {int(e.success.sum())} of {len(e)} classes reach p ≥ 0.99 (lowest "
                     f"{float(e.confidence.min()):.3f}).", most=WIDEST)
    return body


@experiment("adversarial-one-pixel", "The one-pixel attack (Su et al.)",
            decks=("map583",),
            lecture="MAP583 'One pixel attacks': differential evolution changes one pixel of a 32x32 CIFAR image "
                    "and the class changes (Su, Vargas & Sakurai 2019).",
            order=90)
def one_pixel_experiment(lab: Lab) -> Markup:
    model = lab.model("shapes")
    data = lab.shapes(16)
    n = 1 if lab.quick else 4
    population, iterations = (40, 6) if lab.quick else (100, 20)
    x, y = data.images[:n], data.labels[:n]
    with torch.no_grad():
        p0 = model(x).softmax(1).gather(1, y[:, None])[:, 0]
    rows, best = [], None
    for pixels in (1, 3):
        r = one_pixel(model, x, y, pixels=pixels, population=population, iterations=iterations, seed=lab.seed,
                      batch_size=population)
        with torch.no_grad():
            p1 = model(r.adversarial).softmax(1).gather(1, y[:, None])[:, 0]
        rows.append([pixels, f"{int(r.success.sum())} / {n}", f"{float(p0.mean()):.3f}", f"{float(p1.mean()):.3f}",
                     f"{float(r.info['queries'].float().mean()):.0f}"])
        if best is None or int(r.success.sum()) > int(best.success.sum()):
            best = r
    fig = _attack_figure(model, x, best, _shown(best, 2), f"{best.info['pixels']} pixel(s) changed")
    caption = (f"one_pixel(model, x, pixels=k, population={population}, iterations={iterations}): DE/rand/1 over "
               f"(row, column, colour) tuples, black box (probabilities only), on {n} held-out 64x64 shapes images. "
               f"Shown: the setting that fooled most ({best.info['pixels']} pixel(s)); the paper used population "
               "400 and 100 generations on 32x32 CIFAR images.")
    return show(lab, fig, "adversarial-one-pixel", caption,
                table(["pixels", "images fooled", "mean p(label) before", "after", "queries per image"], rows,
                      numeric=(0, 2, 3, 4)), most=WIDEST)


@experiment("adversarial-universal", "One perturbation for every image (Moosavi-Dezfooli et al.)",
            decks=("map583",),
            lecture="MAP583 'Universal adversarial perturbations': a single image-agnostic perturbation that fools "
                    "a network on most natural images (Moosavi-Dezfooli, Fawzi, Fawzi & Frossard 2017).",
            order=91)
def universal_experiment(lab: Lab) -> Markup:
    model = lab.model("shapes")
    build = lab.shapes(32 if lab.quick else 256, seed=1_000_003 + lab.seed).images
    held = lab.shapes(16 if lab.quick else 64)
    eps, passes = 24 / 255, (3 if lab.quick else 8)
    u = universal(model, build, eps=eps, passes=passes, batch_size=16, method="sgd", step_size=eps / 3,
                  held_out=held.images, seed=lab.seed)
    shown = list(range(6))
    r = u.result
    fig = universal_figure(u.perturbation, held.images[shown], r.labels[shown].tolist(), r.predicted[shown].tolist(),
                           classes=model.classes, cell=1.2)
    caption = (f"universal(model, build, eps=24/255, method='sgd', passes={passes}): one perturbation v with "
               f"||v||_∞ ≤ 24/255, built on {len(build)} images by sign steps on the mean cross-entropy of "
               f"mini-batches (Shafahi et al. 2020's variant; method='deepfool' is the paper's Algorithm 1). It "
               f"changes the class of "
               f"{u.fooling_rate:.0%} of the images it was built on and of {u.held_out_fooling_rate:.0%} of "
               f"{len(held)} held-out images it never saw (relative norm on them "
               f"{float(r.relative_norm.median()):.1%} median).")
    return show(lab, fig, "adversarial-universal", caption, most=WIDEST)


@experiment("adversarial-patch", "An adversarial patch (Brown et al.)",
            decks=("diy",),
            lecture="DIY 'Opening Pandora's box': 'there are a variety of adversarial examples, e.g. Adversarial "
                    "Patch (Brown et al.)', a sticker that turns any scene into a toaster.",
            order=92)
def patch_experiment(lab: Lab) -> Markup:
    model = lab.model("shapes")
    target = model.classes.index("cross")
    build = lab.shapes(64 if lab.quick else 256, seed=1_000_003 + lab.seed).images
    held = lab.shapes(16 if lab.quick else 64)
    steps = 20 if lab.quick else 100
    p = patch(model, build, target, steps=steps, held_out=held, seed=lab.seed)
    r = p.result
    fig = _attack_figure(model, held.images, r, pick(held.labels, 3, besides=target),
                         "adversarial patch, target 'cross'", relative=False)
    caption = (f"patch(model, images, target='cross', size=0.3, steps={steps}): a square patch (side 30% of the "
               f"image, 9% of its area) learnt by Adam on log p(cross) over random placements, scales 0.8-1.2 and "
               f"rotations, on {len(build)} images; pasted at a fresh random place on {p.info.get('evaluated')} "
               f"held-out images of other classes, it makes {p.success_rate:.0%} of them a 'cross'.")
    return show(lab, fig, "adversarial-patch", caption, most=WIDEST)


@experiment("adversarial-transfer", "Black box: adversarial examples transfer to other networks",
            decks=("csc413",),
            lecture="CSC413 'White-box vs black-box adversarial attacks': adversarial examples transfer to "
                    "different networks; without the weights, one can attack another network and use its examples.",
            order=93)
def transfer(lab: Lab) -> Markup:
    names = ("shapes", "shapes-resnet", "shapes-robust")
    models = {name: lab.model(name) for name in names}
    data = lab.shapes(16 if lab.quick else 64)
    steps = 5 if lab.quick else 10
    eps = 16 / 255

    def matrix(budget: float):
        return transfer_matrix(models, (data.images, data.labels), "pgd", eps=budget, steps=steps, seed=lab.seed,
                               batch_size=64)

    m = matrix(eps)
    f = m.fooling
    caption = (f"transfer_matrix(models, data, 'pgd', eps=16/255, steps={steps}) on {len(data)} held-out shapes "
               f"images: row i, column j is the share of the images model j classifies correctly that PGD examples "
               f"crafted on model i make it misclassify. shapes -> shapes-resnet {float(f[0, 1]):.0%}, shapes-resnet "
               f"-> shapes {float(f[1, 0]):.0%} (white-box on themselves: {float(f[0, 0]):.0%} and "
               f"{float(f[1, 1]):.0%}); examples crafted on the adversarially trained shapes-robust fool shapes in "
               f"{float(f[2, 0]):.0%} and shapes-resnet in {float(f[2, 1]):.0%} of the cases.")
    body = show(lab, m.figure(value="fooling", title=f"PGD-{steps}, ε = 16/255: fooling rate (%)"),
                "adversarial-transfer", caption, most=520)
    if not lab.quick:
        off = ~torch.eye(len(names), dtype=torch.bool)
        rows = []
        for e in (8, 16, 32):
            mm = m if e == 16 else matrix(e / 255)
            rows.append([f"{e}/255", f"{float(mm.fooling.diagonal().mean()):.0%}",
                         f"{float(mm.fooling[off].nanmean()):.0%}"])
        body += table(["ε (L∞)", "white-box fooling (mean of the diagonal)", "transferred (mean off the diagonal)"],
                      rows, numeric=(1, 2))
    return body


@experiment("adversarial-training", "Adversarial training: a defence that works, at a price",
            decks=("map583", "cmp784", "diy", "csc413"),
            lecture="CMP784 'Adversarial training' and 'Training on adversarial examples'; DIY 'Defense against the "
                    "dark arts': 'generate adversarial examples and train on them ... works well but is really "
                    "costly'; MAP583 and CSC413: most proposed defences fail against a white-box attack.",
            order=94)
def training(lab: Lab) -> Markup:
    data = lab.shapes(16 if lab.quick else 64)
    grid = [e / 255 for e in (0, 4, 8, 16)] if lab.quick else [e / 255 for e in (0, 2, 4, 8, 12, 16)]
    steps = 5 if lab.quick else 10
    robust = lab.model("shapes-robust")
    curves = {name: robustness_curve(lab.model(name), (data.images, data.labels), "pgd", grid, steps=steps,
                                     seed=lab.seed, batch_size=64) for name in ("shapes", "shapes-robust")}
    fig = robustness_figure(curves, title=f"PGD-{steps}, L∞, {len(data)} held-out images", chance=1 / 8)
    at = grid.index(EPS)
    a, b = curves["shapes"].accuracy, curves["shapes-robust"].accuracy
    meta = getattr(robust, "meta", {}) or {}
    caption = (f"Accuracy under PGD ({steps} steps) against the L∞ budget. shapes: standard training; shapes-robust: "
               f"the same network trained on fast-FGSM examples (underhood train --adversarial fgsm, Wong et al. "
               f"2020, ε = 8/255). At ε = 8/255: {float(a[at]):.0%} against {float(b[at]):.0%}; clean "
               f"{float(a[0]):.0%} and {float(b[0]):.0%}; at 16/255: {float(a[-1]):.0%} and {float(b[-1]):.0%}.")
    if "robust_accuracy" in meta:
        caption += (f" Its training run recorded {meta['robust_accuracy']:.1%} under {meta.get('robust_eval')}.")
    return show(lab, fig, "adversarial-training", caption, most=WIDEST)

