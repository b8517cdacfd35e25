"""Weight snapshots over training: what ``train(checkpoint_every=N)`` keeps, and :func:`load_checkpoints`.

A checkpoint folder holds one ``epoch-NNN.safetensors`` per snapshot (epoch 0 is the initialisation),
each a weights file :func:`underhood.load_model` reads, with the run's metadata plus ``epoch``, ``step``
(optimizer steps so far) and ``metrics``; and the index ``checkpoints.json``, rewritten atomically after
every snapshot, so an interrupted run leaves a readable folder. What an ``on_checkpoint`` callback returns
(a probe curve, say) is stored in that snapshot's index entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.errors import InputError
from ..core.io import write_tensors, write_text

INDEX = "checkpoints.json"
INDEX_VERSION = 1


@dataclass
class Checkpoint:
    """One weight snapshot of a training run.

    Attributes:
        epoch: epochs trained when it was taken (0: the initialisation).
        step: optimizer steps taken so far.
        metrics: what was measured then (``test_accuracy``; after epoch 0 also ``loss``, the epoch's mean
            training loss, and ``train_accuracy`` for a fixed training set).
        path: the ``.safetensors`` file.
        last: whether it is the run's last snapshot (the trained model).
        info: what an ``on_checkpoint`` callback stored beside it (e.g. ``{"probe": {...}}``).
    """

    epoch: int
    step: int
    metrics: dict[str, float]
    path: Path
    last: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def load(self, device: str | torch.device = "cpu"):
        """The snapshot as a model (eval mode, on ``device``), through :func:`underhood.models.load_model`."""
        from .loading import load_model

        return load_model(str(self.path), device=device)


def load_checkpoints(folder: str | os.PathLike) -> list[Checkpoint]:
    """The snapshots a ``train(..., checkpoint_every=N)`` run wrote into ``folder``, by epoch.

    Example:
        >>> cps = load_checkpoints("shapes-checkpoints")                   # doctest: +SKIP
        >>> [c.epoch for c in cps], cps[-1].load().meta["test_accuracy"]   # doctest: +SKIP
    """
    root = Path(folder)
    try:
        index = json.loads((root / INDEX).read_text())
        entries = index["checkpoints"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        what = "is not a folder" if root.exists() and not root.is_dir() else f"holds no readable {INDEX}"
        raise InputError(f"checkpoints: {str(root)!r} {what} ({type(exc).__name__}); give the folder a "
                         "train(..., checkpoint_every=N) run wrote (underhood train --checkpoint-every N)") from None
    out = []
    for i, e in enumerate(entries):
        extra = {k: v for k, v in e.items() if k not in ("epoch", "step", "metrics", "file")}
        out.append(Checkpoint(int(e["epoch"]), int(e["step"]), dict(e.get("metrics", {})), root / e["file"],
                              last=i == len(entries) - 1 and bool(index.get("complete")), info=extra))
    return out


def check_folder(folder: str | os.PathLike) -> Path:
    """``folder`` if snapshots can go there: missing, empty or an earlier run's checkpoint folder (it holds the
    index); a file or a folder of other files is a one-line :class:`InputError`."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise InputError(f"checkpoints: {str(path)!r} is a file, not a folder; give a folder for the snapshots "
                         f"(e.g. {path.with_suffix('')}-checkpoints) or move the file away")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"checkpoints: cannot create {str(path)!r}: {str(ancestor)!r} is a file; give a path "
                         "under a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / INDEX).is_file():
        raise InputError(f"checkpoints: {str(path)!r} holds files that are not underhood checkpoints (no {INDEX}); "
                         "give a new or empty folder")
    return path


class Snapshots:
    """The writer :func:`underhood.models.training.train` uses: snapshots at epoch 0, every ``every`` epochs and
    the last, and the index after each (an earlier run's snapshots in the folder are removed first)."""

    def __init__(self, folder: str | os.PathLike, every: int, epochs: int, run: dict[str, Any]) -> None:
        self.folder, self.every, self.epochs = check_folder(folder), every, epochs
        self.index: dict[str, Any] = {"index_version": INDEX_VERSION, "checkpoint_every": every, **run,
                                      "complete": False, "checkpoints": []}
        self.folder.mkdir(parents=True, exist_ok=True)
        old = self.folder / INDEX
        if old.is_file():  # an earlier run's snapshots: replaced, so the folder describes one run
            try:
                files = [e["file"] for e in json.loads(old.read_text()).get("checkpoints", [])]
            except (ValueError, KeyError, TypeError, AttributeError):
                files = []
            for name in files:
                (self.folder / Path(name).name).unlink(missing_ok=True)
            old.unlink()

    def due(self, epoch: int) -> bool:
        return epoch == 0 or epoch % self.every == 0 or epoch == self.epochs

    def write(self, state: dict[str, torch.Tensor], meta: dict[str, Any], epoch: int, step: int,
              metrics: dict[str, float]) -> Checkpoint:
        """Write one snapshot (atomically), then the index."""
        name = f"epoch-{epoch:03d}.safetensors"
        meta = {**meta, "epoch": epoch, "step": step, "metrics": metrics}
        if "test_accuracy" in metrics:
            meta["test_accuracy"] = metrics["test_accuracy"]
        write_tensors(self.folder / name, state, {"underhood": meta})
        self.index["checkpoints"].append({"epoch": epoch, "step": step, "file": name, "metrics": metrics})
        self.index["complete"] = epoch == self.epochs
        self._write_index()
        return Checkpoint(epoch, step, dict(metrics), self.folder / name, last=epoch == self.epochs)

    def annotate(self, extra: dict[str, Any]) -> None:
        """Store ``extra`` (JSON-able) in the last snapshot's index entry."""
        entry = self.index["checkpoints"][-1]
        entry.update({k: v for k, v in extra.items() if k not in ("epoch", "step", "file", "metrics")})
        self._write_index()

    def _write_index(self) -> None:
        write_text(self.folder / INDEX, json.dumps(self.index, indent=1) + "\n")


def default_folder(out: str | os.PathLike) -> Path:
    """Where the snapshots of a run writing ``out`` go: ``<out's stem>-checkpoints/`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}-checkpoints")


__all__ = ["Checkpoint", "load_checkpoints", "INDEX", "default_folder"]
