"""Report sections of the synthesis family: channel galleries, class images, inversion, Deep Dream.

Settings are small by default so that the demo stays within its time budget; ``--full`` runs the
longer optimisations.
"""

from __future__ import annotations

import torch
from markupsafe import Markup

from ...core.device import model_device
from ...synthesis import objectives as O
from ...synthesis.render import deep_dream, invert, render
from ...viz import figure_to_png
from ...viz.synthesis import class_images_figure, gallery_figure, inversion_figure, pairs_figure
from ..base import Context, figure, paragraph, section, table


def _device(ctx: Context) -> torch.device:
    return model_device(ctx.model)


def _stages(ctx: Context) -> list[str]:
    from ...core.layers import stages

    return stages(ctx.model)


def _active_channels(ctx: Context, layer: str, k: int) -> list[int]:
    """The ``k`` channels of ``layer`` with the highest mean activation on the report's images (dead
    channels make blank pictures)."""
    from ...activations.maps import maps

    x = ctx.data.images[:64].to(_device(ctx))
    a = maps(ctx.model, x, [layer])[layer]
    a = a.float().clamp(min=0)  # what passes the ReLU
    mean = a.mean(dim=[0, *range(2, a.ndim)]) if a.ndim > 2 else a.mean(0)
    return sorted(mean.topk(min(k, len(mean))).indices.tolist())


def _pre_activation(ctx: Context, stage: str) -> str:
    """The last convolution or batch norm up to the end of ``stage`` (outside shortcut branches): its
    channels are the stage's before the ReLU, which a grey start does not leave at a zero gradient
    (Lucid renders ``*_pre_relu`` layers for the same reason)."""
    from torch import nn

    from ...core.layers import named_layers

    layers = list(named_layers(ctx.model).items())
    end = max(i for i, (n, _) in enumerate(layers) if n == stage or n.startswith(stage + "."))
    for name, module in reversed(layers[:end + 1]):
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) and not any(
                part in ("downsample", "shortcut") for part in name.split(".")):
            return name
    return stage


@section("synthesis-units", "What units look for: images synthesised to excite them", order=60)
def unit_gallery(ctx: Context) -> Markup:
    full = bool(ctx.options.get("full"))
    names = _stages(ctx)
    if len(names) < 2:
        return paragraph("The model has fewer than two convolutional stages to render.")
    layers = [names[(len(names) - 1) // 2], names[-1]]
    k = 16 if full else 12
    steps = 256 if full else 128
    layers = [_pre_activation(ctx, n) for n in layers]
    body = Markup("")
    for layer in layers:
        channels = _active_channels(ctx, layer, k)
        result = render(ctx.model, [O.channel(layer, c) for c in channels], steps=steps, seed=ctx.seed)
        start, final = float(result.start.median()), float(result.final.median())
        fig = gallery_figure(result.images, [f"channel {c}" for c in channels], ncols=min(8, k) if full else 6,
                             title=f"{layer}: {len(channels)} of its most active channels")
        body += figure(ctx, figure_to_png(fig, dpi=110), f"units-{layer}",
                       f"Each image is optimised from noise to maximise the mean activation of one channel of "
                       f"{layer}, before its ReLU ({steps} Adam steps on a decorrelated Fourier parametrisation, "
                       f"with random jitter, scale and rotation at every step, as in Olah et al. 2017). The "
                       f"median channel's mean activation goes from {start:.2g} at the random start to {final:.3g}. "
                       + ("Middle layers respond to textures and colour patterns repeated over the image."
                          if layer == layers[0] else
                          "The last stage's units respond to larger parts: corners, arcs, bars, their colours."),
                       width="720px")
    return body


@section("synthesis-classes", "What the model thinks each class looks like", order=61)
def class_images(ctx: Context) -> Markup:
    full = bool(ctx.options.get("full"))
    classes = list(getattr(ctx.model, "classes", []) or [])
    if not classes:
        return paragraph("The model has no class names.")
    steps = 512 if full else 256
    result = render(ctx.model, [O.class_logit(k) for k in range(len(classes))], steps=steps, seed=ctx.seed)
    with torch.no_grad():
        probs = ctx.model(result.images.to(_device(ctx))).softmax(1).cpu()
    hits = sum(bool(probs[k].argmax() == k and probs[k, k] >= 0.9) for k in range(len(classes)))
    fig = class_images_figure(result.images, probs, classes, ncols=min(8, len(classes)),
                              title="one image per class, maximising its logit")
    return figure(ctx, figure_to_png(fig, dpi=110), "class-images",
                  f"Each image is optimised from noise to maximise one class's logit (pre-softmax, Simonyan et "
                  f"al. 2014; {steps} steps, Fourier parametrisation and random transforms as above). Above each, "
                  f"the probability the model gives that class for it: {hits} of {len(classes)} classes reach "
                  f"0.9 or more (green). These are not pictures of the class but of what raises its score most: "
                  "fragments of its edges and colours, repeated wherever they help.", width="760px")


@section("synthesis-inversion", "What a layer keeps: inverting representations", order=62)
def inversion(ctx: Context) -> Markup:
    full = bool(ctx.options.get("full"))
    names = _stages(ctx)
    if not names:
        return paragraph("The model has no convolutional stage to invert.")
    if len(names) > 4:  # early to last, four of them
        names = [names[round(i * (len(names) - 1) / 3)] for i in range(4)]
    steps = 300 if full else 150
    seeds = range(3)
    image = ctx.data.images[:1].to(_device(ctx))
    results = [invert(ctx.model, image, layer, seeds=seeds, steps=steps) for layer in names]
    fig = inversion_figure(image.cpu(), results, title="pre-images of one image from three random starts")
    rows = [[r.layer, f"{float((1 - r.distance_end / r.distance_start).mean()):.1%}", f"{float(r.psnr.mean()):.1f}"]
            for r in results]
    first, last = float(results[0].psnr.mean()), float(results[-1].psnr.mean())
    trend = (f"Reconstructions get worse with depth ({first:.1f} dB at {names[0]}, {last:.1f} dB at {names[-1]}): "
             "deeper layers keep what matters for the class and discard the rest, so many images, differing in "
             "what was discarded, look the same to them." if first > last else
             f"Here the reconstruction is no worse at {names[-1]} ({last:.1f} dB) than at {names[0]} ({first:.1f} dB).")
    return (figure(ctx, figure_to_png(fig, dpi=110), "inversion",
                   f"Each column is an image optimised from random noise so that its representation at the "
                   f"layer matches the original's (Mahendran & Vedaldi 2015: relative squared distance plus a "
                   f"total-variation prior, {steps} Adam steps on the Fourier parametrisation); each row starts "
                   "from a different seed. "
                   + trend, width="820px")
            + table(["layer", "feature distance removed", "PSNR to the original (dB)"], rows, numeric=[1, 2]))


@section("synthesis-dream", "Deep Dream: amplifying what a layer sees", order=63)
def dream(ctx: Context) -> Markup:
    full = bool(ctx.options.get("full"))
    names = _stages(ctx)
    if not names:
        return paragraph("The model has no convolutional stage to dream with.")
    layer = names[len(names) // 2]
    images = ctx.data.images[:2].to(_device(ctx))
    big = torch.nn.functional.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)
    steps = 20 if full else 10
    dreams = deep_dream(ctx.model, big, layer, octaves=3, steps=steps, seed=ctx.seed)
    fig = pairs_figure([(a, b) for a, b in zip(big.cpu(), dreams)], ["original (2x)", f"dreamed at {layer}"],
                       cell=2.4)
    return figure(ctx, figure_to_png(fig, dpi=110), "dream",
                  f"Deep Dream (Mordvintsev et al. 2015): gradient ascent on the squared activations of {layer}, "
                  f"starting from the image itself, over 3 octaves of scale ({steps} steps each, normalised "
                  "steps under random jitter). Whatever the layer faintly detects is amplified: edges grow "
                  "halos and the patterns the stage responds to appear where it saw a hint of them.",
                  width="560px")
