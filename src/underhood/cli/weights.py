"""Commands of the weights family: ``filters`` and ``toy2d``."""

from __future__ import annotations

import argparse

from ..core.errors import InputError
from .common import Add, final_dir, model_from, out_dir, save_result
from .options import count, natural, positive_float, weight

EXAMPLES = {
    "filters": "underhood filters --model shapes                 # first-layer kernels as RGB images\n"
               "  underhood filters --model shapes --layer features.7   # 20 filters x 15 channels, grey",
    "toy2d": "underhood toy2d --data moons --hidden 20 --steps 5000   # GIF + strip of the hidden units' lines\n"
             "  underhood toy2d --data spiral --hidden 40",
}


def cmd_filters(args: argparse.Namespace) -> None:
    from ..core.io import write_manifest, write_tensors
    from ..core.layers import conv_layers
    from ..viz import filters_figure, save_figure
    from ..weights import filters

    model = model_from(args)
    layer = args.layer or (conv_layers(model) or [None])[0]
    w = filters(model, layer).cpu()
    out = out_dir(args, "filters")
    kind = "RGB" if w.shape[1] == 3 else f"first {min(20, w.shape[0])} filters x {min(15, w.shape[1])} channels"
    save_figure(filters_figure(w, title=f"{layer}: {w.shape[0]} filters {w.shape[2]}x{w.shape[3]} ({kind})"),
                out / "filters.png", dpi=130)
    write_tensors(out / "filters.safetensors", {"weight": w}, {"layer": layer})
    write_manifest(out, "filters", ["filters.png", "filters.safetensors"], model=args.model, layer=layer,
                   shape=list(w.shape))
    print(f"{layer}: {tuple(w.shape)} kernels; figure written to "
          f"{(final_dir(args, 'filters') / 'filters.png').resolve()}")


def check_toy2d(args: argparse.Namespace) -> None:
    """Before any work: the strip shows at most one frame per step."""
    if args.frames > args.steps:
        raise InputError(f"--frames: {args.frames} frames asked from {args.steps} steps; give --frames {args.steps} "
                         "or fewer, or more --steps")


def cmd_toy2d(args: argparse.Namespace) -> None:
    from ..viz import save_figure
    from ..weights import toy2d, toy2d_gif, toy2d_strip

    result = toy2d(args.data, hidden=args.hidden, steps=args.steps, lr=args.lr, n=args.n, noise=args.noise,
                   seed=args.seed)
    out = out_dir(args, "toy2d")
    save_figure(toy2d_strip(result, k=args.frames), out / "toy2d.png", dpi=120)
    toy2d_gif(result, out / "toy2d.gif")
    save_result(result, out, "toy2d", ["toy2d.png", "toy2d.gif"], data=args.data, hidden=args.hidden,
                steps=args.steps, seed=args.seed, final_accuracy=result.final_accuracy)
    print(f"{args.data}: {args.hidden} hidden units, training accuracy {result.final_accuracy:.1%} after "
          f"{args.steps} steps; strip and GIF written to {final_dir(args, 'toy2d').resolve()}")


def register(add: Add) -> None:
    """Add the commands to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    p = add("filters", cmd_filters, "the kernels of a convolutional layer as pictures")
    p.add_argument("--model", default="shapes")
    p.add_argument("--layer", help="a Conv2d layer (default: the first)")

    p = add("toy2d", cmd_toy2d, "train a 2-D MLP and draw its hidden units as lines over training", model=False,
            check=check_toy2d)
    p.add_argument("--data", default="moons", choices=["moons", "circles", "spiral", "blobs"])
    p.add_argument("--hidden", type=count(high=4096), default=20, help="hidden units (default 20)")
    p.add_argument("--steps", type=count(), default=5000, help="optimisation steps (default 5000)")
    p.add_argument("--lr", type=positive_float(), default=0.01)
    p.add_argument("--n", type=count(high=1_000_000), default=400, help="points (default 400)")
    p.add_argument("--noise", type=weight(high=10), default=0.1, help="noise std of the points (default 0.1)")
    p.add_argument("--frames", type=count(), default=8, help="frames in the strip (default 8)")
    p.add_argument("--seed", type=natural(), default=0)
