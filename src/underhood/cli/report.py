"""The report command: ``demo``, the whole tour of a model in one self-contained ``report.html``."""

from __future__ import annotations

import argparse
import time

from ..core.errors import InputError
from .common import Add, model_from, out_dir

EXAMPLES = {
    "demo": "underhood demo                      # the tour of the built-in model -> underhood-out/demo/report.html\n"
            "  underhood demo --model shapes-resnet --out /tmp/tour",
}


def cmd_demo(args: argparse.Namespace) -> None:
    from ..core.io import write_manifest
    from ..core.seeding import seed_everything
    from ..data import test_set
    from ..report import Context, build

    start = time.perf_counter()
    out = out_dir(args, "demo")
    model = model_from(args)
    dataset = getattr(model, "meta", {}).get("dataset", "shapes")
    if dataset not in ("shapes", "digits"):
        raise InputError(f"model: the demo needs a model trained on 'shapes' or 'digits', {args.model!r} was "
                         f"trained on {dataset!r}")
    data = test_set(dataset)[: args.n]
    seed_everything(args.seed)  # the demo is the one command that seeds the process
    ctx = Context(model=model, spec=args.model, data=data, out=out, seed=args.seed, options={"full": args.full})
    path = build(ctx, out / "report.html", progress=not args.no_progress)
    seconds = time.perf_counter() - start
    write_manifest(out, "demo", ["report.html", *ctx.figures], model=args.model, seconds=round(seconds, 2))
    print(f"report written to {path.resolve()} ({seconds:.1f} s)")


def register(add: Add) -> None:
    """Add the command to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    p = add("demo", cmd_demo, "the whole tour on a model, into one self-contained report.html")
    p.add_argument("--model", default="shapes", help="model spec (default: the built-in shapes model)")
    p.add_argument("--n", type=int, default=64, help="held-out images to use (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="bigger settings for the heavy parts (slower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
