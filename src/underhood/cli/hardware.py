"""The command of the hardware family: ``bench``, how fast a model is on this machine."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import InputError
from .common import Add, final_dir, out_dir, save_result
from .options import count, image_file, one_of, size

EXAMPLES = {
    "bench": "underhood bench --quick                       # the built-in model on CPU (and GPU), in under a minute\n"
             "  underhood bench --model torchvision:resnet50 --device cpu,cuda --out bench-here\n"
             "  underhood bench --compare old/bench.json bench-here/bench.json   # the ratio table of two runs",
}

DEVICES = ("auto", "cpu", "cuda", *(f"cuda:{i}" for i in range(8)))


def check_bench(args: argparse.Namespace) -> None:
    """Before any work: the devices of ``--device`` are present here (``args.devices``); ``--device`` keeps the
    first, for the shared device check."""
    from ..hardware import devices_from

    if args.compare:
        args.devices = []
        return
    devices = devices_from(args.device)
    args.devices = [str(d) for d in devices]
    args.device = args.devices[0]
    if args.compile and args.no_compile:
        raise InputError("--compile: give --compile or --no-compile, not both")


def cmd_bench(args: argparse.Namespace) -> None:
    from ..models.loading import load_model
    from ..viz import save_figure

    out = out_dir(args, "bench")
    if args.compare:
        from ..hardware import compare, load_bench

        a, b = (load_bench(p) for p in args.compare)
        result = compare(a, b, labels=(f"{args.compare[0]}: {a.model}", f"{args.compare[1]}: {b.model}"))
        print(result.summary())
        save_figure(result.figure(), out / "compare.png", dpi=120)
        save_result(result, out, "bench", ["compare.png"], compare=list(args.compare))
        print(f"ratio figure written to {(final_dir(args, 'bench') / 'compare.png').resolve()}")
        return
    from ..hardware import bench, describe
    from ..report import Context, build
    from ..report.sections.hardware import heavy_jobs
    from .common import weights_option

    model = load_model(args.model, device="cpu", trust=args.trust, weights=weights_option(args))
    compile_ = True if args.compile else False if args.no_compile else None
    result = bench(model, devices=args.devices, quick=args.quick, spec=args.model, size=args.size,
                   max_batch=args.max_batch, rounds=args.rounds, compile=compile_,
                   jobs=None if args.no_jobs else heavy_jobs(quick=args.quick),
                   log=lambda line: print(line, file=sys.stderr, flush=True))
    save_figure(result.figure(), out / "bench.png", dpi=120)
    ctx = Context(model=model, spec=args.model, data=None, out=out, options={"bench": result})
    build(ctx, out / "report.html", progress=False, only=["hardware"])
    save_result(result, out, "bench", ["bench.png", "bench.json", "report.html", *ctx.figures], model=args.model,
                devices=args.devices, quick=args.quick)
    print(describe(result.environment))
    print(result.summary())
    where = final_dir(args, "bench").resolve()
    print(f"bench.json, bench.png and report.html written to {where} ({result.wall_s:.1f} s, "
          f"{result.cpu_s:.1f} CPU-s)")


def register(add: Add) -> None:
    """Add the command to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    p = add("bench", cmd_bench, "how fast is this model on this machine: throughput per device and variant",
            check=check_bench)
    for action in p._actions:  # a list of devices here, not one: cpu,cuda
        if action.dest == "device":
            action.type = one_of(DEVICES, "device")
            action.help = "devices to time, comma-separated: cpu, cuda[:N] or auto (the CPU, and CUDA when present)"
    p.add_argument("--model", default="shapes", help="model spec (default: the built-in shapes model)")
    p.add_argument("--quick", action="store_true",
                   help="batches 1, 4, 16, 3 rounds, no torch.compile, one image per job: under a minute on 2 cores")
    p.add_argument("--compile", action="store_true", help="time torch.compile also with --quick")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it is timed by default)")
    p.add_argument("--no-jobs", action="store_true", help="skip timing underhood's own heavy jobs")
    p.add_argument("--max-batch", type=count(high=65536), help="largest batch (default 256 on CPU, 4096 on GPU; "
                                                                 "out of memory stops earlier)")
    p.add_argument("--rounds", type=count(high=100), help="interleaved rounds (default 5, 3 with --quick)")
    p.add_argument("--size", type=size(), help="image side for a model without an input size")
    p.add_argument("--compare", nargs=2, type=image_file, metavar=("A.json", "B.json"),
                   help="print and plot the ratio table B / A of two saved runs (bench.json files), timing nothing")
