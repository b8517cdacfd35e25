"""Report sections of the attribution family: the maps, and the evidence of which to trust.

The two sections share their passes: the maps drawn in "attribution" are the first rows of the
evaluation in "attribution-trust" (the same images, classes and settings), and the shortcut
model's maps drawn there are those its shortcut columns score. Every sentence that makes a
claim about a method is chosen from the numbers it sits beside (:func:`_trust_text`,
:func:`_strip_text`, :func:`_shortcut_text`).
"""

from __future__ import annotations

import torch
from markupsafe import Markup, escape

from ...attribution.evaluate import COLUMNS, applicable_methods, cam_layer, evaluate, method_options, reference_models
from ...attribution.explain import explain
from ...attribution.metrics import completeness, mask_shares, model_randomization, similarities
from ...attribution.registry import REGISTRY, get
from ...core.device import model_device
from ...core.errors import ModelError
from ...viz import LABELS, attribution_figure, curves_figure, figure_to_png, strips_figure
from ...viz.attribution import CORRECT, GROUPS, WRONG
from ..base import Context, figure, paragraph, section, table

STRIP_METHODS = ("saliency", "guided_backprop", "integrated_gradients", "gradcam")
SHORTCUT_METHODS = ("saliency", "smoothgrad", "guided_backprop", "gradcam", "occlusion", "lime")
# the demo's settings where the fast preset is too slow for four models (``--full`` keeps the full preset)
LIGHTER = {"occlusion": {"stride": 8}, "lime": {"n_samples": 100}}
# column -> (table header, one sentence for the legend under the table)
HEADERS = {
    "pointing": ("map peaks on the object (share of images)",
                 "How often the map's strongest pixel falls on the object (the pointing game)."),
    "energy": ("map's mass on the object (share)",
               "The fraction of the map's positive mass that lies inside the object's mask."),
    "deletion": ("probability as top pixels are deleted (area)",
                 "Area under the class probability as the map's most important pixels are blacked out first: "
                 "a faithful map makes it fall fast (Petsiuk et al. 2018)."),
    "insertion": ("probability as top pixels are restored (area)",
                  "Area under the class probability as the map's most important pixels are put back into a "
                  "blurred copy first: a faithful map makes it rise fast."),
    "model_rand": ("unchanged when weights are randomised (rank corr.)",
                   "Rank correlation between the map of the trained model and of a copy with every layer "
                   "re-initialised (Adebayo et al. 2018): a map that does not change does not explain the model."),
    "model_ssim": ("unchanged when weights are randomised (SSIM)",
                   "The same comparison as structural similarity of the two maps."),
    "data_rand": ("unchanged when trained on random labels (rank corr.)",
                  "Rank correlation with the map of a copy trained on permuted labels, which memorised instead of "
                  "learning."),
    "data_ssim": ("unchanged when trained on random labels (SSIM)",
                  "The same comparison as structural similarity."),
    "marker": ("shortcut model: mass on the marker",
               "On a model trained with a small class-coloured square, which it alone decides from: the share of "
               "the map on that marker (a faithful map puts it there)."),
    "object": ("shortcut model: mass on the object",
               "On the same model, the share of the map on the shape, which the model ignores."),
}
CAPTIONS = {
    "gradients": "Gradient maps: the max over colour channels of |map|, white = large, clipped at the 99th "
                 "percentile (Simonyan et al.). Saliency is the gradient; input x gradient multiplies it by the "
                 "pixels; SmoothGrad averages it over noisy copies; integrated gradients along a path from black.",
    "relu rules": "ReLU-rule maps: the signed map as an RGB image around grey (grey = 0), as Springenberg et al. "
                  "draw it; deconvnet and guided backprop change how gradients pass the ReLUs, guided Grad-CAM "
                  "multiplies guided backprop by Grad-CAM.",
    "cam": "Class activation maps: the map min-max scaled in the jet colormap (red = high, blue = low) over a "
           "grey copy of the image, as the CAM and Grad-CAM papers draw it",
    "perturbation": "Perturbation maps, in the report's one diverging colormap: red where hiding the region lowers "
                    "the class score (evidence for it), blue where it raises it, white = no effect; occlusion "
                    "slides a grey window, LIME fits a linear model over superpixels switched off at random.",
}


def _pick(data, k: int) -> list[int]:
    """``k`` indices: the first image of each class in order, then the next images, so any ``k`` are class-balanced
    and the first ``j`` of ``_pick(data, k)`` are ``_pick(data, j)``."""
    seen, first = set(), []
    for i, y in enumerate(data.labels.tolist()):
        if y not in seen:
            seen.add(y)
            first.append(i)
    rest = [i for i in range(len(data.labels)) if i not in set(first)]
    return (first + rest)[:k]


def _titles(model, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[list[str], list[str] | None]:
    """Row titles (predicted class and probability), and their colours: green when right, red when wrong."""
    with torch.no_grad():
        p = model(x).softmax(1).cpu()
    names = getattr(model, "classes", None) or [str(i) for i in range(p.shape[1])]
    pred = p.argmax(1).tolist()
    titles = [f"{names[c]} {p[i, c]:.0%}" for i, c in enumerate(pred)]
    colors = None if labels is None else [CORRECT if c == y else WRONG for c, y in zip(pred, labels.tolist())]
    return titles, colors


def _settings(ctx: Context, model) -> tuple[bool, list[str], dict[str, dict]]:
    full = bool(ctx.options.get("full"))
    methods, overrides, _ = _choices(ctx)
    return full, methods, method_options(model, methods, full=full, overrides=overrides)


def _choices(ctx: Context) -> tuple[list[str], dict[str, dict] | None, dict[str, str]]:
    """What the report runs on ``ctx.model``, decided once: ``(methods, option overrides, notes)``.

    The methods are those that apply (:func:`applicable_methods`), less the ReLU rules when the
    model runs no ReLU (guided backprop on one image says so with its :class:`ModelError`). The
    overrides are the demo's lighter settings. The CAM methods use
    :func:`~underhood.core.layers.default_layer`, which steps back from a ViT's last block (its patch
    tokens get no gradient from a class-token head); ``notes``: one sentence per reason (``"left out"``,
    ``"layer"``) for the captions.
    """
    if "attribution-choices" in ctx.cache:
        return ctx.cache["attribution-choices"]
    from ...core.layers import default_layer, stages

    model, full = ctx.model, bool(ctx.options.get("full"))
    x = ctx.data.images[:1].to(model_device(model))
    methods = applicable_methods(model)
    overrides = None if full else {k: dict(v) for k, v in LIGHTER.items()}
    left: list[str] = []
    if not all(m in methods for m, e in REGISTRY.items() if e.head):
        left.append("CAM needs the classifier to be one linear layer on a feature map's spatial average "
                    "(a global-average-pooling head), which this model does not have")
    if isinstance(model, torch.jit.ScriptModule) and any(e.rule for e in REGISTRY.values()):
        left.append("deconvnet, guided backprop and guided Grad-CAM need to reach the ReLUs inside the forward "
                    "pass, which TorchScript hides")
    elif any(REGISTRY[m].rule for m in methods):
        try:
            get("guided_backprop")(model, x)
        except ModelError as exc:  # the library's own check: no ReLU ran in forward
            uses = str(exc).split("(the model uses ", 1)
            act = f" (it uses {uses[1].split(':', 1)[0]}, which has no on/off gate)" if len(uses) > 1 else ""
            methods = [m for m in methods if not REGISTRY[m].rule]
            left.append("deconvnet, guided backprop and guided Grad-CAM change how the gradient passes each ReLU, "
                        f"and this model runs none{act}; Springenberg's rule is not defined there and underhood "
                        "does not invent one")
    notes = {"left out": "Left out for this model: " + "; ".join(left) + "."} if left else {}
    layer = cam_layer(model)
    if layer is None and "gradcam" in methods:
        layer, names = default_layer(model, x), stages(model)
        if layer in names and names.index(layer) < len(names) - 1:  # default_layer stepped back from a blank block
            notes["layer"] = (f"at {layer}: at {names[-1]}, the last block, the class score's gradient does not reach "
                              "the patch tokens (the classifier reads the class token only), so Grad-CAM there is "
                              "blank")
        else:
            notes["layer"] = f"at {layer}, the last block or convolution before the classifier"
    ctx.cache["attribution-choices"] = (methods, overrides, notes)
    return ctx.cache["attribution-choices"]


def _trained_maps(ctx: Context, idx: list[int]) -> dict[str, torch.Tensor]:
    """The maps of every method on images ``idx``, computed once per report (rows cached by image index)."""
    model = ctx.model
    _, methods, opts = _settings(ctx, model)
    cache = ctx.cache.setdefault("attribution_rows", {})
    todo = [i for i in idx if i not in cache]
    if todo:
        maps = explain(model, ctx.data.images[todo].to(model_device(model)), methods, **opts)
        for j, i in enumerate(todo):
            cache[i] = {k: v[j].detach().cpu() for k, v in maps.items()}
    return {k: torch.stack([cache[i][k] for i in idx]) for k in methods}


@section("attribution", "Attribution: what in the image made the decision", order=50)
def attribution_maps(ctx: Context) -> Markup:
    model, device = ctx.model, model_device(ctx.model)
    idx = _pick(ctx.data, int(ctx.options.get("n_attribution", 4)))
    x = ctx.data.images[idx].to(device)
    _, methods, opts = _settings(ctx, model)
    maps = _trained_maps(ctx, idx)
    ctx.cache["attribution_maps"] = (idx, maps)
    titles, colors = _titles(model, x, ctx.data.labels[idx])
    layer = cam_layer(model)
    notes = _choices(ctx)[2]
    out = paragraph("Each row explains the class the model predicts for one image (left: that class and its "
                    "probability, green when right, red when wrong), with every method, in four groups that share a "
                    "way of drawing.")
    if "left out" in notes:
        out += paragraph(notes["left out"])
    for group, members in GROUPS.items():
        names = [m for m in members if m in maps]
        if not names:
            continue
        fig = attribution_figure(x.cpu(), {k: maps[k] for k in names}, row_titles=titles, row_colors=colors,
                                 cell=1.45)
        caption = CAPTIONS[group]
        if group == "cam":
            caption += (f", all at layer {layer} (the feature map the classifier averages)." if layer else
                        f", all {notes['layer']}." if "layer" in notes else ".")
        out += figure(ctx, figure_to_png(fig, dpi=100), f"attribution-{group.replace(' ', '-')}", caption)
    settings = "; ".join(f"{LABELS[m]} " + ", ".join(f"{k}={v}" for k, v in o.items()) for m, o in opts.items() if o)
    text = f"Settings: {settings}."
    if "integrated_gradients" in maps:  # the maps explain the predicted class, as completeness scores it
        gap = completeness(model, x, maps["integrated_gradients"].to(device),
                           baseline=opts["integrated_gradients"].get("baseline", 0.0))
        text += (f" Integrated gradients completeness gap |sum(IG) - (f(x) - f(0))|: at most {gap.abs().max():.3g} "
                 "logits (it shrinks as steps grow).")
    return out + paragraph(text)


@section("attribution-trust", "Which attribution maps to trust", order=55)
def attribution_trust(ctx: Context) -> Markup:
    model = ctx.model
    full, methods, opts = _settings(ctx, model)
    refs = reference_models(model, n=16)
    random_model, spurious, spurious_data = (refs.get(k) for k in ("random_model", "spurious_model", "spurious_data"))
    n = min(int(ctx.options.get("n_evaluate", 32 if full else 8)), len(ctx.data))
    m = n if full else min(n, int(ctx.options.get("n_sanity", 4)))
    idx = _pick(ctx.data, n)
    data = ctx.data[idx]
    shortcut_maps = None
    if spurious is not None:
        sx = spurious_data.images[:m].to(model_device(spurious))
        shortcut_maps = explain(spurious, sx, methods, **method_options(spurious, methods, full=full,
                                                                      overrides=None if full else LIGHTER))
    ev = evaluate(model, data, methods, n=n, sanity_n=m, steps=50 if full else 10, full=full, seed=ctx.seed,
                  options=_choices(ctx)[1], maps=_trained_maps(ctx, idx), shortcut_maps=shortcut_maps,
                  **refs)
    ctx.cache["evaluation"] = ev
    left = " The methods left out above for this model are not scored." if "left out" in _choices(ctx)[2] else ""
    out = paragraph(f"Each method scored on {n} held-out images (one per class first); the randomisation and "
                    f"shortcut columns on the first {m}. Arrows: which way is better; the best value of each "
                    "column is highlighted." + left) + _trust_table(ev) + paragraph(_trust_text(ev))
    out += figure(ctx, figure_to_png(curves_figure(ev.curves), dpi=100), "deletion-insertion",
                  "Mean deletion and insertion curves behind the table's area columns (one colour per method, one "
                  "line style per group: solid gradients, dashed ReLU rules, dash-dot CAM, dotted perturbation). "
                  + _curves_text(ev))
    out += _strips(ctx, idx[0], random_model, opts)
    if spurious is not None:
        out += _shortcut(spurious, spurious_data, shortcut_maps, ctx)
    return out


def _trust_table(ev) -> Markup:
    cols = ev.columns
    head = ["method"] + [f"{HEADERS[c][0]} {'↑' if COLUMNS[c] == 'up' else '↓'}" for c in cols]
    rows = [[LABELS.get(r[0], r[0])] + r[1:] for r in ev.rows()]
    best = {i: "max" if COLUMNS[c] == "up" else "min" for i, c in enumerate(cols, start=1)}
    legend = "".join(f"<dt>{escape(HEADERS[c][0])} {'↑' if COLUMNS[c] == 'up' else '↓'}</dt>"
                     f"<dd>{escape(HEADERS[c][1])}</dd>" for c in cols)
    return (Markup('<div class="trust-table">') + table(head, rows, numeric=tuple(range(1, len(head))), best=best)
            + Markup(f'</div><dl class="legend">{legend}</dl>'))


def _extremes(ev, column: str) -> tuple[tuple[str, float], tuple[str, float]] | None:
    """``((best method, value), (worst method, value))`` of a column, by its direction; None when unmeasured."""
    vals = [(m, row[column]) for m, row in ev.values.items() if column in row and row[column] == row[column]]
    if len(vals) < 2:
        return None
    vals.sort(key=lambda mv: mv[1], reverse=COLUMNS[column] == "up")
    return vals[0], vals[-1]


def _trust_text(ev) -> str:
    """What the table says, each sentence picked by the numbers (best and worst method of a column)."""
    said = []
    phrases = {
        "pointing": "{b} peaks on the object most often ({bv:.2f} of the images), {w} least ({wv:.2f}).",
        "deletion": "Deleting {b}'s top pixels lowers the probability fastest (area {bv:.2f}); {w}'s slowest "
                    "({wv:.2f}).",
        "insertion": "Restoring {b}'s top pixels raises it fastest (area {bv:.2f}); {w}'s slowest ({wv:.2f}).",
        "model_rand": "{b}'s maps change most when the weights are randomised (rank correlation {bv:.2f}), "
                      "{w}'s least ({wv:.2f}).",
        "data_rand": "Against the random-label copy, {b} changes most ({bv:.2f}) and {w} least ({wv:.2f}).",
        "marker": "On the shortcut model, {b} puts the most on the marker ({bv:.0%}), {w} the least ({wv:.0%}).",
    }
    def names(column: str, value: float) -> str:  # every method tied at ``value``, so no tie is hidden
        tied = [LABELS.get(k, k) for k, row in ev.values.items() if row.get(column) == value]
        return tied[0] if len(tied) == 1 else ", ".join(tied[:-1]) + " and " + tied[-1]

    for column, phrase in phrases.items():
        ext = _extremes(ev, column)
        if ext:
            (_, bv), (_, wv) = ext
            said.append(phrase.format(b=names(column, bv), bv=bv, w=names(column, wv), wv=wv))
    stuck = [LABELS.get(k, k) for k, row in ev.values.items() if row.get("model_rand", 0) >= 0.5]
    if stuck:
        said.append(f"Rank correlation 0.5 or more after randomising every weight ({', '.join(stuck)}): "
                    "these maps show the image more than the model.")
    return " ".join(said)


def _curves_text(ev) -> str:
    ext = [_extremes(ev, c) for c in ("deletion", "insertion")]
    if not all(ext):
        return ""
    (d, dv), _ = ext[0]
    (i, iv), _ = ext[1]
    return (f"Steepest fall on deletion: {LABELS.get(d, d)} (area {dv:.2f}); steepest rise on insertion: "
            f"{LABELS.get(i, i)} (area {iv:.2f}).")


def _strips(ctx: Context, index: int, random_model, opts: dict[str, dict]) -> Markup:
    model = ctx.model
    x = ctx.data.images[index:index + 1].to(model_device(model))
    rows, notes, last, stages = {}, {}, {}, []
    with torch.no_grad():
        fixed = model(x).argmax(1)
    for name in STRIP_METHODS:
        if name not in opts:
            continue
        res = model_randomization(model, x, name, seed=ctx.seed, by="block", **opts[name])
        rows[name] = [m[0] for m in res.maps]
        notes[name] = [""] + [f"ρ {float(r[0]):.2f}" for r in res.spearman[1:]]
        last[name] = float(res.spearman[-1, 0])
        stages = ["trained"] + [f"+ {s}" for s in res.stages[1:]]
        if random_model is not None:
            other = get(name)(random_model, x, fixed, **opts[name]).detach().float().cpu()
            rows[name].append(other[0])
            notes[name].append(f"ρ {float(similarities(res.maps[0], other)[0][0]):.2f}")
    if random_model is not None:
        stages.append("random labels")
    fig = strips_figure(x[0].cpu(), rows, stages, cell=1.2, notes=notes)
    return figure(ctx, figure_to_png(fig, dpi=100), "sanity-checks",
                  "Sanity checks (Adebayo et al. 2018) on one image: from left to right the blocks (a layer with its "
                  "batch norm) are re-initialised one after another from the output down"
                  + ("; the last column is a copy trained on permuted labels" if random_model is not None else "")
                  + ". Under each map, ρ: its rank correlation with the trained map (1 = unchanged). "
                  + _strip_text(last))


def _strip_text(last: dict[str, float]) -> str:
    """Which method keeps its look and which dissolves, from the last stage's rank correlations."""
    if len(last) < 2:
        return ""
    order = sorted(last, key=last.get)
    keep, gone = order[-1], order[0]
    text = (f"With every block re-initialised, {LABELS.get(gone, gone)} changes most (ρ {last[gone]:.2f}) and "
            f"{LABELS.get(keep, keep)} least (ρ {last[keep]:.2f})")
    if last[keep] >= 0.5:
        text += f": {LABELS.get(keep, keep)} still shows the image's edges, not the model's reasoning"
    return text + "."


def _shortcut(spurious, data, maps: dict[str, torch.Tensor], ctx: Context) -> Markup:
    names = [k for k in SHORTCUT_METHODS if k in maps]
    device = model_device(spurious)
    n_fig = min(3, len(next(iter(maps.values()))))
    x = data.images[:n_fig]
    titles, colors = _titles(spurious, x.to(device), data.labels[:n_fig])
    fig = attribution_figure(x, {k: maps[k][:n_fig].cpu() for k in names}, row_titles=titles, row_colors=colors,
                             cell=1.35)
    n = len(next(iter(maps.values())))
    masks, markers = data.masks[:n].to(device), data.marker_masks[:n].to(device)
    area = [float(m.float().mean()) for m in (masks, markers)]
    shares, marker_share = [], {}
    for k in names:
        obj, mark = (float(t.mean()) for t in mask_shares(maps[k].to(device), masks, markers))
        marker_share[k] = mark
        shares.append([LABELS[k], f"{obj:.2f}", f"{obj / area[0]:.1f}x", f"{mark:.2f}", f"{mark / area[1]:.1f}x"])
    cheat = spurious.meta.get("shortcut", {})
    keys = ("with_marker", "no_marker", "wrong_marker", "follows_marker")
    acc = ", ".join(f"{k.replace('_', ' ')} {cheat[k]:.0%}" for k in keys if k in cheat)
    text = ("The shortcut test: this copy was trained on shapes that always carry a small square whose colour "
            "gives the class away. " + (f"Its accuracy: {acc}. " if acc else "")
            + "A faithful map lights up the marker, not the shape.")
    return (paragraph(text)
            + figure(ctx, figure_to_png(fig, dpi=100), "shortcut",
                     "Maps of the shortcut model on marked images, drawn as above. " + _shortcut_text(marker_share))
            + paragraph(f"Share: the fraction of the map's positive mass on the object ({area[0]:.0%} of the "
                        f"pixels) and on the marker ({area[1]:.1%} of the pixels), over {n} marked images; density: "
                        "that share over the region's area (1x = spread evenly over the image).")
            + table(["method", "share on object", "density", "share on marker", "density"], shares,
                    numeric=(1, 2, 3, 4), best={1: "min", 3: "max"}))


def _shortcut_text(marker_share: dict[str, float]) -> str:
    if len(marker_share) < 2:
        return ""
    order = sorted(marker_share, key=marker_share.get)
    hi, lo = order[-1], order[0]
    return (f"{LABELS.get(hi, hi)} puts the most on the marker ({marker_share[hi]:.0%} of its mass), "
            f"{LABELS.get(lo, lo)} the least ({marker_share[lo]:.0%}).")
