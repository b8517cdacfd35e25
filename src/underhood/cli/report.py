"""The report command: ``demo``, the whole tour of a model in one self-contained ``report.html``."""

from __future__ import annotations

import argparse
import json
import time

from ..core.errors import InputError
from .common import KEEP, Add, final_dir, model_from, out_dir
from .options import count, natural

EXAMPLES = {
    "demo": "underhood demo                      # the tour of the built-in model -> underhood-out/demo/report.html\n"
            "  underhood demo --timings           # and a per-section table of wall and CPU seconds (timings.json)\n"
            "  underhood demo --model shapes-resnet --full --out /tmp/tour",
}


def cmd_demo(args: argparse.Namespace) -> None:
    from ..core.io import write_manifest, write_text
    from ..core.seeding import seed_everything
    from ..data import test_set
    from ..report import Context, build

    start, cpu = time.perf_counter(), time.process_time()
    out = out_dir(args, "demo")
    model = model_from(args)
    dataset = getattr(model, "meta", {}).get("dataset", "shapes")
    if dataset not in ("shapes", "digits"):
        raise InputError(f"model: the demo needs a model trained on 'shapes' or 'digits', {args.model!r} was "
                         f"trained on {dataset!r}")
    data = test_set(dataset, n=args.n)  # only the images the report uses are made
    seed_everything(args.seed)  # the demo is the one command that seeds the process
    # "keep": the result folder's resume state (carried over reruns), where --full keeps its transfer grid
    ctx = Context(model=model, spec=args.model, data=data, out=out, seed=args.seed,
                  options={"full": args.full, "keep": final_dir(args, "demo") / KEEP[0]})
    rows: list[dict] = []
    build(ctx, out / "report.html", progress=not args.no_progress, timings=rows)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    files = ["report.html", *ctx.figures]
    if args.timings:
        table = {"command": "demo", "model": args.model, "n": args.n, "full": args.full, "sections": rows,
                 "sections_wall_s": sum(r["wall_s"] for r in rows), "sections_cpu_s": sum(r["cpu_s"] for r in rows),
                 "total_wall_s": seconds, "total_cpu_s": cpu_seconds}
        write_text(out / "timings.json", json.dumps(table, indent=1) + "\n")
        files.append("timings.json")
        print(timings_table(table))
    write_manifest(out, "demo", files, model=args.model, n=args.n, full=args.full, seconds=round(seconds, 2),
                   cpu_seconds=round(cpu_seconds, 2))
    print(f"report written to {(final_dir(args, 'demo') / 'report.html').resolve()} ({seconds:.1f} s, "
          f"{cpu_seconds:.1f} CPU-s)")


def timings_table(table: dict) -> str:
    """The per-section table of ``timings.json``: section, wall seconds, CPU seconds; then the totals."""
    width = max([len(r["id"]) for r in table["sections"]] + [len("whole command")])
    lines = [f"{'section':<{width}}  {'wall s':>8}  {'CPU s':>8}"]
    lines += [f"{r['id']:<{width}}  {r['wall_s']:8.2f}  {r['cpu_s']:8.2f}" for r in table["sections"]]
    lines.append(f"{'sections':<{width}}  {table['sections_wall_s']:8.2f}  {table['sections_cpu_s']:8.2f}")
    lines.append(f"{'whole command':<{width}}  {table['total_wall_s']:8.2f}  {table['total_cpu_s']:8.2f}")
    return "\n".join(lines)


def register(add: Add) -> None:
    """Add the command to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    p = add("demo", cmd_demo, "the whole tour on a model, into one self-contained report.html")
    p.add_argument("--model", default="shapes", help="model spec (default: the built-in shapes model)")
    p.add_argument("--n", type=count(), default=64, help="held-out images to use (default 64)")
    p.add_argument("--seed", type=natural(), default=0)
    p.add_argument("--full", action="store_true",
                   help="today's larger settings for the heavy parts (more images, steps and samples; slower)")
    p.add_argument("--timings", action="store_true",
                   help="print a table of wall and CPU seconds per section and write it to timings.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
