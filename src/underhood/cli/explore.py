"""The command of the live explorer: ``explore``, a local web app over the model (the ``app`` extra)."""

from __future__ import annotations

import argparse

from ..core.errors import InputError
from .options import count, data_spec, natural

EXAMPLES = {
    "explore": "underhood explore                        # the built-in model, opens http://127.0.0.1:PORT/\n"
               "  underhood explore --model shapes --compare shapes-robust --no-browser --port 8000\n"
               "  underhood explore --model mine.pt --data photos/ --out explore-mine",
}


def check_explore(args: argparse.Namespace) -> None:
    """The ``app`` extra is installed and ``--compare`` names another model."""
    from ..app.run import require_app

    require_app()
    if args.compare is not None and args.compare == args.model:
        raise InputError(f"--compare: {args.compare!r} is the --model itself; name a second model (e.g. shapes-robust)")


def cmd_explore(args: argparse.Namespace) -> None:
    from ..app.run import serve
    from .common import model_from, resolved_device

    device = resolved_device(args)
    models = [(args.model, model_from(args, device))]
    if args.compare:
        from ..models.loading import load_model

        models.append((args.compare, load_model(args.compare, device=device, trust=args.trust)))
    out = args.out or "underhood-out/explore"
    serve(models, args.data, host=args.host, port=args.port, out=out, browser=not args.no_browser,
          upload_limit=args.upload_limit * 2**20)


def register(add) -> None:
    p = add("explore", cmd_explore, "the live explorer in your browser: layers, units, attributions, projector, "
            "ablation, attacks", output=None, check=check_explore)
    p.add_argument("--model", default="shapes", help="model spec (default: the built-in shapes model)")
    p.add_argument("--compare", metavar="SPEC", help="a second model shown side by side (e.g. shapes-robust)")
    p.add_argument("--data", type=data_spec, help="shapes[:N], shapes-spurious[:p], digits[:split] or an image "
                                                  "folder (default: the model's held-out set, shapes:2000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                       "only; any other address is reachable from the network)")
    p.add_argument("--port", type=natural(65535), default=0, help="port (default 0: a free port, printed)")
    p.add_argument("--no-browser", action="store_true", help="do not open the browser")
    p.add_argument("--upload-limit", type=count(1024), default=10, metavar="MB",
                   help="largest image upload in MB (default 10)")
    p.add_argument("--out", help="output folder: cache, uploads and the explorer's report (default "
                                 "./underhood-out/explore; kept between runs so a second visit is instant)")

