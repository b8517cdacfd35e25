"""Report sections of the attribution family: the maps, and the evidence of which to trust."""

from __future__ import annotations

import torch
from markupsafe import Markup

from ...attribution.evaluate import COLUMNS, applicable_methods, cam_layer, evaluate, method_options, reference_models
from ...attribution.explain import explain
from ...attribution.metrics import completeness, data_randomization, mask_shares, model_randomization
from ...core.device import model_device
from ...viz import LABELS, attribution_figure, curves_figure, figure_to_png, strips_figure
from ..base import Context, figure, paragraph, section, table

STRIP_METHODS = ("saliency", "guided_backprop", "integrated_gradients", "gradcam")


def _pick(data, k: int) -> list[int]:
    """Up to ``k`` indices with different labels (the first image of each class, in order)."""
    seen, out = set(), []
    for i, y in enumerate(data.labels.tolist()):
        if y not in seen:
            seen.add(y)
            out.append(i)
        if len(out) == k:
            break
    return out


def _titles(model, x: torch.Tensor) -> list[str]:
    with torch.no_grad():
        p = model(x).softmax(1).cpu()
    names = getattr(model, "classes", None) or [str(i) for i in range(p.shape[1])]
    return [f"{names[c]} {p[i, c]:.0%}" for i, c in enumerate(p.argmax(1).tolist())]


@section("attribution", "Attribution: what in the image made the decision", order=50)
def attribution_maps(ctx: Context) -> Markup:
    model, device = ctx.model, model_device(ctx.model)
    idx = _pick(ctx.data, int(ctx.options.get("n_attribution", 4)))
    x = ctx.data.images[idx].to(device)
    full = bool(ctx.options.get("full"))
    methods = applicable_methods(model)
    opts = method_options(model, methods, full=full)
    maps = explain(model, x, methods, **opts)
    ctx.cache["attribution_maps"] = (idx, maps)
    layer = cam_layer(model)
    fig = attribution_figure(x.cpu(), {k: v.cpu() for k, v in maps.items()}, row_titles=_titles(model, x))
    caption = ("Each row explains the predicted class (title: class and probability) with every method. "
               "Saliency, input x gradient, SmoothGrad and integrated gradients: max over colour channels of |map| "
               "(white = large). Deconvnet, guided backprop and guided Grad-CAM: the signed map as colour around "
               "grey. CAM family: the map in the jet colormap over the image (red = high)"
               + (f", all at layer {layer} (the feature map the classifier averages)" if layer else "")
               + ". Occlusion and LIME: red where hiding the region lowers the class score, blue where it raises it.")
    settings = "; ".join(f"{LABELS[m]} " + ", ".join(f"{k}={v}" for k, v in o.items()) for m, o in opts.items() if o)
    text = f"Settings: {settings}."
    if "integrated_gradients" in maps:  # the maps explain the predicted class, as completeness scores it
        gap = completeness(model, x, maps["integrated_gradients"],
                           baseline=opts["integrated_gradients"].get("baseline", 0.0))
        text += (f" Integrated gradients completeness gap |sum(IG) - (f(x) - f(0))|: at most {gap.abs().max():.3g} "
                 "logits (it shrinks as steps grow).")
    return figure(ctx, figure_to_png(fig, dpi=120), "attribution-maps", caption) + paragraph(text)


@section("attribution-trust", "Which attribution maps to trust", order=55)
def attribution_trust(ctx: Context) -> Markup:
    model, full = ctx.model, bool(ctx.options.get("full"))
    refs = reference_models(model)
    random_model, spurious, spurious_data = (refs.get(k) for k in ("random_model", "spurious_model", "spurious_data"))
    n = int(ctx.options.get("n_evaluate", 32 if full else 8))
    lighter = {} if full else {"occlusion": {"stride": 8}, "lime": {"n_samples": 150}}
    ev = evaluate(model, ctx.data, applicable_methods(model), n=n, steps=50 if full else 16, full=full,
                  seed=ctx.seed, options=lighter, **refs)
    ctx.cache["evaluation"] = ev
    head = ["method"] + [f"{c} {'↑' if COLUMNS[c] == 'up' else '↓'}" for c in ev.columns]
    rows = [[LABELS[r[0]]] + r[1:] for r in ev.rows()]
    out = paragraph(
        f"Each method on {n} held-out images. pointing: how often the map's maximum falls on the object; energy: "
        "share of the map inside the object mask; deletion / insertion: area under the class probability as the "
        "most important pixels are removed / restored (Petsiuk et al. 2018); model_rand / model_ssim: rank "
        "correlation / structural similarity between maps of the trained model and of a re-initialised copy, and "
        "data_rand / data_ssim: with a copy trained on permuted "
        "labels (Adebayo et al. 2018) -- a map that does not change does not explain the model; marker / object: "
        "on a model trained with a class-coloured marker, which it alone decides from, the map's share on the "
        "marker (a faithful map puts it there) and on the object.")
    out += table(head, rows, numeric=tuple(range(1, len(head))))
    out += figure(ctx, figure_to_png(curves_figure(ev.curves), dpi=110), "deletion-insertion",
                  "Mean deletion and insertion curves behind the table's AUC columns: a faithful map makes the "
                  "probability fall fast when its top pixels are removed, and rise fast when they are restored.")
    out += _strips(ctx, random_model)
    if spurious is not None:
        out += _shortcut(ctx, spurious, spurious_data)
    return out


def _strips(ctx: Context, random_model) -> Markup:
    model = ctx.model
    x = ctx.data.images[:1].to(model_device(model))
    opts = method_options(model, STRIP_METHODS)
    rows, stages = {}, []
    for name in STRIP_METHODS:
        res = model_randomization(model, x, name, seed=ctx.seed, **opts[name])
        rows[name] = [m[0] for m in res.maps]
        stages = ["trained"] + [f"+ {s}" for s in res.stages[1:]]
        if random_model is not None:
            rows[name].append(data_randomization(model, random_model, x, name, **opts[name]).maps[1][0])
    if random_model is not None:
        stages.append("random labels")
    fig = strips_figure(x[0].cpu(), rows, stages)
    return figure(ctx, figure_to_png(fig, dpi=120), "sanity-checks",
                  "Sanity checks (Adebayo et al. 2018) on one image: from left to right the layers are re-initialised "
                  "one after another from the output down (cascading randomisation); the last column is a copy "
                  "trained on permuted labels. A map that keeps its look while the network is destroyed shows the "
                  "image's edges, not the model's reasoning.")


def _shortcut(ctx: Context, spurious, data) -> Markup:
    device = model_device(spurious)
    x = data.images[:3].to(device)
    names = ("saliency", "smoothgrad", "guided_backprop", "gradcam", "occlusion", "lime")
    maps = explain(spurious, x, names, **method_options(spurious, names))
    fig = attribution_figure(x.cpu(), {k: v.cpu() for k, v in maps.items()}, row_titles=_titles(spurious, x))
    masks, markers = data.masks[:3].to(device), data.marker_masks[:3].to(device)
    area = [float(m.float().mean()) for m in (masks, markers)]
    shares = []
    for k, v in maps.items():
        obj, mark = (float(t.mean()) for t in mask_shares(v, masks, markers))
        shares.append([LABELS[k], f"{obj:.2f}", f"{obj / area[0]:.1f}x", f"{mark:.2f}", f"{mark / area[1]:.1f}x"])
    cheat = spurious.meta.get("shortcut", {})
    keys = ("with_marker", "no_marker", "wrong_marker", "follows_marker")
    acc = ", ".join(f"{k.replace('_', ' ')} {cheat[k]:.0%}" for k in keys if k in cheat)
    text = ("The shortcut test: this copy was trained on shapes that always carry a small square whose colour "
            "gives the class away. " + (f"Its accuracy: {acc}. " if acc else "")
            + "A faithful map lights up the marker, not the shape.")
    return (paragraph(text) + figure(ctx, figure_to_png(fig, dpi=120), "shortcut",
                                     "Maps of the shortcut model on marked images.")
            + paragraph(f"Share: the fraction of the map's positive energy on the object ({area[0]:.0%} of the "
                        f"pixels) and on the marker ({area[1]:.1%} of the pixels); density: that share over the "
                        "region's area (1x = spread evenly over the image).")
            + table(["method", "share on object", "density", "share on marker", "density"], shares,
                    numeric=(1, 2, 3, 4)))
