"""Commands of the data: ``samples``, the example images the README's commands use."""

from __future__ import annotations

import argparse

from .common import Add, final_dir, out_dir

EXAMPLES = {
    "samples": "underhood samples --out samples      # then: underhood predict samples/star.png samples/photo.png",
}


def cmd_samples(args: argparse.Namespace) -> None:
    from ..core.io import write_manifest
    from ..data.samples import write_samples

    out = out_dir(args, "samples")
    files = write_samples(out)
    write_manifest(out, "samples", files)
    print(f"{len(files)} images written to {final_dir(args, 'samples').resolve()}: {', '.join(files)}")


def register(add: Add) -> None:
    """Add the command to the ``underhood`` parser (``add`` as in :class:`underhood.cli.common.Commands`)."""
    add("samples", cmd_samples, "write example images: one per shapes class, a digit, a content/style pair and a "
                                "photo-like scene (procedural; no download)", model=False)
