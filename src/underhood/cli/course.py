"""The course command: ``underhood course [DECK ...]`` replays the lecture decks' experiments, a page per deck."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..core.errors import InputError
from .common import KEEP, Add, final_dir, load_images, model_from, out_dir
from .options import count, image_file, natural, one_of

DECK_NAMES = ("map583", "ee559", "csc413", "diy", "cmp784", "all")

EXAMPLES = {
    "course": "underhood course all                # every deck -> underhood-out/course/index.html\n"
              "  underhood course ee559 cmp784 --out /tmp/course\n"
              "  underhood course --list             # the decks and their experiments\n"
              "  underhood course diy --quick        # small settings (seconds): the test lane's run\n"
              "  underhood course cmp784 --model torchvision:resnet18 --images photo.png star.png   # and your model",
}


def check(args: argparse.Namespace) -> None:
    if args.list:  # prints the catalogue: writes nothing, so --out is left alone
        args.output = None
    if args.model is None:
        for name, value in (("--images", args.images), ("--weights", args.weights), ("--trust", args.trust)):
            if value:
                raise InputError(f"{name}: it is for the model of --model; give --model SPEC (e.g. --model "
                                 f"torchvision:resnet18) or leave {name} out")


def cmd_course(args: argparse.Namespace) -> None:
    from ..core.io import write_manifest, write_text
    from ..report.course.base import DECKS, deck_experiments, select

    decks = select(args.decks)
    if args.list:
        for key in decks:
            deck = DECKS[key]
            exps = deck_experiments(key)
            print(f"{key:7}  {deck.course}: {deck.title} ({deck.author}), {len(exps)} experiments")
            for e in exps:
                print(f"  {e.id:40}  {e.title}")
            for e in deck_experiments(key, subject=True):
                print(f"  {e.id:40}  {e.title} (with --model)")
        return
    import json

    from ..core.device import resolve_device
    from ..report.course.base import Subject
    from ..report.course.pages import build

    start, cpu = time.perf_counter(), time.process_time()
    device = str(resolve_device(args.device))
    subject = None
    if args.model is not None:  # loaded (and its images read) before any work: a bad spec fails in seconds
        model = model_from(args, device)
        images = load_images(args.images, model) if args.images else None
        subject = Subject.of(args.model, model, images, [Path(p).name for p in args.images] if args.images else None,
                             n=args.n)
    out = out_dir(args, "course")
    timings = build(decks, out, quick=args.quick, seed=args.seed, device=device, progress=not args.no_progress,
                    keep=final_dir(args, "course") / KEEP[0], subject=subject)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    write_text(out / "timings.json", json.dumps(timings, indent=1) + "\n")
    files = ["index.html", *(f"{d}.html" for d in decks), "timings.json", *timings["figures"]]
    write_manifest(out, "course", files, decks=decks, quick=args.quick, seed=args.seed, seconds=round(seconds, 2),
                   cpu_seconds=round(cpu_seconds, 2), model=args.model,
                   images=[str(p) for p in args.images] if args.images else None)
    for key in decks:
        t = timings["decks"][key]
        print(f"{key:7} {len(t['experiments']):3} experiments  {t['wall_s']:6.1f} s  -> "
              f"{(final_dir(args, 'course') / f'{key}.html').resolve()}")
    print(f"course written to {(final_dir(args, 'course') / 'index.html').resolve()} ({seconds:.1f} s, "
          f"{cpu_seconds:.1f} CPU-s)")


def register(add: Add) -> None:
    """Add the command to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    p = add("course", cmd_course, "the lecture decks' experiments, replayed: one self-contained HTML page per deck",
            check=check)
    p.add_argument("decks", nargs="*", type=one_of(DECK_NAMES, "deck", single=True), metavar="DECK",
                   help=f"decks to replay: {', '.join(DECK_NAMES)} (default all)")
    p.add_argument("--list", action="store_true", help="name the decks' experiments and exit (writes nothing)")
    p.add_argument("--quick", action="store_true",
                   help="small settings (fewer images, steps and samples): every figure in seconds, numbers noisier")
    p.add_argument("--model", help="your model (a spec as for every command: torchvision:NAME, timm:NAME, a file, "
                                    "package.module:factory, a built-in name): each page ends with the lecture "
                                    "figures on it")
    p.add_argument("--images", nargs="+", type=image_file, metavar="IMAGE",
                   help="image files to show --model (default for a built-in model: its held-out images)")
    p.add_argument("--n", type=count(), default=4,
                   help="held-out images shown to a built-in --model when --images is not given (default 4)")
    p.add_argument("--seed", type=natural(), default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
