"""The command line: a thin layer over the public API, one module per family.

Every command has ``--help`` with an example, writes under ``--out`` (default
``./underhood-out/<command>``) atomically with a ``manifest.json``, and on bad input prints
one line and exits non-zero (``--debug`` shows the traceback).

A family module defines ``EXAMPLES`` (command -> example) and ``register(add)``, which adds its
commands with ``add(name, fn, help, model=True)`` (see :class:`.common.Commands`); what the
families share lives in :mod:`.common`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..core.errors import UnderhoodError
from . import activations, adversarial, attribution, models, report, synthesis, weights
from .common import Commands

EXIT_ERROR = 2

FAMILIES = (report, models, attribution, weights, activations, synthesis, adversarial)
"""The family modules whose ``register(add)`` builds the parser, in this order."""

ORDER = ("demo", "models", "layers", "predict", "explain", "evaluate", "train")
"""Commands listed first in ``underhood --help``, in this order; the others follow as their families add them."""

EXAMPLES: dict[str, str] = {name: text for family in FAMILIES for name, text in family.EXAMPLES.items()}


def build_parser() -> argparse.ArgumentParser:
    """The ``underhood`` parser with every family's commands (builds without importing torch)."""
    from ..core.version import __version__

    parser = argparse.ArgumentParser(prog="underhood", description="Open the black box of trained image models.",
                                     epilog="Run `underhood COMMAND --help` for each command's options and example.")
    parser.add_argument("--version", action="version", version=f"underhood {__version__}")
    commands = Commands(EXAMPLES)
    for family in FAMILIES:
        family.register(commands.add)
    commands.attach(parser, ORDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``underhood`` console script."""
    parser = build_parser()
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
