"""Commands of the synthesis family: ``render``, ``dream``, ``invert``, ``caricature``, ``style``.

Each writes its images as PNG files plus one figure and, under ``--out``, the result through its
``save()`` (``result.safetensors`` and ``manifest.json``; ``dream`` and ``caricature``, which return
plain tensors, write ``<command>.safetensors`` and a ``manifest.json``).
"""

from __future__ import annotations

import argparse
import json

from ..core.errors import InputError
from .common import (
    Add,
    class_names,
    final_dir,
    load_images,
    model_from,
    out_dir,
    parse_classes,
    parse_names,
    save_images,
    save_result,
)
from .options import Number, channels, count, image_file, natural, parse_channels, positive_float, priors, size, weight
from .options import names as name_list

EXAMPLES = {
    "render": "underhood render --model shapes --layer features.9 --channels 0:16   # what 16 channels look for\n"
              "  underhood render --model shapes --class all --steps 512            # one image per class\n"
              "  underhood render --layer features.16 --channels 5 --facets 4 --diversity 10\n"
              "  underhood render --layer features.9 --channels 0:8 --param pixels --priors tv=1e-3,blur=0.5",
    "dream": "underhood dream samples/photo.png --model shapes --layer features.9 --octaves 4 --size 192   "
             "# images: underhood samples",
    "invert": "underhood invert samples/star.png --model shapes --layer features.2,features.9,features.16 --seeds 3\n"
              "  underhood invert samples/star.png --layer features.16 --priors tv=1e-2,alpha=1e-5 --steps 500",
    "caricature": "underhood caricature samples/star.png --model shapes --layer features.9 --steps 256",
    "style": "underhood style samples/content.png samples/style.png --model shapes --steps 300 --style-weight 100\n"
             "  underhood style samples/content.png samples/style.png --model vgg19.pt --trust --size 256 "
             "--optimizer lbfgs",
}


def _priors(args: argparse.Namespace):
    from ..synthesis import Priors

    return Priors.parse(getattr(args, "priors", None))


def _layer(model, name: str) -> str:
    from ..core.layers import resolve

    resolve(model, name)
    return name


def _default_layer(model) -> str:
    """The middle stage: mid-level features, the classic choice for dreams and caricatures."""
    from ..core.layers import stages

    names = stages(model)
    if not names:
        raise InputError("--layer: the model has no stages to choose from; name a layer (underhood layers MODEL)")
    return names[len(names) // 2]


def check_render(args: argparse.Namespace) -> None:
    """Before any work: units (--layer) or classes (--class), not both; --channels goes with --layer."""
    if (args.layer is None) == (args.cls is None):
        raise InputError("--layer / --class: give one of them: --layer L [--channels 0:16] for units, "
                         "or --class K (index, name or 'all') for classes")
    if args.channels is not None and args.layer is None:
        raise InputError("--channels: goes with --layer (the channels of that layer); drop it or give --layer")


def cmd_render(args: argparse.Namespace) -> None:
    import torch

    from ..core.device import model_device
    from ..synthesis import RenderResult, render
    from ..synthesis import objectives as O
    from ..viz import save_figure
    from ..viz.synthesis import class_images_figure, gallery_figure, trace_figure

    priors = _priors(args)
    model = model_from(args)
    classes = class_names(model)
    if args.cls is not None:
        ids = parse_classes(args.cls, model)
        objs = [O.class_logit(k) for k in ids]
        titles = [classes[k] if classes else f"class {k}" for k in ids]
        what = "classes"
    else:
        _layer(model, args.layer)
        if args.objective == "layer":
            ids, objs, titles = [0], [O.layer(args.layer)], [f"{args.layer} (whole layer)"]
        else:
            ids = parse_channels(args.channels) or list(range(16))
            make = O.unit if args.objective == "unit" else O.channel
            objs = [make(args.layer, c) for c in ids]
            titles = [f"{args.layer}:{c}" for c in ids]
        what = args.objective
    common = dict(param=args.param, steps=args.steps, lr=args.lr, transforms=args.transforms, priors=priors,
                  progress=not args.no_progress, size=(args.size, args.size) if args.size else None)
    if args.facets > 1:  # several facets of each objective, pushed apart by the diversity term
        div_layer = args.layer if args.layer else None
        parts = []
        for j, o in enumerate(objs):
            obj = o + args.diversity * O.diversity(div_layer) if div_layer else o
            parts.append(render(model, obj, n=args.facets, seed=args.seed + j, **common))
        result = RenderResult(torch.cat([r.images for r in parts]), torch.cat([r.trace for r in parts], 1),
                              torch.cat([r.start for r in parts]), torch.cat([r.final for r in parts]),
                              {**parts[0].info, "seed": args.seed, "objective": what, "facets": args.facets})
        titles = [f"{t} #{f}" for t in titles for f in range(args.facets)]
    else:
        result = render(model, objs, seed=args.seed, **common)
    images, trace, start, final = result.images, result.trace, result.start, result.final
    out = out_dir(args, "render")
    files = save_images(out, images, "class" if args.cls is not None else "unit")
    ncols = min(8, len(images)) if args.facets == 1 else args.facets
    device = model_device(model)
    probs = None
    if args.cls is not None and args.facets == 1:
        with torch.no_grad():
            logits = model(images.to(device))
        probs = logits.softmax(1).cpu() if logits.ndim == 2 else None
    if probs is not None and classes:
        fig = class_images_figure(images, probs, classes, ids=ids, ncols=ncols,
                                  title=f"{args.model}: images maximising a class logit (title: the model's "
                                        f"probability of that class)")
    else:
        fig = gallery_figure(images, titles, ncols=ncols, title=f"{args.model}: images maximising {what}")
    save_figure(fig, out / "render.png", dpi=130)
    save_figure(trace_figure(trace, labels=titles, title="objective during optimisation"), out / "trace.png",
                dpi=110)
    result.info["titles"] = titles
    if probs is not None:
        result.info["probabilities"] = probs  # saved with the images, in result.safetensors
    save_result(result, out, "render", ["render.png", "trace.png", *files], model=args.model, layer=args.layer,
                classes=args.cls, ids=ids, objective=what, param=args.param, steps=args.steps, lr=args.lr,
                seed=args.seed, transforms=args.transforms, priors=str(priors), facets=args.facets,
                diversity=args.diversity if args.facets > 1 else None)
    rise = (final - start).mean().item()
    print(f"{len(images)} images rendered ({what}); objective rose by {rise:.3g} on average from the random start; "
          f"written to {final_dir(args, 'render').resolve()}")


def cmd_dream(args: argparse.Namespace) -> None:
    from ..core.device import model_device
    from ..core.io import write_manifest, write_tensors
    from ..synthesis import deep_dream
    from ..viz import save_figure
    from ..viz.synthesis import pairs_figure

    model = model_from(args)
    layer = _layer(model, args.layer) if args.layer else _default_layer(model)
    images = load_images(args.images, model, args.size, need_size=True)
    dreams = deep_dream(model, images.to(model_device(model)), layer, octaves=args.octaves,
                        octave_scale=args.octave_scale, steps=args.steps, lr=args.lr, seed=args.seed,
                        priors=_priors(args), progress=not args.no_progress)
    out = out_dir(args, "dream")
    files = save_images(out, dreams, "dream")
    save_figure(pairs_figure([(a, b) for a, b in zip(images, dreams)], ["original", f"dreamed at {layer}"],
                             row_titles=[str(p) for p in args.images] if len(images) > 1 else None, cell=2.6),
                out / "dream.png", dpi=120)
    write_tensors(out / "dream.safetensors", {"images": images, "dreams": dreams}, {"layer": layer})
    write_manifest(out, "dream", ["dream.png", "dream.safetensors", *files], model=args.model, layer=layer,
                   images=[str(p) for p in args.images], octaves=args.octaves, octave_scale=args.octave_scale,
                   steps=args.steps, lr=args.lr, seed=args.seed, priors=str(_priors(args)))
    print(f"{len(images)} images dreamed at {layer}; written to {final_dir(args, 'dream').resolve()}")


def cmd_invert(args: argparse.Namespace) -> None:
    from ..core.device import model_device
    from ..core.io import write_text
    from ..core.results import Collection
    from ..synthesis import invert
    from ..viz import save_figure
    from ..viz.synthesis import inversion_figure

    model = model_from(args)
    if args.layer:
        layers = [_layer(model, n.strip()) for n in args.layer.split(",") if n.strip()]
    else:
        from ..core.layers import stages

        layers = stages(model)
    if not layers:
        raise InputError("--layer: name at least one layer, e.g. --layer features.9")
    images = load_images(args.images, model, args.size, need_size=True)
    priors = _priors(args) if args.priors else None
    results = [invert(model, images.to(model_device(model)), layer, seeds=range(args.seeds),
                      steps=args.steps, lr=args.lr, tv=args.tv, alpha=args.alpha, param=args.param, priors=priors,
                      progress=not args.no_progress) for layer in layers]
    out = out_dir(args, "invert")
    files = []
    for i, path in enumerate(args.images):
        name = f"invert-{i}.png" if len(images) > 1 else "invert.png"
        save_figure(inversion_figure(images, results, index=i, title=f"{path}: what each layer keeps "
                                     f"({args.seeds} random starts)"), out / name, dpi=120)
        files.append(name)
    for inv in results:
        files += save_images(out, inv.images.flatten(0, 1), f"{inv.layer}")
    summary = {inv.layer: {"psnr_db": inv.psnr.mean().item(),
                           "feature_distance_reduction": (1 - inv.distance_end / inv.distance_start).mean().item()}
               for inv in results}
    write_text(out / "invert.json", json.dumps(summary, indent=1) + "\n")
    save_result(Collection({inv.layer: inv for inv in results}), out, "invert", [*files, "invert.json"],
                model=args.model, layers=layers, images=[str(p) for p in args.images], seeds=args.seeds,
                steps=args.steps, lr=args.lr, tv=args.tv, alpha=args.alpha, param=args.param,
                priors=str(priors) if priors else None)
    for layer, s in summary.items():
        print(f"{layer}: feature distance reduced by {s['feature_distance_reduction']:.1%}, "
              f"PSNR to the original {s['psnr_db']:.1f} dB")
    print(f"pre-images written to {final_dir(args, 'invert').resolve()}")


def cmd_caricature(args: argparse.Namespace) -> None:
    from ..core.device import model_device
    from ..core.io import write_manifest, write_tensors
    from ..synthesis import caricature
    from ..viz import save_figure
    from ..viz.synthesis import pairs_figure

    model = model_from(args)
    layer = _layer(model, args.layer) if args.layer else _default_layer(model)
    images = load_images(args.images, model, args.size, need_size=True)
    result = caricature(model, images.to(model_device(model)), layer, steps=args.steps, lr=args.lr,
                        power=args.power, seed=args.seed, param=args.param, priors=_priors(args),
                        progress=not args.no_progress)
    out = out_dir(args, "caricature")
    files = save_images(out, result, "caricature")
    save_figure(pairs_figure([(a, b) for a, b in zip(images, result)], ["original", f"caricature at {layer}"],
                             cell=2.6), out / "caricature.png", dpi=120)
    write_tensors(out / "caricature.safetensors", {"images": images, "caricatures": result}, {"layer": layer})
    write_manifest(out, "caricature", ["caricature.png", "caricature.safetensors", *files], model=args.model,
                   layer=layer, images=[str(p) for p in args.images], steps=args.steps, lr=args.lr,
                   power=args.power, seed=args.seed, priors=str(_priors(args)))
    print(f"{len(images)} caricatures at {layer}; written to {final_dir(args, 'caricature').resolve()}")


def cmd_style(args: argparse.Namespace) -> None:
    from ..core.device import model_device
    from ..synthesis import style_transfer
    from ..viz import save_figure
    from ..viz.synthesis import pairs_figure, trace_figure

    model = model_from(args)
    content = load_images([args.content], model, args.size, need_size=True, what="content image")
    style = load_images([args.style], model, args.size, need_size=True, what="style image")

    device = model_device(model)
    result = style_transfer(model, content.to(device), style.to(device),
                            content_layers=parse_names(args.content_layers),
                            style_layers=parse_names(args.style_layers), content_weight=args.content_weight,
                            style_weight=args.style_weight, tv_weight=args.tv_weight, steps=args.steps, lr=args.lr,
                            optimizer=args.optimizer, init=args.init, seed=args.seed, progress=not args.no_progress)
    out = out_dir(args, "style")
    files = save_images(out, result.image, "stylised")
    save_figure(pairs_figure([(content[0], style[0], result.image[0])], ["content", "style", "result"], cell=2.6),
                out / "style.png", dpi=120)
    save_figure(trace_figure(result.trace["total"], title="total loss", ylabel="loss"), out / "trace.png", dpi=110)
    save_result(result, out, "style", ["style.png", "trace.png", *files], model=args.model,
                content=str(args.content), style=str(args.style), layers=result.layers, steps=args.steps,
                content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
                optimizer=args.optimizer, init=args.init, seed=args.seed)
    print(f"stylised with content layers {', '.join(result.layers['content'])} and style layers "
          f"{', '.join(result.layers['style'])}; written to {final_dir(args, 'style').resolve()}")


def register(add: Add) -> None:
    """Add the commands to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""

    def common(p: argparse.ArgumentParser, steps: int, lr: float | None, with_priors: bool = True,
               with_size: bool = True) -> None:
        p.add_argument("--model", default="shapes", help="model spec (default: the built-in shapes model)")
        p.add_argument("--steps", type=count(), default=steps, help=f"optimisation steps (default {steps})")
        p.add_argument("--lr", type=positive_float(), default=lr,
                       help=f"step size (default {lr})" if lr is not None else
                       "step size (default 0.1 with adam, 1.0 with lbfgs)")
        p.add_argument("--seed", type=natural(), default=0)
        if with_priors:
            p.add_argument("--priors", type=priors,
                           help="image priors as name=value pairs: l2, tv, alpha, edges (weights), blur (sigma), "
                                "blur_every, clip_pixels, clip_contribution (percentiles), e.g. tv=1e-3,blur=0.5 "
                                "(blur and clipping need --param pixels)")
        if with_size:
            p.add_argument("--size", type=size(), help="image side in pixels (default: the model's input size)")
        p.add_argument("--no-progress", action="store_true")

    p = add("render", cmd_render, "synthetic images that excite channels, units or classes (activation maximisation)",
            check=check_render)
    common(p, 256, 0.1)
    p.add_argument("--layer", help="layer whose channels to render")
    p.add_argument("--channels", type=channels, help="channels, A:B or a list (default 0:16)")
    p.add_argument("--class", dest="cls", help="class index, name, comma list or 'all' (instead of --layer)")
    p.add_argument("--objective", default="channel", choices=["channel", "unit", "layer"],
                   help="per channel: mean over positions, the centre unit, or the whole layer (Deep Dream)")
    p.add_argument("--param", default="fourier", choices=["fourier", "pixels"],
                   help="parametrisation: decorrelated Fourier (default) or plain pixels")
    p.add_argument("--transforms", default="standard", choices=["standard", "lucid", "small", "none"],
                   help="random pad, jitter, scale and rotation at each step: standard (default; Lucid's from "
                        "128 px up, milder below), lucid, small or none")
    p.add_argument("--facets", type=count(high=64), default=1, help="images per objective, kept apart by --diversity")
    p.add_argument("--diversity", type=weight(), default=10.0, help="weight of the diversity term with --facets")

    p = add("dream", cmd_dream, "Deep Dream: amplify what a layer sees in an image, over octaves")
    p.add_argument("images", nargs="+", type=image_file, help="image files")
    common(p, 20, 0.02)
    p.add_argument("--layer", help="layer to amplify (default: the middle stage)")
    p.add_argument("--octaves", type=count(high=12), default=3)
    p.add_argument("--octave-scale", type=Number(float, low=1, strict=True, high=4), default=1.4,
                   help="size ratio between octaves, above 1 (default 1.4)")

    p = add("invert", cmd_invert, "pre-images: images whose representation at a layer matches the original's")
    p.add_argument("images", nargs="+", type=image_file, help="image files")
    common(p, 300, 0.05)
    p.add_argument("--layer", type=name_list, help="comma-separated layers (default: one per stage)")
    p.add_argument("--seeds", type=count(high=64), default=3, help="random starts per layer (default 3)")
    p.add_argument("--tv", type=weight(), default=0.1, help="total-variation weight per pixel (default 0.1)")
    p.add_argument("--alpha", type=weight(), default=0.0, help="alpha-norm weight per pixel (default 0)")
    p.add_argument("--param", default="fourier", choices=["fourier", "pixels"],
                   help="Fourier (default; recognisable deep pre-images) or pixels (as in Mahendran & Vedaldi)")

    p = add("caricature", cmd_caricature, "exaggerate what a layer's representation of an image detects")
    p.add_argument("images", nargs="+", type=image_file, help="image files")
    common(p, 200, 0.05)
    p.add_argument("--layer", help="layer (default: the middle stage)")
    p.add_argument("--power", type=weight(), default=2.0, help="weight of the cosine term (default 2)")
    p.add_argument("--param", default="fourier", choices=["fourier", "pixels"])

    p = add("style", cmd_style, "neural style transfer (Gatys et al.): CONTENT painted in the style of STYLE")
    p.add_argument("content", type=image_file, help="content image file")
    p.add_argument("style", type=image_file, help="style image file")
    common(p, 300, None, with_priors=False)
    p.add_argument("--content-layers", type=name_list, help="comma-separated (default: a middle layer)")
    p.add_argument("--style-layers", type=name_list, help="comma-separated (default: one per stage)")
    p.add_argument("--content-weight", type=weight(), default=1.0)
    p.add_argument("--style-weight", type=weight(), default=100.0)
    p.add_argument("--tv-weight", type=weight(), default=0.0, help="total-variation prior weight (default 0)")
    p.add_argument("--optimizer", default="adam", choices=["adam", "lbfgs"])
    p.add_argument("--init", default="content", choices=["content", "noise", "style"])
