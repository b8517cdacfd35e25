"""Commands of the models family: ``models``, ``layers``, ``predict`` and ``train`` (with ``--adversarial``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import InputError
from .common import Add, final_dir, load_images, model_from, out_dir
from .options import (
    MAX_SIDE,
    Number,
    budget,
    count,
    data_spec,
    eps_value,
    image_file,
    natural,
    positive_float,
    training_data,
)

if TYPE_CHECKING:
    import torch

EXAMPLES = {
    "models": "underhood models",
    "layers": "underhood layers shapes\n  underhood layers my_model.pt --input-size 3 224 224\n"
              "  underhood layers --model torchvision:resnet18 --weights none",
    "predict": "underhood predict samples/star.png samples/photo.png --model shapes --top 3   "
               "# images: underhood samples",
    "train": "underhood train --data shapes --arch shapes --epochs 10 --seed 0 --out shapes.safetensors\n"
             "  underhood train --data shapes --arch shapes --epochs 8 --n-train 10000 --adversarial fgsm "
             "--out shapes-robust.safetensors\n"
             "  underhood train --data shapes --epochs 6 --probe-every 1 --out run/shapes.safetensors   "
             "# snapshots, probe curves",
}

ARCHITECTURES = ("shapes", "shapes-resnet", "digits")
"""The built-in architectures ``train`` builds (a test checks them against ``underhood.models``' registry; importing
it here would load torch)."""



def cmd_models(args: argparse.Namespace) -> None:
    from ..models.loading import BUILTIN, list_models

    shipped = set(list_models())
    width = max(len(name) for name in BUILTIN) + 2
    for name, text in BUILTIN.items():
        print(f"{name:{width}s}{text}{'' if name in shipped else '  (weights missing)'}")


def check_layers(args: argparse.Namespace) -> None:
    """The model as the positional argument or as --model (as every other command takes it), one of them."""
    if args.model and args.model_option and args.model != args.model_option:
        raise InputError(f"--model: the model is given twice ({args.model!r} and --model {args.model_option!r}); "
                         "give it once")
    args.model = args.model or args.model_option
    if not args.model:
        raise InputError("model: name the model, e.g. underhood layers shapes (or --model torchvision:resnet18)")


def cmd_layers(args: argparse.Namespace) -> None:
    from ..core.io import write_manifest, write_text
    from ..core.layers import format_table, layers, parameter_count

    model = model_from(args)
    size = tuple(args.input_size) if args.input_size else None
    rows = layers(model, input_size=size)
    text = format_table(rows)
    print(text)
    print(f"\n{parameter_count(model):,} parameters")
    out = out_dir(args, "layers")
    write_text(out / "layers.txt", text + "\n")
    write_text(out / "layers.json", json.dumps([r.__dict__ for r in rows], indent=1) + "\n")
    write_manifest(out, "layers", ["layers.txt", "layers.json"], model=args.model)
    print(f"table written to {final_dir(args, 'layers').resolve()}")


def cmd_predict(args: argparse.Namespace) -> None:
    import torch

    from ..core.device import model_device
    from ..core.io import write_manifest, write_text

    model = model_from(args)
    images = load_images(args.images, model)
    with torch.no_grad():
        probs = torch.softmax(model(images.to(model_device(model))), 1).cpu()
    results = []
    for path, p in zip(args.images, probs):
        top = p.topk(min(args.top, len(p)))
        ranked = [{"class": model.classes[i], "index": i, "probability": round(float(v), 6)}
                  for v, i in zip(top.values.tolist(), top.indices.tolist())]
        results.append({"image": str(path), "top": ranked})
        print(f"{path}: " + ", ".join(f"{r['class']} {r['probability']:.1%}" for r in ranked))
    out = out_dir(args, "predict")
    write_text(out / "predictions.json", json.dumps(results, indent=2) + "\n")
    write_manifest(out, "predict", ["predictions.json"], model=args.model)
    print(f"predictions written to {(final_dir(args, 'predict') / 'predictions.json').resolve()}")


def check_train(args: argparse.Namespace) -> None:
    """Before any work: the adversarial options need --adversarial, and the budget its norm's ceiling."""
    if not args.adversarial and (args.adversarial_eps is not None or args.adversarial_steps is not None):
        given = "--adversarial-eps" if args.adversarial_eps is not None else "--adversarial-steps"
        raise InputError(f"{given}: only used with --adversarial fgsm|pgd|vat; add --adversarial or drop {given}")
    if args.adversarial in ("fgsm", "pgd") and args.adversarial_eps is not None:
        eps_value(args.adversarial_eps, "linf", "--adversarial-eps")
    if args.probe_data is not None and args.probe_every is None:
        raise InputError("--probe-data: only used with --probe-every N; add --probe-every or drop --probe-data")
    if args.probe_every is not None and args.checkpoint_every is not None \
            and args.probe_every % args.checkpoint_every:
        raise InputError(f"--probe-every: {args.probe_every} is not a multiple of --checkpoint-every "
                         f"{args.checkpoint_every} (probes run on the snapshots); give --probe-every "
                         f"{args.checkpoint_every * max(1, round(args.probe_every / args.checkpoint_every))} "
                         "or --checkpoint-every 1")
    if args.checkpoint_every or args.probe_every:
        from ..models.checkpoints import check_folder, default_folder

        check_folder(default_folder(_weights_file(args)))


def _weights_file(args: argparse.Namespace) -> Path:
    """``--out`` as the weights file (a folder gets ``ARCH.safetensors`` in it)."""
    out = Path(args.out) if args.out else Path("underhood-out") / "train" / f"{args.arch}.safetensors"
    return out if out.suffix == ".safetensors" else out / f"{args.arch}.safetensors"


def cmd_train(args: argparse.Namespace) -> None:
    from ..models.training import train

    loss = None
    if args.adversarial:
        from ..adversarial.training import training_loss

        loss = training_loss(args.adversarial, eps=args.adversarial_eps,
                             steps=7 if args.adversarial_steps is None else args.adversarial_steps, seed=args.seed)
    out = _weights_file(args)
    every = args.checkpoint_every or args.probe_every
    callback = None
    if args.probe_every:
        from ..transfer.history import probe_callback, probe_sets

        probe_train, probe_test = probe_sets(args.data, args.probe_data)
        callback = probe_callback(probe_train, probe_test, every=args.probe_every)
    result = train(args.arch, data=args.data, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                   lr=args.lr, n_train=args.n_train, out=out, device=args.device, progress=not args.no_progress,
                   loss=loss, checkpoint_every=every, on_checkpoint=callback)
    print(f"held-out accuracy {result.accuracy:.4f}; weights written to {result.path}")
    if every:
        from ..models.checkpoints import default_folder, load_checkpoints

        folder = default_folder(out)
        epochs = ", ".join(str(c.epoch) for c in load_checkpoints(folder))
        print(f"snapshots of epochs {epochs} written to {folder}")
    if callback is not None and callback.history is not None:
        _save_probe_history(callback.history, default_folder(out) / "probe-history", args)
    if args.adversarial:
        _robust_table(result.model, args.arch, args.data, args.device)


def _save_probe_history(history, folder: Path, args: argparse.Namespace) -> None:
    """The probe curves as a result folder: probe-history.png, probe-history.json and the manifest (atomic)."""
    from ..core.io import atomic_dir, write_text
    from ..viz import save_figure
    from .common import save_result

    table = {"pool": history.pool, "n_train": history.n_train, "n_test": history.n_test, "chance": history.chance,
             "pixels": history.pixels, "layers": history.layers, "rf": history.rf,
             "epochs": [{"epoch": e, "step": history.steps.get(e), "model_accuracy": history.model_accuracy.get(e),
                         "accuracy": history.curves[e]} for e in history.epochs]}
    with atomic_dir(folder, option="--out") as staging:
        save_figure(history.figure(), staging / "probe-history.png", dpi=120)
        write_text(staging / "probe-history.json", json.dumps(table, indent=1) + "\n")
        save_result(history, staging, "train", ["probe-history.png", "probe-history.json"], data=args.data,
                    probe_data=args.probe_data, probe_every=args.probe_every, arch=args.arch, seed=args.seed)
    last = history.curves[history.epochs[-1]]
    print("probe accuracy at epoch " + f"{history.epochs[-1]}: " + ", ".join(f"{n} {v:.1%}" for n, v in last.items())
          + (f" (pixels {history.pixels:.1%})" if history.pixels is not None else ""))
    print(f"probe curves over training (probe-history.png, probe-history.json) written to {folder}")


def _robust_table(model: torch.nn.Module, arch: str, data: str, device: str) -> None:
    """Clean and robust accuracy of an adversarially trained model, beside the standard built-in one."""
    from ..adversarial.training import robust_accuracy
    from ..data import test_set
    from ..models.loading import list_models, load_model

    rows = [("adversarially trained", model.meta["test_accuracy"], model.meta["robust_accuracy"])]
    if arch in list_models():
        standard = load_model(arch, device=device)
        if standard.meta.get("dataset") == data:
            robust = robust_accuracy(standard, test_set(data))
            rows.insert(0, (f"standard ({arch!r})", standard.meta["test_accuracy"], robust))
    print(f"{'model':<26}{'clean':>8}{'robust':>8}   ({model.meta['robust_eval']})")
    for name, clean, robust in rows:
        print(f"{name:<26}{clean:>8.1%}{robust:>8.1%}")


def register(add: Add) -> None:
    """Add the commands to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    add("models", cmd_models, "list the built-in models", model=False, output=None)

    p = add("layers", cmd_layers, "the architecture table: shapes, parameters, receptive fields", check=check_layers)
    p.add_argument("model", nargs="?", help="model spec: built-in name, file, package.module:factory, "
                                            "torchvision:NAME or timm:NAME (or give it as --model)")
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="the model spec, as for the other commands")
    p.add_argument("--input-size", type=Number(int, low=1, high=MAX_SIDE), nargs=3, metavar=("C", "H", "W"),
                   help="input size if the model has none")

    p = add("predict", cmd_predict, "classify image files")
    p.add_argument("images", nargs="+", type=image_file, help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", default="shapes")
    p.add_argument("--top", type=count(), default=3, help="classes to show per image (default 3)")

    p = add("train", cmd_train, "train a built-in architecture and write safetensors weights", model=False,
            output="file", check=check_train)
    p.add_argument("--out", help="weights file (.safetensors), or a folder to write ARCH.safetensors in "
                                 "(default ./underhood-out/train/ARCH.safetensors)")
    p.add_argument("--data", default="shapes", type=training_data,
                   help="shapes, shapes-spurious[:p], shapes-random-labels, digits or an image folder")
    p.add_argument("--arch", default="shapes", choices=ARCHITECTURES)
    p.add_argument("--epochs", type=count(), default=10)
    p.add_argument("--seed", type=natural(), default=0)
    p.add_argument("--batch-size", type=count(), default=64)
    p.add_argument("--lr", type=positive_float(), default=3e-3)
    p.add_argument("--n-train", type=count(), default=16_000, help="fresh procedural images per epoch")
    p.add_argument("--adversarial", choices=("fgsm", "pgd", "vat"),
                   help="adversarial training: fast FGSM with random start, PGD, or virtual adversarial training")
    p.add_argument("--adversarial-eps", metavar="EPS", type=budget,
                   help="radius: L-inf for fgsm/pgd (default 8/255), L2 for vat (default 2.0)")
    p.add_argument("--adversarial-steps", type=count(), metavar="K", help="PGD steps per batch (default 7)")
    p.add_argument("--checkpoint-every", type=count(), metavar="N",
                   help="keep weight snapshots (safetensors, with the step and metrics) of epoch 0, every N-th epoch "
                        "and the last in OUT-STEM-checkpoints/ beside the weights")
    p.add_argument("--probe-every", type=count(), metavar="N",
                   help="linear probes of every stage at epoch 0, every N-th epoch and the last (snapshots kept "
                        "there; a multiple of --checkpoint-every); figure and table in OUT-STEM-checkpoints/"
                        "probe-history/")
    p.add_argument("--probe-data", type=data_spec, metavar="SPEC",
                   help="the probes' training images (default: 1,000 shapes no training epoch draws, or the digits "
                        "training split's first 1,000); scored on 500 held-out images")
    p.add_argument("--no-progress", action="store_true")
