"""What every command family shares: the standard options, the subcommand factory, and the
helpers that turn options into a model, images, a dataset, classes, channels and output files.

Nothing here imports torch at module level, so building the parser (``underhood --help``) stays
fast; the helpers import what they need when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import InputError

if TYPE_CHECKING:
    import torch

Add = Callable[..., argparse.ArgumentParser]
"""The ``add(name, fn, help, model=True, output="dir", check=None)`` a family's ``register`` receives: returns
the command's parser."""

KEEP = ("shards",)
"""Entries of an output folder that survive a rerun: the resume state of sharded jobs (see :func:`sharded_job`)."""


# ----------------------------------------------------------------------------- options and the parser


def standard_options(p: argparse.ArgumentParser, name: str, model: bool = True, output: str | None = "dir") -> None:
    """``--out`` (for commands that write), ``--debug``, ``--device`` and, for commands that load a model,
    ``--trust`` and ``--weights``."""
    from .options import device

    if output == "dir":
        p.add_argument("--out", help=f"output folder (default ./underhood-out/{name}); replaced as a whole when "
                                     "the command succeeds, untouched when it fails or is interrupted")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    p.add_argument("--device", default="auto", type=device, help="auto (CUDA when present), cpu or cuda[:N]")
    if model:
        p.add_argument("--trust", action="store_true",
                       help="allow loading pickled Python objects from a checkpoint you trust")
        p.add_argument("--weights", metavar="PATH|none", type=weights_file,
                       help="weights for the model's architecture: a state dict file (.safetensors or .pt), or none "
                            "for an untrained model (default: the model's own; pretrained for torchvision:/timm:)")


def weights_file(text: str) -> str:
    """``--weights``: ``none``, ``pretrained`` or a file that exists (its contents are read when the model loads)."""
    if text.lower() in ("none", "pretrained") or Path(text).is_file():
        return text
    raise argparse.ArgumentTypeError(f"no file named {text!r}; give a state dict file (.safetensors or .pt), none "
                                     "for an untrained model, or leave --weights out for the model's own weights")


class Commands:
    """The subcommand factory: :meth:`add` is the ``add`` each family's ``register`` calls.

    A command's options are collected on a parser of their own; :meth:`attach` then adds every
    command to the top-level subparsers, with its example as epilog, in the order asked for
    (so a family's commands need not be adjacent in ``underhood --help``).
    """

    def __init__(self, examples: dict[str, str]) -> None:
        self.examples = examples
        self.parsers: dict[str, tuple[argparse.ArgumentParser, str]] = {}

    def add(self, name: str, fn: Callable[[argparse.Namespace], None], help: str, model: bool = True,
            output: str | None = "dir", check: Callable[[argparse.Namespace], None] | None = None
            ) -> argparse.ArgumentParser:
        """A new command ``name`` running ``fn(args)``, with the standard options; returns its parser.

        ``output``: ``"dir"`` (``--out`` is a folder, written atomically: ``fn`` writes into
        :func:`out_dir`), ``"file"`` (the command declares its own ``--out`` file and writes it
        atomically) or ``None`` (writes nothing). ``check(args)`` runs after parsing and before any
        work: the cross-option checks the option types cannot make (one-line ``InputError``).
        """
        from .options import Parser

        if name in self.parsers:
            raise ValueError(f"command {name!r} is registered twice")
        if output not in ("dir", "file", None):
            raise ValueError(f"output: 'dir', 'file' or None, got {output!r}")
        p = Parser(add_help=False)
        p.set_defaults(fn=fn, check=check, output=output)
        standard_options(p, name, model, output)
        self.parsers[name] = (p, help)
        return p

    def attach(self, parser: argparse.ArgumentParser, order: Iterable[str] = ()) -> None:
        """Add the commands to ``parser`` (as ``args.command``): those named in ``order`` first, in that
        order, then the rest as they were added."""
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        first = [name for name in order if name in self.parsers]
        for name in first + [name for name in self.parsers if name not in first]:
            options, help = self.parsers[name]
            sub.add_parser(name, parents=[options], help=help, description=help,
                           epilog=f"example:\n  {self.examples[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)


# ----------------------------------------------------------------------------- option values


def parse_names(value: str | None) -> list[str] | None:
    """A comma-separated list of names (layers, say), blanks dropped; ``None`` when not given."""
    return [n.strip() for n in value.split(",") if n.strip()] if value else None


def class_names(model) -> list[str]:
    """The model's class names (empty when it has none)."""
    return list(getattr(model, "classes", []) or [])


def parse_target(value: str, model, option: str = "--target") -> int | None:
    """``auto`` (None: the predicted class), a class index or a class name of the model."""
    if value == "auto":
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    names = class_names(model)
    if value in names:
        return names.index(value)
    raise InputError(f"{option}: {value!r} is neither 'auto', a class index nor a class name"
                     + (f" ({', '.join(names)})" if names else ""))


def parse_classes(value: str, model, option: str = "--class") -> list[int]:
    """``all``, indices and class names, comma-separated."""
    names = class_names(model)
    if value == "all":
        if not names:
            raise InputError(f"{option}: the model has no class names; give indices, e.g. {option} 0,1,2")
        return list(range(len(names)))
    ids = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        if item.isdigit():
            ids.append(int(item))
        elif item in names:
            ids.append(names.index(item))
        else:
            raise InputError(f"{option}: {item!r} is neither an index nor a class name"
                             + (f" ({', '.join(names)})" if names else "") + "; or give 'all'")
    if not ids:
        raise InputError(f"{option}: name at least one class, e.g. {option} 0")
    if names and max(ids) >= len(names):
        raise InputError(f"{option}: the model has {len(names)} classes (0..{len(names) - 1}), got {max(ids)}")
    return ids


# ----------------------------------------------------------------------------- model, device, images, data


def final_dir(args: argparse.Namespace, command: str) -> Path:
    """``--out``, or ``./underhood-out/<command>``: where the result is once the command has succeeded."""
    out = getattr(args, "out", None)
    return Path(out) if out else Path("underhood-out") / command


def out_dir(args: argparse.Namespace, command: str) -> Path:
    """Where a command writes its result: while it runs, a temporary folder beside :func:`final_dir`, moved into
    place when it succeeds (see :func:`underhood.core.io.atomic_dir`); :func:`final_dir` outside a run."""
    staging = getattr(args, "staging", None)
    return Path(staging) if staging else final_dir(args, command)


def resolved_device(args: argparse.Namespace) -> torch.device:
    """``--device`` as a usable device (``auto``: CUDA when present; under ``torchrun``, plain ``cuda`` is this
    rank's GPU, see :func:`underhood.core.distributed.rank_device`). A command without ``--device`` gets the CPU."""
    from ..core.device import resolve_device
    from ..core.distributed import rank_device

    return rank_device(resolve_device(getattr(args, "device", "cpu")))


def model_from(args: argparse.Namespace, device: str | torch.device | None = None):
    """The model of ``--model`` on ``device`` (default ``--device``, see :func:`resolved_device`), pickles only
    with ``--trust``."""
    from ..models.loading import load_model

    return load_model(args.model, device=device or resolved_device(args), trust=getattr(args, "trust", False),
                      weights=weights_option(args))


def weights_option(args: argparse.Namespace) -> str | None:
    """``--weights`` as ``load_model``'s ``weights``: ``"pretrained"`` when not given, ``None`` for ``none``."""
    value = getattr(args, "weights", None)
    return "pretrained" if value is None else None if value.lower() == "none" else value


def load_images(paths: Sequence[str], model, size: int | None = None, *, need_size: bool = False,
                what: str = "images") -> torch.Tensor:
    """Image files as one ``[N, C, H, W]`` batch for ``model``, with the model's channel count (3 when unknown).

    They are ``size`` x ``size`` pixels when ``size`` (``--size``) is given, else the model's input
    size; for a model without one they keep their own size, or, with ``need_size``, the error
    asks for ``--size`` (for the ``what``). A size below the model's minimum (``--size``, or an
    image smaller than it) is refused; an image enlarged more than :data:`UPSCALE_WARNING` times
    gets a one-line warning on stderr.
    """
    import torch

    from ..core.checks import positive_int
    from ..data.images import load_image, resize_crop

    known = getattr(model, "input_size", None)
    if size is not None:
        positive_int("--size", size)
        low = _too_small(model, (size, size))
        if low:
            raise InputError(f"--size: the model needs images of at least {low[1]}x{low[0]} pixels, got --size "
                             f"{size}; give --size {max(low)} or more")
        shape = (size, size)
    elif known:
        shape = tuple(known[1:])
    elif need_size:
        raise InputError(f"--size: the model has no input size; give --size (e.g. --size 224) for the {what}")
    else:
        shape = None
    images = []
    for path in paths:
        image = load_image(path, channels=known[0] if known else 3)
        h, w = image.shape[-2:]
        low = _too_small(model, (h, w))
        if low:
            raise InputError(f"{what}: {str(path)!r} is {w}x{h} pixels, the model needs at least {low[1]}x{low[0]}; "
                             "give a larger image")
        if shape is not None:
            scale = max(shape[0] / h, shape[1] / w)
            if scale > UPSCALE_WARNING:
                print(f"underhood: warning: {str(path)!r} ({w}x{h}) is enlarged {scale:.1f}x to {shape[1]}x{shape[0]}; "
                      "the model sees a blurred image", file=sys.stderr)
            image = resize_crop(image, shape)
        images.append(image)
    if shape is None and len({tuple(x.shape[-2:]) for x in images}) > 1:
        raise InputError(f"{what}: the images differ in size and the model has no input size; give --size")
    return torch.cat(images)


def _too_small(model, size: tuple[int, int]) -> tuple[int, int] | None:
    """The model's minimum ``(H, W)`` when ``size`` is below it, else None (a size at least the model's input size
    is not probed: see :func:`underhood.core.inputs.check_size`)."""
    from ..core.inputs import check_size, minimum_size

    try:
        check_size(model, size)
    except InputError:
        return minimum_size(model)
    return None


UPSCALE_WARNING = 4
"""Images enlarged more than this many times (per side) to the model's input get a warning."""


def dataset_from(args: argparse.Namespace, model, n: int | None = None):
    """The images of ``--data`` at the model's input size; default the model's held-out set.

    With ``n``, only the first ``n`` images (a procedural set makes just those: ``shapes:2000`` with
    ``n=32`` makes 32, the same 32).
    """
    import re

    from ..data import SHAPES_TEST_SIZE, from_spec

    size = getattr(model, "input_size", None)
    spec = args.data
    if spec is None:
        meta = getattr(model, "meta", {}) or {}
        spec = {"digits": "digits"}.get(meta.get("dataset"), f"shapes:{SHAPES_TEST_SIZE}")
    match = re.fullmatch(r"shapes(?::(\d+))?", spec)
    if n is not None and match:
        spec = f"shapes:{min(n, int(match.group(1) or SHAPES_TEST_SIZE))}"
    data = from_spec(spec, size=tuple(size[1:]) if size else None, channels=size[0] if size else None)
    return data[:n] if n is not None and len(data) > n else data


# ----------------------------------------------------------------------------- outputs


def save_images(out: Path, images: torch.Tensor, prefix: str) -> list[str]:
    """Each image as ``out/images/<prefix>-NNN.png`` (enlarged to about 256 px); the relative names."""
    from ..core.io import write_bytes
    from ..viz import to_png

    files = []
    scale = max(1, 256 // max(images.shape[-2:]))
    for i, image in enumerate(images):
        name = f"images/{prefix}-{i:03d}.png"
        write_bytes(out / name, to_png(image, scale=scale))
        files.append(name)
    return files


def save_result(result, out: Path, command: str, files: Iterable[str] = (), **info: Any) -> Path:
    """Save a family's result into ``out`` through its ``save()``: every tensor into ``result.safetensors``
    and the rest into the versioned ``manifest.json``, which also records the ``command``, the other
    ``files`` it wrote beside the result (figures, tables, images) and ``info`` (the model spec, the
    options); both written atomically. ``underhood.core.results.load(out)`` rebuilds the result."""
    return result.save(out, command=command, files=sorted(files), **info)


# ----------------------------------------------------------------------------- sharded jobs


def sharded_job(args: argparse.Namespace, name: str, model, data, config: dict[str, Any], layers: list[str]):
    """The sharded job of a command: its shards live under ``--out``, keyed by everything the result depends on.

    The layers are checked first, so a typo fails before any shard is planned.
    """
    from ..core.distributed import ShardedJob, model_digest
    from ..core.layers import resolve

    for layer in layers:
        if layer != "input":
            resolve(model, layer)

    # the shards live in the result folder itself (not the temporary one), so an interrupted run leaves them
    # for the next; the folder's KEEP entries carry them into the new result
    return ShardedJob(final_dir(args, name), name, {"model": args.model, "weights": model_digest(model),
                                                  "data": args.data, "n": len(data), **config},
                      len(data), args.shard_size, fresh=args.fresh)


def run_shards(job, work: Callable, world, args: argparse.Namespace):
    """Run ``work(slice)`` over the job's missing shards; rank 0 gets every shard's result, others ``None``."""
    parts = job.run(work, world, progress=not args.no_progress)
    if parts is not None and job.resumed:
        print(f"resumed: {job.resumed} of {len(job.slices)} shards were already done")
    return parts
