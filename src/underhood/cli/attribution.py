"""Commands of the attribution family: ``explain`` and ``evaluate``."""

from __future__ import annotations

import argparse
import json

from ..core.errors import InputError
from .common import Add, final_dir, load_images, model_from, out_dir, parse_names, parse_target, save_result
from .options import count, image_file, layout_options, layout_reading, natural, one_of

EXAMPLES = {
    "explain": "underhood explain samples/star.png --model shapes --methods gradcam,smoothgrad,occlusion "
               "--target auto\n"
               "  underhood explain samples/photo.png samples/cross.png --methods guided_backprop,gradcam "
               "--layer features.10 --target star   # images: underhood samples",
    "evaluate": "underhood evaluate                    # every method x metric on the built-in model\n"
                "  underhood evaluate --methods saliency,gradcam --n 32 --full",
}


def method_names() -> list[str]:
    """The attribution methods' names, for ``--help`` (importing :mod:`underhood.attribution` would load torch;
    a test checks that this list is the registry's, in its order)."""
    return ["saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "deconvnet", "guided_backprop",
            "cam", "gradcam", "gradcam_pp", "scorecam", "guided_gradcam", "occlusion", "lime"]


def _methods(value: str) -> list[str]:
    names = parse_names(value)  # checked by the parser (options.one_of) against method_names()
    if not names:
        raise InputError("--methods: name at least one method, e.g. --methods gradcam,smoothgrad")
    return names


def cmd_explain(args: argparse.Namespace) -> None:
    import torch

    from ..attribution import explain
    from ..attribution.evaluate import method_options
    from ..attribution.registry import info
    from ..core.device import model_device
    from ..core.io import write_manifest, write_tensors
    from ..viz import attribution_figure, save_figure

    methods = _methods(args.methods)
    model = model_from(args)
    images = load_images(args.images, model)
    target = parse_target(args.target, model)
    opts = method_options(model, methods, full=True, size=tuple(images.shape[-2:]))
    reading = {k: v for k, v in layout_reading(args).items() if v is not None}
    for m in methods:
        if info(m).layer:
            opts[m].update(reading)
            if args.layer:
                opts[m]["layer"] = args.layer
    device = model_device(model)
    shared = {"amp": True} if args.amp else {}
    maps = explain(model, images.to(device), methods, target=target, **shared, **opts)
    with torch.no_grad():
        probs = model(images.to(device)).softmax(1).cpu()
    classes = list(getattr(model, "classes", None) or range(probs.shape[1]))
    shown = probs.argmax(1) if target is None else torch.full((len(images),), int(target))
    titles = [f"{classes[c]} {probs[i, c]:.0%}" for i, c in enumerate(shown.tolist())]
    out = out_dir(args, "explain")
    save_figure(attribution_figure(images, {k: v.cpu() for k, v in maps.items()}, row_titles=titles),
                out / "explain.png", dpi=130)
    write_tensors(out / "maps.safetensors", maps, {"images": [str(p) for p in args.images],
                                                   "targets": shown.tolist(), "methods": methods})
    write_manifest(out, "explain", ["explain.png", "maps.safetensors"], model=args.model, methods=methods,
                   amp=args.amp, images=[str(p) for p in args.images], target=args.target, options=opts)
    for path, title in zip(args.images, titles):
        print(f"{path}: explained {title}")
    print(f"figure and maps written to {final_dir(args, 'explain').resolve()}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ..attribution.evaluate import COLUMNS, applicable_methods, evaluate, reference_models
    from ..core.io import write_text
    from ..data import test_set
    from ..viz import curves_figure, metric_table_figure, save_figure

    model = model_from(args)
    methods = _methods(args.methods) if args.methods else applicable_methods(model)
    meta = getattr(model, "meta", {})
    dataset = meta.get("dataset")
    if dataset not in ("shapes", "digits"):
        raise InputError(f"--model: evaluate needs a model trained on 'shapes' or 'digits' (ground truth comes "
                         f"from them); {args.model!r} was trained on {dataset!r}")
    ev = evaluate(model, test_set(dataset, n=args.n), methods, n=args.n, steps=args.steps, full=args.full,
                  seed=args.seed, progress=not args.no_progress, **reference_models(model, n=args.n))
    print(ev.table())
    out = out_dir(args, "evaluate")
    write_text(out / "evaluation.txt", ev.table() + "\n")
    write_text(out / "evaluation.json", json.dumps(ev.to_dict(), indent=1) + "\n")
    csv = [",".join(["method", *ev.columns])] + [",".join(r) for r in ev.rows()]
    write_text(out / "evaluation.csv", "\n".join(csv) + "\n")
    fig = metric_table_figure(ev.values, {c: COLUMNS[c] for c in ev.columns},
                              title=f"Which maps to trust: {args.model}, {args.n} images")
    save_figure(fig, out / "evaluation.png", dpi=130)
    save_figure(curves_figure(ev.curves, title=f"Faithfulness: {args.model}, {args.n} images"),
                out / "curves.png", dpi=130)
    files = ["evaluation.txt", "evaluation.json", "evaluation.csv", "evaluation.png", "curves.png"]
    save_result(ev, out, "evaluate", files, model=args.model, n=args.n, steps=args.steps, full=args.full)
    print(f"table and figure written to {final_dir(args, 'evaluate').resolve()}")


def register(add: Add) -> None:
    """Add the commands to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    methods = one_of(method_names(), "method")
    p = add("explain", cmd_explain, "attribution maps of image files: which pixels made the decision")
    p.add_argument("images", nargs="+", type=image_file, help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", default="shapes")
    p.add_argument("--methods", default="saliency,smoothgrad,guided_backprop,gradcam,occlusion", type=methods,
                   help="comma-separated methods: " + ", ".join(method_names()))
    p.add_argument("--target", default="auto", help="auto (the predicted class), a class index or a class name")
    p.add_argument("--layer", help="layer of the CAM methods (default: the last Conv2d of a CNN, the last block "
                   "before the final norm of a transformer)")
    layout_options(p)
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast; maps agree with float32 "
                   "to a rank correlation of 0.99; faster on GPUs, slower on CPUs without native float16)")

    p = add("evaluate", cmd_evaluate, "which attribution maps to trust: a method x metric table")
    p.add_argument("--model", default="shapes")
    p.add_argument("--methods", type=methods,
                   help="comma-separated methods (default: every method that applies to the model)")
    p.add_argument("--n", type=count(), default=16, help="held-out images (default 16)")
    p.add_argument("--steps", type=count(), default=20, help="deletion / insertion steps (default 20)")
    p.add_argument("--full", action="store_true", help="the methods' full settings (slower)")
    p.add_argument("--seed", type=natural(), default=0)
    p.add_argument("--no-progress", action="store_true")
