"""Commands of the transfer family: ``probe`` (linear probes on every stage's frozen features) and ``transfer``
(Yosinski et al.'s transfer grid for a built-in architecture, or frozen-versus-fine-tuned curves of a user's model).

``--data`` is what the probes learn from and ``--test-data`` what they are scored on. A built-in
dataset given as ``--data`` is drawn from its training side (procedural shapes with
:data:`TRAIN_SEED`, ``digits`` from its train split), so it never overlaps the held-out set that
``--test-data`` defaults to; a folder without ``--test-data`` is split in two halves (seeded).
"""

from __future__ import annotations

import argparse
import json

from .common import Add, final_dir, model_from, out_dir, parse_names, save_result
from .options import class_split, count, data_spec, depths, fractions, natural, one_of, positive_float
from .options import names as name_list

EXAMPLES = {
    "transfer": "underhood transfer --arch shapes --data shapes:6000 --seeds 3 --compare-dissimilar\n"
                "  underhood transfer --arch digits --data digits --split 0,1,2,3,4/5,6,7,8,9 --depths 1,4\n"
                "  underhood transfer --model mine.pt --target-data photos/ --layers layer2,layer3,layer4",
    "probe": "underhood probe --model shapes --data shapes:3000 --layers features.3,features.10,pool\n"
             "  underhood probe --model digits --data digits:train --test-data digits:test --pool max --no-random",
}

TRAIN_SEED = 1
"""Seed of the procedural shapes a probe learns from (the held-out set uses ``SHAPES_TEST_SEED``)."""


def probe_data(args: argparse.Namespace, model):
    """``(train, test)`` ImageSets of ``--data`` / ``--test-data`` at the model's input size (see the module)."""
    import torch

    from ..core.errors import InputError
    from ..data import from_spec

    size = getattr(model, "input_size", None)
    shape = {"size": tuple(size[1:]) if size else None, "channels": size[0] if size else None}
    meta = getattr(model, "meta", {}) or {}
    spec = args.data or ("digits:train" if meta.get("dataset") == "digits" else "shapes:2000")
    name, _, arg = spec.partition(":")
    if name in ("shapes", "shapes-spurious"):
        train, held_out = from_spec(spec, seed=TRAIN_SEED, **shape), "shapes" if name == "shapes" else spec
    elif name == "digits":
        if arg == "test" and args.test_data is None:
            raise InputError("--data: digits:test is the held-out split the probes are scored on; give "
                             "--data digits:train (or another --test-data)")
        train, held_out = from_spec(f"digits:{arg or 'train'}", **shape), "digits:test"
    else:
        train, held_out = from_spec(spec, **shape), None
    if args.test_data is not None or held_out is not None:
        return train, from_spec(args.test_data or held_out, **shape)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    half = len(train) // 2
    return train[order[:half]], train[order[half:]]


def cmd_probe(args: argparse.Namespace) -> None:
    from ..core.io import write_text
    from ..core.names import resolve
    from ..transfer import probe
    from ..viz import save_figure

    model = model_from(args)
    layers = parse_names(args.layers)
    for name in layers or ():
        if name != "pixels":
            resolve(model, name)  # a typo fails before the images are made
    train, test = probe_data(args, model)
    result = probe(model, train, test, layers=layers, pool=args.pool,
                   baselines=("pixels",) if args.no_random else ("pixels", "random"), l2=args.l2, seed=args.seed,
                   batch_size=args.batch_size, progress=not args.no_progress)
    out = out_dir(args, "probe")
    save_figure(result.figure(), out / "probe.png", dpi=120)
    table = {"pool": result.pool, "l2": result.l2, "n_train": result.n_train, "n_test": result.n_test,
             "chance": result.chance, "pixels": result.pixels, "model_accuracy": result.model_accuracy,
             "layers": [{"layer": n, "accuracy": result.accuracy[n], "random": result.random.get(n),
                         "rf": result.rf.get(n)} for n in result.layers]}
    write_text(out / "probe.json", json.dumps(table, indent=1) + "\n")
    save_result(result, out, "probe", ["probe.png", "probe.json"], model=args.model, data=args.data,
                test_data=args.test_data, layers=result.layers, pool=args.pool, l2=args.l2, seed=args.seed,
                random=not args.no_random)
    for n in result.layers:
        random = f" (random copy {result.random[n]:.1%})" if n in result.random else ""
        print(f"{n}: probe accuracy {result.accuracy[n]:.1%}{random}")
    own = f", the model itself {result.model_accuracy:.1%}" if result.model_accuracy is not None else ""
    pixels = f"pixels {result.pixels:.1%}, " if result.pixels is not None else ""
    print(f"{pixels}chance {result.chance:.1%}{own}; {result.n_train} train / {result.n_test} test images; "
          f"written to {final_dir(args, 'probe').resolve()}")


def _split(text: str):
    if text in ("random", "dissimilar"):
        return text
    return tuple([int(c) if c.strip().isdigit() else c.strip() for c in half.split(",") if c.strip()]
                 for half in text.split("/"))


def check_transfer(args: argparse.Namespace) -> None:
    """--arch (the grid) or --model (a user's model), and the options each one takes."""
    from ..core.errors import InputError

    if args.model and args.arch:
        raise InputError("--model: give --arch for Yosinski's grid on a built-in architecture, or --model for "
                         "your own network's frozen-versus-fine-tuned curves, not both")
    if args.model:
        if args.target_data is None:
            raise InputError("--target-data: --model needs the new task's images, e.g. --target-data photos/ "
                             "(a folder with one sub-folder per class)")
        for option, value in (("--split", args.split), ("--depths", args.depths), ("--treatments", args.treatments),
                              ("--compare-dissimilar", args.compare_dissimilar or None), ("--size", args.size),
                              ("--reduced", args.reduced)):
            if value is not None:
                raise InputError(f"{option}: belongs to the --arch grid; with --model use --layers, --epochs, --lr")
    elif args.target_data is not None or args.layers is not None:
        given = "--target-data" if args.target_data is not None else "--layers"
        raise InputError(f"{given}: belongs to --model (your own network); the --arch grid takes --data and --depths")


def cmd_transfer(args: argparse.Namespace) -> None:
    if args.model:
        _transfer_model(args)
    else:
        _transfer_grid(args)


def _grid_data(args: argparse.Namespace):
    from ..data import from_spec

    spec = args.data or ("digits" if args.arch == "digits" else "shapes:6000")
    name, _, _ = spec.partition(":")
    if name == "shapes":
        return spec
    if name == "digits":
        return "digits"
    return from_spec(spec)


def _transfer_grid(args: argparse.Namespace) -> None:
    from ..core.io import write_text
    from ..transfer import transfer_curve
    from ..transfer.curve import compare
    from ..viz import save_figure
    from ..viz.transfer_curves import dissimilar_figure, generality_figure, transfer_figure
    from .common import KEEP

    arch = args.arch or "shapes"
    data = _grid_data(args)
    out, final = out_dir(args, "transfer"), final_dir(args, "transfer")
    resume = final / KEEP[0]
    options = dict(treatments=args.treatments.split(",") if args.treatments else ("BnB", "BnB+", "AnB", "AnB+"),
                   controls=() if args.no_random else ("random",),
                   reduced=() if args.reduced == "none" else [float(v) for v in (args.reduced or "0.25").split(",")],
                   seeds=args.seeds or 3, depths=[int(d) for d in args.depths.split(",")] if args.depths else None,
                   size=args.size or 32, epochs=args.epochs or 6, finetune_epochs=args.finetune_epochs,
                   lr=args.lr or 3e-3, finetune_lr=args.lr or 3e-3, device=args.device,
                   progress=not args.no_progress)
    split = _split(args.split or "random")
    result = transfer_curve(arch, data, split=split, out=resume / "grid", **options)
    files = ["transfer.png", "generality.png", "transfer.json"]
    save_figure(result.figure(), out / "transfer.png", dpi=120)
    save_figure(generality_figure(result), out / "generality.png", dpi=120)
    table = {"arch": arch, "data": args.data, "split": result.split, "halves": result.halves,
             "layers": result.layers, "rf": result.rf, "chance": result.chance, "settings": result.settings,
             "runs": result.runs, "generality": result.generality(), "statements": result.statements()}
    lines = result.statements()
    if args.compare_dissimilar:
        other = transfer_curve(arch, data, split="dissimilar", out=resume / "dissimilar", **options)
        save_figure(dissimilar_figure(result, other), out / "dissimilar.png", dpi=120)
        save_figure(transfer_figure(other), out / "transfer-dissimilar.png", dpi=120)
        other.save(out / "dissimilar", command="transfer", split="dissimilar")
        table["dissimilar"] = {"halves": other.halves, "runs": other.runs, "statements": other.statements(),
                               "comparison": compare(result, other)}
        lines += compare(result, other)
        files += ["dissimilar.png", "transfer-dissimilar.png", "dissimilar"]
    write_text(out / "transfer.json", json.dumps(table, indent=1, default=str) + "\n")
    save_result(result, out, "transfer", files, arch=arch, data=args.data, split=args.split or "random",
                seeds=args.seeds or 3)
    for line in lines:
        print(f"- {line}")
    print(f"{len(result.runs)} networks in {result.info['seconds']:.0f} s; written to {final.resolve()}")


def _transfer_model(args: argparse.Namespace) -> None:
    from ..core.io import write_text
    from ..data import from_spec
    from ..transfer import finetune_curve
    from ..viz import save_figure

    model = model_from(args)
    size = getattr(model, "input_size", None)
    shape = {"size": tuple(size[1:]) if size else None, "channels": size[0] if size else None}
    train = from_spec(args.target_data, **shape)
    if args.test_data is not None:
        test = from_spec(args.test_data, **shape)
    else:
        import torch

        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
        cut = (3 * len(train)) // 4
        train, test = train[order[:cut]], train[order[cut:]]
    result = finetune_curve(model, train, test, layers=parse_names(args.layers), seeds=args.seeds or 1,
                            epochs=args.epochs or 3, lr=args.lr or 1e-4, seed=args.seed,
                            progress=not args.no_progress)
    out = out_dir(args, "transfer")
    save_figure(result.figure(), out / "finetune.png", dpi=120)
    table = {"model": args.model, "target_data": args.target_data, "test_data": args.test_data,
             "classes": result.classes, "layers": result.layers, "rf": result.rf, "chance": result.chance,
             "settings": result.settings, "runs": result.runs, "statements": result.statements()}
    write_text(out / "finetune.json", json.dumps(table, indent=1) + "\n")
    save_result(result, out, "transfer", ["finetune.png", "finetune.json"], model=args.model,
                target_data=args.target_data, test_data=args.test_data)
    for line in result.statements():
        print(f"- {line}")
    print(f"written to {final_dir(args, 'transfer').resolve()}")


def register(add: Add) -> None:
    """Add the commands to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    p = add("probe", cmd_probe, "linear probes: how much of the task each layer's frozen features already solve")
    p.add_argument("--model", default="shapes", help="model spec (default: the built-in shapes model)")
    p.add_argument("--data", type=data_spec,
                   help="the images the probes learn from: shapes[:N], shapes-spurious[:p], digits[:split] or a "
                        "labelled folder (default shapes:2000, digits:train for the digits model; built-in shapes "
                        "are drawn with a training seed, never the held-out one)")
    p.add_argument("--test-data", type=data_spec,
                   help="the images the probes are scored on (default: the model's held-out set for a built-in "
                        "--data, else the second half of a --data folder)")
    p.add_argument("--layers", type=name_list, help="comma-separated layers (default: one per stage)")
    p.add_argument("--pool", default="avg", choices=["avg", "max", "flatten"],
                   help="how a feature map becomes a vector: channel means, channel maxima or every value")
    p.add_argument("--no-random", action="store_true",
                   help="skip the baseline probe of a randomly re-initialised copy of the model")
    p.add_argument("--l2", type=positive_float(), default=1e-3,
                   help="L2 weight of the probes against their mean cross-entropy (default 1e-3)")
    p.add_argument("--seed", type=natural(), default=0, help="seed of the random copy and of a folder's split")
    p.add_argument("--batch-size", type=count(), help="images per forward pass (default: measured)")
    p.add_argument("--no-progress", action="store_true")

    p = add("transfer", cmd_transfer, "how transferable is each layer: Yosinski's grid on a built-in architecture, "
            "or frozen against fine-tuned features of your model on new data", check=check_transfer)
    p.add_argument("--arch", choices=["shapes", "shapes-resnet", "digits"],
                   help="the grid: train base networks on two halves of the classes (default shapes)")
    p.add_argument("--model", help="your own (pre-trained) network: frozen against fine-tuned, cut after each layer")
    p.add_argument("--data", type=data_spec,
                   help="the grid's images: shapes[:N] (default shapes:6000), digits or a labelled folder")
    p.add_argument("--target-data", type=data_spec, help="with --model: the new task's images (a labelled folder "
                   "or a built-in dataset); a quarter is held out unless --test-data is given")
    p.add_argument("--test-data", type=data_spec, help="with --model: the new task's held-out images")
    p.add_argument("--split", type=class_split,
                   help="random (default; a new split per seed), dissimilar (shapes: angular A, round B) or the "
                        "halves as A1,A2/B1,B2")
    p.add_argument("--seeds", type=count(), help="repetitions (default 3; with --model: fine-tuning runs, default 1)")
    p.add_argument("--depths", type=depths, help="blocks to copy, e.g. 1,3,5 (default every depth)")
    p.add_argument("--treatments", type=one_of(("BnB", "BnB+", "AnB", "AnB+"), "treatment"),
                   help="comma-separated (default BnB,BnB+,AnB,AnB+)")
    p.add_argument("--no-random", action="store_true", help="skip the random-filter control")
    p.add_argument("--reduced", type=fractions,
                   help="fractions of B's images for from-scratch baselines (default 0.25), or none")
    p.add_argument("--epochs", type=count(), help="training epochs (grid default 6; --model: fine-tuning, 3)")
    p.add_argument("--finetune-epochs", type=count(), default=3, help="the + treatments' extra epochs (default 3)")
    p.add_argument("--lr", type=positive_float(), help="learning rate (grid default 3e-3; --model default 1e-4)")
    p.add_argument("--size", type=count(), help="side of the shapes images of the grid (default 32)")
    p.add_argument("--layers", type=name_list, help="with --model: where to cut (default: one per stage)")
    p.add_argument("--compare-dissimilar", action="store_true",
                   help="also run the dissimilar split and draw Yosinski's Fig. 3 (dissimilar.png)")
    p.add_argument("--seed", type=natural(), default=0, help="seed of the held-out quarter and the random copy")
    p.add_argument("--no-progress", action="store_true")
