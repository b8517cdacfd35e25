"""Commands of the transfer family: ``probe`` (linear probes on every stage's frozen features).

``--data`` is what the probes learn from and ``--test-data`` what they are scored on. A built-in
dataset given as ``--data`` is drawn from its training side (procedural shapes with
:data:`TRAIN_SEED`, ``digits`` from its train split), so it never overlaps the held-out set that
``--test-data`` defaults to; a folder without ``--test-data`` is split in two halves (seeded).
"""

from __future__ import annotations

import argparse
import json

from .common import Add, final_dir, model_from, out_dir, parse_names, save_result
from .options import count, data_spec, natural, positive_float
from .options import names as name_list

EXAMPLES = {
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
