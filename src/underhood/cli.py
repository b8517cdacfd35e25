"""The command line: a thin layer over the public API.

Every command has ``--help`` with an example, writes under ``--out`` (default
``./underhood-out/<command>``) atomically with a ``manifest.json``, and on bad input prints
one line and exits non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .core.errors import InputError, UnderhoodError

if TYPE_CHECKING:
    import torch

EXIT_ERROR = 2


def _out(args: argparse.Namespace, command: str) -> Path:
    return Path(args.out) if args.out else Path("underhood-out") / command


def _model(args: argparse.Namespace):
    from .models.loading import load_model

    return load_model(args.model, device=args.device, trust=getattr(args, "trust", False))


def cmd_models(args: argparse.Namespace) -> None:
    from .models.loading import BUILTIN, list_models

    shipped = set(list_models())
    width = max(len(name) for name in BUILTIN) + 2
    for name, text in BUILTIN.items():
        print(f"{name:{width}s}{text}{'' if name in shipped else '  (weights missing)'}")


def cmd_layers(args: argparse.Namespace) -> None:
    from .core.io import write_manifest, write_text
    from .core.layers import format_table, layers, parameter_count

    model = _model(args)
    size = tuple(args.input_size) if args.input_size else None
    rows = layers(model, input_size=size)
    text = format_table(rows)
    print(text)
    print(f"\n{parameter_count(model):,} parameters")
    out = _out(args, "layers")
    write_text(out / "layers.txt", text + "\n")
    write_text(out / "layers.json", json.dumps([r.__dict__ for r in rows], indent=1) + "\n")
    write_manifest(out, "layers", ["layers.txt", "layers.json"], model=args.model)


def cmd_predict(args: argparse.Namespace) -> None:
    import torch

    from .core.io import write_manifest, write_text
    from .data.io import load_image

    model = _model(args)
    size = model.input_size
    channels = size[0] if size else 3
    images = torch.cat([load_image(p, size=tuple(size[1:]) if size else None, channels=channels)
                        for p in args.images])
    with torch.no_grad():
        probs = torch.softmax(model(images.to(next(model.parameters()).device)), 1).cpu()
    results = []
    for path, p in zip(args.images, probs):
        top = p.topk(min(args.top, len(p)))
        ranked = [{"class": model.classes[i], "index": i, "probability": round(float(v), 6)}
                  for v, i in zip(top.values.tolist(), top.indices.tolist())]
        results.append({"image": str(path), "top": ranked})
        print(f"{path}: " + ", ".join(f"{r['class']} {r['probability']:.1%}" for r in ranked))
    out = _out(args, "predict")
    write_text(out / "predictions.json", json.dumps(results, indent=2) + "\n")
    write_manifest(out, "predict", ["predictions.json"], model=args.model)


def cmd_train(args: argparse.Namespace) -> None:
    from .models.training import train

    out = Path(args.out) if args.out else Path("underhood-out") / "train" / f"{args.arch}.safetensors"
    if out.suffix != ".safetensors":
        out = out / f"{args.arch}.safetensors"
    result = train(args.arch, data=args.data, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                   lr=args.lr, n_train=args.n_train, out=out, device=args.device, progress=not args.no_progress,
                   adversarial=args.adversarial, adversarial_eps=args.adversarial_eps,
                   adversarial_steps=args.adversarial_steps)
    print(f"held-out accuracy {result.accuracy:.4f}; weights written to {result.path}")
    if args.adversarial:
        _robust_table(result.model, args.arch, args.data, args.device)


def _robust_table(model: torch.nn.Module, arch: str, data: str, device: str) -> None:
    """Clean and robust accuracy of an adversarially trained model, beside the standard built-in one."""
    from .models.loading import list_models, load_model
    from .models.training import robust_accuracy, test_set

    rows = [("adversarially trained", model.meta["test_accuracy"], model.meta["robust_accuracy"])]
    if arch in list_models():
        standard = load_model(arch, device=device)
        if standard.meta.get("dataset") == data:
            robust = robust_accuracy(standard, test_set(data))
            rows.insert(0, (f"standard ({arch!r})", standard.meta["test_accuracy"], robust))
    print(f"{'model':<26}{'clean':>8}{'robust':>8}   ({model.meta['robust_eval']})")
    for name, clean, robust in rows:
        print(f"{name:<26}{clean:>8.1%}{robust:>8.1%}")


def cmd_demo(args: argparse.Namespace) -> None:
    import torch

    from .core.io import write_manifest
    from .models.training import test_set
    from .report import Context, build

    start = time.perf_counter()
    out = _out(args, "demo")
    model = _model(args)
    dataset = getattr(model, "meta", {}).get("dataset", "shapes")
    if dataset not in ("shapes", "digits"):
        raise InputError(f"model: the demo needs a model trained on 'shapes' or 'digits', {args.model!r} was "
                         f"trained on {dataset!r}")
    data = test_set(dataset)[: args.n]
    torch.manual_seed(args.seed)
    ctx = Context(model=model, spec=args.model, data=data, out=out, seed=args.seed, options={"full": args.full})
    path = build(ctx, out / "report.html", progress=not args.no_progress)
    seconds = time.perf_counter() - start
    write_manifest(out, "demo", ["report.html", *ctx.figures], model=args.model, seconds=round(seconds, 2))
    print(f"report written to {path.resolve()} ({seconds:.1f} s)")


EXAMPLES = {
    "demo": "underhood demo                      # the tour of the built-in model -> underhood-out/demo/report.html\n"
            "  underhood demo --model shapes-resnet --out /tmp/tour",
    "models": "underhood models",
    "layers": "underhood layers shapes\n  underhood layers my_model.pt --input-size 3 224 224",
    "predict": "underhood predict cat.png dog.jpg --model shapes --top 3",
    "explain": "underhood explain star.png --model shapes --methods gradcam,smoothgrad,occlusion --target auto\n"
               "  underhood explain a.png b.png --methods guided_backprop,gradcam --layer features.10 --target star",
    "evaluate": "underhood evaluate                    # every method x metric on the built-in model\n"
                "  underhood evaluate --methods saliency,gradcam --n 32 --full",
    "train": "underhood train --data shapes --arch shapes --epochs 10 --seed 0 --out shapes.safetensors\n"
             "  underhood train --data shapes --arch shapes --epochs 8 --n-train 10000 --adversarial fgsm "
             "--out shapes-robust.safetensors",
}


from .commands import adversarial as _adversarial  # noqa: E402  (commands of the adversarial family)
from .commands import synthesis as _synthesis  # noqa: E402  (commands of the synthesis family)
from .commands import units as _units  # noqa: E402  (commands of the weights and activations families)

EXAMPLES.update(_units.EXAMPLES)
EXAMPLES.update(_synthesis.EXAMPLES)
EXAMPLES.update(_adversarial.EXAMPLES)


def _target(value: str, model) -> object:
    """``auto`` (the predicted class), a class index, or a class name of the model."""
    if value == "auto":
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    classes = list(getattr(model, "classes", []) or [])
    if value in classes:
        return classes.index(value)
    raise InputError(f"--target: {value!r} is neither 'auto', a class index nor a class name"
                     + (f" ({', '.join(classes)})" if classes else ""))


def _methods(value: str) -> list[str]:
    from .attribution import get

    names = [m.strip() for m in value.split(",") if m.strip()]
    if not names:
        raise InputError("--methods: name at least one method, e.g. --methods gradcam,smoothgrad")
    for name in names:
        get(name)  # unknown names fail here, before any work
    return names


def cmd_explain(args: argparse.Namespace) -> None:
    import torch

    from .attribution import explain
    from .attribution.evaluate import method_options
    from .core.io import atomic_path, write_manifest
    from .data.io import load_image
    from .viz import attribution_figure, save_figure

    methods = _methods(args.methods)
    model = _model(args)
    size = getattr(model, "input_size", None)
    channels = size[0] if size else 3
    images = torch.cat([load_image(p, size=tuple(size[1:]) if size else None, channels=channels)
                        for p in args.images])
    target = _target(args.target, model)
    opts = method_options(model, methods, full=True, size=tuple(images.shape[-2:]))
    if args.layer:
        for m in methods:
            if "cam" in m:
                opts[m]["layer"] = args.layer
    maps = explain(model, images.to(next(model.parameters()).device), methods, target=target, **opts)
    with torch.no_grad():
        probs = model(images.to(next(model.parameters()).device)).softmax(1).cpu()
    classes = list(getattr(model, "classes", None) or range(probs.shape[1]))
    shown = probs.argmax(1) if target is None else torch.full((len(images),), int(target))
    titles = [f"{classes[c]} {probs[i, c]:.0%}" for i, c in enumerate(shown.tolist())]
    out = _out(args, "explain")
    save_figure(attribution_figure(images, {k: v.cpu() for k, v in maps.items()}, row_titles=titles),
                out / "explain.png", dpi=130)
    from safetensors.torch import save_file

    with atomic_path(out / "maps.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in maps.items()}, str(tmp),
                  metadata={"images": json.dumps([str(p) for p in args.images]), "targets": json.dumps(
                      shown.tolist()), "methods": json.dumps(methods)})
    write_manifest(out, "explain", ["explain.png", "maps.safetensors"], model=args.model, methods=methods,
                   images=[str(p) for p in args.images], target=args.target, options=opts)
    for path, title in zip(args.images, titles):
        print(f"{path}: explained {title}")
    print(f"figure and maps written to {out.resolve()}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .attribution.evaluate import COLUMNS, applicable_methods, evaluate, reference_models
    from .core.io import write_manifest, write_text
    from .models.training import test_set
    from .viz import curves_figure, metric_table_figure, save_figure

    model = _model(args)
    methods = _methods(args.methods) if args.methods else applicable_methods(model)
    meta = getattr(model, "meta", {})
    dataset = meta.get("dataset")
    if dataset not in ("shapes", "digits"):
        raise InputError(f"--model: evaluate needs a model trained on 'shapes' or 'digits' (ground truth comes "
                         f"from them); {args.model!r} was trained on {dataset!r}")
    ev = evaluate(model, test_set(dataset), methods, n=args.n, steps=args.steps, full=args.full,
                  seed=args.seed, progress=not args.no_progress, **reference_models(model, n=args.n))
    print(ev.table())
    out = _out(args, "evaluate")
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
    write_manifest(out, "evaluate", files, model=args.model, n=args.n, steps=args.steps, full=args.full)
    print(f"table and figure written to {out.resolve()}")


def _method_names() -> list[str]:
    # the names only: importing underhood.attribution would load torch for `--help`
    return ["saliency", "input_x_gradient", "smoothgrad", "integrated_gradients", "deconvnet", "guided_backprop",
            "cam", "gradcam", "gradcam_pp", "scorecam", "guided_gradcam", "occlusion", "lime"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="underhood", description="Open the black box of trained image models.",
                                     epilog="Run `underhood COMMAND --help` for each command's options and example.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"underhood {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable, help: str, model: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(fn=fn)
        p.add_argument("--out", help=f"output folder (default ./underhood-out/{name})")
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
        if model:
            p.add_argument("--trust", action="store_true",
                           help="allow loading pickled Python objects from a checkpoint you trust")
        return p

    p = add("demo", cmd_demo, "the whole tour on a model, into one self-contained report.html")
    p.add_argument("--model", default="shapes", help="model spec (default: the built-in shapes model)")
    p.add_argument("--n", type=int, default=64, help="held-out images to use (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="bigger settings for the heavy parts (slower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add("models", cmd_models, "list the built-in models", model=False)
    p = add("layers", cmd_layers, "the architecture table: shapes, parameters, receptive fields")
    p.add_argument("model", help="model spec: built-in name, file or package.module:factory")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="input size if the model has none")
    p = add("predict", cmd_predict, "classify image files")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", default="shapes")
    p.add_argument("--top", type=int, default=3, help="classes to show per image")
    p = add("explain", cmd_explain, "attribution maps of image files: which pixels made the decision")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", default="shapes")
    p.add_argument("--methods", default="saliency,smoothgrad,guided_backprop,gradcam,occlusion",
                   help="comma-separated methods: " + ", ".join(_method_names()))
    p.add_argument("--target", default="auto", help="auto (the predicted class), a class index or a class name")
    p.add_argument("--layer", help="layer of the CAM methods (default: the layer CAM uses, else the last conv)")
    p = add("evaluate", cmd_evaluate, "which attribution maps to trust: a method x metric table")
    p.add_argument("--model", default="shapes")
    p.add_argument("--methods", help="comma-separated methods (default: every method that applies to the model)")
    p.add_argument("--n", type=int, default=16, help="held-out images (default 16)")
    p.add_argument("--steps", type=int, default=20, help="deletion / insertion steps (default 20)")
    p.add_argument("--full", action="store_true", help="the methods' full settings (slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p = add("train", cmd_train, "train a built-in architecture and write safetensors weights", model=False)
    p.add_argument("--data", default="shapes", help="shapes, shapes-spurious[:p], digits or an image folder")
    p.add_argument("--arch", default="shapes", help="shapes, shapes-resnet or digits")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-train", type=int, default=16_000, help="fresh procedural images per epoch")
    p.add_argument("--adversarial", choices=("fgsm", "pgd", "vat"),
                   help="adversarial training: fast FGSM with random start, PGD, or virtual adversarial training")
    p.add_argument("--adversarial-eps", metavar="EPS",
                   help="radius: L-inf for fgsm/pgd (default 8/255), L2 for vat (default 2.0)")
    p.add_argument("--adversarial-steps", type=int, default=7, metavar="K", help="PGD steps per batch (default 7)")
    p.add_argument("--no-progress", action="store_true")
    _units.register(add)
    _synthesis.register(add)
    _adversarial.register(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``underhood`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        args.fn(args)
    except (UnderhoodError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc) if isinstance(exc, UnderhoodError) else f"{exc.__class__.__name__}: {exc}"
        print(f"underhood {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"underhood {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
