"""Report sections of the model itself: the model card and sample predictions."""

from __future__ import annotations

import torch
from markupsafe import Markup, escape

from ...core.device import model_device
from ...core.layers import layers, parameter_count
from ...viz import figure_to_png, predictions_figure
from ..base import Context, figure, paragraph, section, table


def _held_out_accuracy(ctx: Context) -> tuple[float, str] | None:
    """The test accuracy the training run recorded with the weights (no pass over 2,000 images), else
    the accuracy on the report's shared held-out population (:func:`.activations.population_pass`)."""
    meta = getattr(ctx.model, "meta", {}) or {}
    recorded = meta.get("test_accuracy")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and meta.get("test_set"):
        return float(recorded), f"{meta['test_set']}, recorded by the training run"
    dataset = meta.get("dataset")
    if dataset not in ("shapes", "digits"):
        return None
    from .activations import population, population_pass

    data, logits = population(ctx), population_pass(ctx)["logits"]
    return float((logits.argmax(1) == data.labels).float().mean()), f"{len(data)} held-out {dataset} images"


@section("model", "Model card", order=10)
def model_card(ctx: Context) -> Markup:
    model = ctx.model
    size = tuple(ctx.data.images.shape[1:])
    rows = layers(model, input_size=size)
    acc = _held_out_accuracy(ctx)
    meta = getattr(model, "meta", {})
    cards = [(f"{parameter_count(model):,}", "parameters"), (str(len(model.classes)), "classes"),
             ("x".join(map(str, size)), "input (C x H x W)")]
    if acc:
        cards.insert(0, (f"{acc[0]:.2%}", f"test accuracy ({acc[1]})"))
    html = "".join(f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for v, k in cards)
    head = ["layer", "type", "output shape", "parameters", "receptive field", "jump"]
    body = [(r.name, r.type, " x ".join(map(str, r.output_shape or ())), f"{r.params:,}", r.rf_size,
             "-" if r.jump is None else f"{r.jump[0]:g}") for r in rows if r.type != "Sequential"]
    text = (f"Architecture {meta.get('arch', type(model).__name__)!s}; classes: {', '.join(model.classes)}. "
            "Receptive field: how many input pixels (per side) can influence one unit of the layer; jump: "
            "input pixels between neighbouring units. Inputs are pixels in [0, 1]; normalisation "
            f"(mean {[round(v, 3) for v in model.mean.flatten().tolist()]}, std "
            f"{[round(v, 3) for v in model.std.flatten().tolist()]}) is part of the model.")
    prov = meta.get("command")
    extra = paragraph(f"Weights trained by: {prov}") if prov else Markup("")
    return Markup(f'<div class="cards">{html}</div>') + paragraph(text) + table(head, body, numeric=(3, 4, 5)) + extra


@section("predictions", "Sample predictions", order=20)
def predictions(ctx: Context) -> Markup:
    model, data = ctx.model, ctx.data
    n = min(len(data), int(ctx.options.get("n_predictions", 24)))
    device = model_device(model)
    with torch.no_grad():
        probs = torch.softmax(model(data.images[:n].to(device)), 1).cpu()
    ctx.cache["probs"] = probs
    fig = predictions_figure(data.images[:n], data.labels[:n], probs, model.classes)
    correct = int((probs.argmax(1) == data.labels[:n]).sum())
    return figure(ctx, figure_to_png(fig), "predictions",
                  f"{n} held-out images with the predicted class and its softmax probability; "
                  + (f"all {n} correct (green)." if correct == n else
                     f"{correct}/{n} correct (green), mistakes in red with the true class."))
