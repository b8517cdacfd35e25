"""The command line: a thin layer over the public API, one module per family.

Every command has ``--help`` with an example. A run goes: the parser checks every option's value
(:mod:`.options`), the command's ``check`` makes the cross-option checks, ``--device`` and ``--out``
(a folder: not a file, writable) are checked, and only then does the command load a model or data.
It writes into a temporary folder beside ``--out`` (default ``./underhood-out/<command>``) that is
moved into place when it succeeds, with a ``manifest.json``; an error or Ctrl-C leaves ``--out`` as
it was. A bad input prints one line on stderr and exits with status 2 (``--debug`` shows the traceback).

A family module defines ``EXAMPLES`` (command -> example) and ``register(add)``, which adds its
commands with ``add(name, fn, help, model=True, output="dir", check=None)`` (see :class:`.common.Commands`);
what the families share lives in :mod:`.common`, the option types in :mod:`.options`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..core.errors import UnderhoodError
from . import (
    activations,
    adversarial,
    attribution,
    course,
    data,
    explore,
    hardware,
    influence,
    models,
    report,
    synthesis,
    transfer,
    weights,
)
from .common import KEEP, Commands, final_dir

EXIT_ERROR = 2
EXIT_BUG = 1

FAMILIES = (report, data, models, attribution, weights, activations, transfer, synthesis, adversarial, influence,
            hardware, explore, course)
"""The family modules whose ``register(add)`` builds the parser, in this order."""

ORDER = ("demo", "samples", "models", "layers", "predict", "explain", "evaluate", "train")
"""Commands listed first in ``underhood --help``, in this order; the others follow as their families add them."""

EXAMPLES: dict[str, str] = {name: text for family in FAMILIES for name, text in family.EXAMPLES.items()}


def build_parser() -> argparse.ArgumentParser:
    """The ``underhood`` parser with every family's commands (builds without importing torch)."""
    from ..core.version import __version__
    from .options import Parser

    parser = Parser(prog="underhood", description="Open the black box of trained image models.",
                    epilog="Run `underhood COMMAND --help` for each command's options and example.")
    parser.add_argument("--version", action="version", version=f"underhood {__version__}")
    commands = Commands(EXAMPLES)
    for family in FAMILIES:
        family.register(commands.add)
    commands.attach(parser, ORDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``underhood`` console script: the exit status (0, 2 for bad input, 130 on Ctrl-C)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # a bad option value: one line on stderr
    except SystemExit as exc:  # --help and --version exit 0 as usual; a bad option is the status 2 returned
        if exc.code == EXIT_ERROR:
            return EXIT_ERROR
        raise
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        prepare(args)
        execute(args)
    except (UnderhoodError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc) if isinstance(exc, UnderhoodError) else f"{exc.__class__.__name__}: {exc}"
        _error_line(f"underhood {args.command}: error: {message}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"underhood {args.command}: interrupted; {_left_as_it_was(args)}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, the traceback with --debug
        if args.debug:
            raise
        _error_line(f"underhood {args.command}: internal error: {exc.__class__.__name__}: {exc} (a bug; rerun "
                    "with --debug for the traceback and report it)")
        return EXIT_BUG
    return 0


def prepare(args: argparse.Namespace) -> None:
    """Every check that comes before the work: the command's cross-option ``check``, ``--device`` (present here?)
    and the output (a folder that can be written, or a file's folder)."""
    from ..core.io import check_out_dir

    if args.check is not None:
        args.check(args)
    if args.device != "auto":
        from ..core.device import resolve_device

        resolve_device(args.device)
    if args.output == "dir" and _rank() == 0:
        check_out_dir(final_dir(args, args.command), keep=KEEP)
    elif args.output == "file" and args.out:
        _check_out_file(args.out)


def execute(args: argparse.Namespace) -> None:
    """Run the command; a folder result goes through a temporary folder moved into place at the end (on rank 0 of a
    ``torchrun`` job: the other ranks write only their shards)."""
    if args.output != "dir" or _rank() != 0:
        args.fn(args)
        return
    from ..core.io import atomic_dir

    with atomic_dir(final_dir(args, args.command), keep=KEEP) as staging:
        args.staging = staging
        try:
            args.fn(args)
        finally:
            args.staging = None


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _check_out_file(out: str) -> None:
    """``--out`` of a command that writes one file (``train``): its folder must be a folder we can write in."""
    from pathlib import Path

    from ..core.errors import InputError

    path = Path(out)
    folder = path.parent if path.suffix else path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if path.suffix and path.is_dir():
        raise InputError(f"--out: {out!r} is a folder; give a file name (e.g. {out}/model.safetensors) or another "
                         "folder")
    if not folder.is_dir():
        raise InputError(f"--out: cannot create {out!r}: {str(folder)!r} is a file; give a path under a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"--out: cannot write in {str(folder)!r} (permission denied); choose a folder you can "
                         "write to")


def _left_as_it_was(args: argparse.Namespace) -> str:
    if getattr(args, "output", None) == "dir":
        return f"{final_dir(args, args.command)} is as it was"
    return "nothing was written"


def _error_line(message: str) -> None:
    print(" ".join(message.splitlines()), file=sys.stderr)
