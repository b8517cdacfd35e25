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


def _active_channels(ctx: Context, layers: list[str], k: int) -> dict[str, list[int]]:
    """For each of ``layers``, the ``k`` channels with the highest mean activation on the report's images (dead
    channels make blank pictures); one forward pass for all layers."""
    from ...activations.maps import maps

    x = ctx.data.images[:64].to(_device(ctx))
    out = {}
    for layer, a in maps(ctx.model, x, list(layers)).items():
        a = a.float().clamp(min=0)  # what passes the ReLU
        mean = a.mean(dim=[0, *range(2, a.ndim)]) if a.ndim > 2 else a.mean(0)
        out[layer] = sorted(mean.topk(min(k, len(mean))).indices.tolist())
    return out


def _pre_activation(ctx: Context, stage: str) -> str:
    """The last convolution or batch norm up to the end of ``stage`` (outside shortcut branches): its
    channels are the stage's before the ReLU, which a grey start does not leave at a zero gradient
    (Lucid renders ``*_pre_relu`` layers for the same reason). A transformer block (one holding a
    ``LayerNorm`` or attention) is rendered at its own output, which no ReLU follows."""
    from torch import nn

    from ...core.layers import named_layers

    layers = list(named_layers(ctx.model).items())
    inside = [m for n, m in layers if n == stage or n.startswith(stage + ".")]
    if any(isinstance(m, (nn.LayerNorm, nn.MultiheadAttention)) for m in inside):
        return stage  # a transformer block: its output is a residual sum, with no ReLU after it
    end = max(i for i, (n, _) in enumerate(layers) if n == stage or n.startswith(stage + "."))
    for name, module in reversed(layers[:end + 1]):
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) and not any(
                part in ("downsample", "shortcut") for part in name.split(".")):
            return name
    return stage


def _where(ctx: Context, layer: str) -> str:
    """Where the rendered channel is read: before a ReLU (a convolution or batch norm), else at a block's output."""
    from torch import nn

    from ...core.layers import resolve

    return ("before its ReLU" if isinstance(resolve(ctx.model, layer), (nn.Conv2d, nn.BatchNorm2d))
            else "the block's output")


def _receptive_fields(ctx: Context, names: list[str]) -> dict[str, str]:
    """``{layer: "12x12"}``: the input window one unit of each layer sees (empty where unknown)."""
    rows = _rows(ctx)
    return {n: rows[n].rf_size for n in names if n in rows and rows[n].rf is not None}


def _rows(ctx: Context) -> dict:
    """``{layer: LayerInfo}`` of the architecture table (one trace per report; empty where it cannot run)."""
    from ...core.errors import UnderhoodError
    from ...core.layers import layers

    if "layer-rows" not in ctx.cache:
        try:
            ctx.cache["layer-rows"] = {row.name: row for row in layers(ctx.model)}
        except UnderhoodError:
            ctx.cache["layer-rows"] = {}
    return ctx.cache["layer-rows"]


@section("synthesis-units", "What units look for: images synthesised to excite them", order=60)
def unit_gallery(ctx: Context) -> Markup:
    full = bool(ctx.options.get("full"))
    names = _stages(ctx)
    if len(names) < 2:
        return paragraph("The model has fewer than two convolutional stages to render.")
    layers = [_pre_activation(ctx, n) for n in (names[(len(names) - 1) // 2], names[-1])]
    k = 16 if full else 12
    # the demo's images are shown ~120 px wide: 48 steps at a larger rate reach a higher objective than
    # the 128 steps at 0.1 it used to take (median channel of the last stage: 2.3 against 1.9)
    steps, lr = (256, 0.1) if full else (48, 0.3)
    ncols = min(8, k) if full else 6
    chosen = _active_channels(ctx, layers, k)
    fields = _receptive_fields(ctx, layers)
    body = Markup("")
    for layer in layers:
        channels = chosen[layer]
        result = render(ctx.model, [O.channel(layer, c) for c in channels], steps=steps, lr=lr, seed=ctx.seed)
        start, final = float(result.start.median()), float(result.final.median())
        fig = gallery_figure(result.images, [f"channel {c}" for c in channels], ncols=ncols, cell=1.2,
                             title=f"{layer}: {len(channels)} of its most active channels")
        seen = (f"One unit of {layer} sees a {fields[layer]}-pixel window of the "
                f"{ctx.model.input_size[1]}x{ctx.model.input_size[2]} input; the objective is the channel's mean "
                "over all positions, so what the unit looks for is repeated across the image."
                if layer in fields and getattr(ctx.model, "input_size", None) else "")
        png = figure_to_png(fig, dpi=110)
        body += figure(ctx, png, f"units-{layer}",
                       f"Each image is optimised from noise to maximise the mean activation of one channel of "
                       f"{layer}, {_where(ctx, layer)} ({steps} Adam steps at rate {lr:g} on a decorrelated Fourier "
                       f"parametrisation, with random jitter, scale and rotation at every step, as in Olah et al. "
                       f"2017). The median channel's mean activation goes from {start:.3g} at the random start to "
                       f"{final:.3g}. " + seen, width=_shown(png))
    return body


def _shown(png: bytes, most: int = 1000) -> str:
    """The CSS width to show a PNG at: its own width in pixels (read from its header), so that its text keeps
    the size it was drawn at (8 pt at 110 dpi: 12 px), and at most ``most``."""
    return f"{min(most, int.from_bytes(png[16:20], 'big'))}px"


@section("synthesis-classes", "What the model thinks each class looks like", order=61)
def class_images(ctx: Context) -> Markup:
    full = bool(ctx.options.get("full"))
    classes = list(getattr(ctx.model, "classes", []) or [])
    if not classes:
        return paragraph("The model has no class names.")
    # 128 steps at 0.3 reach p >= 0.9 for every class of the shapes model, which 256 steps at 0.1 did not
    steps, lr = (512, 0.1) if full else (128, 0.3)
    result = render(ctx.model, [O.class_logit(k) for k in range(len(classes))], steps=steps, lr=lr, seed=ctx.seed)
    with torch.no_grad():
        probs = ctx.model(result.images.to(_device(ctx))).softmax(1).cpu()
    top = probs.argmax(1).tolist()
    hits = sum(bool(top[k] == k and probs[k, k] >= 0.9) for k in range(len(classes)))
    missed = [k for k in range(len(classes)) if top[k] != k]
    ncols = min(8, len(classes))
    fig = class_images_figure(result.images, probs, classes, ncols=ncols, cell=min(1.35, 8.8 / ncols),
                              title="one image per class, maximising its logit")
    wins = ("the model's top class is the intended one for every image (green)" if not missed else
            f"the model's top class is the intended one for {len(classes) - len(missed)} of {len(classes)} images "
            f"(green); for {', '.join(classes[k] for k in missed)} another class wins (red, named under it)")
    png = figure_to_png(fig, dpi=110)
    return figure(ctx, png, "class-images",
                  f"Each image is optimised from noise to maximise one class's logit (pre-softmax, Simonyan et "
                  f"al. 2014; {steps} steps at rate {lr:g}, Fourier parametrisation and random transforms as "
                  f"above). Above each, the probability the model gives that class for it: {wins}; {hits} of "
                  f"{len(classes)} reach 0.9 or more. These are not pictures of the class but of what raises its "
                  "score most: fragments of its edges and colours, repeated wherever they help.",
                  width=_shown(png))


def _trend(names: list[str], psnr: list[float]) -> str:
    """A sentence on reconstruction quality across the layers shown, true of every layer: monotonic or not,
    best and worst."""
    pairs = list(zip(names, psnr))
    text = ", ".join(f"{n} {v:.1f} dB" for n, v in pairs)
    if len(pairs) < 2:
        return f"PSNR to the original: {text}."
    steps = [b - a for a, b in zip(psnr, psnr[1:])]
    best, worst = max(pairs, key=lambda p: p[1]), min(pairs, key=lambda p: p[1])
    if all(d < 0 for d in steps):
        return (f"Reconstructions get worse at every step in depth ({text}): deeper layers keep what matters for "
                "the class and discard the rest, so many images, differing in what was discarded, look the same "
                "to them.")
    if all(d > 0 for d in steps):
        return f"Here reconstructions get better with depth ({text}), against the usual trend."
    ups = [f"{b} ({vb:.1f} dB) is above {a} ({va:.1f} dB)" for (a, va), (b, vb) in zip(pairs, pairs[1:]) if vb >= va]
    return (f"Reconstruction quality does not fall at every step in depth ({text}): the best is {best[0]}, the "
            f"worst {worst[0]}, and {'; '.join(ups)}. Pixel PSNR measures closeness to this image, not what the "
            "layer keeps: a deeper layer may keep the object while its pre-images differ in background and colour.")


@section("synthesis-inversion", "What a layer keeps: inverting representations", order=62)
def inversion(ctx: Context) -> Markup:
    full = bool(ctx.options.get("full"))
    names = _stages(ctx)
    if not names:
        return paragraph("The model has no convolutional stage to invert.")
    if len(names) > 4:  # early to last, four of them
        names = [names[round(i * (len(names) - 1) / 3)] for i in range(4)]
    # 80 steps at 0.1 land within 0.3 dB of 150 steps at 0.05 on the shapes model, at half the cost
    steps, lr = (300, 0.05) if full else (80, 0.1)
    seeds = range(3)
    image = ctx.data.images[:1].to(_device(ctx))
    results = [invert(ctx.model, image, layer, seeds=seeds, steps=steps, lr=lr) for layer in names]
    fig = inversion_figure(image.cpu(), results, title="pre-images of one image from three random starts")
    rows = [[r.layer, f"{float((1 - r.distance_end / r.distance_start).mean()):.1%}", f"{float(r.psnr.mean()):.1f}"]
            for r in results]
    trend = _trend(names, [float(r.psnr.mean()) for r in results])
    png = figure_to_png(fig, dpi=110)
    return (figure(ctx, png, "inversion",
                   f"Each column is an image optimised from random noise so that its representation at the "
                   f"layer matches the original's (Mahendran & Vedaldi 2015: relative squared distance plus a "
                   f"total-variation prior, {steps} Adam steps at rate {lr:g} on the Fourier parametrisation); each "
                   "row starts from a different seed. " + trend, width=_shown(png))
            + table(["layer", "feature distance removed", "PSNR to the original (dB)"], rows, numeric=[1, 2]))


@section("synthesis-dream", "Deep Dream: amplifying what a layer sees", order=63)
def dream(ctx: Context) -> Markup:
    full = bool(ctx.options.get("full"))
    names = _stages(ctx)
    if not names:
        return paragraph("The model has no convolutional stage to dream with.")
    layer = names[len(names) // 2]
    images = ctx.data.images[:2].to(_device(ctx))
    h, w = images.shape[-2:]
    octaves, scale = 3, 1.4
    sizes = [(round(2 * h / scale ** k), round(2 * w / scale ** k)) for k in range(octaves)]  # deep_dream's octaves
    resized = _takes(ctx, sizes)
    if resized:
        big = torch.nn.functional.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)
    else:  # a fixed number of tokens (a ViT's position embedding): the model's own size, one octave
        big, octaves = images, 1
    steps = 20 if full else 10
    dreams = deep_dream(ctx.model, big, layer, octaves=octaves, octave_scale=scale, steps=steps * (3 // octaves),
                        seed=ctx.seed)
    fig = pairs_figure([(a, b) for a, b in zip(big.cpu(), dreams)],
                       ["original (2x)" if resized else "original", f"dreamed at {layer}"], cell=2.4)
    png = figure_to_png(fig, dpi=110)
    how = (f"over 3 octaves of scale ({steps} steps each" if resized else
           f"at the model's own {h}x{w} size, in one octave of {3 * steps} steps (the model does not run at the "
           f"larger sizes the usual octaves of scale need, up to {sizes[0][0]}x{sizes[0][1]})")
    return figure(ctx, png, "dream",
                  f"Deep Dream (Mordvintsev et al. 2015): gradient ascent on the squared activations of {layer}, "
                  f"starting from the image itself, {how}; normalised steps under random jitter). Whatever the "
                  "layer faintly detects is amplified: edges grow halos and the patterns the stage responds to "
                  "appear where it saw a hint of them.",
                  width=_shown(png))


@torch.no_grad()
def _takes(ctx: Context, sizes: list[tuple[int, int]]) -> bool:
    """Whether the model runs on images of every ``(H, W)`` in ``sizes`` (one forward of one image each): a
    ViT whose position embedding fixes the number of tokens takes its own size only."""
    from ...core.state import evaluating

    x = ctx.data.images[:1].to(_device(ctx))
    with evaluating(ctx.model):
        for size in sizes:
            try:
                ctx.model(torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False))
            except RuntimeError:  # shapes that do not fit: the model refuses this size
                return False
    return True
